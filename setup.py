"""Build script: the pure-Python package always; the compiled CPU backend (``csrc/cpu``) when a C++ compiler
works; the CUDA backend (``csrc/cuda``) when torch is a CUDA build and nvcc is present. The package runs
without either.

The extension ``isnet_kernels._C`` (``csrc/cpu/*.cpp``) registers the ``isnet_kernels::*`` operators and their
CPU kernels with PyTorch's dispatcher; ``isnet_kernels.backends.cpp`` uses it. The extension
``isnet_kernels._C_cuda`` (``csrc/cuda/*.cu`` and ``csrc/cuda/binding.cpp``) registers CUDA kernels for the same
operators; ``isnet_kernels.backends.cuda`` uses it. Build in place with ``pip install --no-build-isolation -e .``
(the extensions compile against the installed torch, so build isolation must be off). See DEVELOPERS.md.

Outside continuous integration both are optional: a failed build prints a warning and installs the package
without it (``isnet_kernels.backends.cpp.available()`` then says why), and ``ISNET_KERNELS_NO_EXT=1`` skips them.
Under ``CI=true`` the CPU extension is required: a failed build fails the install with the compiler's message, and
``ISNET_KERNELS_NO_EXT=1`` is an error (CI must not pass without the backend it tests). The CUDA extension is
built only where it can be (a CUDA torch and nvcc); where it is attempted, under ``CI=true`` its failure fails the
install too.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CI = os.environ.get("CI") == "true"


def _warn(message: str) -> None:
    print(f"isnet-kernels: {message}", file=sys.stderr)


def _fail(message: str) -> None:
    """Stops the build under ``CI=true``."""
    raise SystemExit(f"isnet-kernels: error: {message}")


def _sources(*patterns: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern)))


def _find_cuda_home() -> str | None:
    """A CUDA toolkit folder holding both ``bin/nvcc`` and ``include/cuda_runtime.h``: ``$CUDA_HOME``,
    ``$CUDA_PATH``, ``/usr/local/cuda``, then the folder above nvcc on PATH. torch's own search stops at the folder
    above the first ``nvcc`` on PATH, which is wrong where that nvcc is a wrapper script (``/usr/local/bin/nvcc``
    calling ``/usr/local/cuda-13.0/bin/nvcc``): its headers are then not found."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in filter(None, homes):
        if (os.path.exists(os.path.join(home, "bin", "nvcc"))
                and os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))):
            return home
    return None


def _cuda_extension(torch_ext) -> object | None:
    """The CUDA extension, or None with a one-line reason when torch is not a CUDA build or nvcc is missing."""
    import torch

    sources = _sources("csrc/cuda/*.cu", "csrc/cuda/binding.cpp")
    if not sources:
        return None
    if not torch.version.cuda:
        _warn(f"not building isnet_kernels._C_cuda: torch {torch.__version__} is not a CUDA build")
        return None
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"  # no GPU to take the architecture from: A100 and H100
    home = torch_ext.CUDA_HOME  # torch's own search: $CUDA_HOME, nvcc on PATH, /usr/local/cuda
    if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        _warn("not building isnet_kernels._C_cuda: torch finds no CUDA toolkit with nvcc "
              f"(CUDA_HOME={home}; set CUDA_HOME or put nvcc on PATH{'' if shutil.which('nvcc') else ', none is'})")
        return None
    try:
        return torch_ext.CUDAExtension(
            "isnet_kernels._C_cuda",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": ["-O3", "-g0"], "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            optional=not CI,
        )
    except Exception as exc:  # e.g. the toolkit's libraries missing
        message = f"cannot set up isnet_kernels._C_cuda ({type(exc).__name__}: {exc})"
        if CI:
            _fail(message)
        _warn(f"{message}; installing without it")
        return None


def _extension_build() -> dict:
    """``ext_modules`` and ``cmdclass`` for the compiled backends, or nothing when they are skipped."""
    if os.environ.get("ISNET_KERNELS_NO_EXT") == "1":
        if CI:
            _fail("ISNET_KERNELS_NO_EXT=1 with CI=true: CI must build the compiled extension isnet_kernels._C "
                  "(the cpp backend it tests); unset ISNET_KERNELS_NO_EXT")
        _warn("ISNET_KERNELS_NO_EXT=1: not building the compiled extension isnet_kernels._C")
        return {}
    sources = _sources("csrc/cpu/*.cpp")
    if not sources:
        if CI:
            _fail("no C++ sources under csrc/cpu: cannot build isnet_kernels._C")
        return {}
    home = _find_cuda_home()
    if home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = home  # read by torch.utils.cpp_extension when it is imported
    try:
        import torch.utils.cpp_extension as torch_ext
    except Exception as exc:  # torch missing (build isolation on?) or broken: install the pure-Python package
        message = (f"torch is not importable ({exc}); not building isnet_kernels._C. "
                   "Install torch first and use `pip install --no-build-isolation -e .`")
        if CI:
            _fail(message)
        _warn(message)
        return {}

    class OptionalBuildExtension(torch_ext.BuildExtension):
        """BuildExtension that adds OpenMP to the CPU extension when the compiler has it; outside CI an extension
        that fails to build is left out with a warning, never failing the install."""

        def build_extensions(self) -> None:
            openmp = _compiler_has_openmp(self.compiler)
            for ext in self.extensions:
                if openmp and ext.name == "isnet_kernels._C":
                    ext.extra_compile_args = [*ext.extra_compile_args, "-fopenmp"]
                    ext.extra_link_args = [*ext.extra_link_args, "-fopenmp"]
            if not openmp:
                _warn("the C++ compiler has no OpenMP (-fopenmp): isnet_kernels._C will run on one thread")
            super().build_extensions()

        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as exc:
                if CI:
                    raise SystemExit(f"isnet-kernels: error: building {ext.name} failed under CI=true "
                                     f"({type(exc).__name__}: {exc}); the compiler's message is above") from exc
                module = "isnet_kernels.backends.cuda" if ext.name.endswith("_cuda") else "isnet_kernels.backends.cpp"
                _warn(f"building the optional extension {ext.name} failed ({type(exc).__name__}: {exc}); "
                      f"installing without it. {module}.available() reports it as not built")

    extensions = [torch_ext.CppExtension(
        "isnet_kernels._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc", "cpu"), os.path.join(ROOT, "csrc")],
        extra_compile_args=["-O3", "-g0"],  # -g0: Python's CFLAGS carry -g, which slows the build
        optional=not CI,  # setuptools' own switch: an optional extension's failure is only a warning
    )]
    cuda = _cuda_extension(torch_ext)
    if cuda is not None:
        extensions.append(cuda)
    return {"ext_modules": extensions, "cmdclass": {"build_ext": OptionalBuildExtension}}


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
