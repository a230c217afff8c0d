"""Train :class:`~isnet_kernels.lightning.ISNetModule` with Lightning's DDP strategy on 2 CPU processes (gloo), for
``test_ddp.py``: ``python tests/pl/ddp_run.py DATA OUT``. Lightning starts the second process by running this file
again. Each process writes ``OUT/rank<r>.pt``: its classifier's parameters after one epoch and the metrics it logged.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build(data: Path, out: Path | None, devices: int):
    """The module, data module and Trainer of the comparison (``out``: a TensorBoard folder with a heatmap grid)."""
    import lightning as L
    import torch

    from isnet_kernels.lightning import HeatmapLogger, ISNetModule, MaskedImageDataModule
    from tests.train.helpers import TinyNet

    torch.manual_seed(0)
    module = ISNetModule(TinyNet(in_channels=1, num_classes=2), variant="selective", lr=0.05, seed=0)
    datamodule = MaskedImageDataModule(data, batch_size=8, seed=0)
    logger = L.pytorch.loggers.TensorBoardLogger(out, name="", version="") if out is not None else False
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=logger, callbacks=[HeatmapLogger()] if out is not None else [],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return module, datamodule, trainer


def main(data: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    module, datamodule, trainer = build(Path(data), Path(out) / "tb", devices=2)
    trainer.fit(module, datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    torch.save({"model": module.model.state_dict(), "metrics": metrics, "world_size": trainer.world_size},
               Path(out) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import tests.conftest  # noqa: F401 - the real torchvision before Lightning's torchmetrics imports it

    main(*sys.argv[1:3])
