"""Small statistics helpers shared by the bench and its report (pure Python, no numpy)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def _clean(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(f):
            out.append(f)
    return sorted(out)


def median(values: Iterable[Any]) -> float | None:
    v = _clean(values)
    if not v:
        return None
    n = len(v)
    mid = n // 2
    return v[mid] if n % 2 else (v[mid - 1] + v[mid]) / 2


def percentile(values: Iterable[Any], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): the smallest value with >= q % of values <= it."""
    v = _clean(values)
    if not v:
        return None
    rank = max(1, math.ceil(q / 100 * len(v)))
    return v[min(rank, len(v)) - 1]


def summary(values: Sequence[Any]) -> dict[str, Any]:
    """n, median, p90, min, max, mean of the numeric values (None when there are none)."""
    v = _clean(values)
    if not v:
        return {"n": 0, "median": None, "p90": None, "min": None, "max": None, "mean": None}
    return {
        "n": len(v),
        "median": median(v),
        "p90": percentile(v, 90),
        "min": v[0],
        "max": v[-1],
        "mean": sum(v) / len(v),
    }


def across_runs(values: Sequence[Any]) -> dict[str, Any]:
    """A figure over several runs: median with min/max and the number of runs that gave one."""
    s = summary(values)
    return {"median": s["median"], "min": s["min"], "max": s["max"], "runs": s["n"]}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
