"""The original ISNet's relevance pass in chunks of the map axis: the same maps, losses and gradients as one pass,
with the memory autograd keeps bounded by the chunk; the automatic chunk size; the per-program capture cache."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import Tensor, nn

from isnet_kernels import ISNet, ISNetLoss
from isnet_kernels.lrp import chunking, clear_cache
from isnet_kernels.lrp.graph import module_output
from isnet_kernels.models import SmallCNN

from .test_wrapper import DT, Tiny, _randomize

K = 7


def _model(classes: int = K) -> nn.Module:
    return _randomize(Tiny(1, classes, 2).to(DT))


def _masks(batch: int = 3, size: int = 6) -> Tensor:
    masks = torch.zeros(batch, 1, size, size, dtype=DT)
    masks[..., 1:4, 1:5] = 1
    return masks


def _step(model: nn.Module, map_chunk: int | None, *, deep: bool, train: bool, batch_stats: str = "detached",
          x: Tensor | None = None):
    """Heatmaps, intermediate maps, the loss and the gradients of the loss w.r.t. every parameter and the input."""
    net = ISNet(model, "original", deep_supervision=deep, batch_stats=batch_stats, map_chunk=map_chunk).train(train)
    model.zero_grad(set_to_none=True)
    x = (torch.rand(3, 1, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(1)) if x is None else x)
    x = x.clone().requires_grad_(True)
    labels = torch.tensor([0, 3, 6])
    out = net(x, labels, heatmaps=True)
    loss = ISNetLoss(C1=2.0, C2=2.0, d_loss=0.5)(out, labels, _masks())
    loss.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, loss, grads, x.grad.clone(), net.last_map_chunk


@pytest.mark.parametrize("deep", [False, True], ids=["input", "deep"])
@pytest.mark.parametrize(("train", "batch_stats"), [(True, "detached"), (True, "live"), (False, "detached")],
                         ids=["train", "train-live", "eval"])
def test_chunked_maps_losses_and_gradients_equal_one_pass(deep, train, batch_stats):
    """float64, K = 7 maps per image, chunks of 1, 2, 3 (not dividing K), 6 and 7 (one pass): every output equals
    the unchunked one to rounding."""
    model = _model()
    ref_out, ref_loss, ref_grads, ref_xgrad, ref_chunk = _step(model, K, deep=deep, train=train,
                                                                batch_stats=batch_stats)
    assert ref_chunk == K and ref_out.heatmaps.shape == (3, K, 1, 6, 6)
    assert len(ref_out.intermediate) == (1 if deep else 0)
    assert len(ref_grads) >= 4 and ref_xgrad.abs().max() > 0
    for chunk in (1, 2, 3, 6):
        out, loss, grads, xgrad, used = _step(model, chunk, deep=deep, train=train, batch_stats=batch_stats)
        assert used == chunk
        torch.testing.assert_close(out.logits, ref_out.logits, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.heatmaps, ref_out.heatmaps, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(out.targets, ref_out.targets)
        assert out.intermediate.keys() == ref_out.intermediate.keys()
        for name, level in ref_out.intermediate.items():
            torch.testing.assert_close(out.intermediate[name], level, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(loss.total, ref_loss.total, rtol=1e-12, atol=1e-13)
        assert grads.keys() == ref_grads.keys()
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
        torch.testing.assert_close(xgrad, ref_xgrad, rtol=1e-10, atol=1e-12)


def test_chunk_larger_than_k_is_one_pass():
    model = _model()
    *_, used = _step(model, 100, deep=False, train=True)
    assert used == K


def test_chunked_inference_equals_one_pass():
    """Without autograd the chunks run plainly (no checkpointing) and give the same maps."""
    model = _model()
    x = torch.rand(3, 1, 6, 6, dtype=DT)
    with torch.no_grad():
        ref = ISNet(model, "original", map_chunk=K).train()(x, heatmaps=True)
        out = ISNet(model, "original", map_chunk=3, deep_supervision=True).train()(x, heatmaps=True)
    assert not out.heatmaps.requires_grad
    torch.testing.assert_close(out.heatmaps, ref.heatmaps, rtol=1e-12, atol=1e-13)


class _SavedBytes:
    """Bytes of the distinct storages autograd saves outside any checkpoint (parameters excluded)."""

    def __init__(self, params) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.skip and storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t


def _saved_bytes(classes: int, map_chunk: int) -> tuple[int, Tensor]:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=classes, in_channels=1, width=4).train()
    net = ISNet(model, "original", map_chunk=map_chunk).train()
    x = torch.rand(2, 1, 16, 16)
    counter = _SavedBytes(model.parameters())
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        heat = net(x).heatmaps
    return counter.bytes, heat


def test_chunks_bound_the_memory_autograd_keeps():
    """One pass keeps relevance tensors for every map (the bytes grow with K); in chunks of 2 maps the relevance
    graph is not kept (the checkpoints rebuild it in the backward): what stays saved is the forward's, whatever
    K. The maps are those of one pass."""
    one_4, _ = _saved_bytes(4, 4)
    one_32, heat_one = _saved_bytes(32, 32)
    chunked_4, _ = _saved_bytes(4, 2)
    chunked_32, heat_chunked = _saved_bytes(32, 2)
    torch.testing.assert_close(heat_chunked, heat_one)
    assert one_32 > 4 * one_4  # the unchunked pass's saved tensors grow with K
    assert chunked_32 < 1.2 * chunked_4  # the chunked pass keeps the same whatever K
    assert chunked_32 < one_32 / 6


def test_auto_chunk_from_available_memory(monkeypatch):
    """map_chunk=None: MEMORY_SHARE of the available memory over the estimated bytes per map; a small budget
    chunks (to the same maps), a large one does not."""
    model = _model()
    ref_out, _, ref_grads, _, used = _step(model, None, deep=False, train=True)
    assert used == K  # this machine's memory holds 7 tiny maps
    monkeypatch.setattr(chunking, "available_memory", lambda device: 1)
    out, _, grads, _, used = _step(model, None, deep=False, train=True)
    assert used == 1
    torch.testing.assert_close(out.heatmaps, ref_out.heatmaps, rtol=1e-12, atol=1e-13)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12)


def test_auto_map_chunk_arithmetic():
    share = chunking.MEMORY_SHARE
    assert chunking.auto_map_chunk(1000, 100, torch.device("cpu"), available=int(4000 / share)) == 40
    assert chunking.auto_map_chunk(1000, 100, torch.device("cpu"), available=10) == 1
    assert chunking.auto_map_chunk(10, 100, torch.device("cpu"), available=10**12) == 10


def test_bytes_per_map_counts_the_saved_activations_once():
    a = torch.zeros(2, 3, 4, 4)
    w = torch.zeros(5, 5)
    saved = {"x": (a, a, 1.0), "y": [torch.zeros(10, dtype=torch.float64)], "w": (w,), "z": {"k": a.view(-1)}}
    assert chunking.saved_activation_bytes(saved, exclude=[w]) == 96 * 4 + 10 * 8
    assert chunking.bytes_per_map(saved, exclude=[w]) == int(chunking.GRAPH_FACTOR * (96 * 4 + 10 * 8))


def test_available_memory_cpu_reads_meminfo():
    with open("/proc/meminfo") as f:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    got = chunking.available_memory(torch.device("cpu"))
    assert got is not None and 0 < got <= fields["MemTotal"]
    assert chunking.available_memory(torch.device("meta")) is None


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_bad_map_chunk(bad):
    with pytest.raises(ValueError, match="map_chunk must be a positive"):
        ISNet(_model(), "original", map_chunk=bad)


# --------------------------------------------------------------------------------------------------------------
# the capture steps of deep supervision, per compiled program


def test_capture_steps_recomputed_for_a_new_program():
    """After clear_cache and a change of structure, the ISNet captures the supervised module's output in the new
    program (whose step names differ), and the old program's entry dies with it."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, in_channels=1, width=2).to(DT).train()
    net = ISNet(model, "original", deep_supervision=["features.2"]).train()
    old = net.lrp.program
    old_steps = net._capture_steps(old)
    assert old_steps == [module_output(old, "features.2")] and len(net._capture) == 1

    model.features[2] = nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU()).to(DT)
    clear_cache()
    del old
    gc.collect()
    assert len(net._capture) == 0  # the entry died with its program
    x = torch.rand(2, 1, 16, 16, dtype=DT)
    out = net(x, heatmaps=True)
    new = net.lrp.program
    new_steps = net._capture_steps(new)
    assert new_steps == [module_output(new, "features.2")] and new_steps != old_steps  # the Sequential's last ReLU
    fresh = ISNet(model, "original", deep_supervision=["features.2"]).train()(x, heatmaps=True)
    torch.testing.assert_close(out.intermediate["features.2"], fresh.intermediate["features.2"])
    torch.testing.assert_close(out.heatmaps, fresh.heatmaps)


def test_capture_cache_never_serves_another_program_with_the_same_id():
    """An entry whose program is not the one asked for (an id reused after the first was freed) is not returned."""
    torch.manual_seed(0)
    a = ISNet(SmallCNN(num_classes=3, width=2), deep_supervision=True)
    b = ISNet(SmallCNN(num_classes=3, width=2), deep_supervision=True)
    prog_a, prog_b = a.lrp.program, b.lrp.program
    cache = a._capture
    assert cache.get(prog_a) == a._capture_steps(prog_a)
    cache._entries[id(prog_b)] = cache._entries[id(prog_a)]  # as if prog_b had reused prog_a's id
    assert cache.get(prog_b) is None


def test_an_isnet_with_a_capture_cache_copies_and_pickles():
    import copy
    import pickle

    torch.manual_seed(0)
    net = ISNet(SmallCNN(num_classes=3, width=2), "original", deep_supervision=True, map_chunk=2).train()
    x = torch.rand(2, 1, 16, 16)
    ref = net(x)
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert len(other._capture) == 0 and other.map_chunk == 2
        out = other(x)
        assert out.intermediate.keys() == ref.intermediate.keys()
        torch.testing.assert_close(out.heatmaps, ref.heatmaps)
