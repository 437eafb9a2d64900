"""Static merge methods, one small module per family, in one explicit registry.

    from mergecore.merges import METHODS, get_method, merge_adapters, parse_params
    merged = merge_adapters(adapter_set, "ties", parse_params("ties", ["density=0.3"]))

Each method maps one module's factors to a ``ModuleMerge`` (factored B @ A, or dense).
"""

from __future__ import annotations

from mergecore.errors import MergecoreError
from mergecore.merges import core_methods, osrm, pico, task_arithmetic, ties_dare
from mergecore.merges.base import MergeMethod, ModuleMerge, merge_adapters, parse_params

_ALL: list[MergeMethod] = [
    *task_arithmetic.METHODS,
    *ties_dare.METHODS,
    *core_methods.METHODS,
    *pico.METHODS,
    *osrm.METHODS,
]
METHODS: dict[str, MergeMethod] = {m.name: m for m in _ALL}
assert len(METHODS) == len(_ALL), "duplicate merge method names"


def get_method(name: str) -> MergeMethod:
    """The registered method ``name`` (case-insensitive, '-' == '_')."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in METHODS:
        raise MergecoreError(f"unknown merge method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[key]


__all__ = ["METHODS", "MergeMethod", "ModuleMerge", "get_method", "merge_adapters", "parse_params"]
