"""Build script: the pure-Python package always; the compiled CPU backend (``csrc/cpu``) when it is present
and a C++ compiler works. The package runs without the compiled backend."""

from setuptools import setup

setup()
