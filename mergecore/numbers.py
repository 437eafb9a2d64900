"""Numbers that never lie: undefined is NaN in memory, null in JSON, '-' on screen.

    as_float(v)      a stored number as float: None (JSON null) and non-numbers -> NaN
    json_safe(obj)   plain JSON data, every non-finite float (NaN, +-inf) -> None
    dumps(obj)       json.dumps of json_safe(obj) with allow_nan=False: never a bare NaN in a file
    fmt(v, digits)   fixed-point text, '-' for NaN / None / inf
    rank_key(v)      sort key that puts NaN / None last in a descending order (first in ascending)
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch


def as_float(value) -> float:
    """``value`` as a float; None (a stored null) or anything not numeric becomes NaN."""
    if value is None or isinstance(value, (str, bytes)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def json_safe(obj):
    """``obj`` as plain JSON data (dicts, lists, str, int, finite float, None); NaN / inf -> None."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return json_safe(obj.tolist())
    if obj is None or isinstance(obj, (bool, np.bool_, str)):
        return bool(obj) if isinstance(obj, np.bool_) else obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def dumps(obj, **kwargs) -> str:
    """JSON text with non-finite floats written as null (raises rather than ever printing NaN)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def fmt(value, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or '-' when it is undefined (NaN, None, inf)."""
    v = as_float(value)
    return f"{v:.{digits}f}" if math.isfinite(v) else "-"


def rank_key(value) -> float:
    """Key for max() / sorted(): an undefined value (NaN, None) ranks below every number."""
    v = as_float(value)
    return v if not math.isnan(v) else -math.inf
