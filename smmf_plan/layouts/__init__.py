"""Optimizer-state layouts: what each optimizer keeps per parameter, exactly."""

from .base import ALLOCATORS, OptimizerLayout, StateTensor
from .registry import ALL_IDS, DEFAULT_IDS, FAMILIES, UnknownOptimizer, parse_layout, parse_layouts

__all__ = [
    "ALLOCATORS", "ALL_IDS", "DEFAULT_IDS", "FAMILIES", "OptimizerLayout", "StateTensor",
    "UnknownOptimizer", "parse_layout", "parse_layouts",
]
