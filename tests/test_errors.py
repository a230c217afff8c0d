"""Every error the package raises on purpose is an ``ISNetError`` (keeping its built-in base): the source holds no
``raise`` of a built-in exception class, outside the few places a protocol requires one."""

from __future__ import annotations

import ast
import builtins
import pickle
from pathlib import Path

import isnet_kernels as ik
from isnet_kernels import errors

PACKAGE = Path(ik.__file__).resolve().parent

BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}

#: (file relative to the package, exception) pairs where a built-in exception is the protocol, not an error report.
ALLOWED = {
    ("lrp/steps.py", "NotImplementedError"),  # the abstract methods of Step
    ("train/trainer.py", "KeyboardInterrupt"),  # a second Ctrl-C stops at once, as Python's own handler does
    ("backends/triton/aot/__main__.py", "SystemExit"),  # a command-line entry point's exit status
    ("train/backbone.py", "AttributeError"),  # __getattr__ of a wrapper: the protocol of attribute lookup
}
#: Classes deriving from built-in exceptions alone: the base itself, and control flow that is no error.
ALLOWED_CLASSES = {("errors.py", "ISNetError"), ("train/trainer.py", "_StopRequested")}


def _raised_name(node: ast.Raise) -> str | None:
    exc = node.exc
    func = exc.func if isinstance(exc, ast.Call) else exc
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "builtins":
        return func.attr
    return None


def _builtin_raises(root: Path = PACKAGE) -> list[str]:
    """``raise`` statements of built-in exceptions, and exception classes deriving from built-ins alone."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                name = _raised_name(node)
                if name in BUILTIN_EXCEPTIONS and (rel, name) not in ALLOWED:
                    found.append(f"{rel}:{node.lineno}: raise {name}")
            if isinstance(node, ast.ClassDef) and (rel, node.name) not in ALLOWED_CLASSES:
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                errors_only = {b for b in bases & BUILTIN_EXCEPTIONS if not issubclass(getattr(builtins, b), Warning)}
                if errors_only and bases <= BUILTIN_EXCEPTIONS:
                    found.append(f"{rel}:{node.lineno}: class {node.name}({', '.join(sorted(bases))})")
    return found


def test_the_package_raises_no_builtin_exception() -> None:
    found = _builtin_raises()
    assert not found, "raise an isnet_kernels.errors class instead (it keeps the built-in base):\n" + "\n".join(found)


def test_the_scan_finds_builtin_raises_and_classes(tmp_path: Path) -> None:
    """The scan itself: a module raising ValueError, or defining an error class on a built-in alone, is reported."""
    (tmp_path / "bad.py").write_text("class E(TypeError):\n    pass\n\n\ndef f():\n    raise ValueError('no')\n")
    (tmp_path / "good.py").write_text("class W(RuntimeWarning):\n    pass\n\n\ndef f():\n    raise E('no')\n")
    assert _builtin_raises(tmp_path) == ["bad.py:1: class E(TypeError)", "bad.py:6: raise ValueError"]


def test_every_error_class_is_an_isnet_error_with_its_builtin_base() -> None:
    expected = {errors.InputError: ValueError, errors.InputTypeError: TypeError, errors.TargetError: IndexError,
                errors.NonFiniteLossError: FloatingPointError, errors.MissingDependencyError: ImportError,
                errors.StateError: RuntimeError}
    for cls, builtin in expected.items():
        assert issubclass(cls, ik.ISNetError) and issubclass(cls, builtin), cls


def test_an_error_names_its_parameters_and_pickles() -> None:
    exc = errors.InputError("eps must be positive", param="eps")
    assert exc.params == ("eps",) and str(exc) == "eps must be positive"
    assert errors.InputError("x", param=("C1", "C2")).params == ("C1", "C2")
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is errors.InputError and again.params == ("eps",) and str(again) == str(exc)
