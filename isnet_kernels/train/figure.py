"""A figure of one image's heatmap from a trained run: image | heatmap (| heatmap over the image with the mask)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..data.errors import DataError
from ..data.masks import MaskConvention, decode_mask
from ..lrp import explain
from ..plot import save_heatmap_grid
from .errors import TrainError
from .evaluate import load_run
from .metrics import background_fraction


def read_image(path: str | os.PathLike[str], channels: int, size: int | None = None) -> Tensor:
    """An image file as (1, channels, H, W) float32 in [0, 1] (8-bit pixels / 255), resized as the data set
    loader resizes (bilinear, antialiased) when ``size`` is given."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"image file {path} does not exist; pass the path of a PNG/JPEG image")
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    except Exception as exc:
        raise TrainError(f"cannot read image file {path}: {exc}; pass a PNG, JPEG or BMP image") from exc
    x = torch.from_numpy(a.copy())
    x = x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None]
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x.contiguous()


def read_mask(path: str | os.PathLike[str], shape: tuple[int, int], size: int | None = None,
              convention: MaskConvention | None = None) -> Tensor:
    """A mask file as (1, 1, H, W) float32 in {0, 1}, read under ``convention`` (the run's; default: nonzero in any
    colour channel = foreground)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"mask file {path} does not exist; pass the image's foreground mask, or leave out --mask")
    try:
        with Image.open(path) as im:
            fg = decode_mask(im, convention, path)
    except DataError:
        raise
    except Exception as exc:
        raise TrainError(f"cannot read mask file {path}: {exc}; pass a PNG mask (nonzero = foreground)") from exc
    m = torch.from_numpy(fg.astype(np.float32))[None, None]
    if size is not None and tuple(m.shape[-2:]) != (size, size):
        m = F.interpolate(m, size=(size, size), mode="nearest-exact")
    if tuple(m.shape[-2:]) != tuple(shape):
        raise TrainError(f"mask {path} is {tuple(m.shape[-2:])} but its image is {tuple(shape)}; a mask must have "
                         "its image's size")
    return m


def explain_image(run_dir: str | os.PathLike[str], image: str | os.PathLike[str], out: str | os.PathLike[str], *,
                  mask: str | os.PathLike[str] | None = None, target: int | str | None = None,
                  which: str = "best", device: str = "cpu") -> dict[str, Any]:
    """Write ``out`` (PNG): the image and the LRP heatmap of a run's model, blended over the image with the mask's
    outline when a mask is given (:func:`isnet_kernels.plot.save_heatmap_grid`).

    The heatmap explains ``target`` (a class index or class folder name; default: the predicted class) with the
    logit rule and the run's eps and first-layer rule, as in evaluation (a multi-label run: the class with the
    highest probability by default, each class's probability its sigmoid). Returns ``{"path", "predicted",
    "target", "probability", "background_fraction" (None without a mask)}``.
    """
    run = load_run(run_dir, which, device)
    cfg = run.config
    pre = run.preprocess  # the inputs the model was trained on: size, channels, normalisation
    x = read_image(image, run.in_channels, pre.size).to(device)
    m = (read_mask(mask, tuple(x.shape[-2:]), pre.size, cfg.mask_convention).to(device) if mask is not None
         else None)
    inputs = pre.normalize(x)
    with torch.no_grad():  # a multi-label run's classes are independent sigmoids
        logits = run.model(inputs)[0]
        probs = logits.sigmoid() if run.task == "multilabel" else logits.softmax(-1)
    predicted = int(probs.argmax())
    if target is None:
        cls = predicted
    elif isinstance(target, int) and not isinstance(target, bool):
        cls = target
    elif str(target) in run.classes:
        cls = run.classes.index(str(target))
    elif str(target).lstrip("-").isdigit():
        cls = int(target)
    else:
        raise TrainError(f"unknown target class {target!r}; pass a class index 0..{len(run.classes) - 1} or one of "
                         f"the class names {run.classes}")
    if not 0 <= cls < len(run.classes):
        raise TrainError(f"target class {cls} is out of range: the model has {len(run.classes)} classes "
                         f"(0..{len(run.classes) - 1}: {run.classes})")
    heat = explain(run.model, inputs, cls, eps=cfg.eps, first_layer=cfg.first_layer,
                   bounds=pre.bounds(run.in_channels), backend=cfg.backend)
    title = f"class {run.classes[cls]} (predicted {run.classes[predicted]}, p={float(probs[predicted]):.2f})"
    path = save_heatmap_grid(x.cpu(), heat.cpu(), out, titles=[title], masks=m.cpu() if m is not None else None)
    fraction = float(background_fraction(heat, m)[0]) if m is not None else None
    return {"path": str(path), "predicted": run.classes[predicted], "target": run.classes[cls],
            "probability": float(probs[cls]), "background_fraction": fraction}
