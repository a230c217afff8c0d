"""Swin's rules (isnet_kernels/lrp/layers/swin.py): the forward equals torchvision's function, the relevance equals
a composition of the reference ops with the data movement's adjoints taken by autograd, CP-LRP conserves, gradcheck,
``_patch_merging_pad``'s adjoint, and Swin V1/V2 models explain and train as selective ISNets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import isnet_kernels as ik
from isnet_kernels import ops
from isnet_kernels.lrp.layers import swin as SW
from isnet_kernels.lrp.rules import RuleConfig

DT = torch.float64


def _swin():
    """torchvision's swin_transformer module (torchvision is imported by tests/conftest.py beside the CPU torch)."""
    import torchvision.models.swin_transformer as swin

    return swin


# (B, H, W, C, heads, window, shift): padding (H, W not multiples of the window), shift, no shift, and a window
# larger than the map (the shift is dropped)
CASES = [(2, 5, 7, 8, 2, [3, 3], [1, 1]), (1, 4, 4, 4, 1, [2, 2], [0, 0]), (1, 3, 6, 6, 3, [3, 2], [1, 1]),
         (1, 2, 2, 4, 2, [4, 4], [2, 2])]


def _args(C, heads, window, shift, v2, g, bias=True):
    N = window[0] * window[1]
    args = {"qkv_weight": torch.randn(3 * C, C, generator=g, dtype=DT) / C ** 0.5,
            "proj_weight": torch.randn(C, C, generator=g, dtype=DT) / C ** 0.5,
            "relative_position_bias": torch.randn(1, heads, N, N, generator=g, dtype=DT) * 0.5,
            "window_size": window, "num_heads": heads, "shift_size": shift, "attention_dropout": 0.0,
            "dropout": 0.0, "training": False,
            "qkv_bias": torch.randn(3 * C, generator=g, dtype=DT) * 0.1 if bias else None,
            "proj_bias": torch.randn(C, generator=g, dtype=DT) * 0.1 if bias else None,
            "logit_scale": torch.randn(heads, 1, 1, generator=g, dtype=DT) * 0.3 + 1.5 if v2 else None}
    return args


def _run(args, x):
    """The step on ``x`` with the call's other arguments ``args``: the step and its forward's (output, saved)."""
    step = SW.ShiftedWindowAttentionStep("swa", "x", lambda env: dict(args, input=env["x"]))
    return step, step.forward({"x": x})


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_forward_equals_torchvision(case, v2):
    swin = _swin()
    B, H, W, C, heads, window, shift = case
    g = torch.Generator().manual_seed(0)
    args = _args(C, heads, window, shift, v2, g)
    x = torch.randn(B, H, W, C, generator=g, dtype=DT)
    _, (y, _) = _run(args, x)
    expected = swin.shifted_window_attention(x, **{k: v for k, v in args.items()})
    assert torch.equal(y, expected)


def _detached_bias(z, bias):
    return z if bias is None else z - (bias - bias.detach())


def _compose(args, x, R, rule, eps):
    """The relevance of the input composed by hand: the data movement by autograd's adjoints (vjp), the windows
    folded into the batch axis, the projections by ``reference_linear_epsilon``, the attention by
    ``reference_sdpa_relevance`` with the position bias plus shift mask as its float mask (V2: the forward on
    normalised q and k with tau folded into q and scale 1; the rule's operands with the norms held constant)."""
    B, H, W, C = x.shape
    window, heads = args["window_size"], args["num_heads"]
    pad_r, pad_b = (-W) % window[1], (-H) % window[0]
    pH, pW = H + pad_b, W + pad_r
    shift = [0 if window[0] >= pH else args["shift_size"][0], 0 if window[1] >= pW else args["shift_size"][1]]
    nW, N, d = (pH // window[0]) * (pW // window[1]), window[0] * window[1], C // heads

    def pre(t):  # pad, roll, partition
        t = torch.roll(F.pad(t, (0, 0, 0, pad_r, 0, pad_b)), (-shift[0], -shift[1]), (1, 2))
        t = t.view(B, pH // window[0], window[0], pW // window[1], window[1], C).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(B * nW, N, C)

    def post(t):  # merge, roll back, crop
        t = t.view(B, pH // window[0], pW // window[1], window[0], window[1], C).permute(0, 1, 3, 2, 4, 5)
        return torch.roll(t.reshape(B, pH, pW, C), (shift[0], shift[1]), (1, 2))[:, :H, :W]

    def adjoint(f, at, R):
        _, pullback = torch.func.vjp(f, at)
        return torch.stack([pullback(R[:, m])[0] for m in range(R.shape[1])], 1)

    xw = pre(x)
    b_qkv = args["qkv_bias"]
    if args["logit_scale"] is not None and b_qkv is not None:
        b_qkv = torch.cat([b_qkv[:C], torch.zeros_like(b_qkv[C:2 * C]), b_qkv[2 * C:]])
    qkv = F.linear(xw, args["qkv_weight"], b_qkv)
    q, k, v = qkv.view(B * nW, N, 3, heads, d).permute(2, 0, 3, 1, 4)
    bias = args["relative_position_bias"].expand(B * nW, heads, N, N)
    if sum(shift) > 0:
        bias = bias + SW.shift_mask(pH, pW, window, shift, x).repeat(B, 1, 1).unsqueeze(1)
    if args["logit_scale"] is None:
        scale = d ** -0.5
    else:
        tau = torch.clamp(args["logit_scale"], max=torch.log(torch.tensor(100.0)).item()).exp()
        saved = ops.sdpa_forward(F.normalize(q, dim=-1) * tau, F.normalize(k, dim=-1), v, bias, 1.0)
        norm_q, norm_k = (t.norm(dim=-1, keepdim=True).clamp_min(1e-12).detach() for t in (q, k))
        q, k, scale = q / norm_q * tau, k / norm_k, 1.0  # the rule's operands: the norms held constant
    if args["logit_scale"] is None:
        saved = ops.sdpa_forward(q, k, v, bias, scale)
    out, p, scores = saved
    o = out.transpose(1, 2).reshape(B * nW, N, C)
    y = F.linear(o, args["proj_weight"], args["proj_bias"])
    R_y = adjoint(post, y, R)  # (B nW, M, N, C)
    R_o = ops.reference_linear_epsilon(R_y, o, _detached_bias(y, args["proj_bias"]), args["proj_weight"], eps)
    R_out = R_o.view(*R_o.shape[:3], heads, d).transpose(2, 3)
    R_q, R_k, R_v = ops.reference_sdpa_relevance(R_out, q, k, v, bias, scale, rule, eps, saved=saved)
    parts = [torch.zeros_like(R_v) if t is None else t for t in (R_q, R_k, R_v)]
    R_qkv = torch.stack([t.transpose(2, 3) for t in parts], 3).reshape(*R_y.shape[:3], 3 * C)
    R_xw = ops.reference_linear_epsilon(R_qkv, xw, _detached_bias(qkv, b_qkv), args["qkv_weight"], eps)
    return adjoint(pre, x, R_xw)


@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("case", CASES[:3])
def test_relevance_equals_composed_ops(case, v2, rule):
    B, H, W, C, heads, window, shift = case
    g = torch.Generator().manual_seed(1)
    args = _args(C, heads, window, shift, v2, g)
    x = torch.randn(B, H, W, C, generator=g, dtype=DT)
    R = torch.randn(B, 2, H, W, C, generator=g, dtype=DT)
    step, (y, saved) = _run(args, x)
    (R_x,) = step.relevance(R, saved, RuleConfig(eps=0.05, attention=rule))
    torch.testing.assert_close(R_x, _compose(args, x, R, rule, 0.05), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("v2", [False, True])
def test_float32_matches_float64(v2):
    B, H, W, C, heads, window, shift = CASES[0]
    g = torch.Generator().manual_seed(6)
    args = _args(C, heads, window, shift, v2, g)
    x = torch.randn(B, H, W, C, generator=g, dtype=DT)
    R = torch.randn(B, 2, H, W, C, generator=g, dtype=DT)
    results = []
    for dt in (DT, torch.float32):
        a = {k: v.to(dt) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        step, (y, saved) = _run(a, x.to(dt))
        results.append((y, step.relevance(R.to(dt), saved, RuleConfig(eps=0.05))[0]))
    (y64, r64), (y32, r32) = results
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r32.double(), r64, rtol=1e-3, atol=1e-4 * r64.abs().max().item())


@pytest.mark.parametrize("v2", [False, True])
def test_cp_conserves_without_biases(v2):
    """CP-LRP with zero projection biases: pad, roll, windows, projections and ``p @ v`` all conserve as eps -> 0
    (the position bias and mask enter only the softmax, which CP-LRP holds constant)."""
    B, H, W, C, heads, window, shift = CASES[0]
    g = torch.Generator().manual_seed(2)
    args = _args(C, heads, window, shift, v2, g, bias=False)
    x = torch.randn(B, H, W, C, generator=g, dtype=DT)
    step, (y, saved) = _run(args, x)
    R = y.unsqueeze(1)
    (R_x,) = step.relevance(R, saved, RuleConfig(eps=1e-12, attention="cp"))
    torch.testing.assert_close(R_x.flatten(2).sum(-1), R.flatten(2).sum(-1), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("v2", [False, True])
def test_gradcheck(v2):
    """Against finite differences, w.r.t. what the rule differentiates as the function does: the relevance, and the
    weights and inputs that enter no detached quantity (V2's norms and every bias enter detached: see
    test_gradients_equal_composed_ops)."""
    g = torch.Generator().manual_seed(3)
    B, H, W, C, heads, window, shift = 1, 3, 3, 4, 2, [2, 2], [1, 1]
    base = _args(C, heads, window, shift, v2, g)
    x = torch.randn(B, H, W, C, generator=g, dtype=DT, requires_grad=True)
    R = torch.randn(B, 1, H, W, C, generator=g, dtype=DT, requires_grad=True)
    keys = ["proj_weight", "logit_scale"] if v2 else ["qkv_weight", "proj_weight"]
    params = [base[k].clone().requires_grad_() for k in keys]

    def f(R, x, *params):
        step, (_, saved) = _run(dict(base, **dict(zip(keys, params))), x)
        return step.relevance(R, saved, RuleConfig(eps=0.1))[0]

    inputs = (R, *params) if v2 else (R, x, *params)
    assert torch.autograd.gradcheck(lambda *t: f(t[0], x, *t[1:]) if v2 else f(*t), inputs)


@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("v2", [False, True])
def test_gradients_equal_composed_ops(v2, rule):
    """Training through the heatmap: the gradients of a loss of the relevance w.r.t. the input, every weight, the
    biases, the position bias and the logit scale equal those through the composed ops (same detach semantics)."""
    B, H, W, C, heads, window, shift = CASES[0]
    g = torch.Generator().manual_seed(5)
    base = _args(C, heads, window, shift, v2, g)
    keys = [k for k in ("qkv_weight", "proj_weight", "relative_position_bias", "qkv_bias", "proj_bias",
                        "logit_scale") if base[k] is not None]
    x = torch.randn(B, H, W, C, generator=g, dtype=DT)
    R = torch.randn(B, 2, H, W, C, generator=g, dtype=DT)
    G = torch.randn(B, 2, H, W, C, generator=g, dtype=DT)
    grads = []
    for composed in (False, True):
        xs = x.clone().requires_grad_()
        args = dict(base, **{k: base[k].clone().requires_grad_() for k in keys})
        if composed:
            out = _compose(args, xs, R, rule, 0.05)
        else:
            step, (_, saved) = _run(args, xs)
            out = step.relevance(R, saved, RuleConfig(eps=0.05, attention=rule))[0]
        inputs = [xs] + [args[k] for k in keys]
        grads.append(torch.autograd.grad((out * G).sum(), inputs, allow_unused=True))
    for name, a, b in zip(["input"] + keys, *grads):
        if a is None or b is None:
            assert a is None and b is None or (a if b is None else b).abs().max() == 0, name
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 2, 4, 6, 2), (1, 4, 4, 1)])
def test_patch_merging_pad_adjoint(shape):
    swin = _swin()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=DT)
    out, pullback = torch.func.vjp(swin._patch_merging_pad, x)
    R = torch.randn(out.shape[0], 2, *out.shape[1:], generator=g, dtype=DT)
    (got,) = SW.patch_merging_pad_relevance(R, [x], out, RuleConfig(eps=0.0))
    expected = torch.stack([pullback(R[:, m])[0] for m in range(2)], 1)
    assert torch.equal(got, expected)
    R = R * out.unsqueeze(1)  # relevance of the padding's zeros is zero: then it is conserved
    (got,) = SW.patch_merging_pad_relevance(R, [x], out, RuleConfig(eps=0.0))
    torch.testing.assert_close(got.flatten(2).sum(-1), R.flatten(2).sum(-1))


def _small_swin(swin, v2, **kw):
    extra = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2} if v2 else {}
    kw.setdefault("stochastic_depth_prob", 0.0)
    return swin.SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[2, 1], num_heads=[2, 2], window_size=[3, 3],
                                num_classes=3, **extra, **kw)


def _randomise(model, scale=0.3):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * scale)


def test_relative_position_bias_is_a_constant():
    """``_get_relative_position_bias`` (and V2's cpb_mlp feeding it) reads only parameters: no step, no rule."""
    swin = _swin()
    for v2 in (False, True):
        ik.lrp.clear_cache()
        program = ik.lrp.compile_model(_small_swin(swin, v2).eval())
        names = {s.name for s in program.steps if isinstance(s, ik.lrp.steps.Step)}
        assert not any("relative_position_bias" in n for n in names)
        assert sum(isinstance(s, SW.ShiftedWindowAttentionStep) for s in program.steps) == 3


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_torchvision_swin_explains(name):
    swin = _swin()
    torch.manual_seed(0)
    model = getattr(swin, name)(num_classes=10).eval()
    _randomise(model, 0.1)
    x = torch.rand(1, 3, 32, 32)
    for attention in ("attnlrp", "cp"):
        _, h = ik.LRP(model, first_layer="epsilon", attention=attention)(x, torch.tensor([[3]]))
        assert h.shape == (1, 1, 3, 32, 32) and torch.isfinite(h).all() and h.abs().sum() > 0


@pytest.mark.parametrize("v2", [False, True])
def test_swin_cp_conserves_without_biases(v2):
    """A Swin model under CP-LRP with zero biases (the position bias stays: it enters only the softmax), eps -> 0:
    patch embedding, LayerNorms, windows, shifts, projections, MLPs, patch merging and head all conserve, so the
    heatmap sums to the logit."""
    swin = _swin()
    model = _small_swin(swin, v2).double().eval()
    _randomise(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "cpb_mlp" not in name:
                p.zero_()
    x = torch.rand(2, 3, 12, 12, dtype=DT)
    targets = torch.tensor([[0], [2]])
    logits, h = ik.LRP(model, eps=1e-12, first_layer="epsilon", attention="cp")(x, targets)
    torch.testing.assert_close(h.flatten(1).sum(1), logits.gather(1, targets)[:, 0], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("v2", [False, True])
def test_selective_isnet_step_trains(v2):
    swin = _swin()
    torch.manual_seed(0)
    model = _small_swin(swin, v2, dropout=0.1, stochastic_depth_prob=0.2)  # both active in training mode
    _randomise(model)
    isnet = ik.ISNet(model, "selective", first_layer="epsilon").train()
    x = torch.rand(2, 3, 12, 12)
    masks = torch.zeros(2, 1, 12, 12)
    masks[:, :, 3:9, 3:9] = 1
    labels = torch.tensor([0, 2])
    out = isnet(x, labels)
    loss = ik.ISNetLoss()(out, labels, masks)
    loss.total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    attn = model.features[1][0].attn
    assert attn.qkv.weight.grad.abs().sum() > 0
    if v2:
        assert attn.logit_scale.grad.abs().sum() > 0 and attn.cpb_mlp[0].weight.grad.abs().sum() > 0
    else:
        assert attn.relative_position_bias_table.grad.abs().sum() > 0


def test_attention_dropout_in_training_is_an_error():
    swin = _swin()
    model = _small_swin(swin, False, attention_dropout=0.1).train()
    with pytest.raises(ValueError, match="attention dropout"):
        ik.LRP(model, first_layer="epsilon")(torch.rand(1, 3, 12, 12), torch.tensor([[0]]))
