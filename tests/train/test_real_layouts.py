"""From a data set's own layout to an evaluation, through the command line: import, inspect, train with
augmentation, evaluate with worst-group accuracy; raw Pet trimaps refused with the fix; augmentation resumed
exactly; a multi-label manifest trained as one, and refused with --task multiclass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from isnet_kernels import cli
from isnet_kernels.train import TrainConfig, TrainError, load_checkpoint, train

from ..data.layouts import write_cub, write_pet, write_waterbirds

ARGS = ("--arch", "small", "--model-arg", "width=2", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
        "--size", "16", "--channels", "3", "--quiet")


def _train(data: Path, run: Path, *extra: str) -> int:
    return cli.main(["train", "--data", str(data), "--out", str(run), *ARGS, *extra])


def test_pet_raw_trimaps_refused_then_trained_and_evaluated(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_pet(tmp_path / "oxford-iiit-pet")
    manifest = tmp_path / "pet.csv"
    assert cli.main(["data", "import", "oxford-pet", str(root), str(manifest)]) == 0
    assert "--mask-foreground 1" in capsys.readouterr().out
    assert cli.main(["data", "inspect", str(manifest), "--figure", str(tmp_path / "fig.png"), "--quiet"]) == 0
    assert "try --mask-foreground 1" in capsys.readouterr().out and (tmp_path / "fig.png").is_file()

    assert _train(manifest, tmp_path / "raw") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are all foreground" in err
    assert "pixel values 1, 2, 3 found" in err and "try --mask-foreground 1" in err
    assert not (tmp_path / "raw" / "last.pt").exists()

    run = tmp_path / "pet-run"
    assert _train(manifest, run, "--mask-foreground", "1", "--augment", "standard") == 0
    out = capsys.readouterr().out
    assert "masks of split 'train': 10 images, 0 all foreground" in out
    row = json.loads((run / "metrics.json").read_text())[0]
    assert row["val_balanced_accuracy"] is not None and row["val_macro_f1"] is not None
    assert row["val_worst_group_accuracy"] is not None  # cat and dog groups

    assert cli.main(["eval", "--run", str(run), "--bootstrap", "20", "--quiet"]) == 0
    result = json.loads((run / "eval-best.json").read_text())
    test = result["splits"]["test"]
    assert set(test["group_accuracy"]) == {"cat", "dog"} and test["images"] == 4
    assert test["worst_group_accuracy"] == min(test["group_accuracy"].values())
    assert sum(map(sum, test["confusion_matrix"])) == 4 and set(test["per_class_recall"]) == {"Abyssinian",
                                                                                             "american_bulldog"}
    assert (run / "eval-best-confusion-test.png").is_file()
    assert "| worst group |" in capsys.readouterr().out

    # explain reads the mask under the run's convention: the trimap's pet, not the whole image
    from isnet_kernels.train.figure import read_mask

    trimap = root / "annotations" / "trimaps" / "Abyssinian_7.png"
    assert read_mask(trimap, (16, 16), 16).sum() == 256
    pet = read_mask(trimap, (16, 16), 16, TrainConfig.from_dict(load_checkpoint(run / "last.pt")["config"])
                    .mask_convention)
    assert 40 < pet.sum() < 120
    assert cli.main(["explain", str(root / "images" / "Abyssinian_7.jpg"), "--run", str(run), "--mask", str(trimap),
                     "--out", str(tmp_path / "explain.png")]) == 0
    assert "background relevance" in capsys.readouterr().out and (tmp_path / "explain.png").is_file()


def test_waterbirds_groups_through_training_and_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_waterbirds(tmp_path / "waterbirds", tmp_path / "segmentations")
    manifest = tmp_path / "wb.csv"
    assert cli.main(["data", "import", "waterbirds", str(root), str(manifest)]) == 0
    run = tmp_path / "wb-run"
    assert _train(manifest, run, "--mask-threshold", "0.5", "--augment", "standard", "--variant", "selective") == 0
    assert cli.main(["eval", "--run", str(run), "--bootstrap", "0", "--quiet"]) == 0
    test = json.loads((run / "eval-best.json").read_text())["splits"]["test"]
    assert set(test["group_accuracy"]) == {"landbird_on_land", "landbird_on_water", "waterbird_on_land",
                                           "waterbird_on_water"}
    assert test["average_group_accuracy"] == pytest.approx(sum(test["group_accuracy"].values()) / 4)
    assert test["auroc_ci"] is None and test["background_fraction"] is not None


def test_cub_boxes_train(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_cub(tmp_path / "CUB_200_2011")
    manifest = tmp_path / "cub.csv"
    assert cli.main(["data", "import", "cub", str(root), str(manifest), "--boxes-only"]) == 0
    assert _train(manifest, tmp_path / "cub-run", "--variant", "rrr") == 0
    assert (tmp_path / "cub-run" / "best.pt").is_file()


def test_multilabel_manifest_task(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("image,labels,box,split\nx.png,a;b,0 0 8 8,train\nx.png,b,0 0 8 8,val\n")
    assert _train(tmp_path / "m.csv", tmp_path / "refused", "--task", "multiclass", "--mask-check", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "multi-label manifest" in err and "--task multilabel" in err
    assert not (tmp_path / "refused" / "last.pt").exists()
    assert _train(tmp_path / "m.csv", tmp_path / "run", "--mask-check", "1") == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["task"] == "multilabel"


def test_mask_settings_checked_up_front() -> None:
    with pytest.raises(TrainError, match="exclude each other") as exc:
        TrainConfig(data="d", out="o", mask_foreground="1", mask_threshold=0.5)
    assert exc.value.params == ("mask_threshold",)
    with pytest.raises(TrainError, match="mask_check must be a share"):
        TrainConfig(data="d", out="o", mask_check=2)
    with pytest.raises(TrainError, match="augment must be one of"):
        TrainConfig(data="d", out="o", augment="heavy")
    assert TrainConfig(data="d", out="o", mask_foreground="3,1", mask_invert=True).mask_convention.describe() == \
        "--mask-foreground 1,3 --mask-invert"


def test_augmented_run_resumes_exactly(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("torchvision.transforms.v2")
    base = dict(data=str(tiny_data), arch="small", model_kwargs={"width": 2}, batch_size=4, progress=False,
                device="cpu", augment="standard", lr_schedule="constant", variant="selective")

    def interrupt(trainer, epoch: int, step: int) -> None:
        if (epoch, step) == (1, 1):
            raise KeyboardInterrupt

    straight = train(TrainConfig(out=str(tmp_path / "a"), epochs=2, **base))
    cut = train(TrainConfig(out=str(tmp_path / "b"), epochs=2, **base), callbacks=[interrupt])
    assert cut.interrupted
    resumed = train(TrainConfig(out=str(tmp_path / "b"), epochs=2, **base), resume=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    plain = train(TrainConfig(out=str(tmp_path / "c"), epochs=2, **{**base, "augment": "none"}))
    c = load_checkpoint(tmp_path / "c" / "last.pt")
    assert any(not torch.equal(a["model"][k], c["model"][k]) for k in a["model"])  # augmentation changed the steps
    assert straight.epochs_done == resumed.epochs_done == plain.epochs_done == 2


def test_missing_torchvision_is_one_line(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--augment", "standard",
                     "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs torchvision" in err and "--augment none" in err


def test_folder_groups_from_artefacts_csv(tmp_path: Path) -> None:
    from isnet_kernels.train.data import dataset_groups, open_split

    from .helpers import write_tiny_folder

    root = write_tiny_folder(tmp_path / "data", counts={"test": 2})
    assert dataset_groups(open_split(root, "test")) is None
    rows = ["split,path,label,group"] + [f"test,test/{c}/{k:03d}.png,{c},{c}:{'aligned' if k else 'conflicting'}"
                                         for c in range(2) for k in range(2)]
    (root / "artefacts.csv").write_text("\n".join(rows) + "\n")
    assert dataset_groups(open_split(root, "test")) == ["0:conflicting", "0:aligned", "1:conflicting", "1:aligned"]


def test_a_relative_manifest_is_found_from_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    root = write_cub(tmp_path / "work" / "CUB_200_2011", segmentations=False)
    monkeypatch.chdir(tmp_path / "work")
    assert cli.main(["data", "import", "cub", "CUB_200_2011", "cub.csv", "--boxes-only"]) == 0
    assert _train(Path("cub.csv"), tmp_path / "run", "--variant", "none") == 0
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", "--run", str(tmp_path / "run"), "--bootstrap", "0", "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "eval-best.json").read_text())["data"] == str(tmp_path / "work" / "cub.csv")
    assert _train(Path("cub.csv"), tmp_path / "run", "--variant", "none", "--epochs", "2", "--resume") == 0
    assert root.is_dir()
