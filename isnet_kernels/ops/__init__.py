"""Relevance ops: one module per rule, each with a plain-PyTorch ``reference_*`` implementation.

Every op takes relevance with a map axis, shape (B, M, ...), and activations without it, shape (B, ...).
All are differentiable by ordinary autograd, so a loss on a heatmap trains the model.


Each op also has a functional entry point (``epsilon``, ``zbox``, ``maxpool``, ...) that runs the reference
when given no primitives, or a ``torch.autograd.Function`` with a hand-written backward on a backend's
primitives (:mod:`isnet_kernels.ops.primitives`).
"""

from .attention import (
    attention_bias,
    reference_matmul_cp,
    reference_matmul_uniform,
    reference_sdpa_relevance,
    reference_softmax,
    sdpa_forward,
)
from .batchnorm import (
    batch_statistics,
    batchnorm_epsilon,
    fold_batchnorm,
    reference_batchnorm_epsilon,
    reference_batchnorm_zplus,
    rule_preactivation,
    scale_relevance,
)
from .concat import reference_concat_split
from .conv import EpsilonFunction, epsilon, reference_conv_epsilon, reference_linear_epsilon
from .geometry import Geometry, conv2d_transpose, conv_transpose_output_padding
from .norm import (
    NormEpsilonFunction,
    NormLayout,
    group_norm_forward,
    layer_norm_forward,
    norm_epsilon,
    reference_norm_epsilon,
    rule_norm_preactivation,
)
from .output import all_logits_output, reference_logit_output, reference_selective_output, selective_relevance
from .pool import (
    LinearPoolFunction,
    MaxPoolFunction,
    adaptive_avgpool,
    avgpool,
    maxpool,
    mean,
    reduce_sum,
    reference_adaptive_avgpool,
    reference_avgpool,
    reference_maxpool,
    reference_mean,
    reference_sum,
)
from .preactivation import Preactivation
from .primitives import TorchPrimitives
from .products import reference_affine_constant, reference_product_gate, reference_product_uniform
from .residual import ResidualFunction, reference_residual_split, residual_split
from .stabilize import stabilize
from .zbox import ZBoxFunction, reference_conv_zbox, reference_linear_zbox, zbox
from .zplus import reference_conv_zplus, reference_linear_zplus, zplus, zplus_all_logits, zplus_residual_split

__all__ = [
    "NormEpsilonFunction",
    "NormLayout",
    "attention_bias",
    "group_norm_forward",
    "layer_norm_forward",
    "norm_epsilon",
    "reference_affine_constant",
    "reference_matmul_cp",
    "reference_matmul_uniform",
    "reference_norm_epsilon",
    "reference_product_gate",
    "reference_product_uniform",
    "reference_sdpa_relevance",
    "reference_softmax",
    "rule_norm_preactivation",
    "sdpa_forward",
    "all_logits_output",
    "EpsilonFunction",
    "Geometry",
    "LinearPoolFunction",
    "MaxPoolFunction",
    "ResidualFunction",
    "TorchPrimitives",
    "ZBoxFunction",
    "adaptive_avgpool",
    "avgpool",
    "batch_statistics",
    "batchnorm_epsilon",
    "epsilon",
    "maxpool",
    "mean",
    "reduce_sum",
    "residual_split",
    "zbox",
    "zplus",
    "zplus_all_logits",
    "zplus_residual_split",
    "conv2d_transpose",
    "conv_transpose_output_padding",
    "fold_batchnorm",
    "reference_adaptive_avgpool",
    "reference_avgpool",
    "reference_batchnorm_epsilon",
    "reference_batchnorm_zplus",
    "reference_concat_split",
    "reference_conv_epsilon",
    "reference_conv_zbox",
    "reference_conv_zplus",
    "reference_linear_epsilon",
    "reference_linear_zbox",
    "reference_linear_zplus",
    "reference_logit_output",
    "reference_maxpool",
    "reference_mean",
    "reference_sum",
    "reference_residual_split",
    "reference_selective_output",
    "Preactivation",
    "rule_preactivation",
    "scale_relevance",
    "selective_relevance",
    "stabilize",
]
