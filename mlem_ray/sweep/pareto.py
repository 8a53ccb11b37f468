"""The Pareto front of a multi-objective stage (``sweep.cost``) and how its finalists are chosen.

A stage with a cost optimises two objectives: the in-trial quality score (``selection_value`` on
the leaderboard, in its ``selection_mode``) and the cost (``cost_value``, minimised). A trial is on
the front when no other trial is at least as good on both and strictly better on one.

The rule that picks from the front (stated once, used by the pipeline and the report): the *knee*
order. Both objectives are rescaled to [0, 1] over the front (0 = the front's best), and front
trials are ordered by their Euclidean distance to the ideal point (0, 0), the best quality at the
least cost; ties go to the better quality. The stage's finalists are the first ``sweep.finalists``
trials in that order, and the teacher is the best of them downstream, as in a one-objective stage.
So neither the most expensive best-quality trial nor the cheapest useless one wins by default: the
trial that gives up least of either wins.
"""
from __future__ import annotations

import math


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _point(row: dict) -> tuple[float, float]:
    """(loss-oriented quality, cost): both smaller is better."""
    quality = float(row["selection_value"])
    return (-quality if row.get("selection_mode") == "max" else quality), float(row["cost_value"])


def has_cost(rows) -> bool:
    return any(_finite(r.get("cost_value")) for r in rows)


def non_dominated(rows) -> list[dict]:
    """The rows on the Pareto front (in their given order); rows without both objectives finite are
    never on it."""
    scored = [r for r in rows if _finite(r.get("selection_value")) and _finite(r.get("cost_value"))]
    points = [_point(r) for r in scored]
    front = []
    for i, (qi, ci) in enumerate(points):
        dominated = any(qj <= qi and cj <= ci and (qj < qi or cj < ci) for j, (qj, cj) in enumerate(points) if j != i)
        if not dominated:
            front.append(scored[i])
    return front


def knee_order(front: list[dict]) -> list[dict]:
    """Front rows by distance to the ideal point after rescaling both objectives over the front."""
    if not front:
        return []
    points = [_point(r) for r in front]
    lo = [min(p[d] for p in points) for d in (0, 1)]
    span = [(max(p[d] for p in points) - lo[d]) or 1.0 for d in (0, 1)]
    keyed = [(math.hypot((q - lo[0]) / span[0], (c - lo[1]) / span[1]), q, i) for i, (q, c) in enumerate(points)]
    return [front[i] for _, _, i in sorted(keyed)]


def finalists(rows, count: int) -> list[dict]:
    """The stage's finalists by the knee rule (see the module docstring)."""
    return knee_order(non_dominated(rows))[:count]
