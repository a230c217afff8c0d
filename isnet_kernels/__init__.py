"""isnet-kernels: fast, exact, differentiable Layer-wise Relevance Propagation and the ISNet.

Public API
----------
explain(model, x, target=None, *, eps, first_layer, bounds, output) -> (B, C, H, W) heatmaps
LRP(model, *, eps, first_layer, bounds)(x, targets, output) -> (logits, (B, M, C, H, W) heatmaps)
UnsupportedLayerError
"""

from .errors import BackendUnavailableError, UnsupportedLayerError
from .lrp import LRP, explain

__version__ = "0.1.0"

__all__ = ["LRP", "BackendUnavailableError", "UnsupportedLayerError", "__version__", "explain"]
