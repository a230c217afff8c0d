"""The rules for modern layers (docs/rules.md#rules-for-modern-layers) at graph level, float64.

Each case is a tiny model ``conv -> OP -> flatten -> linear`` (or a token model for attention). Its heatmap is
compared with an independent derivation written out here: the explicit epsilon form of the conv and the linear
head, and for OP the rule in its matrix / Jacobian form (the adjoint of a data-movement op is the vector-Jacobian
product of the op itself, computed by autograd; a normalisation is the linear map it is with sigma held
constant, differentiated by autograd; products, softmax and attention by their element formulas in einsum form).
Then conservation (eps -> 0, zero biases) where the rule conserves, and ``ik.explain`` against ``ik.LRP``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import isnet_kernels as ik
from isnet_kernels.backends import dispatch
from isnet_kernels.ops import stabilize
from isnet_kernels.ops.output import SELECTIVE_SOFTMAX_EPS

from ..backend_params import backend_params

DT = torch.float64
H, W = 5, 4


def _torchvision():
    """torchvision (imported by tests/conftest.py beside the CPU torch; classification and
    ``torchvision.ops.StochasticDepth`` need none of its compiled operators)."""
    import torchvision

    return torchvision


# --- the explicit pieces of the reference ------------------------------------------------------------------------
def conv_epsilon(x: Tensor, conv: nn.Conv2d, R: Tensor, eps: float) -> Tensor:
    """``x * W^T (R / stab(W x + b))`` with the conv's explicit adjoint."""
    z = conv(x)
    adj = torch.nn.grad.conv2d_input(x.shape, conv.weight, R / stabilize(z, eps), conv.stride, conv.padding,
                                     conv.dilation, conv.groups)
    return x * adj


def logit_rule(a: Tensor, lin: nn.Linear, target: Tensor, eps: float) -> Tensor:
    """The logit rule at a Linear head's input (B, F): ``a * W_c z_c / stab(z_c)``."""
    z = lin(a)
    zc = z.gather(1, target.view(-1, 1))
    return a * lin.weight[target] * (zc / stabilize(zc, eps))


def adjoint(op: Callable[[Tensor], Tensor], u: Tensor, R: Tensor) -> Tensor:
    """The vector-Jacobian product ``J_op(u)^T R`` (for a linear op: its adjoint applied to R)."""
    u = u.detach().requires_grad_()
    with torch.enable_grad():
        (g,) = torch.autograd.grad(op(u), u, R)
    return g


class Fn(nn.Module):
    """Calls ``f`` in its forward: traced through, so ``f``'s functions and methods become graph nodes."""

    def __init__(self, f: Callable, *params: Tensor):
        super().__init__()
        self.f = f
        self.p = nn.ParameterList([nn.Parameter(p) for p in params])

    def forward(self, x):
        return self.f(x, *self.p)


class Net(nn.Module):
    def __init__(self, op: nn.Module, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1, dtype=DT)
        self.op = op
        with torch.no_grad():
            n = self.op(self.conv(torch.rand(2, 3, H, W, dtype=DT))).flatten(1).shape[1]
        self.fc = nn.Linear(n, 3)

    def forward(self, x):
        return self.fc(self.op(self.conv(x)).flatten(1))


def expected_heat(model: Net, x: Tensor, target: Tensor, rule: Callable, eps: float) -> Tensor:
    """conv (epsilon) -> op (``rule(R_y, u, y, op)``) -> linear head (logit rule), written out."""
    with torch.no_grad():
        u = model.conv(x)
        y = model.op(u)
        R_y = logit_rule(y.flatten(1), model.fc, target, eps).view_as(y)
        R_u = rule(R_y, u, y, model.op, eps)
        return conv_epsilon(x, model.conv, R_u, eps)


def ident(R, u, y, m, eps):
    return R


def movement(op: Callable[[Tensor], Tensor]) -> Callable:
    return lambda R, u, y, m, eps: adjoint(op, u, R)


def scaled(c: Callable[[nn.Module], Tensor | float]) -> Callable:
    """``y = c x``: ``R_x = x c R / stab(c x)``."""
    return lambda R, u, y, m, eps: u * c(m) * R / stabilize(u * c(m), eps)


def shifted(c: float) -> Callable:
    """``y = x + c``: ``R_x = x R / stab(x + c)``."""
    return lambda R, u, y, m, eps: u * R / stabilize(u + c, eps)


def _se(x):
    return x * torch.sigmoid(x.mean((2, 3), keepdim=True))


def se_gate(R, u, y, m, eps):
    return R  # signal takes all: the gate gets none


def se_uniform(R, u, y, m, eps):
    half = R / 2
    R_g = half.sum((2, 3), keepdim=True)  # the gate's share, summed over its broadcast axes; sigmoid: identity
    mean = u.mean((2, 3), keepdim=True)
    return half + u / (u.shape[2] * u.shape[3]) * R_g / stabilize(mean, eps)  # the mean's epsilon rule


def halves(R, u, y, m, eps):
    return torch.cat([R / 2, R / 2], 1)  # y = u[:, :2] * u[:, 2:]: uniform


def summed(dims: Sequence[int], keepdim: bool = False) -> Callable:
    """``y = u.sum(dims)``: a linear layer with weights 1, ``R_u = u R / stab(y)`` broadcast over the summed axes."""

    def rule(R, u, y, m, eps):
        s = R / stabilize(y, eps)
        if not keepdim:
            for d in sorted(d % u.dim() for d in dims):
                s = s.unsqueeze(d)
        return u * s

    return rule


def _radix(x):
    return x.view(x.shape[0], 2, 2, H, W).sum(1)


def radix_rule(R, u, y, m, eps):
    v = u.view(u.shape[0], 2, 2, H, W)
    return (v * (R / stabilize(y, eps)).unsqueeze(1)).reshape(u.shape)


def _splat(x):
    """ResNeSt's split attention: the radix splits weighted by a softmax over the radix axis, then summed."""
    B = x.shape[0]
    gate = F.softmax(x.mean((2, 3)).view(B, 2, 2), dim=1).reshape(B, 2, 2, 1, 1)
    return (x.view(B, 2, 2, H, W) * gate).sum(1)


def splat_rule(R, u, y, m, eps):
    """The softmax is a gate (signal takes all, through its reshape): the sum's epsilon rule gives each weighted
    split ``p = v g`` its share ``p R / stab(y)``, which passes to ``v`` whole; the gate branch gets nothing."""
    B = u.shape[0]
    v = u.view(B, 2, 2, H, W)
    g = F.softmax(u.mean((2, 3)).view(B, 2, 2), dim=1).reshape(B, 2, 2, 1, 1)
    return (v * g * (R / stabilize(y, eps)).unsqueeze(1)).reshape(u.shape)


class TokenBatchNorm(nn.Module):
    """timm's LeViT ``LinearNorm`` without its Linear: a BatchNorm1d over tokens (B, N, C) with the batch axis
    merged into the token axis, ``bn(x.flatten(0, 1)).reshape_as(x)``."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, momentum=0.0)  # Net's train-mode probe forward leaves the statistics
        with torch.no_grad():
            self.bn.weight.copy_(torch.linspace(0.5, 1.5, channels))
            self.bn.bias.copy_(torch.linspace(-0.2, 0.3, channels))
            self.bn.running_var.copy_(torch.linspace(0.7, 1.9, channels))  # running mean 0: no shift without bias

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


def token_bn_rule(R, u, y, m, eps):
    """The standalone BatchNorm rule per channel of the tokens, ``R_x = x (gamma / sigma) R / stab(y)``, then the
    adjoint of ``u.flatten(2).transpose(1, 2)``."""
    x = u.flatten(2).transpose(1, 2)
    scale = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
    return adjoint(lambda v: v.flatten(2).transpose(1, 2), u, x * scale * R / stabilize(y, eps))


def softmax_rule(dim: int) -> Callable:
    return lambda R, u, y, m, eps: u * (R - y * R.sum(dim, keepdim=True))


def gram_rule(R, u, y, m, eps):
    """``y = u @ u^T`` over the last two axes: the uniform rule, ``R_A_ij = sum_k A_ij B_jk S_ik`` with
    ``A = u``, ``B = u^T`` and ``S = R / (2 stab(y))``, both operands' shares summed into u."""
    S = R / (2 * stabilize(y, eps))
    A, Bm = u, u.transpose(-1, -2)
    R_A = torch.einsum("...ij,...jk,...ik->...ij", A, Bm, S)
    R_B = torch.einsum("...ij,...jk,...ik->...jk", A, Bm, S)
    return R_A + R_B.transpose(-1, -2)


def frozen_norm(groups: Callable[[Tensor], Tensor], ungroup: Callable[[Tensor, Tensor], Tensor], dims, gamma,
                beta, norm_eps: float) -> Callable:
    """A normalisation with sigma held constant, as the linear map it is: ``f(v) = gamma (v - mean v) / sigma(u)
    + beta`` with ``sigma(u)`` the forward's (a constant), then the epsilon rule ``R_u = u * J_f^T (R /
    stab(f(u)))`` by autograd."""

    def rule(R, u, y, m, eps):
        g = groups(u)
        sigma = (g.var(dims, unbiased=False, keepdim=True) + norm_eps).sqrt()

        def f(v):
            gv = groups(v)
            out = ungroup((gv - gv.mean(dims, keepdim=True)) / sigma, v)
            return out * gamma(m) + beta(m)

        z = f(u)
        torch.testing.assert_close(z, y, rtol=1e-12, atol=1e-12)  # the frozen map is the forward's output
        return u * adjoint(f, u, R / stabilize(z, eps))

    return rule


def _layer_norm_last(m):
    return frozen_norm(lambda v: v, lambda g, v: g, (-1,), lambda m: m.weight, lambda m: m.bias, 1e-5)


def _p(*shape):
    return torch.randn(*shape, dtype=DT) * 0.5 + 1.0


def _ln2d(x, w, b):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, 1e-6).permute(0, 3, 1, 2)


def _channel_shuffle(x):
    B, C, h, w = x.shape
    return x.view(B, 2, C // 2, h, w).transpose(1, 2).reshape(B, C, h, w)


def _parts_swap(x):
    a, b = x.chunk(2, 1)
    return torch.cat([b, a], 1)


def _class_token(x, tok):
    t = x.flatten(2).transpose(1, 2)
    return torch.cat([tok.expand(x.shape[0], -1, -1), t], 1)


def _case(name, op, rule, conserves=True):
    return pytest.param(op, rule, conserves, id=name)


_ACT_MODULES = [nn.ReLU6(), nn.LeakyReLU(0.1), nn.PReLU(4), nn.ELU(), nn.CELU(), nn.SELU(), nn.GELU(),
                nn.GELU("tanh"), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.Sigmoid(), nn.Mish(), nn.Tanh(),
                nn.Softplus(), nn.Hardtanh(), nn.Softsign(), nn.LogSigmoid()]
_ACT_FUNCTIONS = [F.relu6, lambda x: F.leaky_relu(x, 0.2), F.elu, F.celu, F.selu, F.gelu, F.silu, F.hardswish,
                  F.hardsigmoid, F.sigmoid, torch.sigmoid, F.mish, F.tanh, torch.tanh, F.softplus, F.hardtanh,
                  F.softsign]
_ACT_METHODS = [lambda x: x.sigmoid(), lambda x: x.tanh()]

CASES = [
    *[_case(f"module-{type(m).__name__}-{i}", m, ident) for i, m in enumerate(_ACT_MODULES)],
    *[_case(f"function-{i}", Fn(f), ident) for i, f in enumerate(_ACT_FUNCTIONS)],
    _case("function-prelu", Fn(lambda x, w: F.prelu(x, w), torch.full((4,), 0.3, dtype=DT)), ident),
    *[_case(f"method-{i}", Fn(f), ident) for i, f in enumerate(_ACT_METHODS)],
    # in place: the engine evaluates them out of place (the conv's output is its rule's denominator)
    *[_case(f"inplace-{i}", op, ident) for i, op in enumerate([
        nn.SiLU(inplace=True), nn.ReLU6(inplace=True), nn.Hardswish(inplace=True), nn.ELU(inplace=True),
        Fn(lambda x: F.silu(x, inplace=True)), Fn(lambda x: x.sigmoid_()), Fn(lambda x: torch.tanh_(x)),
        Fn(lambda x: F.leaky_relu_(x, 0.1)), Fn(lambda x: F.hardtanh(x, -0.2, 0.3, inplace=True))])],
    # products
    _case("se-gate", Fn(_se), se_gate),
    _case("product-halves", Fn(lambda x: x[:, :2] * x[:, 2:]), lambda R, u, y, m, eps: torch.cat([R / 2] * 2, 1)),
    _case("se-gate-through-view", Fn(lambda x: x * torch.sigmoid(x.mean((2, 3))).view(x.shape[0], -1, 1, 1)),
          se_gate),
    _case("split-attention-softmax-gate", Fn(_splat), splat_rule),
    # sums over axes
    _case("sum-channels", Fn(lambda x: x.sum(1)), summed((1,))),
    _case("torch.sum-hw-keepdim", Fn(lambda x: torch.sum(x, (2, 3), keepdim=True)), summed((2, 3), True)),
    _case("sum-last-dim-kwarg", Fn(lambda x: x.sum(dim=-1)), summed((-1,))),
    _case("sum-radix", Fn(_radix), radix_rule),
    # a BatchNorm1d over tokens with the batch axis merged (timm's LeViT)
    _case("token-batchnorm", TokenBatchNorm(), token_bn_rule),
    # constants
    _case("x*c", Fn(lambda x: x * -1.5), scaled(lambda m: -1.5)),
    _case("c*x", Fn(lambda x: 2.0 * x), scaled(lambda m: 2.0)),
    _case("x/c", Fn(lambda x: x / 4.0), scaled(lambda m: 0.25)),
    _case("x+c", Fn(lambda x: x + 0.7), shifted(0.7), conserves=False),
    _case("x-c", Fn(lambda x: x - 0.7), shifted(-0.7), conserves=False),
    _case("layer-scale", Fn(lambda x, g: x * g, _p(4, 1, 1)), scaled(lambda m: m.p[0])),
    _case("layer-scale-last", Fn(lambda x, g: (x.permute(0, 2, 3, 1) * g).permute(0, 3, 1, 2), _p(4)),
          scaled(lambda m: m.p[0].view(4, 1, 1))),
    # data movement
    *[_case(name, Fn(op), movement(op)) for name, op in [
        ("permute", lambda x: x.permute(0, 2, 3, 1)),
        ("torch.permute", lambda x: torch.permute(x, (0, 3, 1, 2))),
        ("transpose", lambda x: x.transpose(1, 3)),
        ("torch.transpose", lambda x: torch.transpose(x, 2, -1)),
        ("swapaxes", lambda x: x.swapaxes(1, 2)),
        ("reshape", lambda x: x.reshape(x.shape[0], 2, -1)),
        ("view", lambda x: x.view(x.size(0), -1, 2)),
        ("flatten", lambda x: x.flatten(2)),
        ("torch.flatten", lambda x: torch.flatten(x, 1, 2)),
        ("unflatten", lambda x: x.unflatten(1, (2, 2))),
        ("unsqueeze-squeeze", lambda x: x.unsqueeze(2).transpose(2, 3).squeeze(3)),
        ("torch.squeeze", lambda x: torch.squeeze(torch.unsqueeze(x, -1), -1)),
        ("expand", lambda x: x[:, :, :1].expand(-1, -1, 3, -1)),
        ("index-0", lambda x: x[:, 0]),
        ("index-last-k", lambda x: x[..., :3]),
        ("index-1:", lambda x: x[:, 1:]),
        ("index-step", lambda x: x[:, :, ::2, None]),
        ("chunk", lambda x: x.chunk(2, 1)[1]),
        ("chunk-both", _parts_swap),
        ("split", lambda x: torch.split(x, [1, 3], 1)[1]),
        ("split-size", lambda x: x.split(2, dim=2)[0]),
        ("unbind", lambda x: x.unbind(1)[2]),
        ("roll", lambda x: torch.roll(x, 1, 2)),
        ("roll-2d", lambda x: x.roll((1, -2), (2, 3))),
        ("pad", lambda x: F.pad(x, (1, 2, 0, 1))),
        ("channel-shuffle", _channel_shuffle),
        ("cat-self", lambda x: torch.cat([x, x[:, :1]], 1)),
        ("contiguous-clone", lambda x: x.transpose(2, 3).contiguous().clone()),
    ]],
    _case("class-token", Fn(_class_token, _p(1, 1, 4)),
          lambda R, u, y, m, eps: adjoint(lambda v: _class_token(v, m.p[0]), u, R), conserves=False),
    # normalisation
    _case("LayerNorm", nn.LayerNorm(W), frozen_norm(lambda v: v, lambda g, v: g, (-1,), lambda m: m.weight,
                                                    lambda m: m.bias, 1e-5)),
    _case("LayerNorm-2axes", nn.LayerNorm((H, W), eps=1e-3),
          frozen_norm(lambda v: v, lambda g, v: g, (-2, -1), lambda m: m.weight, lambda m: m.bias, 1e-3)),
    _case("F.layer_norm", Fn(lambda x, w, b: F.layer_norm(x, (W,), w, b, 1e-5), _p(W), _p(W) * 0.1),
          frozen_norm(lambda v: v, lambda g, v: g, (-1,), lambda m: m.p[0], lambda m: m.p[1], 1e-5)),
    _case("LayerNorm2d-permute", Fn(_ln2d, _p(4), _p(4) * 0.1),
          frozen_norm(lambda v: v, lambda g, v: g, (1,), lambda m: m.p[0].view(4, 1, 1),
                      lambda m: m.p[1].view(4, 1, 1), 1e-6)),
    _case("GroupNorm", nn.GroupNorm(2, 4),
          frozen_norm(lambda v: v.reshape(v.shape[0], 2, -1), lambda g, v: g.reshape(v.shape), (-1,),
                      lambda m: m.weight.view(4, 1, 1), lambda m: m.bias.view(4, 1, 1), 1e-5)),
    _case("F.group_norm", Fn(lambda x, w, b: F.group_norm(x, 4, w, b, 1e-4), _p(4), _p(4) * 0.1),
          frozen_norm(lambda v: v.reshape(v.shape[0], 4, -1), lambda g, v: g.reshape(v.shape), (-1,),
                      lambda m: m.p[0].view(4, 1, 1), lambda m: m.p[1].view(4, 1, 1), 1e-4)),
    # functional layers with parameters
    _case("F.conv2d", Fn(lambda x, w, b: F.conv2d(x, w, b, 1, 1, 1, 2), torch.randn(4, 2, 3, 3, dtype=DT),
                         torch.randn(4, dtype=DT) * 0.1),
          lambda R, u, y, m, eps: u * adjoint(lambda v: F.conv2d(v, m.p[0], None, 1, 1, 1, 2), u,
                                              R / stabilize(y, eps))),
    _case("F.linear-tokens", Fn(lambda x, w, b: F.linear(x.permute(0, 2, 3, 1), w, b),
                                torch.randn(5, 4, dtype=DT), torch.randn(5, dtype=DT) * 0.1),
          lambda R, u, y, m, eps: u * adjoint(lambda v: F.linear(v.permute(0, 2, 3, 1), m.p[0]), u,
                                              R / stabilize(y, eps))),
    # attention pieces
    _case("softmax-last", Fn(lambda x: x.softmax(-1)), softmax_rule(-1), conserves=False),
    _case("F.softmax-channels", Fn(lambda x: F.softmax(x, dim=1)), softmax_rule(1), conserves=False),
    _case("nn.Softmax", nn.Softmax(2), softmax_rule(2), conserves=False),
    _case("matmul-gram", Fn(lambda x: x @ x.transpose(-1, -2)), gram_rule),
    _case("torch.matmul-gram", Fn(lambda x: torch.matmul(x, x.mT)), gram_rule),
]


def _net(op: nn.Module) -> Net:
    torch.manual_seed(0)
    return Net(op.to(DT) if isinstance(op, nn.Module) else op).to(DT).eval()


@pytest.mark.parametrize("op, rule, conserves", CASES)
def test_rule_against_explicit_form(op, rule, conserves):
    model = _net(op)
    x = torch.rand(2, 3, H, W, dtype=DT)
    target = torch.tensor([0, 2])
    eps = 1e-2
    lrp = ik.LRP(model, eps=eps, first_layer="epsilon")
    logits, maps = lrp(x, target.view(-1, 1))
    expected = expected_heat(model, x, target, rule, eps)
    assert expected.abs().max() > 0
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))
    torch.testing.assert_close(logits, model(x), rtol=1e-13, atol=1e-13)
    # explain (no autograd) divides by the forward's own output where LRP rebuilds z with the rule's gradient
    heat = ik.explain(model, x, target, eps=eps, first_layer="epsilon")
    torch.testing.assert_close(heat, maps[:, 0].detach(), rtol=1e-12, atol=1e-14 * float(expected.abs().max()))


def _zero_biases(model: nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or (name.startswith("op.p.1")):
                p.zero_()


@pytest.mark.parametrize("op, rule, conserves", [c for c in CASES if c.values[2]])
def test_conservation(op, rule, conserves):
    model = _net(op)
    _zero_biases(model)
    x = torch.rand(2, 3, H, W, dtype=DT)
    target = torch.tensor([1, 0])
    heat = ik.explain(model, x, target, eps=1e-12, first_layer="epsilon")
    logit = model(x).gather(1, target.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(heat.sum((1, 2, 3)), logit.detach(), rtol=1e-7, atol=1e-10)


def test_product_uniform_option():
    """``product="uniform"`` gives the SE gate AttnLRP's uniform rule; the default holds the gate constant."""
    model = _net(Fn(_se))
    x = torch.rand(2, 3, H, W, dtype=DT)
    target = torch.tensor([1, 2])
    for product, rule in (("gate", se_gate), ("uniform", se_uniform)):
        maps = ik.LRP(model, eps=1e-2, first_layer="epsilon", product=product)(x, target.view(-1, 1))[1]
        torch.testing.assert_close(maps[:, 0], expected_heat(model, x, target, rule, 1e-2), rtol=1e-9, atol=1e-14)
    gate = ik.LRP(model, first_layer="epsilon")(x, target.view(-1, 1))[1]
    uniform = ik.LRP(model, first_layer="epsilon", product="uniform")(x, target.view(-1, 1))[1]
    assert (gate - uniform).abs().max() > 1e-3 * gate.abs().max()
    with pytest.raises(ValueError, match="product"):
        ik.LRP(model, product="half")


class HardGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(x.mean((2, 3), keepdim=True))


@pytest.mark.parametrize("gate", ["module", "method", "function"])
def test_gate_detection_covers_hardsigmoid_module_and_method(gate):
    op = {"module": HardGate(), "method": Fn(lambda x: x.mean((2, 3), keepdim=True).sigmoid() * x),
          "function": Fn(lambda x: x * F.hardsigmoid(x.mean((2, 3), keepdim=True)))}[gate]
    model = _net(op)
    x = torch.rand(2, 3, H, W, dtype=DT)
    target = torch.tensor([0, 1])
    maps = ik.LRP(model, first_layer="epsilon")(x, target.view(-1, 1))[1]
    torch.testing.assert_close(maps[:, 0], expected_heat(model, x, target, se_gate, 1e-2), rtol=1e-9, atol=1e-14)


# --- stochastic depth ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_stochastic_depth(train):
    tv = _torchvision()
    sd = tv.ops.StochasticDepth(0.5, "row")
    model = _net(sd).train(train)
    x = torch.rand(6, 3, H, W, dtype=DT)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(7)
    logits, maps = ik.LRP(model, first_layer="epsilon")(x, target.view(-1, 1))
    torch.manual_seed(7)
    torch.testing.assert_close(logits, model(x), rtol=1e-13, atol=1e-13)  # the same mask as the module's
    torch.manual_seed(7)
    with torch.no_grad():
        u = model.conv(x)
        y = sd(u)
    keep = (y.flatten(1).abs().sum(1) > 0).view(-1, 1, 1, 1).to(DT)
    if train:
        assert 0 < keep.sum() < 6  # some rows dropped, some kept: both branches of the rule are checked
    R_y = logit_rule(y.flatten(1), model.fc, target, 1e-2).view_as(y)
    # train: y = c x, R_x = x c R / stab(c x) = R y / stab(y); eval: the identity, R_x = R
    R_u = R_y * y / stabilize(y, 1e-2) if train else R_y
    expected = conv_epsilon(x, model.conv, R_u, 1e-2)
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-9, atol=1e-14)
    assert (maps[:, 0].flatten(1).abs().sum(1) == 0).tolist() == (keep.flatten() == 0).tolist()


# --- heads without a Linear ------------------------------------------------------------------------------------
class ConvHead(nn.Module):
    """SqueezeNet's head: logits from a 1x1 convolution and an average pooling."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU())
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.head(self.features(x)), 1), 1)


class LinearHead(nn.Module):
    """The same function with pooling first and a Linear head: ``mean(W a + b) = W mean(a) + b``."""

    def __init__(self, other: ConvHead):
        super().__init__()
        self.features = other.features
        self.fc = nn.Linear(6, 4)
        with torch.no_grad():
            self.fc.weight.copy_(other.head.weight.flatten(1))
            self.fc.bias.copy_(other.head.bias)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


@pytest.mark.parametrize("output", ["logit", "selective", "all"])
def test_head_without_linear_matches_linear_head(output):
    """Under epsilon the conv-then-pool head and the pool-then-linear head distribute relevance alike up to the
    stabiliser (``R_u / stab(u) -> R_z / (N stab(z))`` at each position): equal as eps -> 0, for every output
    rule, biases included."""
    torch.manual_seed(0)
    conv = ConvHead().to(DT).eval()
    lin = LinearHead(conv).to(DT).eval()
    x = torch.rand(3, 3, 7, 6, dtype=DT)
    torch.testing.assert_close(conv(x), lin(x), rtol=1e-12, atol=1e-12)
    targets = None if output == "all" else torch.tensor([[0, 3], [1, 2], [2, 0]])
    errs = []
    for eps in (1e-6, 1e-8, 1e-10):
        a = ik.LRP(conv, eps=eps, first_layer="epsilon")(x, targets, output=output)[1]
        b = ik.LRP(lin, eps=eps, first_layer="epsilon")(x, targets, output=output)[1]
        assert b.abs().max() > 0
        errs.append(float(((a - b).abs().max() / b.abs().max()).detach()))
    assert errs[-1] < 1e-6 and errs[1] < 0.05 * errs[0] and errs[2] < 0.05 * errs[1]  # linear in eps


@pytest.mark.parametrize("output", ["logit", "selective", "all"])
def test_head_without_linear_relevance_at_the_logits(output):
    """Conservation from the logits: the input relevance sums to the relevance the output rule puts at the logits
    (``z_c`` for logit, ``sum z`` for all, ``sum z (e_c sum q - q)`` for selective), zero biases, eps -> 0."""
    torch.manual_seed(1)
    model = ConvHead().to(DT).eval()
    _zero_biases(model)
    x = torch.rand(2, 3, 7, 6, dtype=DT)
    targets = None if output == "all" else torch.tensor([[0], [3]])
    logits, maps = ik.LRP(model, eps=1e-12, first_layer="epsilon")(x, targets, output=output)
    z = logits.detach()
    if output == "logit":
        at_logits = z.gather(1, targets)
    elif output == "all":
        at_logits = z.sum(1, keepdim=True)
    else:
        from isnet_kernels.ops.output import selective_relevance

        q = selective_relevance(z, targets, 1e-12)
        s = (-q).scatter_add(2, targets.unsqueeze(-1), q.sum(-1, keepdim=True))
        at_logits = (z.unsqueeze(1) * s).sum(-1)
        # the selective relevance at the logits: R_c = sum_c' R_cc' (own logit) and -R_cc' for each rival
        zc = z.gather(1, targets)
        u = -(zc - z).masked_fill(F.one_hot(targets[:, 0], 4).bool(), float("inf"))
        shift = u.amax(-1, keepdim=True).clamp(min=0)
        e = torch.exp(u - shift)
        w = e / (e.sum(-1, keepdim=True) + SELECTIVE_SOFTMAX_EPS * torch.exp(-shift))
        torch.testing.assert_close(at_logits[:, 0], ((zc - z) * w).sum(-1), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(maps.sum((2, 3, 4)), at_logits, rtol=1e-7, atol=1e-10)
    heat = ik.explain(model, x, None if output == "all" else targets[:, 0], eps=1e-12, first_layer="epsilon",
                      output=output)
    torch.testing.assert_close(heat, maps[:, 0].detach(), rtol=0, atol=0)


# --- attention -------------------------------------------------------------------------------------------------
def uniform_matmul(R: Tensor, A: Tensor, Bm: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    S = R / (2 * stabilize(y, eps))
    return (torch.einsum("...ij,...jk,...ik->...ij", A, Bm, S), torch.einsum("...ij,...jk,...ik->...jk", A, Bm, S))


def linear_eps(R: Tensor, a: Tensor, w: Tensor, z: Tensor, eps: float) -> Tensor:
    return a * ((R / stabilize(z, eps)) @ w)


def attention_reference(R_out: Tensor, xin: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor,
                        heads: int, eps: float, rule: str = "attnlrp") -> Tensor:
    """Self-attention (packed in-projection, B T E) under AttnLRP / CP-LRP, every product written out."""
    B, T, E = xin.shape
    d = E // heads
    q, k, v = (F.linear(xin, w, b) for w, b in zip(w_in.chunk(3), b_in.chunk(3)))
    qh, kh, vh = (t.view(B, T, heads, d).transpose(1, 2) for t in (q, k, v))
    scores = (qh / math.sqrt(d)) @ kh.mT
    p = scores.softmax(-1)
    o_h = p @ vh
    o = o_h.transpose(1, 2).reshape(B, T, E)
    out = F.linear(o, w_out, b_out)
    R_o = linear_eps(R_out, o, w_out, out, eps)
    R_oh = R_o.view(B, T, heads, d).transpose(1, 2)
    if rule == "cp":
        R_v = vh * (p.mT @ (R_oh / stabilize(o_h, eps)))
        R_q = R_k = torch.zeros_like(qh)
    else:
        R_p, R_v = uniform_matmul(R_oh, p, vh, o_h, eps)
        R_s = scores * (R_p - p * R_p.sum(-1, keepdim=True))
        R_q, R_kt = uniform_matmul(R_s, qh / math.sqrt(d), kh.mT, scores, eps)
        R_k = R_kt.mT
    total = torch.zeros_like(xin)
    for R_h, z, w in zip((R_q, R_k, R_v), (q, k, v), w_in.chunk(3)):
        total = total + linear_eps(R_h.transpose(1, 2).reshape(B, T, E), xin, w, z, eps)
    return total


class Tokens(nn.Module):
    """conv -> tokens (B, T, E) -> OP -> flatten -> Linear."""

    def __init__(self, op: nn.Module, E: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, E, 3, padding=1)
        self.op = op
        self.fc = nn.Linear(E * H * W, 3)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        return self.fc(self.op(t).flatten(1))


class MHA(nn.Module):
    def __init__(self, batch_first: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=batch_first)
        self.batch_first = batch_first

    def forward(self, t):
        if self.batch_first:
            return self.attn(t, t, t, need_weights=False)[0]
        s = t.transpose(0, 1)
        out, _ = self.attn(s, s, s)
        return out.transpose(0, 1)


class SDPA(nn.Module):
    """Attention written with ``F.scaled_dot_product_attention`` and one packed projection, q, k and v taken apart
    as timm writes it (``permute(2, 0, 3, 1, 4).unbind(0)``: the batch axis moves to 1), as older ViTs do
    (``qkv[0]``, ``qkv[1]``, ``qkv[2]``), or with the batch axis kept first (``unbind(1)``)."""

    def __init__(self, split: str = "timm"):
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.proj = nn.Linear(4, 4)
        self.split = split

    def forward(self, t):
        B, T, E = t.shape
        qkv = self.qkv(t).view(B, T, 3, 2, 2)
        if self.split == "timm":
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        elif self.split == "index":
            qkv = qkv.permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            q, k, v = qkv.permute(0, 2, 3, 1, 4).unbind(1)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, T, E))


def _token_reference(model: Tokens, x: Tensor, target: Tensor, eps: float, attn_rule: str) -> Tensor:
    with torch.no_grad():
        u = model.conv(x)
        t = u.flatten(2).transpose(1, 2)
        y = model.op(t)
        R_y = logit_rule(y.flatten(1), model.fc, target, eps).view_as(y)
        op = model.op
        if isinstance(op, MHA):
            m = op.attn
            R_t = attention_reference(R_y, t, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias,
                                      2, eps, attn_rule)
        else:
            R_t = attention_reference(R_y, t, op.qkv.weight.view(3, 2, 2, 4).reshape(12, 4), op.qkv.bias,
                                      op.proj.weight, op.proj.bias, 2, eps, attn_rule)
        R_u = R_t.transpose(1, 2).reshape(u.shape)
        return conv_epsilon(x, model.conv, R_u, eps)


@pytest.mark.parametrize("attention", ["attnlrp", "cp"])
@pytest.mark.parametrize("op", ["mha", "sdpa-timm", "sdpa-index", "sdpa-batch-first"])
def test_attention_against_explicit_form(op, attention):
    torch.manual_seed(2)
    module = {"mha": lambda: MHA(True), "sdpa-timm": lambda: SDPA("timm"), "sdpa-index": lambda: SDPA("index"),
              "sdpa-batch-first": lambda: SDPA("batch-first")}[op]()
    model = Tokens(module).to(DT).eval()
    x = torch.rand(2, 3, H, W, dtype=DT)
    target = torch.tensor([2, 1])
    logits, maps = ik.LRP(model, eps=1e-2, first_layer="epsilon", attention=attention)(x, target.view(-1, 1))
    torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-12)
    expected = _token_reference(model, x, target, 1e-2, attention)
    assert expected.abs().max() > 0
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-8, atol=1e-12 * float(expected.abs().max()))
    heat = ik.explain(model, x, target, first_layer="epsilon")
    if attention == "attnlrp":
        torch.testing.assert_close(heat, maps[:, 0].detach(), rtol=0, atol=0)


def test_sequence_first_attention_is_a_clear_error():
    """``batch_first=False`` reads (L, B, E): the batch axis is not first, which the relevance layout needs."""
    with pytest.raises(ik.UnsupportedLayerError, match="batch_first=True"):
        ik.LRP(Tokens(MHA(False)))


def test_cp_attention_conserves():
    """CP-LRP holds the attention weights constant: the layer is linear in the values, so relevance is conserved
    (zero biases, eps -> 0); AttnLRP's softmax rule is not conservative (the test shows it differs)."""
    torch.manual_seed(3)
    model = Tokens(MHA(True)).to(DT).eval()
    _zero_biases(model)
    x = torch.rand(2, 3, H, W, dtype=DT)
    target = torch.tensor([0, 1])
    logit = model(x).gather(1, target.view(-1, 1)).squeeze(1).detach()
    cp = ik.LRP(model, eps=1e-12, first_layer="epsilon", attention="cp")(x, target.view(-1, 1))[1]
    torch.testing.assert_close(cp.sum((1, 2, 3, 4)), logit, rtol=1e-7, atol=1e-10)
    attn = ik.LRP(model, eps=1e-12, first_layer="epsilon")(x, target.view(-1, 1))[1]
    assert (attn.sum((1, 2, 3, 4)) - logit).abs().max() > 1e-6 * logit.abs().max()


# --- gradients of a heatmap loss: every new layer in one model -------------------------------------------------
class Modern(nn.Module):
    """conv, GELU, SE gate, LayerNorm2d (permute), GroupNorm, layer scale, data movement, SiLU, MHA, head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.se = nn.Conv2d(4, 4, 1)
        self.ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.gamma = nn.Parameter(torch.full((4, 1, 1), 0.7))
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4 * 3, 3)

    def forward(self, x):
        x = F.gelu(self.conv(x))
        y = self.dw(x)
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        y = self.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + self.gamma * F.silu(self.gn(y))
        x = _channel_shuffle(x)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        t = self.drop(t[:, :3])
        return self.fc(t.flatten(1))


def _frozen_sigma():
    """Within the block, LayerNorm/GroupNorm statistics the rule uses are those of the first call (the rule holds
    sigma constant: finite differences must see the same function whose gradient the rule defines)."""
    from isnet_kernels.lrp.layers import norm as NL

    real_ln, real_gn = NL.ops.layer_norm_forward, NL.ops.group_norm_forward
    fixed: dict[tuple, Tensor] = {}
    calls = {"n": 0}

    def wrap(real):
        def run(x, *args, **kw):
            y, mean, invstd = real(x, *args, **kw)
            key = (real.__name__, tuple(x.shape), calls["n"] % 2)
            calls["n"] += 1
            if key not in fixed:
                fixed[key] = invstd.detach().clone()
            return y, mean, fixed[key]

        return run

    @contextlib.contextmanager
    def ctx():
        NL.ops.layer_norm_forward, NL.ops.group_norm_forward = wrap(real_ln), wrap(real_gn)
        try:
            yield
        finally:
            NL.ops.layer_norm_forward, NL.ops.group_norm_forward = real_ln, real_gn

    return ctx()


def _swap(model: nn.Module, params: Sequence[nn.Parameter], values: Sequence[Tensor]):
    swapped = []
    for m in model.modules():
        for name, q in list(m._parameters.items()):
            for p, v in zip(params, values):
                if q is p:
                    swapped.append((m, name, q))
                    m._parameters[name] = v

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        finally:
            for m, name, q in swapped:
                m._parameters[name] = q

    return ctx()


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_gradcheck_heatmap_loss_every_new_layer(train):
    torch.manual_seed(0)
    model = Modern().to(DT).train(train)
    x = torch.rand(2, 3, 3, 4, dtype=DT)
    targets = torch.tensor([[0, 2], [1, 0]])
    params = [model.conv.weight, model.dw.weight, model.se.weight, model.ln.weight, model.gn.weight, model.gamma,
              model.attn.in_proj_weight, model.attn.out_proj.weight, model.fc.weight]
    lrp = ik.LRP(model, first_layer="zb", bounds=(-0.5, 1.5), check_input=False)
    weight = torch.linspace(-1, 1, 2 * 2 * 3 * 3 * 4, dtype=DT).view(2, 2, 3, 3, 4)

    def loss(inp, *values):
        with _swap(model, params, values):
            torch.manual_seed(3)
            _, maps = lrp(inp, targets)
        return (maps * weight).sum()

    values = [p.detach().clone().requires_grad_() for p in params]
    inp = x.clone().requires_grad_()
    with _frozen_sigma():
        loss(inp, *values)  # fixes sigma at the checked point
        assert torch.autograd.gradcheck(loss, (inp, *values), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


# --- backends --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", backend_params())
def test_backends_match_reference(backend):
    torch.manual_seed(0)
    model = Modern().to(DT).eval()
    x = torch.rand(2, 3, 3, 4, dtype=DT)
    targets = torch.tensor([[0, 2], [1, 0]])
    params = [p for p in model.parameters()]
    out = {}
    for name in ("reference", backend):
        lrp = ik.LRP(model, first_layer="zb", bounds=(-0.5, 1.5), backend=name)
        for p in params:
            p.grad = None
        _, maps = lrp(x, targets)
        (maps * torch.linspace(-1, 1, maps.numel(), dtype=DT).view_as(maps)).sum().backward()
        out[name] = (maps.detach(), [None if p.grad is None else p.grad.clone() for p in params])
    ref_maps, ref_grads = out["reference"]
    maps, grads = out[backend]
    torch.testing.assert_close(maps, ref_maps, rtol=1e-10, atol=1e-10 * float(ref_maps.abs().max()))
    assert sum(g is not None for g in ref_grads) >= 9
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        assert (g is None) == (r is None), name
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10 * (1 + float(r.abs().max())), msg=name)
    assert dispatch.resolve(backend, x.device) == backend


def test_permutation_moving_the_batch_axis_is_an_error_unless_taken_apart():
    with pytest.raises(ik.UnsupportedLayerError, match="moves the batch axis"):
        ik.LRP(_net(Fn(lambda x: x.permute(1, 0, 2, 3).permute(1, 0, 2, 3))))
    with pytest.raises(ik.UnsupportedLayerError, match="moves the batch axis"):  # the batch axis to 2
        ik.LRP(_net(Fn(lambda x: x.unsqueeze(1).permute(1, 2, 0, 3, 4)[0])))
