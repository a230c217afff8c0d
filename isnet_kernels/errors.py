"""Exceptions raised by isnet-kernels. Each message names the problem and the fix."""


class UnsupportedLayerError(TypeError):
    """A model contains a layer or operation that the LRP engine has no relevance rule for.

    Raised when a model is compiled (``LRP(model)`` or the first ``explain(model, ...)``), before any
    data flows, naming the graph node, its module path and type, and the supported layers.
    """


class BackendUnavailableError(RuntimeError):
    """A relevance backend was asked for by name but cannot run here (not built, not importable)."""
