"""The software stacks the suite is tested on, as ``pyproject.toml`` states them (``[tool.isnet-kernels.tested-with]``),
are the ones the Makefile installs: the development environment (``make venv``) and the GPU machines' stack
(``make mirror-venv``); and the running interpreter is one of them."""

from __future__ import annotations

import platform
import re
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _stacks() -> dict[str, dict[str, str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["isnet-kernels"]["tested-with"]


def _makefile_pin(variable: str, package: str) -> str:
    makefile = (ROOT / "Makefile").read_text()
    line = re.search(rf"^{variable}\s*:=(.*)$", makefile, re.M)
    assert line, f"Makefile has no {variable}"
    pin = re.search(rf"\b{package}==([\w.]+)", line.group(1))
    assert pin, f"Makefile's {variable} pins no {package}"
    return pin.group(1)


def test_development_stack_is_what_make_venv_installs() -> None:
    dev = _stacks()["development"]
    assert _makefile_pin("TORCH", "torch") == dev["torch"]
    assert _makefile_pin("TRITON", "triton") == dev["triton"]
    assert _makefile_pin("TORCHVISION", "torchvision") == dev["torchvision"]


def test_gpu_stack_is_what_make_mirror_venv_installs() -> None:
    gpu = _stacks()["gpu-machines"]
    for package in ("torch", "triton", "torchvision"):
        assert _makefile_pin("MIRROR_STACK", package) == gpu[package]
    assert f"versions/{gpu['python']}*" in (ROOT / "Makefile").read_text()  # the interpreter mirror-venv finds


def test_this_interpreter_runs_a_tested_stack() -> None:
    python = ".".join(platform.python_version_tuple()[:2])
    base = torch.__version__.split("+")[0]
    stacks = [(s["python"], s["torch"]) for s in _stacks().values()]
    assert (python, base) in stacks, f"Python {python} with torch {base} is not among the tested stacks {stacks}"


def test_mirror_lock_pins_everything_but_the_stack() -> None:
    """`make mirror-venv` installs the lock without a resolver: every line must pin one version, and torch, triton and
    torchvision come from MIRROR_STACK alone (one place to change them)."""
    lock = (ROOT / "benchmarks" / "mirror-requirements.txt").read_text().splitlines()
    pins = [line for line in lock if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", pin) for pin in pins), pins
    names = {pin.split("==")[0].lower().replace("_", "-") for pin in pins}
    assert not names & {"torch", "triton", "torchvision"}
    assert {"pytest", "timm", "lightning", "tensorboard", "numpy"} <= names
    assert "MIRROR_LOCK := benchmarks/mirror-requirements.txt" in (ROOT / "Makefile").read_text()
