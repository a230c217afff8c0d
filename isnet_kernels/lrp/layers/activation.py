"""ReLU, dropout, identity and the element-wise activations: relevance passes unchanged
(docs/rules.md#relu-dropout-identity; the identity rule of AttnLRP for the smooth activations). Also the gates
(:data:`GATES`): activations whose output lies in [0, 1], so that a product with one is a gated signal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import REGISTRY, NodeContext
from ..rules import RuleConfig
from ..steps import CallStep, Env, Kind, Step, identity_relevance

register = REGISTRY.register


class PassStep(Step):
    """ReLU (``Kind.COMPUTE``) and dropout (``Kind.PASS``): relevance passes unchanged and nothing is kept
    (docs/rules.md#relu-dropout-identity). ``fn`` computes the output from the input."""

    def __init__(self, name: str, input_name: str, fn: Callable[[Tensor], Tensor], kind: Kind):
        self.name, self.inputs, self.fn, self.kind = name, [input_name], fn, kind

    def forward(self, env: Env) -> tuple[Tensor, None]:
        args = [env[n] for n in self.inputs]
        return self.fn(args[0]), None

    def relevance(self, R: Tensor, saved: None, cfg: RuleConfig) -> list[Tensor]:
        return [R]


def _relu(ctx: NodeContext):
    return PassStep(ctx.name, ctx.single(), F.relu, Kind.COMPUTE)


register(nn.ReLU, F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_", group="ReLU",
         description="`nn.ReLU` (in place too), `F.relu`, `torch.relu`, `x.relu()`: relevance passes unchanged")(_relu)


@register(nn.Dropout, nn.Dropout2d, nn.Identity, F.dropout, F.dropout2d, "contiguous", "clone", "float", "double",
          "to", "type_as", group="pass-through",
          description="`nn.Dropout`, `nn.Dropout2d`, `F.dropout`, `nn.Identity`, `x.contiguous()`, `x.clone()`, "
                      "dtype conversions: relevance passes unchanged")
def _pass(ctx: NodeContext):
    mod, target = ctx.module, ctx.node.target
    if isinstance(mod, (nn.Dropout, nn.Dropout2d)):
        fn = F.dropout2d if isinstance(mod, nn.Dropout2d) else F.dropout
        return PassStep(ctx.name, ctx.single(), lambda x, m=mod: fn(x, m.p, m.training),
                        Kind.PASS)  # never in place
    if target in (F.dropout, F.dropout2d):
        b = ctx.bind(["input", "p", "training"], {"p": 0.5, "training": True})
        p, training = b["p"], b["training"]
        return PassStep(ctx.name, ctx.single(), lambda x: target(x, p, training), Kind.PASS)  # never in place
    return CallStep(ctx.name, [ctx.single()], ctx.call(), identity_relevance, kind=Kind.MOVE)


_ACTIVATION_MODULES = (nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Hardswish,
                       nn.Hardsigmoid, nn.Sigmoid, nn.Mish, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Softsign,
                       nn.LogSigmoid)


_ACTIVATION_FUNCTIONS = (F.relu6, F.leaky_relu, F.leaky_relu_, F.prelu, F.elu, F.elu_, F.celu, F.selu, F.gelu,
                         F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, torch.sigmoid, torch.sigmoid_, F.mish,
                         F.tanh, torch.tanh, torch.tanh_, F.softplus, F.hardtanh, F.hardtanh_, F.softsign)


_ACTIVATION_METHODS = ("sigmoid", "sigmoid_", "tanh", "tanh_")


GATES = (nn.Sigmoid, nn.Hardsigmoid, F.sigmoid, torch.sigmoid, torch.sigmoid_, F.hardsigmoid, "sigmoid", "sigmoid_")


@register(*_ACTIVATION_MODULES, *_ACTIVATION_FUNCTIONS, *_ACTIVATION_METHODS, group="element-wise activations",
          description="`ReLU6`, `LeakyReLU`, `PReLU`, `ELU`, `CELU`, `SELU`, `GELU`, `SiLU`, `Hardswish`, "
                      "`Hardsigmoid`, `Sigmoid`, `Mish`, `Tanh`, `Softplus`, `Hardtanh`, `Softsign`, `LogSigmoid`, as "
                      "modules, functions and methods: the identity rule (AttnLRP)")
def _activation(ctx: NodeContext):
    return CallStep(ctx.name, [ctx.single()], ctx.call(), identity_relevance)
