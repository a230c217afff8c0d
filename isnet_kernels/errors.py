"""Exceptions raised by isnet-kernels. Each message names the problem and the fix.

Every exception of the package derives from :class:`ISNetError`, so ``except isnet_kernels.ISNetError`` catches
them all; each also keeps the built-in base that says what kind of problem it is (``TypeError``,
``RuntimeError``, ``ValueError``, ``IndexError``, ``FloatingPointError``), so code written against those keeps
working. A test (``tests/test_errors.py``) keeps the package free of ``raise`` statements of built-in exceptions.

An error about one argument names it in ``params`` (the Python parameter names, e.g. ``("eps",)``); the ``isnet``
command line shows those as its flags (``--eps``).
"""

from __future__ import annotations

from collections.abc import Sequence


class ISNetError(Exception):
    """Base class of every exception isnet-kernels raises on purpose (bad input, a missing backend, bad data).

    ``param``: the name of the Python parameter (or several) the error is about, kept as the tuple ``params``.
    """

    def __init__(self, *args: object, param: str | Sequence[str] | None = None) -> None:
        super().__init__(*args)
        self.params: tuple[str, ...] = (param,) if isinstance(param, str) else tuple(param or ())


class InputError(ISNetError, ValueError):
    """An argument or input with a value the package cannot use: out of range, the wrong shape, inconsistent."""


class InputTypeError(ISNetError, TypeError):
    """An argument or input of the wrong type (a list for a tensor, an integer tensor for images, ...)."""


class TargetError(ISNetError, IndexError):
    """A class index (a target or a label) outside ``0 .. K - 1`` for a model with K classes."""


class NonFiniteLossError(ISNetError, FloatingPointError):
    """A loss that is not finite, under ``nonfinite="raise"``."""


class MissingDependencyError(ISNetError, ImportError):
    """An optional package a function needs is not installed (the message says what to install)."""


class StateError(ISNetError, RuntimeError):
    """A call made in a state in which it cannot run (the message says what to do first)."""


class UnsupportedLayerError(ISNetError, TypeError):
    """A model contains a layer or operation that the LRP engine has no relevance rule for.

    Raised when a model is compiled (``LRP(model)`` or the first ``explain(model, ...)``), before any
    data flows, naming the graph node, its module path and type, and the supported layers.
    """


class BackendUnavailableError(ISNetError, RuntimeError):
    """A relevance backend was asked for by name but cannot run here (not built, not importable)."""
