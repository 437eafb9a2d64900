"""The registry of static merge methods (one explicit list), and the driver that applies a method to every
module of an AdapterSet, and the parser of ``key=value`` parameters."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import torch

from mergecore.adapters import AdapterSet
from mergecore.errors import MergecoreError
from mergecore.fields import parse_value
from mergecore.merges import core_methods, osrm, pico, task_arithmetic, ties_dare
from mergecore.merges.base import MergeMethod, ModuleMerge, check_weights

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



def merge_adapters(adapters: AdapterSet, method: str | MergeMethod, params: Any = None,
                   weights: list[float] | None = None,
                   features: dict[str, dict[int, torch.Tensor]] | None = None) -> dict[str, ModuleMerge]:
    """Run ``method`` on every module of ``adapters`` (model order).

    params: an instance of ``method.params_cls`` (None = paper defaults).
    weights: one coefficient per adapter; overrides the default from params (e.g. ``lam``).
    features: module -> {adapter index -> (n, in) features of that task at that module}; required
      by methods with ``needs_features`` (OSRM), ignored otherwise.
    A ``seed`` param is mixed with each module's name, so random masks differ between modules
    and do not depend on module order.
    """
    m = get_method(method) if isinstance(method, str) else method
    params = m.params_cls() if params is None else params
    if not isinstance(params, m.params_cls):
        raise MergecoreError(f"params for {m.name} must be {m.params_cls.__name__}, got {type(params).__name__}")
    w = check_weights(weights if weights is not None else m.default_weights(len(adapters), params), len(adapters))
    if m.needs_features and not features:
        raise MergecoreError(f"{m.name} needs per-task input features at every module; pass features=")
    out = {}
    for module in adapters.modules:
        p = _module_params(params, module)
        kw = {"features": features.get(module)} if m.needs_features else {}  # None: the method refuses
        out[module] = m.fn(adapters.factors(module), w, p, **kw)
    return out


def _module_params(params: Any, module: str) -> Any:
    if not any(f.name == "seed" for f in dataclasses.fields(params)):
        return params
    return dataclasses.replace(params, seed=(params.seed * 1_000_003 + zlib.crc32(module.encode())) % 2**62)


def parse_params(method: str | MergeMethod, items: list[str] | None) -> Any:
    """Build ``method.params_cls`` from CLI strings ``["key=value", ...]`` (each value read by
    ``fields.parse_value``: the spellings the CLI's flags and the app's forms accept)."""
    m = get_method(method) if isinstance(method, str) else method
    fields = {f.name: f for f in dataclasses.fields(m.params_cls)}
    keys = ", ".join(fields) or "(none)"
    kwargs = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise MergecoreError(f"parameter {item!r} must be key=value; valid keys for {m.name}: {keys}")
        if key not in fields:
            raise MergecoreError(f"unknown parameter {key!r} for {m.name}; valid keys: {keys}")
        try:
            kwargs[key] = parse_value(fields[key], raw)
        except MergecoreError as exc:
            raise MergecoreError(f"{m.name}: {exc}") from None
    return m.params_cls(**kwargs)
