"""The LRP engine on whole models: conservation, batch consistency, forms, gradients, errors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import isnet_kernels as ik
from isnet_kernels.lrp import engine, get_program
from isnet_kernels.lrp.layers import linear as S
from isnet_kernels.lrp.steps import Record

from .models import EveryLayer, FunctionalForm, MethodForm, ModuleForm, randomize_bn


def _zero_biases(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()


@pytest.mark.parametrize("first_layer", ["zb", "epsilon"])
@pytest.mark.parametrize("output_layer", ["every", "module"])
def test_conservation(first_layer, output_layer):
    """With eps -> 0 and zero biases, the input relevance sums to the explained logit."""
    model = (EveryLayer() if output_layer == "every" else ModuleForm()).double().eval()
    randomize_bn(model)
    _zero_biases(model)
    x = torch.rand(3, 3, 11, 11, dtype=torch.double)
    lrp = ik.LRP(model, eps=1e-12, first_layer=first_layer, bounds=(0.0, 1.0))
    targets = torch.tensor([[0, 1], [2, 3], [1, 1]]) % 3
    logits, maps = lrp(x, targets)
    explained = logits.gather(1, targets)
    torch.testing.assert_close(maps.sum((2, 3, 4)), explained, rtol=1e-8, atol=1e-10)


def test_batch_consistency():
    """A batch's heatmaps equal each sample's computed alone (eval mode)."""
    model = EveryLayer().double().eval()
    randomize_bn(model)
    x = torch.rand(4, 3, 10, 10, dtype=torch.double)
    targets = torch.tensor([[0, 3], [1, 2], [2, 1], [3, 0]])
    lrp = ik.LRP(model)
    _, batch = lrp(x, targets)
    for i in range(4):
        _, alone = lrp(x[i:i + 1], targets[i:i + 1])
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-12, atol=1e-14)


def test_all_targets_equal_single_targets():
    model = ModuleForm().double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.double)
    lrp = ik.LRP(model)
    logits, maps = lrp(x, "all")
    assert maps.shape == (2, 3, 3, 8, 8)
    for k in range(3):
        single = ik.explain(model, x, k)
        torch.testing.assert_close(maps[:, k], single, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ik.explain(model, x), maps[torch.arange(2), logits.argmax(1)], rtol=0, atol=0)


@pytest.mark.parametrize("form", [FunctionalForm, MethodForm])
def test_functional_forms_match_module_form(form):
    """F.relu (in place), +=, torch.add, torch.cat, torch.flatten, view(x.size(0), -1), x.mean: same maps."""
    torch.manual_seed(1)
    reference = ModuleForm().double().eval()
    other = form().double().eval()
    other.load_state_dict(reference.state_dict())
    x = torch.rand(2, 3, 8, 8, dtype=torch.double)
    torch.testing.assert_close(other(x), reference(x))
    for output in ("logit", "selective"):
        a = ik.explain(reference, x, output=output)
        b = ik.explain(other, x, output=output)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert a.abs().sum() > 0


def test_logits_equal_model_output_and_train_mode_updates_running_stats():
    model = EveryLayer().double().train()
    reference = EveryLayer().double().train()
    reference.load_state_dict(model.state_dict())
    x = torch.rand(3, 3, 9, 9, dtype=torch.double)
    torch.manual_seed(5)
    logits, _ = ik.LRP(model)(x, torch.zeros(3, 1, dtype=torch.long))
    torch.manual_seed(5)
    expected = reference(x)
    torch.testing.assert_close(logits, expected)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, msg=f"buffer {name} differs after a forward")


@contextlib.contextmanager
def swapped_parameters(model: nn.Module, params: list[nn.Parameter], values: Sequence[torch.Tensor]):
    """Within the block, ``values`` stand in place of ``params`` inside ``model``."""
    swapped = []
    for m in model.modules():
        for name, q in list(m._parameters.items()):
            for p, v in zip(params, values):
                if q is p:
                    swapped.append((m, name, q))
                    m._parameters[name] = v
    try:
        yield
    finally:
        for m, name, q in swapped:
            m._parameters[name] = q


def maps_as_function(lrp: ik.LRP, model: nn.Module, params: list[nn.Parameter], targets: torch.Tensor,
                     weight: torch.Tensor) -> Callable[..., torch.Tensor]:
    """``f(x, *param_values) = sum(maps * weight)`` with the same dropout masks at every call, for gradcheck."""

    def f(inp: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        with swapped_parameters(model, params, values):
            torch.manual_seed(3)
            _, maps = lrp(inp, targets)
        return (maps * weight).sum()

    return f


def _gradcheck_model(train: bool, monkeypatch) -> None:
    torch.manual_seed(0)
    model = EveryLayer().double().train(train)
    randomize_bn(model)
    x = torch.rand(3, 3, 9, 9, dtype=torch.double)
    targets = torch.tensor([[0, 2], [1, 3], [3, 0]])
    params = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d,
                                                                  nn.BatchNorm2d))]
    lrp = ik.LRP(model, first_layer="zb", bounds=(-0.5, 1.5), check_input=False)
    if train:
        # The rule detaches the batch statistics: hold them at their values at the checked point, so that finite
        # differences see the function whose gradient the rule defines. The forward's BatchNorm stays live.
        real = S.batch_norm_forward
        fixed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def capture(bn, inp):
            y, mean, invstd = real(bn, inp)
            fixed[id(bn)] = (mean.detach().clone(), invstd.detach().clone())
            return y, mean, invstd

        monkeypatch.setattr(S, "batch_norm_forward", capture)
        torch.manual_seed(3)
        lrp(x, targets)
        monkeypatch.setattr(S, "batch_norm_forward", lambda bn, inp: (real(bn, inp)[0], *fixed[id(bn)]))
    weight = torch.linspace(-1, 1, 3 * 2 * 3 * 9 * 9, dtype=torch.double).view(3, 2, 3, 9, 9)

    loss = maps_as_function(lrp, model, params, targets, weight)
    values = [p.detach().clone().requires_grad_() for p in params]
    inp = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (inp, *values), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_gradcheck_every_layer(train, monkeypatch):
    """Gradients of a loss on the heatmaps w.r.t. weights, BatchNorm gamma and the input (float64)."""
    _gradcheck_model(train, monkeypatch)


def test_heatmap_loss_trains_parameters():
    model = EveryLayer().train()
    lrp = ik.LRP(model)
    x = torch.rand(4, 3, 9, 9)
    _, maps = lrp(x, torch.zeros(4, 1, dtype=torch.long), output="selective")
    maps.abs().sum().backward()
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_explain_caches_compiled_program(monkeypatch):
    model = ModuleForm().eval()
    calls = []
    real = engine.compile_model
    monkeypatch.setattr(engine, "compile_model", lambda m: calls.append(m) or real(m))
    engine.clear_cache()
    x = torch.rand(2, 3, 8, 8)
    first = ik.explain(model, x)
    with torch.no_grad():
        model.fc.weight.mul_(2)  # weights are read live
    second = ik.explain(model, x)
    assert len(calls) == 1
    assert not torch.allclose(second, first)
    engine.clear_cache()
    fresh = ik.explain(model, x)  # a newly compiled program sees the same, changed weights
    assert len(calls) == 2
    torch.testing.assert_close(second, fresh, rtol=0, atol=0)


def test_saved_activations_are_the_forward_tensors():
    """The forward keeps references to the activations the rules read: no copies."""
    model = ModuleForm().eval()
    lrp = ik.LRP(model)
    program = get_program(model)
    x = torch.rand(2, 3, 8, 8)
    outputs: dict[str, torch.Tensor] = {}
    for step in program.steps:
        if isinstance(step, ik.lrp.Step):
            real = step.forward

            def wrapped(env, real=real, name=step.name):
                out, saved = real(env)
                outputs[name] = out
                return out, saved

            step.forward = wrapped
    try:
        _, state = lrp.forward(x)
        saved = state.saved
    finally:
        for step in program.steps:
            step.__dict__.pop("forward", None)
    for step in program.steps:
        if isinstance(step, S.LinearBlock):
            source = step.inputs[0]
            expected = x if source == program.input_name else outputs[source]
            assert saved[step.name][0] is expected


def test_linear_saved_state_is_named_and_walked_as_a_tuple():
    """A ``LinearBlock`` keeps a ``LinearSaved``: its fields by name (the layer input, no copy), rebuilt by the
    engine's ``upcast`` with its type kept and half-precision tensors cast, and weighed by ``_step_bytes`` as the
    tuple it is (the segments of ``memory="low"`` are cut by these weights)."""
    model = ModuleForm().train()
    randomize_bn(model)
    lrp = ik.LRP(model)
    program = get_program(model)
    x = torch.rand(2, 3, 8, 8)
    _, state = lrp.forward(x)
    blocks = [s for s in program.steps if isinstance(s, S.LinearBlock)]
    assert blocks
    for step in blocks:
        saved = state.saved[step.name]
        assert isinstance(saved, S.LinearSaved) and isinstance(saved, tuple)
        assert saved.a is saved[0] and saved.batch is saved[5]
        assert (saved.x0 is None) == (saved.y is not None)
        half = S.LinearSaved(t.half() if isinstance(t, torch.Tensor) else t for t in saved)
        up = engine.upcast(half, torch.float32)
        assert type(up) is S.LinearSaved and up.a.dtype == torch.float32 and up.batch == saved.batch
        tensors = [t for t in saved if isinstance(t, torch.Tensor)]
        assert engine._step_bytes(saved) == sum(t.numel() * t.element_size() for t in tensors) > 0


@pytest.mark.parametrize("model_cls", [EveryLayer, ModuleForm])
def test_every_step_keeps_a_named_record(model_cls) -> None:
    """Every step keeps its saved state as a named record (``Record``: a tuple with fields), or keeps nothing
    (ReLU, dropout), a ``torch.Size`` (``nn.Flatten``) or a list of sizes; ``upcast`` rebuilds a record with its type
    and fields, half-precision tensors cast."""
    model = model_cls().train()
    lrp = ik.LRP(model)
    _, state = lrp.forward(torch.rand(2, 3, 16, 16))
    records = 0
    for step in state.program.steps:
        if not isinstance(step, ik.lrp.Step):
            continue
        saved = state.saved[step.name]
        if saved is None or isinstance(saved, torch.Size):
            continue
        assert isinstance(saved, Record) and isinstance(saved, tuple), (step.name, type(saved))
        half = type(saved)(v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in saved)
        up = engine.upcast(half, torch.float32)
        assert type(up) is type(saved) and up._fields == saved._fields
        records += 1
    assert records > 5


# --- errors ------------------------------------------------------------------------------------------------------


class Unsupported(nn.Module):
    """Operations without a rule, one of them twice: cumulative sums, a sort and its `.values`."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.features(x).cumsum(-1).cumsum(-2)
        h = torch.sort(h, -1).values
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_every_unsupported_node_is_listed_at_once_grouped_by_kind():
    with pytest.raises(ik.UnsupportedLayerError) as err:
        ik.LRP(Unsupported())
    msg = str(err.value)
    assert "4 operations" in msg and "Tensor.cumsum x2" in msg and "sort x1" in msg and "getattr x1" in msg
    assert "cumsum_1" in msg and "Supported:" in msg and "register_rule" in msg


def test_unsupported_module_is_named_with_its_path():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softmax2d())
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    with pytest.raises(ik.UnsupportedLayerError) as err:
        ik.LRP(Wrapper())
    assert "Softmax2d x1" in str(err.value) and "'features.1'" in str(err.value)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 1
        return self.fc(x.flatten(1))


def test_untraceable_model_is_a_clear_error():
    with pytest.raises(ik.UnsupportedLayerError, match="could not trace"):
        ik.LRP(DataDependent())


def test_logits_from_a_convolution_and_pooling_start_at_the_logits():
    """A head without a Linear (SqueezeNet's convolution, ReLU and pooling): with eps -> 0 and no biases the logit
    rule conserves the logit, and the selective rule equals the Linear head's exact rule on an equivalent model."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 5, 1, bias=False), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).double().eval()
    x = torch.rand(2, 3, 7, 7, dtype=torch.float64)
    heat = ik.explain(conv, x, 2, eps=1e-12, first_layer="epsilon")
    torch.testing.assert_close(heat.sum((1, 2, 3)), conv(x)[:, 2], rtol=1e-9, atol=1e-12)
    assert ik.LRP(conv).program.logits_step is None


def test_bad_inputs_and_targets():
    model = ModuleForm().eval()
    lrp = ik.LRP(model)
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="4-D"):
        ik.explain(model, x[0])
    with pytest.raises(ValueError, match="NaN"):
        ik.explain(model, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        lrp(x.masked_fill(x > 0.5, float("inf")), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(IndexError, match="out of range"):
        ik.explain(model, x, 3)
    with pytest.raises(IndexError, match="out of range"):
        lrp(x, torch.tensor([[0], [-1]]))
    with pytest.raises(ValueError, match=r"shape \(B, M\)"):
        lrp(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        ik.explain(model, x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        lrp(x, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="output must be"):
        lrp(x, "all", output="softmax")
    with pytest.raises(ValueError, match="first_layer"):
        ik.LRP(model, first_layer="zplus")
    with pytest.raises(ValueError, match="channels"):
        ik.explain(model, x, bounds=(torch.zeros(2), torch.ones(2)))


class ReadsTrainingFlag(ModuleForm):
    """A forward that reads ``self.training`` itself: fx freezes it at trace time."""

    def forward(self, x):
        a = F.dropout(self.relu1(self.conv1(x)), 0.5, self.training)
        return self.fc(torch.cat([a, a], 1).mean((2, 3)))


def test_mode_switch_after_compiling_follows_the_model():
    model = ReadsTrainingFlag().eval()
    x = torch.rand(3, 3, 8, 8)
    lrp = ik.LRP(model)
    torch.testing.assert_close(lrp(x, "all")[0], model(x))
    model.train()
    torch.manual_seed(0)
    logits, _ = lrp(x, "all")
    torch.manual_seed(0)
    torch.testing.assert_close(logits, model(x))
    model.eval()
    torch.testing.assert_close(lrp(x, "all")[0], model(x))
