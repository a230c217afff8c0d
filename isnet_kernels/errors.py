"""Exceptions raised by isnet-kernels. Each message names the problem and the fix.

Every exception of the package derives from :class:`ISNetError`, so ``except isnet_kernels.ISNetError`` catches
them all; each also keeps the built-in base that says what kind of problem it is (``TypeError``,
``RuntimeError``, ``ValueError``), so code written against those keeps working.
"""


class ISNetError(Exception):
    """Base class of every exception isnet-kernels raises on purpose (bad input, a missing backend, bad data)."""


class UnsupportedLayerError(ISNetError, TypeError):
    """A model contains a layer or operation that the LRP engine has no relevance rule for.

    Raised when a model is compiled (``LRP(model)`` or the first ``explain(model, ...)``), before any
    data flows, naming the graph node, its module path and type, and the supported layers.
    """


class BackendUnavailableError(ISNetError, RuntimeError):
    """A relevance backend was asked for by name but cannot run here (not built, not importable)."""
