"""Build script: the pure-Python package always; the compiled CPU backend (``csrc/cpu``) when it is present
and a C++ compiler works. The package runs without the compiled backend.

The extension ``isnet_kernels._C`` (one translation unit, ``csrc/cpu/*.cpp``) registers the ``isnet_kernels::*``
operators with PyTorch's dispatcher; ``isnet_kernels.cpp`` uses it. It is optional: a failed build prints a
warning and installs the package without it (``isnet_kernels.cpp.available()`` then says why). Set
``ISNET_KERNELS_NO_EXT=1`` to skip it. Build in place with ``pip install --no-build-isolation -e .`` (the
extension compiles against the installed torch, so build isolation must be off).
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _warn(message: str) -> None:
    print(f"isnet-kernels: {message}", file=sys.stderr)


def _extension_build() -> dict:
    """``ext_modules`` and ``cmdclass`` for the compiled CPU backend, or nothing when it is skipped."""
    if os.environ.get("ISNET_KERNELS_NO_EXT") == "1":
        _warn("ISNET_KERNELS_NO_EXT=1: not building the compiled extension isnet_kernels._C")
        return {}
    sources = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    if not sources:
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as exc:  # torch missing (build isolation on?) or broken: install the pure-Python package
        _warn(f"torch is not importable ({exc}); not building isnet_kernels._C. "
              "Install torch first and use `pip install --no-build-isolation -e .`")
        return {}

    class OptionalBuildExtension(BuildExtension):
        """BuildExtension that adds OpenMP when the compiler has it and never fails the install."""

        def build_extensions(self) -> None:
            try:
                openmp = _compiler_has_openmp(self.compiler)
                for ext in self.extensions:
                    if openmp:
                        ext.extra_compile_args = [*ext.extra_compile_args, "-fopenmp"]
                        ext.extra_link_args = [*ext.extra_link_args, "-fopenmp"]
                if not openmp:
                    _warn("the C++ compiler has no OpenMP (-fopenmp): isnet_kernels._C will run on one thread")
                super().build_extensions()
            except Exception as exc:
                _warn(f"building the optional extension isnet_kernels._C failed ({type(exc).__name__}: {exc}); "
                      "installing without it. isnet_kernels.cpp.available() reports it as not built")

    ext = CppExtension(
        "isnet_kernels._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc", "cpu")],
        extra_compile_args=["-O3", "-g0"],  # -g0: Python's CFLAGS carry -g, which slows the build
        optional=True,
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension}}


def _compiler_has_openmp(compiler) -> bool:
    """Whether ``compiler`` compiles and links a program with ``-fopenmp`` (GCC, Clang with libomp)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "openmp_check.cpp")
        with open(source, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objects, "openmp_check", output_dir=tmp, extra_postargs=["-fopenmp"],
                                     target_lang="c++")
        except Exception:
            return False
    return True


setup(**_extension_build())
