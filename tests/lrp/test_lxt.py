"""LXT (AttnLRP's authors' library, ``lxt`` 2.1) as an independent reference on vision transformers, float64.

The rules match where both libraries define the same one (docs/rules.md#rules-for-modern-layers):

- ``nn.Linear`` and the patch convolution: epsilon (``lxt.explicit.functional.linear_epsilon``;
  ``lxt.explicit.rules.epsilon_lrp`` on the convolution); the engine with ``first_layer="epsilon"``;
- GELU: the identity rule (``lxt.explicit.rules.identity``);
- LayerNorm: the standard deviation held constant, epsilon through the remaining linear map
  (``lxt.explicit.functional.layer_norm``'s Function, called with our stabiliser: the wrapper fixes it at 1e-6);
- softmax: AttnLRP's rule (``functional.softmax``); the products ``q k^T`` and ``p v``: the uniform epsilon rule
  (``functional.matmul``); residual sums and the position embedding: the epsilon split (``functional.add2``);
- the scaling of the scores by ``1 / sqrt(d)`` (``functional.mul2`` with a constant: all relevance to ``q``),
  equal to our diagonal epsilon rule ``R y / stab(y)`` up to the stabiliser;
- data movement (reshape, transpose, timm's ``permute(2, 0, 3, 1, 4).unbind(0)``, class token, ``x[:, 0]``): plain
  autograd in LXT (the adjoint), ours by rule;
- ``F.scaled_dot_product_attention``: LXT has no rule for it, so its reference writes the products and softmax out.

LXT's stabiliser is ``z + eps`` (not sign-aware) and ours ``z + eps sign(z)``: both are run with eps = 1e-12, where
the stabilisers' difference is far below the 1e-6 tolerance. Relevance starts as ``z_c`` at the target logit in
both.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import isnet_kernels as ik

from ..optional import require

lf = require("lxt.explicit.functional")
lr = require("lxt.explicit.rules")

DT = torch.float64
EPS = 1e-12


class Attention(nn.Module):
    """timm's ViT attention: one packed projection taken apart with ``permute(2, 0, 3, 1, 4).unbind(0)``, then
    ``F.scaled_dot_product_attention`` (``fused``) or the products and softmax written out."""

    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.scale, self.fused = heads, (dim // heads) ** -0.5, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, E = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(B, T, E))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, fused: bool):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, fused)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2, mlp: int = 12, depth: int = 2, classes: int = 3,
                 fused: bool = False):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 5, dim) * 0.5)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp, fused) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.blocks(t))[:, 0])


def _randomize(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)


# --- the LXT forward of the same weights -----------------------------------------------------------------------
def _ln(m: nn.LayerNorm, x: Tensor) -> Tensor:
    # lf.layer_norm fixes the stabiliser at its default 1e-6; its Function takes it as the last argument
    return lf.layer_norm_grad_fn.apply(x, m.weight, m.bias, m.eps, EPS)


def _lin(m: nn.Linear, x: Tensor) -> Tensor:
    return lf.linear_epsilon(x, m.weight, m.bias, EPS)


def _lxt_attention(x: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor, heads: int,
                   packed: str) -> Tensor:
    B, T, E = x.shape
    d = E // heads
    if packed == "timm":  # (B, T, 3, H, d) layout of one qkv Linear
        qkv = lf.linear_epsilon(x, w_in, b_in, EPS).reshape(B, T, 3, heads, d).permute(0, 2, 3, 1, 4)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    else:  # nn.MultiheadAttention: three projections, heads split per projection
        q, k, v = (lf.linear_epsilon(x, w, b, EPS).view(B, T, heads, d).transpose(1, 2)
                   for w, b in zip(w_in.chunk(3), b_in.chunk(3)))
    q = lf.mul2(q, 1.0 / math.sqrt(d))
    attn = lf.softmax(lf.matmul(q, k.transpose(-2, -1), epsilon=EPS), -1)
    o = lf.matmul(attn, v, epsilon=EPS).transpose(1, 2).reshape(B, T, E)
    return lf.linear_epsilon(o, w_out, b_out, EPS)


def _lxt_tiny(model: TinyViT, x: Tensor) -> Tensor:
    t = lr.epsilon_lrp(model.patch, EPS, x).flatten(2).transpose(1, 2)
    t = lf.add2(torch.cat([model.cls.expand(x.shape[0], -1, -1), t], 1), model.pos, epsilon=EPS)
    for blk in model.blocks:
        a = blk.attn
        t = lf.add2(t, _lxt_attention(_ln(blk.norm1, t), a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias,
                                      a.heads, "timm"), epsilon=EPS)
        h = lr.identity(blk.act, _lin(blk.fc1, _ln(blk.norm2, t)))
        t = lf.add2(t, _lin(blk.fc2, h), epsilon=EPS)
    return _lin(model.head, _ln(model.norm, t)[:, 0])


def _lxt_relevance(forward, model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    x = x.clone().requires_grad_()
    logits = forward(model, x)
    idx = target.view(-1, 1)
    start = torch.zeros_like(logits).scatter(1, idx, logits.gather(1, idx)).detach()
    (R,) = torch.autograd.grad(logits, x, start)
    return R, logits.detach()


def _ours(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    logits, maps = ik.LRP(model, eps=EPS, first_layer="epsilon")(x, target.view(-1, 1))
    return maps[:, 0].detach(), logits.detach()


def _rel(a: Tensor, b: Tensor) -> float:
    assert b.abs().max() > 0
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("fused", [False, True], ids=["matmul-softmax", "sdpa"])
def test_tiny_vit_matches_lxt(fused):
    torch.manual_seed(0)
    model = TinyViT(fused=fused).to(DT).eval()
    _randomize(model)
    x = torch.rand(3, 3, 4, 4, dtype=DT)
    target = torch.tensor([0, 1, 2])
    ref, ref_logits = _lxt_relevance(_lxt_tiny, model, x, target)
    ours, logits = _ours(model, x, target)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    assert _rel(ours, ref) < 1e-6
    # not conservative (the softmax rule), so the comparison is not vacuous: relevance is lost or gained
    assert (ours.sum((1, 2, 3)) - logits.gather(1, target.view(-1, 1))[:, 0]).abs().max() > 1e-6


def test_tiny_vit_cp_differs_from_lxt_attnlrp():
    """The comparison detects a rule change: CP-LRP (attention weights held constant) is not LXT's AttnLRP."""
    torch.manual_seed(0)
    model = TinyViT().to(DT).eval()
    _randomize(model)
    x = torch.rand(2, 3, 4, 4, dtype=DT)
    target = torch.tensor([0, 1])
    ref, _ = _lxt_relevance(_lxt_tiny, model, x, target)
    cp = ik.LRP(model, eps=EPS, first_layer="epsilon", attention="cp")(x, target.view(-1, 1))[1][:, 0].detach()
    assert _rel(cp, ref) > 1e-3


# --- torchvision's VisionTransformer (nn.MultiheadAttention) ---------------------------------------------------
def _torchvision():
    import torchvision.models.vision_transformer as vit

    return vit


def _lxt_torchvision(model, x: Tensor) -> Tensor:
    n = x.shape[0]
    t = lr.epsilon_lrp(model.conv_proj, EPS, x).flatten(2).transpose(1, 2)
    t = torch.cat([model.class_token.expand(n, -1, -1), t], 1)
    enc = model.encoder
    t = lf.add2(t, enc.pos_embedding, epsilon=EPS)
    for layer in enc.layers:
        m = layer.self_attention
        h = _lxt_attention(_ln(layer.ln_1, t), m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias,
                           m.num_heads, "mha")
        t = lf.add2(t, h, epsilon=EPS)
        mlp = layer.mlp
        h = lr.identity(mlp[1], _lin(mlp[0], _ln(layer.ln_2, t)))
        t = lf.add2(t, _lin(mlp[3], h), epsilon=EPS)
    return _lin(model.heads.head, _ln(enc.ln, t)[:, 0])


def test_torchvision_vit_matches_lxt():
    vit = _torchvision()
    torch.manual_seed(1)
    model = vit.VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=12,
                                  num_classes=3).to(DT).eval()
    _randomize(model)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.5)  # torchvision zero-initialises the head
        model.conv_proj.bias.uniform_(-0.2, 0.2)
    x = torch.rand(3, 3, 8, 8, dtype=DT)
    target = torch.tensor([2, 0, 1])
    ref, ref_logits = _lxt_relevance(_lxt_torchvision, model, x, target)
    ours, logits = _ours(model, x, target)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-12)
    assert _rel(ours, ref) < 1e-6
