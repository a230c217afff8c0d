"""The rule registry: user rules for own module types, overriding a built-in rule, subclasses of torch.nn layers,
functional forms called with a module's parameters, dotted-name registration, the generated supported-layer table.

Every registration made here is undone by the ``registry_snapshot`` fixture (the registry's tables restored and
the compiled programs forgotten), so no rule leaks into other tests.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import isnet_kernels as ik
from isnet_kernels.errors import UnsupportedLayerError
from isnet_kernels.lrp import REGISTRY, RuleRegistry, clear_cache, get_program, register_rule, supported
from isnet_kernels.lrp import steps as MV
from isnet_kernels.lrp.layers import linear as S
from isnet_kernels.ops import stabilize

DT = torch.float64


@pytest.fixture
def registry_snapshot():
    """Restore the package registry's tables after the test and forget every compiled program."""
    saved = (dict(REGISTRY.modules), dict(REGISTRY.functions), dict(REGISTRY.methods), dict(REGISTRY.by_name),
             list(REGISTRY.entries))
    clear_cache()
    yield REGISTRY
    REGISTRY.modules, REGISTRY.functions, REGISTRY.methods, REGISTRY.by_name, REGISTRY.entries = (
        saved[0], saved[1], saved[2], saved[3], saved[4])
    clear_cache()


def _heat(model: nn.Module, x: torch.Tensor, target: int = 1, eps: float = 1e-2, **kw) -> torch.Tensor:
    with torch.no_grad():
        _, maps = ik.LRP(model, eps=eps, first_layer="epsilon", check_input=False, **kw)(
            x, torch.full((x.shape[0], 1), target, dtype=torch.long))
    return maps[:, 0]


def _conv_epsilon(x: torch.Tensor, conv: nn.Conv2d, R: torch.Tensor, eps: float) -> torch.Tensor:
    """Epsilon through a zero-padded conv in its explicit adjoint form: ``x * W^T (R / stab(W x + b))``."""
    z = conv(x)
    s = R / stabilize(z, eps)
    adj = torch.nn.grad.conv2d_input(x.shape, conv.weight, s, conv.stride, conv.padding, conv.dilation, conv.groups)
    return x * adj


def _linear_logit(a: torch.Tensor, lin: nn.Linear, target: int, eps: float) -> torch.Tensor:
    """The logit rule at a Linear head's input: ``a * W_c z_c / stab(z_c)``."""
    z = lin(a)
    zc = z[:, target:target + 1]
    return a * lin.weight[target] * (zc / stabilize(zc, eps))


# --- a user's own module ---------------------------------------------------------------------------------------
class Gain(nn.Module):
    """``y = c x`` guarded by a check on the data: torch.fx cannot trace through it, so it needs its own rule."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x):
        if bool(torch.isnan(x).any()):
            raise ValueError("NaN")
        return self.c * x


class GainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gain = Gain(-2.5)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(self.gain(self.conv(x)).flatten(1))


def _gain_relevance(R, inputs, out, cfg):
    """The user's rule: diagonal epsilon ``R_x = x c R / stab(c x)``."""
    return [R * (out / stabilize(out, cfg.eps)).unsqueeze(1)]


def test_user_rule_for_own_module_is_used(registry_snapshot):
    torch.manual_seed(0)
    model = GainNet().to(DT)
    x = torch.rand(2, 3, 5, 5, dtype=DT)
    with pytest.raises(UnsupportedLayerError, match="could not trace"):
        ik.LRP(model)
    assert "Gain: user's diagonal epsilon" not in supported()

    @register_rule(Gain, description="Gain: user's diagonal epsilon")
    def _gain(ctx):
        assert ctx.module is model.gain
        return MV.CallStep(ctx.name, [ctx.single()], ctx.call(), _gain_relevance)

    assert "Gain: user's diagonal epsilon" in supported()
    eps = 1e-2
    heat = _heat(model, x, target=2, eps=eps)
    u = model.conv(x)
    y = model.gain.c * u
    R_y = _linear_logit(y.flatten(1), model.fc, 2, eps).view_as(y)
    R_u = R_y * y / stabilize(y, eps)
    expected = _conv_epsilon(x, model.conv, R_u, eps)
    torch.testing.assert_close(heat, expected, rtol=1e-10, atol=1e-12)
    step = next(s for s in get_program(model).steps if getattr(s, "name", "") == "gain")
    assert isinstance(step, MV.CallStep) and step.relevance_fn is _gain_relevance


# --- overriding a built-in rule --------------------------------------------------------------------------------
class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def test_override_builtin_rule_and_restore(registry_snapshot):
    torch.manual_seed(1)
    model = GeluNet().to(DT)
    x = torch.rand(2, 3, 4, 4, dtype=DT)
    default = _heat(model, x)
    builtin = REGISTRY.modules[nn.GELU]

    @register_rule(nn.GELU, description="GELU: a quarter of the relevance")
    def _quarter(ctx):
        return MV.CallStep(ctx.name, [ctx.single()], ctx.call(), lambda R, inputs, out, cfg: [R / 4])

    clear_cache()  # the model was compiled with the built-in rule
    # everything below the GELU is linear in the relevance: the map scales by exactly 1/4
    torch.testing.assert_close(_heat(model, x), default / 4, rtol=1e-12, atol=1e-15)
    assert "GELU: a quarter of the relevance" in supported()

    REGISTRY.modules[nn.GELU] = builtin  # restore it
    clear_cache()
    torch.testing.assert_close(_heat(model, x), default, rtol=0, atol=0)
    assert "GELU: a quarter of the relevance" not in supported()


def test_fresh_registry_is_independent_of_the_package_one():
    reg = RuleRegistry()

    @register_rule(nn.GELU, "gelu", group="mine", description="mine", registry=reg)
    def _mine(ctx):  # pragma: no cover - never built
        raise AssertionError

    assert reg.table() == [("mine", "mine")] and reg.summary() == "mine"
    assert REGISTRY.modules[nn.GELU].builder is not _mine and REGISTRY.methods.get("gelu") is None
    with pytest.raises(TypeError, match="not an nn.Module subclass"):
        reg.register(int, group="g", description="d")
    with pytest.raises(ValueError, match="at least one"):
        reg.register(group="g", description="d")


# --- subclasses of torch.nn layers -----------------------------------------------------------------------------
class TaggedConv(nn.Conv2d):
    """A Conv2d subclass that keeps ``forward`` (it only adds an attribute)."""

    tag = "mine"


class TaggedLinear(nn.Linear):
    tag = "mine"


def _conv_net(conv_cls, lin_cls=nn.Linear) -> nn.Module:
    return nn.Sequential(conv_cls(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), lin_cls(4 * 5 * 5, 3))


def test_the_compiler_reads_what_a_step_is_from_its_kind():
    """ReLU computes; dropout and ``nn.Flatten`` pass (the logits search looks through them); a view moves data (the
    search stops there, the Z^B rule does not); Conv2d/Linear are ``Kind.LINEAR``; a user's step of its own class
    that does not say is ``Kind.COMPUTE``."""
    from isnet_kernels.lrp import Kind
    from isnet_kernels.lrp.graph import step_kind

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.drop = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.0)
            self.flat, self.fc = nn.Flatten(), nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(self.drop(self.flat(self.relu(self.conv(x.view(x.shape[0], 3, 6, 6))))))

    program = get_program(Head().eval())
    kinds = {s.name: step_kind(s) for s in program.steps if isinstance(s, MV.Step)}
    assert kinds == {"view": Kind.MOVE, "conv": Kind.LINEAR, "relu": Kind.COMPUTE, "flat": Kind.PASS,
                     "drop": Kind.PASS, "fc": Kind.LINEAR}
    assert program.logits_step.name == "fc" and next(s for s in program.steps if s.name == "conv").first
    assert step_kind(object()) is Kind.COMPUTE


def test_subclass_keeping_forward_takes_the_base_rule():
    torch.manual_seed(2)
    plain = _conv_net(nn.Conv2d).to(DT)
    sub = _conv_net(TaggedConv, TaggedLinear).to(DT)
    sub.load_state_dict(plain.state_dict())
    program = get_program(sub)
    steps = [s for s in program.steps if isinstance(s, S.LinearBlock)]
    assert len(steps) == 2 and steps[0].is_conv and steps[0].first and program.logits_step is steps[1]
    x = torch.rand(3, 3, 5, 5, dtype=DT)
    for kw in ({"first_layer": "zb"}, {"first_layer": "epsilon"}):
        a = ik.LRP(plain, **kw)(x, torch.tensor([[0], [1], [2]]))
        b = ik.LRP(sub, **kw)(x, torch.tensor([[0], [1], [2]]))
        torch.testing.assert_close(b[0], a[0], rtol=0, atol=0)
        torch.testing.assert_close(b[1], a[1], rtol=0, atol=0)


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's ``BatchNormAct2d`` pattern: a BatchNorm2d subclass whose own forward calls ``F.batch_norm`` with its
    parameters and buffers, then an activation."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = True if self.training else (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(x, self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, bn_training, factor, self.eps)
        return self.act(x)


def _bn_nets():
    torch.manual_seed(3)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3)).to(DT)
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    bn = BatchNormAct2d(4).to(DT)
    bn.load_state_dict(plain[1].state_dict())
    timm = nn.Sequential(copy.deepcopy(plain[0]), bn, nn.Flatten(), copy.deepcopy(plain[4]))
    return plain, timm


def test_batchnorm_subclass_with_own_forward_is_traced_and_recognised():
    """The subclass is traced through; its ``F.batch_norm`` is a standalone BatchNorm (diagonal epsilon), while the
    plain model folds its BatchNorm into the conv. The two rules are not identical: through the standalone layers
    ``R_u = u (gamma / sigma) R / stab(z)`` and then ``R_x = x W^T (R_u / stab(u))``, folded ``R_x = x W'^T (R /
    stab(z))``; they agree up to the stabiliser, ``u / stab(u) = 1 - O(eps / |u|)``: the difference vanishes
    linearly in eps, and the logits are the same."""
    plain, timm = _bn_nets()
    x = torch.rand(3, 3, 5, 5, dtype=DT)
    program = get_program(timm.eval())
    assert any(isinstance(s, MV.Step) and type(s).__name__ == "FunctionalBatchNormStep" for s in program.steps)
    plain.eval()
    errs = []
    for eps in (1e-3, 1e-5, 1e-7):
        a, b = _heat(plain, x, eps=eps), _heat(timm, x, eps=eps)
        errs.append(float((a - b).abs().max() / a.abs().max().detach()))
    assert errs[0] > 1e-6  # not identical at a finite eps (the comparison is not vacuous)
    assert 0.002 < errs[1] / errs[0] < 0.05 and 0.002 < errs[2] / errs[1] < 0.05  # linear in eps
    a, b = _heat(plain, x, eps=1e-15), _heat(timm, x, eps=1e-15)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12 * float(a.abs().max()))  # equal as eps -> 0
    torch.testing.assert_close(timm(x), plain(x), rtol=1e-12, atol=1e-12)


def test_batchnorm_subclass_train_mode_updates_running_stats_as_the_module():
    plain, timm = _bn_nets()
    plain.train(), timm.train()
    x = torch.rand(4, 3, 5, 5, dtype=DT)
    logits_p, maps_p = ik.LRP(plain, eps=1e-15, first_layer="epsilon")(x, torch.tensor([[0]] * 4))
    logits_t, maps_t = ik.LRP(timm, eps=1e-15, first_layer="epsilon")(x, torch.tensor([[0]] * 4))
    torch.testing.assert_close(logits_t, logits_p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(timm[1].running_mean, plain[1].running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(timm[1].running_var, plain[1].running_var, rtol=1e-12, atol=1e-14)
    assert int(timm[1].num_batches_tracked) == int(plain[1].num_batches_tracked) == 1
    torch.testing.assert_close(maps_t, maps_p, rtol=1e-10, atol=1e-12 * float(maps_p.detach().abs().max()))


class PadConv2d(nn.Conv2d):
    """A Conv2d with its own padding logic (as libraries write "same" padding): ``F.pad`` then ``F.conv2d`` with
    the module's parameters and zero padding."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        self.pad = pad

    def forward(self, x):
        x = F.pad(x, self.pad)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


@pytest.mark.parametrize("first_layer", ["epsilon", "zb"])
def test_conv_subclass_with_own_padding_equals_padded_conv(first_layer):
    torch.manual_seed(4)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=2, dilation=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 5, 3)).to(DT)
    mine = nn.Sequential(PadConv2d(3, 4, 3, pad=(1, 1, 1, 1)), nn.ReLU(),
                         PadConv2d(4, 4, 3, pad=(2, 2, 2, 2), dilation=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 5, 3)).to(DT)
    mine.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 6, 5, dtype=DT)
    targets = torch.tensor([[0, 2], [1, 0]])
    a = ik.LRP(ref, first_layer=first_layer, bounds=(-0.5, 1.5))(x, targets)
    b = ik.LRP(mine, first_layer=first_layer, bounds=(-0.5, 1.5))(x, targets)
    torch.testing.assert_close(b[0], a[0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(b[1], a[1], rtol=1e-10, atol=1e-12)


def test_conv_subclass_with_asymmetric_padding_keeps_the_pad_step():
    """TensorFlow-style "same" padding of a stride-2 conv pads one side only: no ``nn.Conv2d`` equals it, the pad
    stays a step of its own (its border carries no relevance under epsilon: the border activations are zero)."""
    torch.manual_seed(6)
    model = nn.Sequential(PadConv2d(3, 4, 3, pad=(0, 1, 0, 1), stride=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    model = model.to(DT)
    x = torch.rand(2, 3, 6, 6, dtype=DT)
    assert any(type(s).__name__ == "CallStep" and s.name == "pad" for s in get_program(model).steps)
    eps = 1e-2
    heat = _heat(model, x, target=1, eps=eps)
    conv = model[0]
    xp = F.pad(x, (0, 1, 0, 1))
    z = F.conv2d(xp, conv.weight, conv.bias, 2)
    R_z = _linear_logit(z.flatten(1), model[2], 1, eps).view_as(z)
    adj = torch.nn.grad.conv2d_input(xp.shape, conv.weight, R_z / stabilize(z, eps), 2)
    expected = (xp * adj)[:, :, :6, :6]
    torch.testing.assert_close(heat, expected, rtol=1e-10, atol=1e-14)


# --- dotted-name registration ----------------------------------------------------------------------------------
def _negate_twice(x):
    return (-1.0) * ((-1.0) * x)


torch.fx.wrap("_negate_twice")


class NegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(_negate_twice(self.conv(x)).flatten(1))


class Opaque(nn.Module):
    """A module of a library the package does not import, registered by its dotted name."""

    def forward(self, x):
        if bool(torch.isnan(x).any()):
            raise ValueError("NaN")
        return x * 3.0


def test_dotted_name_registration(registry_snapshot):
    torch.manual_seed(5)
    name = f"{Opaque.__module__}.{Opaque.__qualname__}"
    fn_name = f"{_negate_twice.__module__}.{_negate_twice.__qualname__}"
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Opaque(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).to(DT)
    with pytest.raises(UnsupportedLayerError):
        ik.LRP(model)
    register_rule(name, description="Opaque")(lambda ctx: MV.CallStep(ctx.name, [ctx.single()], ctx.call(),
                                                                       _gain_relevance))
    assert name in REGISTRY.by_name and REGISTRY.module_entry(model[1]) is REGISTRY.by_name[name]
    x = torch.rand(2, 3, 5, 5, dtype=DT)
    eps = 1e-2
    heat = _heat(model, x, target=0, eps=eps)
    u = model[0](x)
    y = 3.0 * u
    R_y = _linear_logit(y.flatten(1), model[3], 0, eps).view_as(y)
    expected = _conv_epsilon(x, model[0], R_y * y / stabilize(y, eps), eps)
    torch.testing.assert_close(heat, expected, rtol=1e-10, atol=1e-12)

    # a function by dotted name (torch.fx.wrap makes it one call node of the traced graph)
    net = NegNet().to(DT)
    with pytest.raises(UnsupportedLayerError, match="_negate_twice"):
        ik.LRP(net)
    register_rule(fn_name, description="negate twice")(lambda ctx: MV.CallStep(ctx.name, [ctx.single()],
                                                                               ctx.call(), MV.identity_relevance))
    plain = nn.Sequential(net.conv, nn.Flatten(), net.fc)
    torch.testing.assert_close(_heat(net, x, target=1), _heat(plain, x, target=1), rtol=0, atol=0)


# --- the generated table ---------------------------------------------------------------------------------------
def test_supported_table_is_generated_from_the_registry():
    from isnet_kernels.lrp import SUPPORTED

    groups = {group for group, _ in REGISTRY.table()}
    for group in groups:
        assert f"- {group}:" in SUPPORTED, group
    for group, description in REGISTRY.table():
        assert f"- {group}: {description}" in SUPPORTED
    assert SUPPORTED == supported()
    for must in ("element-wise activations", "products", "data movement", "layer and group normalisation",
                 "attention", "stochastic depth", "batch normalisation"):
        assert must in groups
    # every key of the registry belongs to an entry whose group is in the table
    live = (*REGISTRY.modules.values(), *REGISTRY.functions.values(), *REGISTRY.methods.values(),
            *REGISTRY.by_name.values())
    assert {e.group for e in live} <= groups
    assert REGISTRY.summary() == ", ".join(dict.fromkeys(g for g, _ in REGISTRY.table()))


def test_unsupported_error_lists_every_node_and_how_to_register():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = torch.cumsum(self.conv(x), 1)
            x = torch.cummax(x, 2).values
            x = torch.erf(x).mean((2, 3))
            return self.fc(x)

    with pytest.raises(UnsupportedLayerError) as info:
        ik.LRP(Two())
    msg = str(info.value)
    assert "cumsum" in msg and "erf" in msg and "register_rule" in msg


def test_copy_of_registered_module_type_keeps_the_rule(registry_snapshot):
    """Registration is by type: a deep copy of a model with a user module still finds the rule."""
    register_rule(Gain, description="Gain copy")(lambda ctx: MV.CallStep(ctx.name, [ctx.single()], ctx.call(),
                                                                         _gain_relevance))
    model = GainNet().to(DT)
    other = copy.deepcopy(model)
    x = torch.rand(1, 3, 5, 5, dtype=DT)
    torch.testing.assert_close(_heat(other, x), _heat(model, x), rtol=0, atol=0)
