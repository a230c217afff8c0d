"""The ISNet wrapper: what each variant explains, deep supervision, and gradients of the ISNet loss.

Every heatmap is checked against an independent computation: the LRP engine called directly per class, autograd
of the selective quantity on a linear model, the linearity of the epsilon rule, and, for deep supervision, the
heatmap of the model's head explained on the activation where the supervised layer ends.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import isnet_kernels as ik
from isnet_kernels import ISNet as _ISNet
from isnet_kernels import ISNetLoss
from isnet_kernels.isnet import default_supervision
from isnet_kernels.isnet.wrapper import STOCHASTIC_ARGMAX_P
from isnet_kernels.models import SmallCNN

from ..lrp.models import randomize_bn
from ..tv_models import tiny_densenet, tiny_resnet, tiny_vgg

# The maths here is checked against references written for the authors' settings (Z^B first layer, lowest logit,
# detached statistics, no deep supervision unless asked): every ISNet below takes the "paper" preset. The default
# preset is tested in test_presets.py.
ISNet = functools.partial(_ISNet, preset="paper")

DT = torch.float64


def rel_err(ours: Tensor, ref: Tensor) -> float:
    """``max |ours - ref| / max |ref|``, with a non-vacuous reference."""
    ours, ref = ours.detach(), ref.detach()
    scale = ref.abs().max()
    assert scale > 0, "the reference is all zero: the comparison would be vacuous"
    return float((ours - ref).abs().max() / scale)


class Tiny(nn.Module):
    """conv 3x3 + BN + ReLU + max-pool + conv 3x3 + ReLU + global average pool + linear."""

    def __init__(self, in_ch: int = 1, classes: int = 3, width: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 3, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _randomize(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics, scales and shifts (so that folding matters) and non-zero biases."""
    randomize_bn(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
    return model


def _tiny(in_ch: int = 1, classes: int = 3, width: int = 2) -> nn.Module:
    return _randomize(Tiny(in_ch, classes, width).to(DT)).eval()


# --------------------------------------------------------------------------------------------------------------
# 1. a forward without heatmaps is the classifier's forward


def test_eval_forward_is_plain_and_runs_no_relevance(monkeypatch):
    model = _tiny()
    isnet = ISNet(model).eval()
    x = torch.rand(3, 1, 6, 6, dtype=DT)

    def boom(*args, **kwargs):
        raise AssertionError("a forward without heatmaps must not run the LRP engine")

    monkeypatch.setattr(isnet.lrp, "forward", boom)
    monkeypatch.setattr(isnet.lrp, "relevance_at", boom)
    out = isnet(x)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(out.logits, expected)
    assert out.heatmaps is None and out.targets is None and out.intermediate == {}
    # also in train mode when heatmaps=False is asked for
    isnet.train()
    twin = copy.deepcopy(model).train()
    out = isnet(x, heatmaps=False)
    assert out.heatmaps is None
    assert torch.equal(out.logits, twin(x))
    monkeypatch.undo()

    with pytest.raises(AssertionError, match="must not run"):  # the patch was effective
        boom()
    # heatmaps=True in eval mode: heatmaps, and the classifier's logits, with running statistics untouched
    isnet.eval()
    stats = [b.clone() for b in model.buffers()]
    out = isnet(x, heatmaps=True)
    assert out.heatmaps is not None and out.heatmaps.shape == (3, 1, 1, 6, 6)
    assert out.targets.shape == (3, 1)
    assert torch.allclose(out.logits, model(x), rtol=1e-12, atol=1e-14)
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))


def test_train_forward_updates_batchnorm_like_one_plain_forward():
    """A training call with heatmaps updates the running statistics exactly as one ``model(x)`` does."""
    model = _tiny().train()
    twin = copy.deepcopy(model)
    isnet = ISNet(model, "original").train()
    x = torch.rand(4, 1, 6, 6, dtype=DT)
    out = isnet(x)
    expected = twin(x)
    assert out.heatmaps.shape == (4, 3, 1, 6, 6)
    torch.testing.assert_close(out.logits, expected, rtol=1e-12, atol=1e-14)
    for (name, a), b in zip(model.named_buffers(), twin.buffers()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-12, atol=1e-14), name


# --------------------------------------------------------------------------------------------------------------
# 2. original variant: one logit-rule map per class


@pytest.mark.parametrize("first_layer", ["zb", "epsilon"])
def test_original_equals_per_class_explanations(first_layer):
    model = _tiny(in_ch=2, classes=4)
    x = torch.rand(3, 2, 6, 6, dtype=DT)
    isnet = ISNet(model, "original", first_layer=first_layer).eval()
    out = isnet(x, heatmaps=True)
    assert out.heatmaps.shape == (3, 4, 2, 6, 6)
    assert out.heatmaps.dtype == DT
    assert torch.equal(out.targets, torch.arange(4).expand(3, 4))
    lrp = ik.LRP(model, first_layer=first_layer)
    for k in range(4):
        ref = ik.explain(model, x, target=k, first_layer=first_layer)
        assert rel_err(out.heatmaps[:, k], ref) < 1e-12, k
        _, alone = lrp(x, torch.full((3, 1), k))
        assert rel_err(out.heatmaps[:, k], alone[:, 0]) < 1e-12, k
    # the maps differ between classes (the comparison above could not pass by accident)
    assert rel_err(out.heatmaps[:, 0], out.heatmaps[:, 1]) > 1e-3


# --------------------------------------------------------------------------------------------------------------
# 3. selective variant: which class, and the selective output rule


@pytest.mark.parametrize("select", ["lowest", "highest", "label"])
def test_selective_targets_and_maps(select):
    model = _tiny(classes=4)
    x = torch.rand(5, 1, 6, 6, dtype=DT)
    labels = torch.tensor([3, 0, 1, 2, 1])
    isnet = ISNet(model, "selective", select=select).eval()
    out = isnet(x, labels, heatmaps=True)
    with torch.no_grad():
        logits = model(x)
    expected = {"lowest": logits.argmin(1), "highest": logits.argmax(1), "label": labels}[select]
    assert logits.argmin(1).ne(logits.argmax(1)).all()
    assert torch.equal(out.targets, expected.view(5, 1))
    assert out.heatmaps.shape == (5, 1, 1, 6, 6)
    _, ref = ik.LRP(model)(x, expected.view(5, 1), output="selective")
    assert rel_err(out.heatmaps, ref) < 1e-12
    _, logit_rule = ik.LRP(model)(x, expected.view(5, 1), output="logit")
    assert rel_err(out.heatmaps, logit_rule) > 1e-3  # the selective rule is not the logit rule


def test_select_label_needs_labels():
    isnet = ISNet(_tiny(), "selective", select="label").eval()
    x = torch.rand(2, 1, 6, 6, dtype=DT)
    with pytest.raises(ValueError, match="label"):
        isnet(x, heatmaps=True)
    with pytest.raises(ValueError, match="labels must have shape"):
        isnet(x, torch.tensor([0, 1, 2]), heatmaps=True)
    with pytest.raises(ValueError, match="select"):
        ISNet(_tiny(), "selective", select="random")
    with pytest.raises(ValueError, match="variant"):
        ISNet(_tiny(), "fastest")


# --------------------------------------------------------------------------------------------------------------
# 4. the selective rule is x * d(eta_c)/dx on a linear model (eps -> 0)


@pytest.mark.parametrize("select", ["lowest", "highest", "label"])
def test_selective_rule_is_gradient_times_input_on_linear_model(select):
    F_in, K, B = 12, 5, 4
    model = nn.Sequential(nn.Flatten(), nn.Linear(F_in, K)).to(DT).eval()
    with torch.no_grad():
        model[1].weight.normal_(0, 0.5)
        model[1].bias.uniform_(-0.3, 0.3)
    x = torch.randn(B, 1, 3, 4, dtype=DT)
    labels = torch.tensor([1, 4, 0, 2])
    isnet = ISNet(model, "selective", first_layer="epsilon", eps=1e-9, select=select).eval()
    out = isnet(x, labels, heatmaps=True)
    c = out.targets[:, 0]

    xg = x.clone().requires_grad_(True)
    z = model(xg)
    others = z.masked_fill(nn.functional.one_hot(c, K).bool(), float("-inf"))
    eta = z.gather(1, c.view(-1, 1))[:, 0] - torch.logsumexp(others, 1)  # log p_c - log(1 - p_c)
    p = z.softmax(1).gather(1, c.view(-1, 1))[:, 0]
    torch.testing.assert_close(eta, p.log() - (1 - p).log(), rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(eta.sum(), xg)
    expected = (x * grad).unsqueeze(1)

    err = rel_err(out.heatmaps, expected)
    assert err < 1e-3, err  # the selective rule's 1e-5 stabiliser makes it ~1e-5
    _, logit_rule = ik.LRP(model, first_layer="epsilon", eps=1e-9)(x, out.targets, output="logit")
    assert rel_err(logit_rule, expected) > 100 * err  # the other rule is far off


# --------------------------------------------------------------------------------------------------------------
# 5. stochastic variant


def test_stochastic_frequencies():
    N, K = 20000, 5
    isnet = ISNet(_tiny(classes=K), "stochastic", generator=torch.Generator().manual_seed(1))
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.1], dtype=DT).expand(N, K)
    chosen = isnet.choose_classes(logits)
    assert chosen.shape == (N, 1) and chosen.dtype == torch.long
    freq = torch.bincount(chosen[:, 0], minlength=K).double() / N
    p_top, p_other = STOCHASTIC_ARGMAX_P, (1 - STOCHASTIC_ARGMAX_P) / (K - 1)
    assert p_top == 5 / 11
    for k in range(K):
        p = p_top if k == 2 else p_other
        sigma = math.sqrt(p * (1 - p) / N)
        assert abs(float(freq[k]) - p) < 4 * sigma, (k, float(freq[k]), p)

    # per-row argmax (random logits): the argmax share and every offset from it
    logits = torch.randn(N, K, dtype=DT)
    top = logits.argmax(1)
    chosen = isnet.choose_classes(logits)[:, 0]
    offset = torch.bincount((chosen - top) % K, minlength=K).double() / N
    for k in range(K):
        p = p_top if k == 0 else p_other
        assert abs(float(offset[k]) - p) < 4 * math.sqrt(p * (1 - p) / N), (k, float(offset[k]))


def test_stochastic_generator_reproducible_and_logit_rule():
    model = _tiny(classes=4)
    x = torch.rand(64, 1, 6, 6, dtype=DT)

    def run(seed: int):
        isnet = ISNet(model, "stochastic", generator=torch.Generator().manual_seed(seed)).eval()
        return isnet(x, heatmaps=True)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.targets, b.targets) and torch.equal(a.heatmaps, b.heatmaps)
    assert not torch.equal(a.targets, c.targets)
    assert a.targets.shape == (64, 1)
    _, ref = ik.LRP(model)(x, a.targets, output="logit")
    assert rel_err(a.heatmaps, ref) < 1e-12
    # the same generator advances: a second call draws anew
    isnet = ISNet(model, "stochastic", generator=torch.Generator().manual_seed(7)).eval()
    first, second = isnet(x, heatmaps=True).targets, isnet(x, heatmaps=True).targets
    assert torch.equal(first, a.targets) and not torch.equal(first, second)
    with pytest.raises(TypeError, match="Generator"):
        ISNet(model, "stochastic", generator=7)


# --------------------------------------------------------------------------------------------------------------
# 6. dual variant


@pytest.mark.parametrize("first_layer", ["zb", "epsilon"])
def test_dual_maps(first_layer):
    model = _tiny(in_ch=2, classes=4)
    x = torch.rand(3, 2, 6, 6, dtype=DT)
    out = ISNet(model, "dual", first_layer=first_layer).eval()(x, heatmaps=True)
    assert out.heatmaps.shape == (3, 2, 2, 6, 6)
    assert out.targets is None
    zplus = ik.explain(model, x, output="all", rule="zplus", first_layer=first_layer)
    eps = ik.explain(model, x, output="all", rule="epsilon", first_layer=first_layer)
    assert rel_err(out.heatmaps[:, 0], zplus) < 1e-12
    assert rel_err(out.heatmaps[:, 1], eps) < 1e-12
    assert rel_err(zplus, eps) > 1e-3  # two different rules
    # every rule is linear in the incoming relevance: the epsilon "all" map is the sum of the per-class maps
    _, per_class = ik.LRP(model, first_layer=first_layer)(x, "all")
    assert rel_err(eps, per_class.sum(1)) < 1e-10


# --------------------------------------------------------------------------------------------------------------
# 7. deep supervision


def test_default_supervision_picks():
    res = tiny_resnet(width=2, num_classes=3, small_input=True).to(DT).eval()
    assert ISNet(res, deep_supervision=True).supervised == ["layer1", "layer2", "layer3", "layer4"]
    dense = tiny_densenet(growth_rate=2, block_config=(1, 1, 1), num_init_features=4, bn_size=2, num_classes=3,
                          small_input=True).to(DT).eval()
    assert ISNet(dense, deep_supervision=True).supervised == ["features.transition1", "features.transition2",
                                                              "features"]
    small = SmallCNN(3, width=2).to(DT).eval()
    assert ISNet(small, deep_supervision=True).supervised == ["features.3", "features.7", "features.11"]
    vgg = tiny_vgg("vgg11", width=2, hidden=4, pool_size=1, num_classes=3).to(DT).eval()
    pools = [n for n, m in vgg.named_modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and ISNet(vgg, deep_supervision=True).supervised == pools
    assert ISNet(small, deep_supervision=False).supervised == []
    assert ISNet(small, deep_supervision=["features.7"]).supervised == ["features.7"]

    with pytest.raises(ValueError, match="features.99"):
        ISNet(small, deep_supervision=["features.99"])
    flat = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="deep supervision"):
        default_supervision(flat)

    # shapes of the captured relevance, DenseNet (transitions and the final features) and VGG
    x = torch.rand(2, 3, 8, 8, dtype=DT)
    out = ISNet(dense, "dual", deep_supervision=True).eval()(x, heatmaps=True)
    assert list(out.intermediate) == ["features.transition1", "features.transition2", "features"]
    shapes = [tuple(v.shape) for v in out.intermediate.values()]
    assert shapes[0][:2] == (2, 2) and shapes[0][-2:] == (4, 4) and shapes[1][-2:] == (2, 2)
    assert shapes[2][-2:] == (2, 2)
    out = ISNet(vgg, "original", deep_supervision=True).eval()(torch.rand(1, 3, 32, 32, dtype=DT), heatmaps=True)
    assert [v.shape[-1] for v in out.intermediate.values()] == [16, 8, 4, 2, 1]
    assert all(v.shape[:2] == (1, 3) for v in out.intermediate.values())


def _head_check(isnet_out, name: str, head: nn.Module, act: Tensor, variant: str, targets: Tensor | None,
                guard: bool = True):
    """The relevance captured at ``name`` equals the head's heatmap explained on the activation there.

    With ``guard``, for a head whose first conv reads its input, the head is explained twice: as it is, with
    ``first_layer="epsilon"`` (its input-reading layers take epsilon, as they do inside the whole model; compared
    for the epsilon maps), and behind a ReLU (an identity on the non-negative activation, after which no layer reads
    the input, so every layer takes the hidden rule whatever ``first_layer`` does: the valid comparison for the z+
    map too). Without ``guard`` (no layer of the head reads its input directly) it is explained as it is."""
    got = isnet_out.intermediate[name]
    both = ("zplus", "epsilon")
    if guard:
        assert act.min() >= 0  # the guarding ReLU changes nothing
        heads = [(head, ("epsilon",)), (nn.Sequential(nn.ReLU(), head), both)]
    else:
        heads = [(head, both)]
    for model, rules in heads:
        lrp = ik.LRP(model, first_layer="epsilon")
        if variant == "dual":
            ref = torch.cat([lrp(act, None, output="all", rule=rule)[1] for rule in rules], 1)
            part = got if rules == both else got[:, 1:]  # map 1 is the epsilon map
        else:
            output = "selective" if variant == "selective" else "logit"
            ref, part = lrp(act, targets, output=output)[1], got
        assert part.shape == ref.shape
        err = rel_err(part, ref)
        assert err < 1e-10, (name, variant, err)


@pytest.mark.parametrize("variant", ["original", "selective", "dual"])
def test_deep_supervision_smallcnn_equals_head(variant):
    model = _randomize(SmallCNN(3, in_channels=1, width=2).to(DT)).eval()
    x = torch.rand(3, 1, 8, 8, dtype=DT)
    out = ISNet(model, variant, deep_supervision=True).eval()(x, heatmaps=True)
    assert list(out.intermediate) == ["features.3", "features.7", "features.11"]
    for cut in (4, 8):
        head = nn.Sequential(model.features[cut:], model.avgpool, nn.Flatten(), model.fc)
        with torch.no_grad():
            act = model.features[:cut](x)
        _head_check(out, f"features.{cut - 1}", head, act, variant, out.targets)


@pytest.mark.parametrize("variant", ["original", "selective", "dual"])
def test_deep_supervision_resnet_equals_head(variant):
    """ResNet stages: the head's first block reads its input through conv1 and the shortcut (identity or
    projection); with epsilon on the head's first layers the two contributions sum as in the whole model."""
    model = _randomize(tiny_resnet(width=2, num_classes=3, small_input=True).to(DT)).eval()
    x = torch.rand(2, 3, 8, 8, dtype=DT)
    out = ISNet(model, variant, deep_supervision=True).eval()(x, heatmaps=True)
    assert list(out.intermediate) == ["layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        acts = {"layer1": model.layer1(stem)}
        acts["layer2"] = model.layer2(acts["layer1"])
    tail = [model.avgpool, nn.Flatten(), model.fc]
    _head_check(out, "layer2", nn.Sequential(model.layer3, model.layer4, *tail), acts["layer2"], variant,
                out.targets)
    # layer1 -> layer2's first block has a projection shortcut (downsample)
    _head_check(out, "layer1", nn.Sequential(model.layer2, model.layer3, model.layer4, *tail), acts["layer1"],
                variant, out.targets)


@pytest.mark.parametrize("variant", ["original", "dual"])
def test_deep_supervision_densenet_equals_head(variant):
    """DenseNet: after a transition the next dense block reads its input through a concatenation and a standalone
    BatchNorm; ``features`` ends in ``norm5``, whose output the classifier's ReLU and pooling read."""
    model = _randomize(tiny_densenet(growth_rate=2, block_config=(2, 2, 2), num_init_features=4, bn_size=2,
                                     num_classes=3, small_input=True).to(DT)).eval()
    x = torch.rand(2, 3, 8, 8, dtype=DT)
    out = ISNet(model, variant, deep_supervision=True).eval()(x, heatmaps=True)
    children = dict(model.features.named_children())
    names = list(children)
    tail = [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.classifier]
    with torch.no_grad():
        features = model.features(x)
        cut = names.index("transition2") + 1
        act = nn.Sequential(*[children[n] for n in names[:cut]])(x)
    _head_check(out, "features", nn.Sequential(*tail), features, variant, out.targets, guard=False)
    _head_check(out, "features.transition2", nn.Sequential(*[children[n] for n in names[cut:]], *tail), act,
                variant, out.targets, guard=False)


# --------------------------------------------------------------------------------------------------------------
# 8. gradients of the ISNet loss w.r.t. the parameters


def _mask() -> Tensor:
    masks = torch.zeros(2, 1, 6, 6, dtype=DT)
    masks[0, :, 1:4, 1:4] = 1  # at the 3x3 deep-supervision level, the bottom row of cells stays background
    masks[1, :, 0:4, 2:5] = 1
    return masks


def _exact_parameters(isnet: ISNet) -> list[str]:
    """The parameters whose heatmap-loss gradient is the exact derivative: the rules detach every bias, BatchNorm's
    beta and (train mode) its batch statistics (docs/rules.md#detach-semantics), so biases are left out, and in train
    mode so is the
    weight of a layer whose output a BatchNorm normalises with batch statistics (its effect on them is detached)."""
    names = [n for n, _ in isnet.named_parameters() if n.endswith("weight")]
    modules = dict(isnet.named_modules())
    if isnet.training:
        names = [n for n in names
                 if not (isinstance(modules[n.rsplit(".", 1)[0]], nn.Conv2d)
                         and isinstance(modules.get(_next_module(n)), nn.BatchNorm2d))]
    return names


def _next_module(weight_name: str) -> str:
    owner, index = weight_name.rsplit(".", 2)[:2]
    return f"{owner}.{int(index) + 1}" if index.isdigit() else ""


@pytest.mark.parametrize("deep", [False, True], ids=["input", "deep"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", ["original", "selective", "stochastic", "dual"])
def test_loss_gradcheck(variant, train, deep):
    """gradcheck of the total loss w.r.t. the model's weights (every weight in eval mode; in train mode all but the
    conv feeding a batch-statistics BatchNorm), the other parameters held fixed."""
    model = Tiny(1, 3, 2).to(DT)
    _randomize(model)
    gen = torch.Generator().manual_seed(3) if variant == "stochastic" else None
    isnet = ISNet(model, variant, deep_supervision=deep, generator=gen).train(train)
    x = torch.rand(2, 1, 6, 6, dtype=DT)
    labels = torch.tensor([0, 2])
    masks = _mask()
    # C1 above the maps' foreground relevance: the foreground term is active (C2 = C1: the narrowest valid band)
    loss_fn = ISNetLoss(P=0.7, C1=(2.0, 1.5) if variant == "dual" else 2.0, C2=2.0, d_loss=0.5)
    names = _exact_parameters(isnet)
    expected = ["model.features.1.weight", "model.features.4.weight", "model.fc.weight"]
    assert names == (expected if train else ["model.features.0.weight", *expected])
    current = dict(isnet.named_parameters())
    params = tuple(current[n].detach().clone().requires_grad_(True) for n in names)

    def run(*ps: Tensor):
        if gen is not None:
            gen.manual_seed(3)
        out = functional_call(isnet, dict(zip(names, ps)), (x, labels), {"heatmaps": True}, strict=False)
        return loss_fn(out, labels, masks)

    parts = run(*params)
    assert len(parts.levels) == (2 if deep else 1)
    assert float(parts.background.detach()) > 1e-3 and float(parts.foreground.detach()) > 1e-3  # both terms contribute
    grads = torch.autograd.grad(parts.heatmap, params)
    assert all(g.abs().max() > 1e-6 for g in grads)  # the heatmap term reaches every checked weight
    assert torch.autograd.gradcheck(lambda *ps: run(*ps).total, params, eps=1e-6, atol=1e-6, rtol=1e-4,
                                    fast_mode=True)


def test_relevance_pass_detaches_the_logit_bias():
    """The bias is in z but detached (docs/rules.md#detach-semantics): the heatmap loss has no gradient w.r.t. the
    last layer's bias
    (which reaches the heatmap only through the output rule's z)."""
    model = _tiny()
    isnet = ISNet(model, "original").eval()
    x = torch.rand(2, 1, 6, 6, dtype=DT)
    parts = ISNetLoss(C1=2.0, C2=2.0)(isnet(x, heatmaps=True), torch.tensor([0, 1]), _mask())
    grad_bias, grad_weight = torch.autograd.grad(parts.heatmap, [model.fc.bias, model.fc.weight], allow_unused=True)
    assert grad_bias is None or torch.equal(grad_bias, torch.zeros_like(grad_bias))
    assert grad_weight.abs().max() > 1e-6
