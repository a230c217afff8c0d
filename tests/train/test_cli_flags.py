"""Bad settings fail before any data is read, with exit status 2 and one line that names the command line's flag
(``--eps``, ``--size``, ``--overwrite``), not the Python argument (``eps=``, ``size=(H, W)``, ``overwrite=True``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from isnet_kernels import cli
from isnet_kernels.errors import InputError, TargetError
from isnet_kernels.models import SmallCNN
from isnet_kernels.train import TrainConfig, Trainer, TrainError

from .helpers import write_tiny_folder

#: Python spellings a command-line user cannot type.
PYTHON_SPELLING = re.compile(r"\b(eps|size|channels|overwrite|threads|C1|C2|masks|per_class_\w+)=|model_kwargs|"
                             r"per_class_train|\bNone\b|=\(H, W\)")


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        rc = cli.main(args)
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def _one_line(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not PYTHON_SPELLING.search(lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--eps", "0"], ["--eps must be a positive number"]),
    (["--eps", "-1"], ["--eps must be a positive number"]),
    (["--C1", "100", "--C2", "1"], ["--C1 must not exceed --C2"]),
    (["--size", "3"], ["--size 3 is too small for architecture 'small'", "pass --size 8 or more"]),
    (["--arch", "vgg11", "--size", "16"], ["--size 16 is too small", "--size 32"]),
    (["--model-arg", "width=banana"], ["--model-arg width='banana'", "must be a positive int"]),
    (["--model-arg", "depth=3"], ["--model-arg depth=3", "architecture 'small' has no argument 'depth'"]),
    (["--arch", "resnet18", "--model-arg", "small_input=maybe"], ["--model-arg small_input='maybe'", "True or False"]),
    (["--arch", "resnet18", "--model-arg", "width=8"], ["--model-arg width=8", "former resnet18 copy",
                                                        "--arch small --model-arg width=N"]),
    (["--arch", "vit_b_16", "--model-arg", "small_input=True"], ["--model-arg small_input=True",
                                                                 "ResNet and DenseNet"]),
    (["--model-arg", "in_channels=3"], ["--model-arg in_channels=3", "set from the data set", "--channels 1"]),
    (["--threads", "0"], ["--threads must be a positive int"]),
    (["--batch-size", "0"], ["--batch-size must be a positive int"]),
    (["--map-chunk", "0"], ["--map-chunk must be a positive int"]),
    (["--d", "2"], ["--d must be a number in [0, 1]"]),
])
def test_a_bad_setting_fails_before_the_data_is_read(args: list[str], needles: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """--data names a folder that does not exist: the setting's error comes first, naming its flag."""
    line = _one_line(*_run(["train", "--data", str(tmp_path / "not-yet"), "--out", str(tmp_path / "run"),
                            "--quiet", *args], capsys), *needles)
    assert "not-yet" not in line
    assert not (tmp_path / "run").exists()


def test_the_data_commands_name_their_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _one_line(*_run(["data", "biased-digits", str(tmp_path / "d"), "--per-class", "0"], capsys),
              "--per-class must be a positive int")
    _one_line(*_run(["data", "biased-digits", str(tmp_path / "d"), "--size", "4"], capsys), "--size must be at least")
    (tmp_path / "full" / "images").mkdir(parents=True)
    _one_line(*_run(["data", "biased-digits", str(tmp_path / "full"), "--quiet"], capsys), "--overwrite")


def _image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_data_messages_name_the_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Images of two sizes, then of two channel counts: the fixes are --size and --channels."""
    root = write_tiny_folder(tmp_path / "d", size=8, counts={"train": 2})
    _image(root / "images" / "train" / "1" / "big.png", np.zeros((9, 9), np.uint8))
    _image(root / "masks" / "train" / "1" / "big.png", np.full((9, 9), 255, np.uint8))
    base = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--val-split", "", "--quiet",
            "--epochs", "1", "--batch-size", "8", "--variant", "none", "--arch", "small", "--model-arg", "width=2"]
    _one_line(*_run(base, capsys), "--size SIZE")
    (root / "images" / "train" / "1" / "big.png").unlink()
    (root / "masks" / "train" / "1" / "big.png").unlink()
    _image(root / "images" / "train" / "1" / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    _image(root / "masks" / "train" / "1" / "rgb.png", np.full((8, 8), 255, np.uint8))
    _one_line(*_run([*base, "--out", str(tmp_path / "run2")], capsys), "--channels 1 or --channels 3")


def test_images_too_small_for_the_architecture_name_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_tiny_folder(tmp_path / "d", size=4, counts={"train": 2})
    _one_line(*_run(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--val-split", "", "--quiet"],
                    capsys), "the images (4 x 4 pixels) are too small for architecture 'small'", "--size 8 or more")


def test_a_damaged_checkpoint_does_not_suggest_resuming_from_best(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"not a checkpoint")
    line = _one_line(*_run(["eval", "--run", str(run), "--checkpoint", "last"], capsys), "cannot read checkpoint")
    assert "resume" not in line and "best.pt" in line


def test_the_flag_rewriting() -> None:
    flags = cli.command_flags(cli._build_parser().commands["train"])
    text = cli.command_line_message("pass size=(H, W) or channels=1 or channels=3; model_kwargs and progress=False; "
                                    "eps must be positive; the image_size stays", flags, ("eps",))
    assert text == ("pass --size SIZE or --channels 1 or --channels 3; --model-arg and --quiet; "
                    "--eps must be positive; the image_size stays")


def test_train_config_validation_names_the_field() -> None:
    with pytest.raises(TrainError) as info:
        TrainConfig(data="d", out="r", threads=0)
    assert info.value.params == ("threads",)
    config = TrainConfig(data="d", out="r", size=3)  # the model is checked by Trainer (a custom model may differ)
    with pytest.raises(TrainError, match="size 3 is too small") as info:
        config.check_model()
    assert info.value.params == ("size",)
    with pytest.raises(TrainError, match="model_kwargs width='banana': width of architecture 'small' must be") as info:
        TrainConfig(data="d", out="r", model_kwargs={"width": "banana"}).check_model()
    assert info.value.params == ("model_kwargs",)


@pytest.mark.parametrize("variant", ["none", "selective", "original", "rrr"])
def test_a_model_with_fewer_outputs_than_classes_is_a_target_error(variant: str, tmp_path: Path) -> None:
    """The trainer path of an out-of-range label: a custom model with 2 outputs on data with 3 classes."""
    root = write_tiny_folder(tmp_path / "d", size=8, classes=3, counts={"train": 2})
    config = TrainConfig(data=str(root), out=str(tmp_path / "run"), variant=variant, val_split="", epochs=1,
                         batch_size=6, progress=False, deep_supervision=False)
    torch.manual_seed(0)
    with pytest.raises(TargetError, match="out of range for a model with 2 classes"):
        Trainer(config, model=SmallCNN(2, 1, width=2), log=lambda _: None).fit()


def test_the_command_line_exits_2_for_every_package_error(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An InputError from deep inside (not a TrainError or a CommandError) is still one line and exit status 2."""

    def fail(args: object) -> int:
        raise InputError("eps must be a positive number, got 0", param="eps")

    monkeypatch.setitem(cli.COMMANDS, "train", fail)
    _one_line(*_run(["train", "--out", str(tmp_path / "r")], capsys), "--eps must be a positive number")


def test_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ISNET_KERNELS_BACKEND")}
    done = subprocess.run([sys.executable, "-m", "isnet_kernels", "train", "--data", str(tmp_path / "none"), "--out",
                           str(tmp_path / "r"), "--eps", "0"], capture_output=True, text=True, env=env, timeout=300)
    _one_line(done.returncode, done.stderr, "--eps")
