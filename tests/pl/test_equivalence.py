"""The same model, data, seed and settings trained by the package's trainer (what ``isnet train`` runs) and by
``lightning.Trainer`` with :class:`~isnet_kernels.lightning.ISNetModule` on CPU with one thread: the same loss on
the first batch, and after 2 epochs the same accuracies (within 2 points; in practice equal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from isnet_kernels.train import TrainConfig, Trainer

from ..optional import require

L = require("lightning")
from isnet_kernels.lightning import ISNetModule, MaskedImageDataModule  # noqa: E402

SETTINGS: dict[str, Any] = {"variant": "selective", "lr": 0.05, "warmup_epochs": 0.5}


class _FirstLoss(L.Callback):
    def __init__(self) -> None:
        self.loss: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.loss is None:
            self.loss = float(outputs["loss"])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_trainer_and_lightning_train_alike(tiny_data: Path, tmp_path: Path, optimizer: str) -> None:
    settings = {**SETTINGS, "optimizer": optimizer, **({"lr": 0.01} if optimizer == "adamw" else {})}
    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), arch="small", model_kwargs={"width": 2},
                         epochs=2, batch_size=4, device="cpu", threads=1, progress=False, seed=0, **settings)
    first: list[float] = []

    def capture(trainer: Trainer, epoch: int, step: int) -> None:
        if not first:
            first.append(trainer.meter.means()["loss"])

    result = Trainer(config, callbacks=[capture], log=lambda message: None).fit()

    data = MaskedImageDataModule(tiny_data, batch_size=4, seed=0)
    L.seed_everything(0, verbose=False)
    module = ISNetModule("small", data.num_classes, data.in_channels, model_kwargs={"width": 2}, seed=0, **settings)
    assert module.config.lr_schedule == "cosine" and module.config.clip == 1.0  # the trainer's defaults
    hook = _FirstLoss()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[hook])
    trainer.fit(module, data)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}

    assert hook.loss == pytest.approx(first[0], abs=1e-6)
    last = result.history[-1]
    assert abs(logged["train_accuracy"] - last["train_accuracy"]) <= 0.02
    assert abs(logged["val_accuracy"] - last["val_accuracy"]) <= 0.02
    # in fact the whole run is the same, up to summation order
    assert logged["train_loss"] == pytest.approx(last["train_loss"], rel=1e-4)
    assert logged["val_loss"] == pytest.approx(last["val_loss"], rel=1e-4)
    assert logged["val_background_fraction"] == pytest.approx(last["val_background_fraction"], rel=1e-4)
    assert logged["lr"] == pytest.approx(last["lr"], rel=1e-6)  # logged as float32
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=1e-4, atol=1e-5, msg=name)
