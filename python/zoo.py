"""Every torchvision classifier and a list of timm models through ``isnet_kernels``: explain, conservation, one
selective ISNet step.

For each classification builder of ``torchvision.models.list_models(module=torchvision.models)`` and each timm
model of :data:`TIMM` (named ``timm:NAME``; 10 classes, ``weights=None`` / random weights, randomised parameters
and BatchNorm statistics, small inputs where the model allows, see :func:`cases`):

1. ``explain`` in eval mode (float32, epsilon first layer): finite and not all zero;
2. conservation: in float64, eps = 1e-9, every bias and BatchNorm shift zeroed and BatchNorm running means
   zeroed (so no layer adds a constant), an epsilon first layer: the input relevance sums to the explained logit
   (relative error reported; the tests require <= 1e-5) for every family whose rules conserve relevance
   (:attr:`Case.absorbs` names what absorbs relevance in the others, see docs/rules.md);
3. one selective ISNet training step (train mode, ``ISNetLoss``, backward): every gradient finite.

``make zoo`` runs all of them and writes ``python/results/zoo/zoo.md`` and ``zoo.json`` (status, time and
conservation error per builder); ``tests/lrp/test_zoo.py`` runs a fixed sample (one builder per torchvision
family) and ``tests/lrp/test_timm_zoo.py`` one timm model per family (:data:`TIMM_SAMPLE`) with the same
functions. A timm model the engine cannot explain fails with an ``UnsupportedLayerError`` naming its operations.

Usage::

    python python/zoo.py [--out python/results/zoo/] [--only resnet18 timm:vit_tiny_patch16_224 ...] [--heavy]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def import_torchvision() -> types.ModuleType:
    """Import torchvision and its classification models (the torchvision built for the installed torch)."""
    import torchvision
    import torchvision.models  # noqa: F401

    return torchvision


SIZE = 64  # the shared input size: the smallest that AlexNet's stem and pools accept
NUM_CLASSES = 10
CONSERVATION_TOL = 1e-5
CONSERVATION_EPS = 1e-9

# Families whose rules do not conserve relevance, and why (docs/rules.md): AttnLRP's softmax rule (and CP-LRP's
# attention weights) pass relevance to the values only up to what the softmax's own rule absorbs; constant shifts
# (position embeddings, class tokens, relative position biases, GoogLeNet's input transform) absorb their share.
_ATTENTION = "attention: the softmax rule does not conserve relevance"
ABSORBS = {
    "vit": _ATTENTION + "; the position embedding (an added constant) and the class token (a concatenated "
                        "constant) absorb their shares",
    "swin": _ATTENTION + "; the relative position bias absorbs its share",
    "maxvit": _ATTENTION + "; the relative position bias absorbs its share",
    "transform_input": "transform_input=True: the input transform x * s + t shifts each channel by a constant t, "
                       "which absorbs its share (x s R / (x s + t))",
}

# Builders too heavy for a 2-core CI machine with ~16 GB of memory (float64 parameters, plus gradients in the
# ISNet step); `python python/zoo.py --heavy` runs them too.
HEAVY = {
    "vit_h_14": "632M parameters (5 GB in float64)",
    "vit_l_16": "304M parameters (2.4 GB in float64)",
    "vit_l_32": "306M parameters (2.4 GB in float64)",
    "regnet_y_128gf": "645M parameters (5 GB in float64)",
    "regnet_y_32gf": "145M parameters (1.2 GB in float64)",
    "regnet_x_32gf": "107M parameters (0.9 GB in float64)",
    "regnet_y_16gf": "84M parameters (0.7 GB in float64)",
}

# The tests' fixed sample: the smallest builder of each family (torchvision module; RegNet X and Y and Swin V1 and
# V2 both, since their blocks differ), and the transform_input forms of GoogLeNet and Inception V3.
SAMPLE = ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "googlenet+transform_input",
          "inception_v3", "inception_v3+transform_input", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
          "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "shufflenet_v2_x0_5",
          "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11_bn", "vit_b_32")


def import_timm() -> types.ModuleType:
    """timm (which imports torchvision: :func:`import_torchvision` first)."""
    import_torchvision()
    import timm

    return timm


TIMM_PREFIX = "timm:"

# timm models, family by family (the module of timm.models that defines them), with the keyword arguments that
# shrink their input and the input size: every family of the torchvision zoo that timm has, the families whose
# forms differ from torchvision's (ResNeSt's split attention, timm's BatchNormAct and SE modules, ViT/DeiT
# with their optional forward arguments) and hybrids of convolutions and attention (EfficientFormer, LeViT).
# (name, constructor arguments, input size)
_VIT_SMALL = {"img_size": 32}  # two by two 16x16 patches: the position embedding follows the image size
TIMM: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("resnet10t", {}, SIZE),
    ("resnet18", {}, SIZE),
    ("resnet26d", {}, SIZE),
    ("seresnext26d_32x4d", {}, SIZE),
    ("resnest14d", {}, SIZE),
    ("resnest26d", {}, SIZE),
    ("convnext_atto", {}, SIZE),
    ("convnext_nano", {}, SIZE),
    ("efficientnet_b0", {}, SIZE),
    ("efficientnet_lite0", {}, SIZE),
    ("mobilenetv2_050", {}, SIZE),
    ("mobilenetv3_small_050", {}, SIZE),
    ("mobilenetv3_large_100", {}, SIZE),
    ("regnetx_002", {}, SIZE),
    ("regnety_002", {}, SIZE),
    ("densenet121", {}, SIZE),
    ("ghostnet_100", {}, SIZE),
    ("rexnet_100", {}, SIZE),
    ("vit_tiny_patch16_224", _VIT_SMALL, 32),
    ("vit_small_patch16_224", _VIT_SMALL, 32),
    ("deit_tiny_patch16_224", _VIT_SMALL, 32),
    ("deit_tiny_distilled_patch16_224", _VIT_SMALL, 32),
    ("efficientformer_l1", {}, 224),  # its last stage's attention biases are for 7x7 tokens: 224x224 only
    ("levit_128s", {"img_size": 64}, 64),
    ("mobilevit_xxs", {}, SIZE),
)

# The tests' fixed sample: one timm model per family, the smallest, and every model that needed a rule of its own.
TIMM_SAMPLE = ("timm:resnet10t", "timm:resnest14d", "timm:convnext_atto", "timm:efficientnet_b0",
               "timm:mobilenetv3_small_050", "timm:regnetx_002", "timm:vit_tiny_patch16_224",
               "timm:deit_tiny_patch16_224", "timm:efficientformer_l1", "timm:levit_128s")

_TIMM_ABSORBS = {
    "vision_transformer": ABSORBS["vit"],
    "deit": ABSORBS["vit"],
    "levit": _ATTENTION + "; the attention biases (added constants) absorb their share",
    "efficientformer": _ATTENTION + " (last stage); the attention biases (added constants) absorb their share",
    "mobilevit": _ATTENTION,
}


@dataclass(frozen=True)
class Case:
    """One builder with its constructor arguments and input size.

    ``absorbs`` is None when the model's rules conserve relevance (the conservation check applies), else what
    absorbs relevance. ``heavy`` is None or why the builder is left out by default.
    """

    name: str  # "googlenet+transform_input" for a variant, "timm:NAME" for a timm model
    builder: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = SIZE
    absorbs: str | None = None
    heavy: str | None = None
    source: str = "torchvision"  # or "timm"

    @property
    def family(self) -> str:
        if self.source == "timm":
            return timm_family(self.builder)
        tv = import_torchvision()
        return tv.models.get_model_builder(self.builder).__module__.rsplit(".", 1)[-1]


def timm_family(name: str) -> str:
    """The module of ``timm.models`` that defines the model ``name`` (``resnest``, ``vision_transformer``)."""
    return import_timm().models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def timm_cases() -> list[Case]:
    """The timm models of :data:`TIMM`, in list order."""
    out = []
    for name, kwargs, size in TIMM:
        out.append(Case(TIMM_PREFIX + name, name, {"num_classes": NUM_CLASSES, **kwargs}, size,
                        _TIMM_ABSORBS.get(timm_family(name)), source="timm"))
    return out


def _case(name: str) -> list[Case]:
    kw: dict[str, Any] = {"num_classes": NUM_CLASSES}
    size, absorbs = SIZE, None
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=False, transform_input=False)
        size = 75 if name == "inception_v3" else SIZE  # Inception V3's smallest input
    if name.startswith("mobilenet"):
        kw["width_mult"] = 0.5
    if name.startswith("vit_"):
        size = kw["image_size"] = int(name.rsplit("_", 1)[1])  # one patch: the smallest image its patch allows
        absorbs = ABSORBS["vit"]
    if name.startswith("swin"):
        absorbs = ABSORBS["swin"]
    if name.startswith("maxvit"):
        size = 224  # its stages partition the feature maps into 7x7 windows down to 1/32 of the input
        absorbs = ABSORBS["maxvit"]
    out = [Case(name, name, kw, size, absorbs, HEAVY.get(name))]
    if name in ("googlenet", "inception_v3"):
        out.append(Case(name + "+transform_input", name, {**kw, "transform_input": True}, size,
                        ABSORBS["transform_input"]))
    return out


def cases(heavy: bool = True) -> list[Case]:
    """Every classification builder of torchvision (and the transform_input variants), in list order."""
    tv = import_torchvision()
    out = [c for name in tv.models.list_models(module=tv.models) for c in _case(name)]
    out += timm_cases()
    return out if heavy else [c for c in out if c.heavy is None]


def case(name: str) -> Case:
    """The case named ``name`` (a builder, ``<builder>+transform_input`` or ``timm:NAME``)."""
    if name.startswith(TIMM_PREFIX):
        return next(c for c in timm_cases() if c.name == name)
    return next(c for n in (name.split("+")[0],) for c in _case(n) if c.name == name)


def randomise(model: nn.Module, x: Tensor, seed: int = 0) -> nn.Module:
    """Random parameters where torchvision's initialisation leaves them constant, and BatchNorm statistics that
    fit the input; returns ``model`` (in eval mode).

    torchvision zero-initialises some layers (ViT's head, biases) and uses tiny ones elsewhere (ConvNeXt's layer
    scale 1e-6), and in eval mode its BatchNorms start as identities, so the activations of the deep mobile
    networks (MNASNet, MobileNet, EfficientNet) shrink layer by layer to logits of ~1e-8 and the heatmaps vanish.
    Here every parameter that is constant gets values uniform in [-0.2, 0.2] (scales of normalisations uniform in
    [0.5, 1.5], ViT's zeroed head Kaiming-uniform), then the BatchNorm statistics are the moments of a train-mode
    forward of ``x`` (cumulative, ``momentum=None``), perturbed by 10%, so each BatchNorm normalises its input.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen, dtype=torch.float64).to(t) * (hi - lo) + lo)

    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for m in model.modules():
            for pname, p in m.named_parameters(recurse=False):
                if isinstance(m, norms) and pname == "weight":
                    uniform(p, 0.5, 1.5)
                elif p.dim() >= 2 and float(p.abs().max()) == 0.0 and isinstance(m, (nn.Linear, nn.Conv2d)):
                    nn.init.kaiming_uniform_(p, a=5 ** 0.5, generator=gen)  # a zero-initialised head
                elif p.numel() > 0 and (float(p.abs().max()) == 0.0 or float(p.std() if p.numel() > 1 else 1) == 0
                                        or float(p.abs().max()) < 1e-4):
                    uniform(p, -0.2, 0.2)  # biases, shifts, layer scales, embeddings, constant-initialised tensors
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if bns:
            momenta = [bn.momentum for bn in bns]
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
            model.train()
            model(x)
            for bn, momentum in zip(bns, momenta, strict=True):
                bn.momentum = momentum
                bn.running_mean.mul_(1 + 0.1 * (2 * torch.rand(bn.running_mean.shape, generator=gen) - 1))
                bn.running_var.mul_(1 + 0.1 * (2 * torch.rand(bn.running_var.shape, generator=gen) - 1))
    return model.eval()


def zero_shifts(model: nn.Module) -> nn.Module:
    """Every bias, BatchNorm / LayerNorm shift and BatchNorm running mean set to 0, so that no layer adds a
    constant (the conservation check); returns ``model``."""
    with torch.no_grad():
        for m in model.modules():
            for pname, p in m.named_parameters(recurse=False):
                if pname.endswith("bias"):
                    p.zero_()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.zero_()
    return model


def inputs(c: Case, batch: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> Tensor:
    """A fixed batch of images uniform in [0, 1], (batch, 3, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, c.size, c.size, generator=gen, dtype=torch.float64).to(dtype)


def build(c: Case, dtype: torch.dtype = torch.float32, *, shifts: bool = True, seed: int = 0) -> nn.Module:
    """The model of ``c``, randomised (:func:`randomise`), in eval mode and ``dtype``; without any constant shift
    when ``shifts`` is False (:func:`zero_shifts`)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet's and Inception's notes on their initialisation
        if c.source == "timm":
            model = import_timm().create_model(c.builder, pretrained=False, **c.kwargs)
        else:
            model = import_torchvision().models.get_model(c.builder, weights=None, **c.kwargs)
    model = randomise(model, inputs(c, 4, seed=seed + 100), seed).to(dtype)
    return model if shifts else zero_shifts(model)


def check_explain(c: Case) -> dict[str, Any]:
    """``explain`` in eval mode on two images: (B, C, H, W), finite, not all zero. Raises AssertionError."""
    import isnet_kernels as ik

    model, x = build(c), inputs(c, 2)
    h = ik.explain(model, x, first_layer="epsilon")
    assert h.shape == x.shape, f"{c.name}: heatmaps {tuple(h.shape)} for inputs {tuple(x.shape)}"
    assert bool(torch.isfinite(h).all()), f"{c.name}: non-finite heatmap values"
    assert all(float(m.abs().sum()) > 0 for m in h), f"{c.name}: a heatmap is all zero"
    return {"heatmap_abs_sum": float(h.abs().sum())}


def conservation_error(c: Case) -> float:
    """``|sum(R_input) - logit| / |logit|`` (worst of two images) in float64 with eps = 1e-9, no constant shifts
    and the epsilon rule on the first layer: 0 up to rounding and the stabiliser where the rules conserve."""
    import isnet_kernels as ik

    model, x = build(c, torch.float64, shifts=False), inputs(c, 2, torch.float64)
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1)
    h = ik.explain(model, x, target, eps=CONSERVATION_EPS, first_layer="epsilon")
    z = logits.gather(1, target[:, None])[:, 0]
    assert bool((z.abs() > 0).all()), f"{c.name}: a zero logit"
    return float(((h.flatten(1).sum(1) - z).abs() / z.abs()).max())


def check_isnet_step(c: Case) -> dict[str, Any]:
    """One selective ISNet step in train mode on two images: ISNetLoss, backward, every gradient finite and at
    least one non-zero. Raises AssertionError."""
    import isnet_kernels as ik

    model, x = build(c), inputs(c, 2)
    labels = torch.tensor([1, 2])
    masks = torch.zeros(2, 1, c.size, c.size)
    masks[..., c.size // 4: 3 * c.size // 4, c.size // 4: 3 * c.size // 4] = 1
    isnet = ik.ISNet(model, "selective").train()
    out = isnet(x, labels)
    loss = ik.ISNetLoss()(out, labels, masks)
    assert bool(torch.isfinite(loss.total)), f"{c.name}: loss {float(loss.total.detach())}"
    loss.total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads, f"{c.name}: no parameter received a gradient"
    bad = [n for n, g in grads.items() if not bool(torch.isfinite(g).all())]
    assert not bad, f"{c.name}: non-finite gradients of {bad[:5]}"
    assert any(float(g.abs().max()) > 0 for g in grads.values()), f"{c.name}: every gradient is zero"
    return {"loss": float(loss.total.detach()), "params_with_grad": len(grads),
            "params": sum(1 for p in model.parameters() if p.requires_grad)}


def run_case(c: Case) -> dict[str, Any]:
    """All three checks of ``c``; a failure is recorded, not raised."""
    row: dict[str, Any] = {"name": c.name, "source": c.source, "family": c.family, "input": c.size,
                           "absorbs": c.absorbs}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            row.update(check_explain(c))
            row["explain_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            row["conservation_error"] = conservation_error(c)
            row["conservation_s"] = round(time.perf_counter() - t, 2)
            ok = c.absorbs is not None or row["conservation_error"] <= CONSERVATION_TOL
            t = time.perf_counter()
            row.update(check_isnet_step(c))
            row["isnet_step_s"] = round(time.perf_counter() - t, 2)
        row["status"] = "ok" if ok else "not conserved"
    except Exception as e:  # noqa: BLE001 - the table records every failure
        row["status"] = "unsupported" if type(e).__name__ == "UnsupportedLayerError" else "fail"
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    row["time_s"] = round(time.perf_counter() - t0, 2)
    return row


def _md(rows: list[dict[str, Any]], skipped: list[Case], meta: dict[str, Any]) -> str:
    ok = sum(r["status"] == "ok" for r in rows)
    lines = [
        "# torchvision and timm classifiers through isnet_kernels",
        "",
        f"torchvision {meta['torchvision']}, timm {meta.get('timm', '-')}, torch {meta['torch']}, "
        f"{meta['threads']} threads, {meta['date']}. "
        f"{ok} of {len(rows)} run ok ({len(skipped)} builders too heavy, listed below); total {meta['total_s']:.0f} s"
        + ("." if meta["complete"] else " (an interrupted run: the builders not listed were not run).")
        + "".join(f" {e['rows']} rows kept from the run of {e['date']} ({e['threads']} threads, torchvision "
                  f"{e['torchvision']}, torch {e['torch']})." for e in meta.get("earlier", [])),
        "",
        "Per builder: `explain` (eval, float32, two images), conservation (float64, eps 1e-9, no biases or shifts, "
        f"epsilon first layer: |sum R - logit| / |logit|, required <= {CONSERVATION_TOL:g} where the rules conserve), "
        "one selective ISNet step (train mode, ISNetLoss, backward, finite gradients). Time: all three, seconds of "
        "wall clock on a shared machine (the load varied during the run). timm models (`timm:NAME`) with random "
        "weights; `unsupported`: the engine refused the model with an `UnsupportedLayerError` (the note says why).",
        "",
        "| builder | family | input | status | time (s) | conservation error | note |",
        "| --- | --- | ---: | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        err = r.get("conservation_error")
        note = (r.get("error") or "")[:110] or (f"not conserved by design: {r['absorbs']}" if r["absorbs"] else "")
        lines.append(f"| {r['name']} | {r['family']} | {r['input']} | {r['status']} | {r['time_s']:.1f} | "
                     f"{'' if err is None else f'{err:.1e}'} | {note} |")
    if skipped:
        lines += ["", "Too heavy for this machine (run with `--heavy`):", ""]
        lines += [f"- {c.name}: {c.heavy}" for c in skipped]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "zoo")
    parser.add_argument("--only", nargs="*", default=None, help="case names (builders or <builder>+transform_input)")
    parser.add_argument("--heavy", action="store_true", help="also run the builders listed as too heavy")
    parser.add_argument("--resume", action="store_true", help="keep the rows of OUT/zoo.json, run the other builders")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tv = import_torchvision()
    timm = import_timm()
    todo = cases()
    skipped = [c for c in todo if c.heavy and not args.heavy]  # listed in the table, also when --only runs others
    if args.only:
        unknown = sorted(set(args.only) - {c.name for c in todo})
        if unknown:
            parser.error(f"no case named {', '.join(unknown)} (builders, <builder>+transform_input, timm:NAME)")
        todo = [c for c in todo if c.name in args.only]
    todo = [c for c in todo if c not in skipped]
    rows, t0 = [], time.perf_counter()
    earlier: list[dict[str, Any]] = []  # the runs whose rows --resume keeps
    if args.resume and (args.out / "zoo.json").exists():
        kept = json.loads((args.out / "zoo.json").read_text())
        rows = kept["rows"]
        t0 -= sum(r["time_s"] for r in rows)
        previous = {k: v for k, v in kept["meta"].items() if k not in ("earlier", "total_s", "complete")}
        earlier = kept["meta"].get("earlier", []) + [{**previous, "rows": len(rows) - sum(
            e["rows"] for e in kept["meta"].get("earlier", []))}]
    done = {r["name"] for r in rows}
    order = {c.name: i for i, c in enumerate(todo)}
    todo = sorted((c for c in todo if c.name not in done),
                  key=lambda c: c.name not in SAMPLE + TIMM_SAMPLE)  # the samples first
    total = len(rows) + len(todo)
    args.out.mkdir(parents=True, exist_ok=True)
    for c in todo:
        row = run_case(c)
        rows.append(row)
        err = row.get("conservation_error")
        print(f"{row['status']:14s} {c.name:30s} {row['time_s']:6.1f} s  "
              f"conservation {'-' if err is None else f'{err:.1e}'}  {row.get('error', '')}", flush=True)
        meta = {"torchvision": tv.__version__, "timm": timm.__version__, "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "date": time.strftime("%Y-%m-%d"), "total_s": time.perf_counter() - t0,
                "complete": len(rows) == total, "earlier": earlier}
        # written after every builder, so that an interrupted run keeps its table
        (args.out / "zoo.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                       "skipped": {c.name: c.heavy for c in skipped}}, indent=1)
                                           + "\n")
        (args.out / "zoo.md").write_text(_md(sorted(rows, key=lambda r: order.get(r["name"], 0)), skipped, meta))
    print(f"wrote {args.out / 'zoo.md'} ({time.perf_counter() - t0:.0f} s)")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
