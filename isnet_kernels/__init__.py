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

import os as _os
import sys as _sys

# OpenMP threads that wait for each other spin by default: on a machine whose cores are also used by something else
# (DataLoader workers, another program) that made training 5-10 times slower. Waiting threads yield their core
# instead. OpenMP reads the setting once, when PyTorch loads; an OMP_WAIT_POLICY set by the user is kept.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import BackendUnavailableError, ISNetError, UnsupportedLayerError  # noqa: E402
from .isnet import ISNet, ISNetLoss, ISNetLossOutput, ISNetOutput, tune_cut  # noqa: E402
from .lrp import LRP, explain  # noqa: E402

__version__ = "0.1.0"  # the one place the version is kept (pyproject.toml reads it)

__all__ = ["LRP", "BackendUnavailableError", "ISNet", "ISNetError", "ISNetLoss", "ISNetLossOutput", "ISNetOutput",
           "UnsupportedLayerError", "__version__", "explain", "tune_cut"]
