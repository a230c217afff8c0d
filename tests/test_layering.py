"""The package's layering: data flows one way (errors -> ops -> backends (cpp, triton -> cuda -> dispatch) -> lrp ->
isnet -> models, data -> train -> cli), so no module imports from a layer above its own; no two modules import each
other, directly or through others; and every module of the package imports.

The import graph is read from the source (every ``import`` and ``from ... import`` statement, also those inside
functions), so a lazy import upward is caught as well as a module-level one. The cycle check reads the module-level
imports (those that run when the module is imported, ``if TYPE_CHECKING:`` blocks included: a type-only import is
still a dependency a reader follows), not those inside functions, which run at call time.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import tomllib
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "isnet_kernels"

# The rank of each unit of the package: a top-level subpackage or module, and inside ``backends`` each backend module
# or subpackage (``backends.cpp``, ...; ``backends`` itself is its ``__init__``, which imports nothing); a unit may
# import only from units of a lower rank. ``__version__`` (package metadata, imported as
# ``from . import __version__``) is allowed everywhere.
RANKS: dict[str, int] = {
    "errors": 0,
    "ops": 1, "_C": 1, "_C_cuda": 1,
    "backends": 2, "backends.cpp": 2, "backends.triton": 2,
    "backends.cuda": 3,
    "backends.dispatch": 4,
    "lrp": 5,
    "isnet": 6,
    "models": 7, "data": 7, "plot": 7,
    "train": 8,
    "lightning": 9,
    "cli": 9, "info": 9,
    "__main__": 10, "__init__": 10,
}


#: The subpackages whose modules and subpackages are units of their own.
SPLIT = ("backends",)


def _unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in SPLIT:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, pathlib.Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


def _from_target(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` statement of a module of ``package`` reads, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: pathlib.Path) -> set[str]:
    """Every ``isnet_kernels`` module or name imported by ``module`` (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            target = _from_target(node, package)
            if target in ("isnet_kernels", *(f"isnet_kernels.{p}" for p in SPLIT)):
                # from isnet_kernels import x / from . import x at the root, from .backends import dispatch
                found.update(f"{target}.{a.name}" for a in node.names)
            elif target.startswith("isnet_kernels."):
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("isnet_kernels."))
    return found


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of a module body that run when it is imported: at the top level and inside ``if``,
    ``try``, ``with`` and class bodies (``if TYPE_CHECKING:`` blocks too), not inside functions."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for name in ("body", "orelse", "finalbody", "handlers"):
                yield from _module_level(getattr(node, name, None) or [])


def _module_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at module level; ``from package import name`` is an edge to the
    submodule ``package.name`` when there is one, to the package otherwise."""
    modules = {}
    for path in sorted((root / "isnet_kernels").rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        modules[".".join(rel.parts).removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in _module_level(ast.parse(path.read_text(), filename=str(path)).body):
            if isinstance(node, ast.ImportFrom):
                target = _from_target(node, package)
                found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names)
            else:
                found.update(a.name for a in node.names)
        graph[module] = {t for t in found if t in modules and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle():
    cycles = _cycles(_module_graph())
    assert not cycles, "modules importing each other (module docstring): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_rules_do_not_import_steps():
    """Steps hand rules the values they read (``FoldedLayer``, ``BatchNormLayer``); rules never import steps, not
    even for type hints or inside a function."""
    path = PACKAGE / "lrp" / "rules.py"
    assert "isnet_kernels.lrp.steps" not in _imports("isnet_kernels.lrp.rules", path)
    assert "isnet_kernels.lrp.steps" not in _module_graph()["isnet_kernels.lrp.rules"]


def test_the_cycle_check_sees_a_type_checking_cycle(tmp_path):
    """The cycle check itself: two modules importing each other, one only for type hints, are a cycle; a lazy
    import inside a function is not."""
    lrp = tmp_path / "isnet_kernels" / "lrp"
    lrp.mkdir(parents=True)
    (tmp_path / "isnet_kernels" / "__init__.py").write_text("")
    (lrp / "__init__.py").write_text("")
    (lrp / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (lrp / "b.py").write_text("from . import a\n\ndef f():\n    from . import c\n    return c\n")
    (lrp / "c.py").write_text("from .b import f\n")
    graph = _module_graph(tmp_path)
    assert graph["isnet_kernels.lrp.a"] == {"isnet_kernels.lrp.b"}
    assert graph["isnet_kernels.lrp.b"] == {"isnet_kernels.lrp.a"}
    assert _cycles(graph) == [["isnet_kernels.lrp.a", "isnet_kernels.lrp.b"]]


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


def test_the_scan_sees_backend_units(tmp_path):
    """The scanner itself: ``from ..backends import dispatch`` is an import of the unit ``backends.dispatch``, and a
    backend importing the table above it is found."""
    backends = tmp_path / "isnet_kernels" / "backends"
    backends.mkdir(parents=True)
    (backends / "cpp.py").write_text("def f():\n    from . import dispatch\n    return dispatch\n")
    lrp = tmp_path / "isnet_kernels" / "lrp.py"
    lrp.write_text("from .backends import dispatch\nfrom .backends.triton import selfcheck\n")
    found = _imports("isnet_kernels.lrp", lrp)
    assert found == {"isnet_kernels.backends.dispatch", "isnet_kernels.backends.triton"}
    assert {_unit(m) for m in found} == {"backends.dispatch", "backends.triton"}
    assert _imports("isnet_kernels.backends.cpp", backends / "cpp.py") == {"isnet_kernels.backends.dispatch"}
    assert RANKS[_unit("isnet_kernels.backends.dispatch")] >= RANKS[_unit("isnet_kernels.backends.cpp")]


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
