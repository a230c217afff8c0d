"""Nothing wrong is accepted in silence: settings and inputs the rules cannot explain are clear ``ISNetError``s at
every entry point (``explain``, ``LRP(...)(...)``, ``ISNet(...)(x, y)``), not NaN heatmaps or raw torch errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import isnet_kernels as ik
from isnet_kernels.errors import InputError, InputTypeError, TargetError
from isnet_kernels.models import SmallCNN

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(classes, 1, width=4).eval()


def _x(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, 16, 16, generator=torch.Generator().manual_seed(1))


ENTRY_POINTS = {
    "explain": lambda model, x, **kw: ik.explain(model, x, 0, **kw),
    "LRP": lambda model, x, **kw: ik.LRP(model, **kw)(x, torch.zeros(x.shape[0], 1, dtype=torch.long)),
    "ISNet": lambda model, x, **kw: ik.ISNet(model, "selective", select="label", **kw).train()(
        x, torch.zeros(x.shape[0], dtype=torch.long)),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("eps", [0, 0.0, -1e-3, math.nan, math.inf, "0.1", True])
def test_eps_must_be_a_positive_finite_number(entry: str, eps: object) -> None:
    with pytest.raises(InputError, match="eps must be a positive number") as info:
        ENTRY_POINTS[entry](_model(), _x(), eps=eps)
    assert info.value.params == ("eps",)


def test_a_tiny_positive_eps_gives_finite_heatmaps() -> None:
    """The fix the eps message suggests for near-exact rules works: finite heatmaps."""
    heat = ik.explain(_model(), _x(), 0, eps=1e-12)
    assert torch.isfinite(heat).all()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("bounds", [(1.0, 0.0), (torch.tensor([0.0]), torch.tensor([-1.0])), (0.0, math.inf),
                                    (0.0,), "01"])
def test_bounds_must_be_finite_with_low_at_most_high(entry: str, bounds: object) -> None:
    kw = {"first_layer": "zb"} if entry == "ISNet" else {}
    with pytest.raises(InputError, match="bounds") as info:
        ENTRY_POINTS[entry](_model(), _x(), bounds=bounds, **kw)
    assert info.value.params == ("bounds",)


def test_per_channel_bounds_are_checked_per_channel() -> None:
    model = SmallCNN(3, 3, width=4).eval()
    x = torch.rand(2, 3, 16, 16)
    ik.explain(model, x, 0, bounds=(torch.zeros(3), torch.ones(3)))
    with pytest.raises(InputError, match="low <= high"):
        ik.explain(model, x, 0, bounds=(torch.zeros(3), torch.tensor([1.0, -1.0, 1.0])))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_inputs_outside_the_zb_bounds_are_refused(entry: str) -> None:
    kw = {"first_layer": "zb"} if entry == "ISNet" else {}
    with pytest.raises(InputError, match="outside the Z.B bounds") as info:
        ENTRY_POINTS[entry](_model(), _x() * 3, **kw)
    assert info.value.params == ("bounds",)
    ENTRY_POINTS[entry](_model(), _x() * 3, bounds=(0.0, 3.0), **kw)  # the data's own bounds: accepted
    ENTRY_POINTS[entry](_model(), _x() * 3, first_layer="epsilon")  # the epsilon rule has no bounds
    # rounding at the edges is not an error: normalised data and bounds computed separately
    mean, std = 0.3, 0.2
    ENTRY_POINTS[entry](_model(), (_x() - mean) / std, bounds=((0 - mean) / std, (1 - mean) / std), **kw)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_input_of_another_dtype_than_the_model(entry: str) -> None:
    with pytest.raises(InputTypeError, match="float16 but the model's parameters are torch.float32"):
        ENTRY_POINTS[entry](_model(), _x().half())


def test_a_float64_model_explains_float64_input_and_autocast_is_left_alone() -> None:
    ik.explain(_model().double(), _x().double(), 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ik.explain(_model(), _x(), 0)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_empty_batch(entry: str) -> None:
    with pytest.raises(InputError, match="batch is empty"):
        ENTRY_POINTS[entry](_model(), _x(0))


class _Maps(nn.Module):
    """A 'classifier' whose output is a map (B, K, h, w), not (B, K)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_model_whose_output_is_not_b_by_k(entry: str) -> None:
    kw = {"deep_supervision": False} if entry == "ISNet" else {}
    with pytest.raises(InputError, match=r"logits of shape \(B, K\) = \(2, K\).*got \(2, 3, 14, 14\)"):
        ENTRY_POINTS[entry](_Maps(), _x(), **kw)
    if entry == "ISNet":
        with pytest.raises(InputError, match=r"logits of shape \(B, K\)"):
            ENTRY_POINTS[entry](_Maps(), _x(), heatmap="gradinput", **kw)


@pytest.mark.parametrize("label", [3, -1, 100])
def test_out_of_range_targets_on_every_entry_point(label: int) -> None:
    model, x = _model(3), _x()
    with pytest.raises(TargetError, match="out of range"):
        ik.explain(model, x, label)
    with pytest.raises(TargetError, match="out of range"):
        ik.explain(model, x, torch.tensor([0, label]))
    with pytest.raises(TargetError, match="out of range"):
        ik.LRP(model)(x, torch.tensor([[0], [label]]))
    for variant, kw in (("selective", {"select": "label"}), ("selective", {"select": "label", "heatmap": "gradinput"}),
                        ("original", {}), ("stochastic", {}), ("dual", {})):
        isnet = ik.ISNet(model, variant, **kw).train()
        labels = torch.tensor([0, label])
        if variant == "selective":  # the labels choose the maps: checked in the forward
            with pytest.raises(TargetError, match=f"label {label} is out of range for a model with 3 classes"):
                isnet(x, labels)
        out = isnet(x, torch.tensor([0, 1]))  # the loss checks the labels it is given
        with pytest.raises(TargetError, match="out of range"):
            ik.ISNetLoss()(out, labels, torch.ones(2, 1, 16, 16))
    with pytest.raises(TargetError, match="out of range"):
        x = x.clone().requires_grad_(True)
        ik.isnet.RRRLoss()(model(x), x, torch.tensor([0, label]), torch.ones(2, 1, 16, 16))


#: Every way the package runs the relevance pass, each a call with out-of-range class ``label`` for image 1 where
#: the call takes classes (the ISNet variants that choose their own maps run without a bad one).
DRIVER_CALLS = {
    "explain(int)": lambda model, x, label: ik.explain(model, x, label),
    "explain(tensor)": lambda model, x, label: ik.explain(model, x, torch.tensor([0, label])),
    "explain(selective)": lambda model, x, label: ik.explain(model, x, label, output="selective"),
    "explain(all)": lambda model, x, label: ik.explain(model, x, output="all"),
    "LRP": lambda model, x, label: ik.LRP(model)(x, torch.tensor([[0], [label]])),
    "LRP(int32, two maps)": lambda model, x, label: ik.LRP(model)(x, torch.tensor([[0, 1], [1, label]],
                                                                                  dtype=torch.int32)),
    "LRP(selective)": lambda model, x, label: ik.LRP(model)(x, torch.tensor([[0], [label]]), "selective"),
    "LRP('all')": lambda model, x, label: ik.LRP(model)(x, "all"),
    "LRP.run(chooser)": lambda model, x, label: ik.LRP(model).run(x, lambda logits: torch.tensor([[0], [label]])),
    "ISNet(selective)": lambda model, x, label: ik.ISNet(model, "selective").train()(x, torch.tensor([0, label])),
    "ISNet(selective, low memory)": lambda model, x, label: ik.ISNet(model, "selective", memory="low").train()(
        x, torch.tensor([0, label])),
    "ISNet(selective, deep supervision)": lambda model, x, label: ik.ISNet(
        model, "selective", deep_supervision=True).train()(x, torch.tensor([0, label])),
    "ISNet(gradinput)": lambda model, x, label: ik.ISNet(model, "selective", heatmap="gradinput").train()(
        x, torch.tensor([0, label])),
    "ISNet(original, chunked)": lambda model, x, label: ik.ISNet(model, "original", map_chunk=1).train()(x),
    "ISNet(original, low memory)": lambda model, x, label: ik.ISNet(model, "original", memory="low").train()(x),
    "ISNet(stochastic)": lambda model, x, label: ik.ISNet(model, "stochastic").train()(x),
    "ISNet(lowest)": lambda model, x, label: ik.ISNet(model, "selective", select="lowest").train()(x),
    "ISNet(dual)": lambda model, x, label: ik.ISNet(model, "dual").train()(x),
    "ISNet(multilabel)": lambda model, x, label: ik.ISNet(model, "selective", task="multilabel").train()(
        x, torch.tensor([[1, 0, 1], [0, 0, 0]])),
    "ISNet(multilabel, original)": lambda model, x, label: ik.ISNet(model, "original", task="multilabel").train()(
        x, torch.tensor([[1, 0, 1], [0, 0, 0]])),
}
#: The calls whose classes come from the caller, and so can be out of range.
TAKES_CLASSES = ["explain(int)", "explain(tensor)", "explain(selective)", "LRP", "LRP(int32, two maps)",
                 "LRP(selective)", "LRP.run(chooser)", "ISNet(selective)", "ISNet(selective, low memory)",
                 "ISNet(selective, deep supervision)", "ISNet(gradinput)"]


@pytest.mark.parametrize("call", DRIVER_CALLS)
def test_every_entry_point_runs_the_one_driver(call: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """explain, LRP.__call__ and every LRP ISNet variant run the relevance pass through LRP.run, once per call (the
    Grad x Input ISNet has no LRP pass); a call with valid classes gives finite heatmaps."""
    calls = []
    run = ik.LRP.run

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("sync", False))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(ik.LRP, "run", counted)
    out = DRIVER_CALLS[call](_model(3), _x(), 2)
    heat = out if isinstance(out, torch.Tensor) else out[1] if isinstance(out, tuple) else out.heatmaps
    assert torch.isfinite(heat).all()
    assert calls == ([] if "gradinput" in call else [call.startswith("explain")])  # explain alone synchronises


@pytest.mark.parametrize("call", TAKES_CLASSES)
@pytest.mark.parametrize("label", [3, -1, 100])
def test_out_of_range_classes_raise_through_the_driver(call: str, label: int) -> None:
    """An out-of-range class on CPU is a TargetError at every entry point that takes classes, whatever the output
    rule, chunking, segments or deep supervision (never a raw gather error): the ISNet names the label."""
    match = f"label {label} is out of range" if call.startswith("ISNet") else f"target class {label} is out of range"
    with pytest.raises(TargetError, match=match):
        DRIVER_CALLS[call](_model(3), _x(), label)


def test_out_of_range_multilabel_targets_and_variants_that_ignore_labels() -> None:
    """Multi-label targets that are not 0/1 are a TargetError in the forward; the variants that choose their maps
    without the labels leave them to the loss, which raises."""
    model, x = _model(3), _x()
    with pytest.raises(TargetError, match="multi-label targets must be 0 or 1"):
        ik.ISNet(model, "selective", task="multilabel").train()(x, torch.tensor([[1, 0, 2], [0, 0, 0]]))
    for variant in ("original", "stochastic", "dual"):
        out = ik.ISNet(model, variant).train()(x, torch.tensor([0, 7]))
        assert torch.isfinite(out.heatmaps).all()
        with pytest.raises(TargetError, match="out of range"):
            ik.ISNetLoss()(out, torch.tensor([0, 7]), torch.ones(2, 1, 16, 16))


def test_labels_of_a_wrong_type_or_shape() -> None:
    isnet = ik.ISNet(_model(), "selective", select="label").train()
    with pytest.raises(InputTypeError, match="integer"):
        isnet(_x(), torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError, match=r"shape \(B,\) = \(2,\)"):
        isnet(_x(), torch.tensor([[0], [1]]))


@CUDA
def test_out_of_range_labels_on_cuda_give_nan_maps_and_a_target_error_without_a_device_assert() -> None:
    """On an accelerator the range is not read back in the forward (no synchronisation): the maps of the images
    with a bad label are NaN, and the loss, which synchronises anyway, raises TargetError; the device stays usable
    (an out-of-range index would have raised a device-side assertion)."""
    model, x = _model(3).cuda(), _x().cuda()
    isnet = ik.ISNet(model, "selective", select="label", backend="reference").train()
    labels = torch.tensor([0, 7], device="cuda")
    out = isnet(x, labels)
    assert torch.isnan(out.heatmaps[1]).all() and torch.isfinite(out.heatmaps[0]).all()
    with pytest.raises(TargetError, match="out of range"):
        ik.ISNetLoss()(out, labels, torch.ones(2, 1, 16, 16, device="cuda"))
    propagated = ik.ISNetLoss(nonfinite="propagate")(out, labels, torch.ones(2, 1, 16, 16, device="cuda"))
    assert torch.isnan(propagated.total)
    _, heat = ik.LRP(model, backend="reference")(x, labels.view(2, 1))
    assert torch.isnan(heat[1]).all()
    for kw in ({"memory": "low"}, {"deep_supervision": True}, {"heatmap": "gradinput"}):
        out = ik.ISNet(model, "selective", backend="reference", **kw).train()(x, labels)
        assert torch.isnan(out.heatmaps[1]).all() and torch.isfinite(out.heatmaps[0]).all()
        assert all(torch.isnan(r[1]).all() for r in out.intermediate.values())
        assert out.targets[1, 0] == 0
    result = ik.LRP(model, backend="reference").run(x, lambda logits: labels.view(2, 1).expand(2, 3), map_chunk=1)
    assert torch.isnan(result.heatmaps[1]).all() and torch.isfinite(result.heatmaps[0]).all()
    with pytest.raises(TargetError, match="target class 7 is out of range"):  # explain synchronises: it raises
        ik.explain(model, x, labels)
    torch.cuda.synchronize()  # the device still works
    assert float(torch.ones(1, device="cuda").sum()) == 1.0
