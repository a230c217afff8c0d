"""The LRP graph: trace a classifier once, compile a relevance program, run it.

Rules are looked up in a registry (:mod:`isnet_kernels.lrp.registry`): :func:`register_rule` adds one for a module
type, a function or a tensor method, without editing the package: a builder returning a step
(:class:`~isnet_kernels.lrp.steps.CallStep` with a relevance function such as :func:`identity_relevance` covers most
element-wise and data-movement operations). The package's own layer families are in :mod:`isnet_kernels.lrp.layers`.
"""

from .engine import LRP, clear_cache, explain, get_program
from .graph import compile_model, supported
from .registry import REGISTRY, NodeContext, RuleRegistry, register_rule
from .rules import Epsilon, Rule, ZBox, ZPlus
from .steps import CallStep, Kind, Step, identity_relevance

SUPPORTED = supported()

__all__ = ["LRP", "REGISTRY", "SUPPORTED", "CallStep", "Epsilon", "Kind", "NodeContext", "Rule", "RuleRegistry", "Step",
           "ZBox", "ZPlus", "clear_cache", "compile_model", "explain", "get_program", "identity_relevance",
           "register_rule", "supported"]
