"""The LRP graph: trace a classifier once, compile a relevance program, run it.

Rules are looked up in a registry (:mod:`isnet_kernels.lrp.registry`): :func:`register_rule` adds one for a module
type, a function or a tensor method, without editing the package.
"""

from .engine import LRP, clear_cache, explain, get_program
from .graph import compile_model, supported
from .registry import REGISTRY, NodeContext, RuleRegistry, register_rule
from .rules import Epsilon, Rule, ZBox, ZPlus

SUPPORTED = supported()

__all__ = ["LRP", "REGISTRY", "SUPPORTED", "Epsilon", "NodeContext", "Rule", "RuleRegistry", "ZBox", "ZPlus",
           "clear_cache", "compile_model", "explain", "get_program", "register_rule", "supported"]
