"""Bootstrap intervals for every number the scaling report fits: each budget's N_opt and D_opt, the exponents
a and b (approach 2, nanogpt/sweeps/isoflop.py) and the law's E, A, B, α, β (approach 3, approach3.py).

A resample is a sweep drawn from the sweep, on which every fit is redone exactly as on the sweep. Where each
size of a budget ran with several seeds, the seeds measure the noise: each size keeps its place and its seeds
are drawn with replacement, so the intervals narrow as seeds are added. Where some size ran with one seed, the
budget's sizes themselves are drawn with replacement (then the seeds within each), the noise read from the
scatter about the parabola; a missing seed thus widens that budget's intervals. The intervals are the 5th and
95th percentiles over the resamples that gave a value (a resample can lack a minimum, or a positive exponent),
and say how many did.

A budget with three sizes and one seed each cannot vary: every resample that keeps three sizes draws the same
three points, through which the parabola passes exactly. Such a budget gets no interval rather than a false
one, and enters every resample unchanged (the report says its noise is not in the exponents' intervals).
The generator is seeded: the same sweep gives the same intervals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nanogpt.sweeps import approach3, isoflop

RESAMPLES = 1000
SEED = 0
LEVEL = 0.90
LAW_FIELDS = ("E", "A", "B", "alpha", "beta", "a", "b")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    count: int  # the resamples that gave a value

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


@dataclass
class Intervals:
    resamples: int
    n_opt: dict[float, Interval | None] = field(default_factory=dict)  # by budget
    d_opt: dict[float, Interval | None] = field(default_factory=dict)
    a: Interval | None = None  # N_opt ∝ C^a (approach 2)
    b: Interval | None = None
    law: dict[str, Interval | None] = field(default_factory=dict)  # approach 3, by LAW_FIELDS
    fixed: list[float] = field(default_factory=list)  # budgets that cannot vary


def interval(values: Sequence[float | None]) -> Interval | None:
    """The central LEVEL interval of the values that exist; None when none does."""
    kept = np.array([v for v in values if v is not None], dtype=float)
    if len(kept) == 0:
        return None
    low, high = np.percentile(kept, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return Interval(float(low), float(high), len(kept))


def can_vary(budget_cells: Sequence[isoflop.Cell]) -> bool:
    """Whether resampling this budget can move its fit: more sizes than the parabola's three, or repeated seeds."""
    return len({c.params for c in budget_cells}) > 3 or any(len(c.losses) > 1 for c in budget_cells)


def _by_budget(cells: Sequence[isoflop.Cell]) -> dict[float, list[isoflop.Cell]]:
    grouped: dict[float, list[isoflop.Cell]] = {}
    for c in cells:
        grouped.setdefault(c.budget, []).append(c)
    return grouped


def resample(grouped: dict[float, list[isoflop.Cell]], fixed: set[float], rng: np.random.Generator) -> list:
    """One resampled sweep: in a budget whose every size has repeated seeds, the seeds within each size; in
    another, its sizes, then the seeds within each drawn size; all drawn with replacement."""
    out = []
    for budget, group in grouped.items():
        if budget in fixed:
            out += group
            continue
        seeded = min(len(c.losses) for c in group) > 1
        for i in range(len(group)) if seeded else rng.integers(0, len(group), len(group)):
            cell = group[i]
            seeds = rng.integers(0, len(cell.losses), len(cell.losses))
            out.append(dataclasses.replace(cell, losses=[cell.losses[s] for s in seeds]))
    return out


def bootstrap(
    cells: Sequence[isoflop.Cell],
    law: approach3.LawFit | None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Intervals:
    """Every fit redone on `resamples` seeded resamples of the sweep; the intervals of what they gave."""
    grouped = _by_budget(cells)
    fixed = {b for b, group in grouped.items() if not can_vary(group)}
    result = Intervals(resamples, fixed=sorted(fixed))
    if len(fixed) == len(grouped):
        return result  # nothing can vary: every resample is the sweep
    rng = np.random.default_rng(seed)
    draws = [resample(grouped, fixed, rng) for _ in range(resamples)]
    analyses = [isoflop.analyse(d) for d in draws]
    for i, budget in enumerate(sorted(grouped)):
        if budget not in fixed:
            fits = [an.fits[i] for an in analyses]
            result.n_opt[budget] = interval([f.n_opt if f.in_grid else None for f in fits])
            result.d_opt[budget] = interval([f.d_opt if f.in_grid else None for f in fits])
    result.a = interval([an.n_law.exponent if an.n_law else None for an in analyses])
    result.b = interval([an.d_law.exponent if an.d_law else None for an in analyses])
    if law is not None:
        columns = [np.array([[getattr(c, k) for c in d] for d in draws], dtype=float) for k in ("params", "tokens")]
        losses = np.array([[c.loss for c in d] for d in draws])
        refits = approach3.refit(law, *columns, losses)
        result.law = {k: interval([getattr(f, k) if f else None for f in refits]) for k in LAW_FIELDS}
    return result
