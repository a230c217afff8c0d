"""Other ways of keeping a classifier off the background, to compare the ISNet with (docs/isnet.md).

Right for the Right Reasons (RRR; Ross, Hughes and Doshi-Velez, IJCAI 2017) penalises the input gradient of the
summed log-probabilities where an annotation says the evidence must not be, here the background (mask 0)::

    g_b = d/dx_b  sum_k log p_k(x_b)                       (B, C, H, W), p = softmax(logits)
    L   = CE(logits, y) + lambda * mean_b  sum_{c,h,w} ((1 - mask_b) * g_b)^2

The gradient is taken with ``create_graph=True``, so the penalty's own gradient w.r.t. the parameters is a second
derivative (double backpropagation). Unlike an LRP heatmap it does not depend on the explained class, and it
asks for a locally flat model on the background rather than for no relevance there.

Scale of ``lambda``: the penalty is a sum over the background's elements of squared gradients, so it scales with
the background's area and with the inverse square of the inputs' range. For inputs in [0, 1] (the biased digits,
32x32, :class:`~isnet_kernels.models.SmallCNN` of width 8): about 1 at initialisation in train mode, while a
plain classifier that learns the artefact drives it to 1e3 .. 1e4 within a few epochs. With SGD (lr 0.05,
momentum 0.9, gradient-norm clip 1; without the clip the double-backpropagation step diverges within an epoch),
400 training images and 8 epochs, ``lam = 1`` still lets the shortcut in (2% on test_confounding against 26% on
test_unbiased) while ``lam = 10`` keeps it out (the two splits level): ``DEFAULT_LAMBDA = 10``. For inputs
normalised to unit variance (a range of about 4 instead of 1) a lambda about 16 times larger weighs the same.

In train mode with BatchNorm batch statistics the gradient of the batch's summed log-probabilities includes the
statistics' (order 1/B) dependence on the other images; in eval mode each image's gradient is its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .loss import check_labels, nan_where_invalid, prepare_mask

#: The RRR weight for inputs in [0, 1] (module docstring).
DEFAULT_LAMBDA = 10.0


@dataclass
class RRRLossOutput:
    """The RRR loss and its parts (batch means): ``total = classification + lam * penalty``.

    ``input_gradient`` is ``g`` (B, C, H, W) of the module docstring, on the autograd graph.
    """

    total: Tensor
    classification: Tensor
    penalty: Tensor
    input_gradient: Tensor


def log_probability_gradient(logits: Tensor, x: Tensor, create_graph: bool = True) -> Tensor:
    """``d/dx sum_{b, k} log softmax(logits)_{b, k}``, shape of ``x``; ``logits`` must be computed from ``x``."""
    if not isinstance(x, Tensor) or not x.requires_grad:
        raise InputError("the input gradient needs the input on the autograd graph: call x.requires_grad_(True) "
                         "before the model's forward, then pass the logits of model(x) and that x")
    if not logits.requires_grad:
        raise InputError("the logits carry no autograd graph: compute them from x with gradients enabled "
                         "(not under torch.no_grad)")
    (grad,) = torch.autograd.grad(F.log_softmax(logits, -1).sum(), x, create_graph=create_graph, allow_unused=True)
    if grad is None:
        raise InputError("the logits do not depend on x: pass the x the model's forward was called with")
    return grad


class RRRLoss(nn.Module):
    """Right for the Right Reasons: ``CE + lam * mean_b sum ((1 - mask) * d/dx sum_k log p_k)^2`` (module doc).

    Parameters
    ----------
    lam : the penalty's weight (``DEFAULT_LAMBDA`` = 10 for inputs in [0, 1]; 0: the plain classifier's loss).
    check_masks : check that masks are binary (as :class:`~isnet_kernels.ISNetLoss`).

    Call as ``loss(logits, x, labels, masks)``: ``x`` (B, C, H, W) with ``requires_grad`` set before the forward
    that produced ``logits`` (B, K); labels (B,); foreground masks (B, 1, H, W) or (B, H, W) in {0, 1} (1 =
    foreground), resized to the input as :class:`~isnet_kernels.ISNetLoss` does. Returns an
    :class:`RRRLossOutput`; ``total.backward()`` trains the model through the second derivative.

    Typical step::

        x = x.requires_grad_(True)
        out = rrr(model(x), x, y, masks)
        optimizer.zero_grad(); out.total.backward(); optimizer.step()
    """

    def __init__(self, lam: float = DEFAULT_LAMBDA, check_masks: bool = True):
        super().__init__()
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise InputError(f"lam must be a non-negative number, got {lam!r}")
        self.lam, self.check_masks = float(lam), check_masks

    def extra_repr(self) -> str:
        return f"lam={self.lam}"

    def forward(self, logits: Tensor, x: Tensor, labels: Tensor, masks: Tensor) -> RRRLossOutput:
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise InputError(f"logits must have shape (B, K), got "
                             f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != logits.shape[0]:
            raise InputError(f"x must be the (B, C, H, W) input of the logits' forward, B = {logits.shape[0]}")
        # accelerator labels out of range: a NaN loss (no synchronisation), which the trainer's check reports
        ce = nan_where_invalid(F.cross_entropy(logits, check_labels(labels, logits)), labels, logits.shape[1])
        grad = log_probability_gradient(logits, x, create_graph=torch.is_grad_enabled())
        background = 1 - prepare_mask(masks, x.shape[0], tuple(x.shape[-2:]), grad.dtype, grad.device,
                                      self.check_masks)[:, 0]  # (B, 1, H, W)
        penalty = (background * grad).square().sum((1, 2, 3)).mean()
        return RRRLossOutput(ce + self.lam * penalty, ce, penalty, grad)
