"""Percentiles and the markdown table."""
from __future__ import annotations

import math


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no samples."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def r(x: float, nd: int = 2) -> float:
    return float("nan") if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)


def fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)
