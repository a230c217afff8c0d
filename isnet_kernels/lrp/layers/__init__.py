"""The package's layer families, one module each: a family's steps beside the builders it registers in
:data:`~isnet_kernels.lrp.registry.REGISTRY` (docs/rules.md has the rules, docs/layers.md the table).

====================  ===========================================================================================
module                layers and operations
====================  ===========================================================================================
:mod:`.linear`        ``Conv2d``, ``Linear`` (and ``F.conv2d`` / ``F.linear``) with the BatchNorm after them folded
                      in; the standalone BatchNorm
:mod:`.activation`    ReLU, dropout, identity, dtype conversions, the element-wise activations; the gates
:mod:`.pool`          max and average pooling, ``x.mean(dims)``
:mod:`.arithmetic`    residual sums, sums over axes, products, scalings by constants, stochastic depth
:mod:`.movement`      reshape, permute, indexing, ``chunk``/``split``, ``roll``, ``pad``, ``expand``, concatenation
:mod:`.attention`     ``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``, matmul, softmax
:mod:`.einsum`        ``torch.einsum`` of one or two operands
:mod:`.norm`          LayerNorm, GroupNorm, ``F.batch_norm``
:mod:`.swin`          torchvision's Swin Transformer functions
====================  ===========================================================================================

The imports below are the one place the registrations are made: :mod:`isnet_kernels.lrp.graph` imports this package,
and a family registers its builders when it is imported. Their order is the order of the supported-layer table; a
later registration of the same key would override an earlier one.
"""

# isort: off
from . import linear, activation, pool, arithmetic, movement, attention, einsum, norm, swin
# isort: on

#: The layer families, in registration order.
FAMILIES = (linear, activation, pool, arithmetic, movement, attention, einsum, norm, swin)

__all__ = ["FAMILIES", "activation", "arithmetic", "attention", "einsum", "linear", "movement", "norm", "pool", "swin"]
