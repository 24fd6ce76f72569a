"""Chinchilla's IsoFLOP analysis of a sweep whose jobs carry FLOPs budgets (Hoffmann et al. 2022, approach 2).

For each budget C, the final val losses of its jobs are fitted with a parabola in ln N (N: parameters as the
FLOPs count them). Its vertex is the compute-optimal size N_opt(C); D_opt(C) is the number of tokens a model of
that size trains on within C, read off the budget's own jobs (a line in ln D against ln N), so attention's FLOPs
count as the runs spent them rather than by the C = 6ND shorthand. Across budgets, ln N_opt and ln D_opt are
fitted as lines in ln C: N_opt ∝ C^a and D_opt ∝ C^b. Chinchilla finds a ≈ b ≈ 0.5.

Only finished jobs enter the fits. A budget with fewer than three of them, or whose losses do not curve upward,
gets no vertex; one whose lowest loss is at the grid's smallest or largest model is flagged (its minimum may lie
beyond), and a vertex outside the grid is left out of the power laws. numpy does the fitting; matplotlib draws
the plots when it is installed.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("nanogpt")


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
class BudgetFit:
    budget: float
    points: list[Point]  # the finished jobs, by N
    coeffs: tuple[float, float, float] | None = None  # loss = c2 x² + c1 x + c0 in x = ln N
    n_opt: float | None = None
    d_opt: float | None = None
    loss_opt: float | None = None
    in_grid: bool = False  # the vertex lies within the N the budget's jobs span: it enters the power laws
    warnings: list[str] = field(default_factory=list)


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


def fit_budget(budget: float, points: list[Point]) -> BudgetFit:
    """The parabola in ln N through one budget's finished jobs, its vertex, and D at the vertex."""
    usable = sorted((p for p in points if p.usable), key=lambda p: p.params or 0)
    fit = BudgetFit(budget, usable)
    name = f"budget {budget:.3g}"
    if len({p.params for p in usable}) < 3:
        fit.warnings.append(f"{name}: {len(usable)} finished job(s), a parabola needs 3 sizes: no minimum")
        return fit
    x = np.log([p.params for p in usable])
    loss = np.array([p.val_loss for p in usable])
    c2, c1, c0 = np.polyfit(x, loss, 2)
    fit.coeffs = (float(c2), float(c1), float(c0))
    if c2 <= 0:
        fit.warnings.append(f"{name}: the losses do not curve upward in ln N: no minimum")
        return fit
    x_opt = -c1 / (2 * c2)
    fit.n_opt = float(math.exp(x_opt))
    fit.loss_opt = float(np.polyval([c2, c1, c0], x_opt))
    slope, icpt = np.polyfit(x, np.log([p.tokens for p in usable]), 1)
    fit.d_opt = float(math.exp(icpt + slope * x_opt))
    best = int(np.argmin(loss))
    fit.in_grid = bool(x[0] <= x_opt <= x[-1])
    if best in (0, len(usable) - 1):
        end = "smallest" if best == 0 else "largest"
        fit.warnings.append(
            f"{name}: the lowest loss is at the grid's {end} model (N={_si(usable[best].params)}): the minimum may "
            f"lie beyond it; add {'smaller' if best == 0 else 'larger'} depths"
        )
    if not fit.in_grid:
        fit.warnings.append(
            f"{name}: the fitted minimum N={_si(fit.n_opt)} lies outside the grid "
            f"({_si(usable[0].params)} to {_si(usable[-1].params)}): left out of the power laws"
        )
    return fit


def fit_power_law(c: list[float], y: list[float]) -> PowerLaw:
    exponent, icpt = np.polyfit(np.log(c), np.log(y), 1)
    return PowerLaw(float(exponent), float(math.exp(icpt)))


def analyse(points: list[Point]) -> Analysis:
    """Every budget's fit and, from those with a minimum inside their grid, the two power laws."""
    fits = [fit_budget(b, [p for p in points if p.budget == b]) for b in sorted({p.budget for p in points})]
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


def report(points: list[Point], sweep_dir: str) -> tuple[list[str], list[str]]:
    """The report.md section and the plots it shows: (markdown lines, paths of the PNGs written)."""
    a = analyse(points)
    for w in a.warnings:
        log.warning("%s", w)
    lines = [
        "",
        "## Scaling: IsoFLOP profiles",
        "",
        "N: parameters as the FLOPs count them (the head, no lookup tables); D: training tokens; C: training FLOPs, "
        "6N + attention per token times D. Each budget's final val losses are fitted with a parabola in ln N; its "
        "vertex is the compute-optimal N, and D_opt the tokens a model of that size trains on within the budget.",
        "",
        "| budget C | finished jobs | N_opt | D_opt | D_opt / N_opt | val loss at N_opt | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in a.fits:
        n_all = sum(p.budget == f.budget for p in points)
        opt = [_si(f.n_opt), _si(f.d_opt), f"{f.d_opt / f.n_opt:.1f}", f"{f.loss_opt:.4f}"] if f.n_opt else [""] * 4
        note = "" if f.in_grid else "outside the grid" if f.n_opt else "no minimum"
        lines.append(f"| {f.budget:.3g} | {len(f.points)} of {n_all} | " + " | ".join([*opt, note]) + " |")
    if a.n_law and a.d_law:
        span = [f.budget for f in a.fits if f.in_grid]
        lines += [
            "",
            f"**N_opt ∝ C^{a.n_law.exponent:.3f}, D_opt ∝ C^{a.d_law.exponent:.3f}** (fitted over {len(span)} "
            f"budgets, {min(span):.3g} to {max(span):.3g} FLOPs; Chinchilla: about 0.5 and 0.5).",
        ]
    paths = plot(a, sweep_dir)
    for path in paths:
        lines += ["", f"![{os.path.splitext(os.path.basename(path))[0]}]({os.path.basename(path)})"]
    if a.warnings:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in a.warnings]
    return lines + _jobs_table(points), paths


def _jobs_table(points: list[Point]) -> list[str]:
    """Every job, failed and unfinished ones included, by budget and size."""
    lines = ["", "| job | budget C | depth | N | D | C spent | val loss | tokens/s | status |", "|" + "---|" * 9]
    for p in sorted(points, key=lambda p: (p.budget, p.params or 0, int(p.job) if p.job.isdigit() else 0)):
        cells = [
            p.job,
            f"{p.budget:.3g}",
            "" if p.depth is None else str(p.depth),
            _si(p.params),
            _si(p.tokens),
            "" if p.flops is None else f"{p.flops:.3g}",
            "" if p.val_loss is None else f"{p.val_loss:.4f}",
            "" if p.tokens_per_s is None else f"{p.tokens_per_s:,.0f}",
            p.status,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _si(x: float | None) -> str:
    if x is None:
        return ""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def plot(a: Analysis, sweep_dir: str) -> list[str]:
    """isoflop.png (loss against N per budget, the parabolas and their minima) and frontier.png (N_opt and D_opt
    against C with the fitted power laws); [] without matplotlib."""
    if not any(f.points for f in a.fits):
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on clusters
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no isoflop.png or frontier.png (pip install matplotlib)")
        return []
    paths = [_plot_isoflop(plt, a, os.path.join(sweep_dir, "isoflop.png"))]
    if a.n_law and a.d_law:
        paths.append(_plot_frontier(plt, a, os.path.join(sweep_dir, "frontier.png")))
    return paths


def _plot_isoflop(plt, a: Analysis, path: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(a.fits)))
    for f, color in zip(a.fits, colors, strict=True):
        if not f.points:
            continue
        n = np.array([p.params for p in f.points], dtype=float)
        ax.plot(n, [p.val_loss for p in f.points], "o", color=color, label=f"C = {f.budget:.2g} FLOPs")
        if f.coeffs is not None:
            x = np.linspace(math.log(n.min()) - 0.2, math.log(n.max()) + 0.2, 100)
            ax.plot(np.exp(x), np.polyval(f.coeffs, x), "-", color=color, alpha=0.7)
        if f.n_opt is not None and f.in_grid:
            ax.plot([f.n_opt], [f.loss_opt], "*", color=color, markersize=14, markeredgecolor="black")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final val loss")
    ax.set_title("IsoFLOP profiles (stars: fitted minima)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(plt, fig, path)


def _plot_frontier(plt, a: Analysis, path: str) -> str:
    good = [f for f in a.fits if f.in_grid]
    c = np.array([f.budget for f in good])
    line = np.geomspace(c.min() / 1.5, c.max() * 1.5, 50)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, law, values, what in (
        (axes[0], a.n_law, [f.n_opt for f in good], "N_opt (parameters)"),
        (axes[1], a.d_law, [f.d_opt for f in good], "D_opt (tokens)"),
    ):
        ax.loglog(c, values, "o", color="tab:blue")
        ax.loglog(line, law(line), "-", color="tab:orange", label=f"∝ C^{law.exponent:.3f}")
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle("Compute-optimal frontier (Chinchilla: exponents about 0.5 and 0.5)")
    return _save(plt, fig, path)


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
