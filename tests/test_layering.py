"""The package's layering: data flows one way (errors -> ops -> backends -> dispatch -> lrp -> isnet -> models, data
-> train -> cli), so no module imports from a layer above its own; and every module of the package imports.

The import graph is read from the source (every ``import`` and ``from ... import`` statement, also those inside
functions), so a lazy import upward is caught as well as a module-level one.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "isnet_kernels"

# The rank of each top-level unit of the package (a subpackage or a module); a unit may import only from units of a
# lower rank. ``__version__`` (package metadata, imported as ``from . import __version__``) is allowed everywhere.
RANKS: dict[str, int] = {
    "errors": 0,
    "ops": 1, "_C": 1, "_C_cuda": 1,
    "cpp": 2, "triton": 2,
    "cuda": 3,
    "dispatch": 4,
    "lrp": 5,
    "isnet": 6,
    "models": 7, "data": 7, "plot": 7,
    "train": 8,
    "lightning": 9,
    "cli": 9, "info": 9,
    "__main__": 10, "__init__": 10,
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, pathlib.Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


def _imports(module: str, path: pathlib.Path) -> set[str]:
    """Every ``isnet_kernels`` module or name imported by ``module`` (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "isnet_kernels":  # from isnet_kernels import x / from . import x at the root
                found.update(f"{target}.{a.name}" for a in node.names)
            elif target.startswith("isnet_kernels."):
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("isnet_kernels."))
    return found


def test_every_unit_has_a_rank():
    units = {_unit(module) for module, _ in _modules()}
    missing = sorted(units - set(RANKS))
    assert not missing, f"place {missing} in RANKS (tests/test_layering.py): which layers may it import?"


def test_no_module_imports_upward():
    upward = []
    for module, path in _modules():
        mine = _unit(module)
        for target in _imports(module, path):
            theirs = _unit(target)
            if theirs in (mine, "__version__"):
                continue
            if RANKS.get(theirs, -1) >= RANKS[mine]:
                upward.append(f"{module} imports {target} ({mine} rank {RANKS[mine]}, {theirs} rank "
                              f"{RANKS.get(theirs)})")
    assert not upward, "\n".join(upward)


def test_the_scan_sees_an_upward_import(tmp_path):
    """The scanner itself: a lazy ``from ..train import x`` inside a function of an ops module is found."""
    ops = tmp_path / "isnet_kernels" / "ops"
    ops.mkdir(parents=True)
    bad = ops / "bad.py"
    bad.write_text("def f():\n    from ..train import trainer\n    return trainer\n")
    assert _imports("isnet_kernels.ops.bad", bad) == {"isnet_kernels.train"}


def _optional_packages() -> set[str]:
    """The import names of the optional extras (pyproject's optional-dependencies), which a module may need."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = set()
    for deps in meta["project"].get("optional-dependencies", {}).values():
        for dep in deps:
            name = dep.split(";")[0].split("[")[0]
            for sep in "<>=!~ ":
                name = name.split(sep)[0]
            names.add({"scikit-learn": "sklearn", "scikit-image": "skimage"}.get(name, name).replace("-", "_"))
    return names


@pytest.mark.parametrize("module", [m for m, p in _modules() if not m.endswith("__main__")])
def test_every_module_imports(module):
    """Every module imports on this stack; one that needs an optional extra that is not installed skips, naming it."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in _optional_packages():
            pytest.skip(f"{module} needs the optional package {top}, not installed here")
        raise
