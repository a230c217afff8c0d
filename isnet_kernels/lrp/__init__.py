"""The LRP graph: trace a classifier once, compile a relevance program, run it."""

from .engine import LRP, clear_cache, explain, get_program
from .graph import SUPPORTED, compile_model

__all__ = ["LRP", "SUPPORTED", "clear_cache", "compile_model", "explain", "get_program"]
