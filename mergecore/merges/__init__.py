"""Static merge methods, one small module per family, in one explicit registry.

    from mergecore.merges import METHODS, get_method, merge_adapters, parse_params
    merged = merge_adapters(adapter_set, "ties", parse_params("ties", ["density=0.3"]))

Each method maps one module's factors to a ``ModuleMerge`` (factored B @ A, or dense).
"""

from __future__ import annotations

from mergecore.merges.base import MergeMethod, ModuleMerge
from mergecore.merges.registry import METHODS, get_method, merge_adapters, parse_params

__all__ = ["METHODS", "MergeMethod", "ModuleMerge", "get_method", "merge_adapters", "parse_params"]
