"""PyTorch Lightning for the ISNet: a LightningModule, a data module over the package's data sets, and a callback
that shows heatmaps in the Trainer's logger (the optional extra ``[lightning]``; ``import isnet_kernels`` does not
import Lightning, this package does).

Public API
----------
ISNetModule(model, num_classes=None, in_channels=None, *, weights=None, model_kwargs=None, bounds=None, **settings)
    any classifier (a module, or a model name and weights as ``isnet train`` takes them) trained as an ISNet with
    the trainer's settings and defaults (:data:`~.module.SETTINGS`); logs the loss parts, accuracy and the
    background-relevance fraction under the names of ``metrics.csv`` (``train_loss``, ``val_accuracy``, ...)
MaskedImageDataModule(root, batch_size=32, ...) -> the splits of a masked image folder or a manifest, with the
    trainer's preprocessing, augmentation and data order; ``batch_size`` is the global batch, as in ``isnet train``
HeatmapLogger(every_n_epochs=1, count=8) -> image | mask | heatmap grid of fixed validation images, written to every
    logger of the Trainer that takes images (TensorBoard, W&B); the others get its scalar and one warning
"""

from __future__ import annotations

from ..models import MissingExtraError


def _require_lightning() -> None:
    """Import Lightning, or raise :class:`~isnet_kernels.models.MissingExtraError` naming what to install."""
    import torch

    try:
        import lightning.pytorch  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"isnet_kernels.lightning needs the package lightning, which is not installed "
                                f"({exc}); install it with: pip install 'isnet-kernels[lightning]'") from None
    except Exception as exc:  # a dependency built for another torch (torchmetrics imports torchvision) fails here
        raise MissingExtraError(f"isnet_kernels.lightning needs lightning, which is installed but does not import "
                                f"({type(exc).__name__}: {exc}); Lightning's torchmetrics imports torchvision: "
                                "install the torchvision release built for torch "
                                f"{torch.__version__.split('+')[0]}, then pip install 'isnet-kernels[lightning]'"
                                ) from None


_require_lightning()

from .callbacks import HeatmapLogger, ImageLoggingWarning  # noqa: E402
from .data import MaskedImageDataModule  # noqa: E402
from .module import SETTINGS, ISNetModule  # noqa: E402

__all__ = ["SETTINGS", "HeatmapLogger", "ISNetModule", "ImageLoggingWarning", "MaskedImageDataModule"]
