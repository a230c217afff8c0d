"""isnet-kernels: fast, exact, differentiable Layer-wise Relevance Propagation and the ISNet.

Public API
----------
explain(model, x, target=None, *, eps, first_layer, bounds, output) -> (B, C, H, W) heatmaps
LRP(model, *, eps, first_layer, bounds)(x, targets, output) -> (logits, (B, M, C, H, W) heatmaps)
ISNet(model, variant="selective", *, preset="default", eps, first_layer, bounds, deep_supervision, select,
    generator, backend, batch_stats, heatmap, map_chunk)
ISNetLoss(P, d, E, A, B, C1, C2, foreground, d_loss, nonfinite)(output, labels, masks) -> ISNetLossOutput
tune_cut(isnet, loader, *, epochs) -> CutResult (C1, C2)
ISNetError: the base of every exception the package raises (UnsupportedLayerError, BackendUnavailableError,
    isnet_kernels.data.DataError, isnet_kernels.train.TrainError)
"""

from .errors import BackendUnavailableError, ISNetError, UnsupportedLayerError
from .isnet import ISNet, ISNetLoss, ISNetLossOutput, ISNetOutput, tune_cut
from .lrp import LRP, explain

__version__ = "0.1.0"  # the one place the version is kept (pyproject.toml reads it)

__all__ = ["LRP", "BackendUnavailableError", "ISNet", "ISNetError", "ISNetLoss", "ISNetLossOutput", "ISNetOutput",
           "UnsupportedLayerError", "__version__", "explain", "tune_cut"]
