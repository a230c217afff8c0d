"""Data set writers leave nothing half-done: an interrupted or killed write never blocks the next one, and a set
far larger than asked for (or than the free disk space) is refused with its estimate before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from isnet_kernels import cli
from isnet_kernels.data import (
    DataError,
    biased_digits,
    write_biased_digits,
    write_biased_scenes,
    write_biased_tags,
    writing,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = {"per_class_train": 2, "per_class_val": 1, "per_class_test": 1, "progress": False}


def _beside(root: Path) -> list[str]:
    """The hidden folders of writers beside ``root``."""
    return sorted(p.name for p in root.parent.iterdir() if p.name.startswith(f".{root.name}."))


@pytest.mark.parametrize("writer", [write_biased_digits, write_biased_tags, write_biased_scenes])
def test_an_interrupted_write_leaves_no_partial_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    writer) -> None:
    root = tmp_path / "set"
    saved = 0
    real_save = biased_digits.Image.Image.save

    def save_then_stop(self, *args, **kwargs):
        nonlocal saved
        saved += 1
        if saved == 25:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the images
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(biased_digits.Image.Image, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        writer(root, **SMALL)
    monkeypatch.undo()
    assert saved == 25
    assert not root.exists() and _beside(root) == []
    info = writer(root, **SMALL)  # no --overwrite needed: nothing was left
    assert info["counts"]["train"] == 20 and (root / "info.json").is_file()


def test_a_killed_write_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    root = tmp_path / "digits"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "isnet_kernels", "data", "biased-digits", str(root), "--quiet"],
                            env=env)
    try:
        deadline = time.monotonic() + 120
        while sum(1 for _ in tmp_path.rglob("*.png")) < 200:  # well into the images
            assert proc.poll() is None and time.monotonic() < deadline, "the writer ended too soon"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (root / "images").exists() and not (root / "info.json").exists()  # no partial set in root
    assert len(_beside(root)) == 1  # the killed writer's hidden folder
    assert cli.main(["data", "biased-digits", str(root), "--per-class", "2", "--per-class-val", "1",
                     "--per-class-test", "1", "--quiet"]) == 0
    assert _beside(root) == [] and json.loads((root / "info.json").read_text())["counts"]["train"] == 20


def test_overwrite_replaces_the_set_once_the_new_one_is_complete(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_biased_digits(root, seed=1, **SMALL)
    (root / "notes.txt").write_text("mine")
    write_biased_digits(root, seed=2, overwrite=True, **{**SMALL, "per_class_train": 3})
    info = json.loads((root / "info.json").read_text())
    assert info["seed"] == 2 and len(list((root / "images" / "train").glob("*/*.png"))) == 30
    assert (root / "notes.txt").read_text() == "mine" and _beside(root) == []


def test_a_huge_set_is_refused_with_its_estimate_before_anything_is_written(tmp_path: Path) -> None:
    root = tmp_path / "huge"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "isnet_kernels", "data", "biased-digits", str(root), "--per-class",
                           "100000", "--quiet"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert "\n" not in err and "2,001,700 images" in err and "4,003,403 files" in err and "GB" in err
    assert "--yes" in err
    assert not root.exists() and _beside(root) == []
    with pytest.raises(DataError, match="more than the 10 files"):
        write_biased_digits(root, max_files=10, **SMALL)
    assert write_biased_digits(root, max_files=None, **SMALL)["counts"]["train"] == 20


def test_a_set_larger_than_the_free_space_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(writing.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 5000, 5000))
    files, nbytes = writing.estimate(80, 32, tmp_path)
    assert files == 163 and nbytes > 5000
    args = ["data", "biased-digits", str(tmp_path / "set"), "--per-class", "2", "--per-class-val", "1",
            "--per-class-test", "1", "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "5.0 KB free" in err and "163 files" in err and not (tmp_path / "set").exists()
    monkeypatch.undo()
    assert cli.main([*args, "--yes"]) == 0
    shutil.rmtree(tmp_path / "set")
