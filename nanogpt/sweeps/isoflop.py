"""Chinchilla's IsoFLOP analysis of a sweep whose jobs carry FLOPs budgets (Hoffmann et al. 2022, approach 2).

The finished jobs of one (budget, size) are one cell: its seeds' final val losses, averaged. For each budget C,
the cells' losses are fitted with a parabola in ln N (N: parameters as the FLOPs count them). Its vertex is the
compute-optimal size N_opt(C); D_opt(C) is the number of tokens a model of that size trains on within C, read off
the budget's own jobs (a line in ln D against ln N), so attention's FLOPs count as the runs spent them rather than
by the C = 6ND shorthand. Across budgets, ln N_opt and ln D_opt are fitted as lines in ln C: N_opt ∝ C^a and
D_opt ∝ C^b. Chinchilla finds a ≈ b ≈ 0.5.

Only finished jobs enter the fits. A budget with fewer than three sizes, or whose losses do not curve upward,
gets no vertex; one whose lowest loss is at the grid's smallest or largest model is flagged (its minimum may lie
beyond), and a vertex outside the grid is left out of the power laws. The same functions fit the sweep and each
of its bootstrap resamples (nanogpt/sweeps/bootstrap.py). numpy does the fitting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Point:
    """One job of the sweep, as the analysis sees it."""

    job: str
    budget: float  # the job's train.flops_budget
    status: str
    params: int | None = None  # N (plan.json)
    tokens: int | None = None  # D trained
    flops: float | None = None  # C spent
    val_loss: float | None = None  # at the end of training
    tokens_per_s: float | None = None
    depth: int | None = None
    seed: int | None = None  # the job's seed: jobs of one budget and size that differ only in it are averaged

    @property
    def usable(self) -> bool:
        return (
            self.status == "completed"
            and self.params is not None
            and self.tokens is not None
            and self.val_loss is not None
            and math.isfinite(self.val_loss)
        )


@dataclass
class Cell:
    """One (budget, size) of the sweep: the final val losses of its finished seeds."""

    budget: float
    params: int
    tokens: int
    losses: list[float]
    jobs: list[str]

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses)  # plain Python: the bootstrap asks for it a million times

    @property
    def spread(self) -> float | None:
        """The seeds' standard deviation; None for one seed."""
        return float(np.std(self.losses, ddof=1)) if len(self.losses) > 1 else None


def cells(points: Sequence[Point]) -> list[Cell]:
    """The finished jobs grouped by (budget, N), in that order."""
    grouped: dict[tuple[float, int], Cell] = {}
    for p in points:
        if p.usable:
            key = (p.budget, p.params)
            cell = grouped.setdefault(key, Cell(p.budget, p.params, p.tokens, [], []))
            cell.losses.append(float(p.val_loss))
            cell.jobs.append(p.job)
    return [grouped[k] for k in sorted(grouped)]


@dataclass
class BudgetFit:
    budget: float
    cells: list[Cell]  # the budget's finished sizes, by N
    coeffs: tuple[float, float, float] | None = None  # loss = c2 x² + c1 x + c0 in x = ln N
    n_opt: float | None = None
    d_opt: float | None = None
    loss_opt: float | None = None
    in_grid: bool = False  # the vertex lies within the N the budget's jobs span: it enters the power laws
    warnings: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> int:
        return len({c.params for c in self.cells})


@dataclass
class PowerLaw:
    """y = coef x C^exponent, fitted by least squares in ln y against ln C."""

    exponent: float
    coef: float

    def __call__(self, c: float | np.ndarray) -> float | np.ndarray:
        return self.coef * np.asarray(c, dtype=float) ** self.exponent


@dataclass
class Analysis:
    fits: list[BudgetFit]
    n_law: PowerLaw | None
    d_law: PowerLaw | None
    warnings: list[str]


def fit_budget(budget: float, budget_cells: Sequence[Cell]) -> BudgetFit:
    """The parabola in ln N through one budget's cells (a cell drawn twice by a resample counts twice), its
    vertex, and D at the vertex."""
    ordered = sorted(budget_cells, key=lambda c: c.params)
    fit = BudgetFit(budget, ordered)
    name = f"budget {budget:.3g}"
    if fit.sizes < 3:
        fit.warnings.append(f"{name}: {fit.sizes} finished size(s), a parabola needs 3: no minimum")
        return fit
    x = np.log([c.params for c in ordered])
    loss = np.array([c.loss for c in ordered])
    c2, c1, c0 = np.polyfit(x, loss, 2)
    fit.coeffs = (float(c2), float(c1), float(c0))
    if c2 <= 0:
        fit.warnings.append(f"{name}: the losses do not curve upward in ln N: no minimum")
        return fit
    x_opt = -c1 / (2 * c2)
    fit.n_opt = float(math.exp(x_opt))
    fit.loss_opt = float(np.polyval([c2, c1, c0], x_opt))
    slope, icpt = np.polyfit(x, np.log([c.tokens for c in ordered]), 1)
    fit.d_opt = float(math.exp(icpt + slope * x_opt))
    best = int(np.argmin(loss))
    fit.in_grid = bool(x[0] <= x_opt <= x[-1])
    if best in (0, len(ordered) - 1):
        end = "smallest" if best == 0 else "largest"
        fit.warnings.append(
            f"{name}: the lowest loss is at the grid's {end} model (N={si(ordered[best].params)}): the minimum may "
            f"lie beyond it; add {'smaller' if best == 0 else 'larger'} depths"
        )
    if not fit.in_grid:
        fit.warnings.append(
            f"{name}: the fitted minimum N={si(fit.n_opt)} lies outside the grid "
            f"({si(ordered[0].params)} to {si(ordered[-1].params)}): left out of the power laws"
        )
    return fit


def fit_power_law(c: list[float], y: list[float]) -> PowerLaw:
    exponent, icpt = np.polyfit(np.log(c), np.log(y), 1)
    return PowerLaw(float(exponent), float(math.exp(icpt)))


def analyse(sweep_cells: Sequence[Cell], budgets: Sequence[float] = ()) -> Analysis:
    """Every budget's fit (`budgets` adds those none of whose jobs finished) and, from those with a minimum inside
    their grid, the two power laws."""
    by_budget: dict[float, list[Cell]] = {b: [] for b in budgets}
    for c in sweep_cells:
        by_budget.setdefault(c.budget, []).append(c)
    fits = [fit_budget(b, by_budget[b]) for b in sorted(by_budget)]
    warnings = [w for f in fits for w in f.warnings]
    good = [f for f in fits if f.in_grid]
    n_law = d_law = None
    if len(good) >= 2:
        n_law = fit_power_law([f.budget for f in good], [f.n_opt for f in good])
        d_law = fit_power_law([f.budget for f in good], [f.d_opt for f in good])
        if len(good) == 2:
            warnings.append("only 2 budgets have a minimum: the power laws pass through both exactly; add budgets")
    else:
        warnings.append(f"{len(good)} budget(s) with a minimum inside the grid: the power laws need 2 or more")
    return Analysis(fits, n_law, d_law, warnings)


def si(x: float | None) -> str:
    if x is None:
        return ""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"
