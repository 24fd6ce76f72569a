"""The scaling section of a sweep's report.md: approach 2 (isoflop.py) and approach 3 (approach3.py) side by
side, every fitted number with its bootstrap interval (bootstrap.py), whether the two agree, the published
anchors, the seeds' spread, the jobs missing from the grid, and every job. report.py calls `section` when the
jobs carry FLOPs budgets; scaling_plots.py draws the figures it shows.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence

import numpy as np

from nanogpt.sweeps import approach3, bootstrap, isoflop, scaling_plots
from nanogpt.sweeps.isoflop import si

log = logging.getLogger("nanogpt")

# The published fits of L(N, D) = E + A / N^alpha + B / D^beta, token-level models of 44M-16B parameters.
ANCHORS = {
    "Chinchilla (Hoffmann et al. 2022)": dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    "Epoch AI's replication (Besiroglu et al. 2024)": dict(E=1.82, A=482.0, B=2085.4, alpha=0.35, beta=0.37),
}


def fit(
    points: Sequence[isoflop.Point], resamples: int = bootstrap.RESAMPLES
) -> tuple[list[isoflop.Cell], isoflop.Analysis, approach3.LawFit | None, bootstrap.Intervals]:
    """Both approaches' fits of the sweep's finished jobs and their bootstrap intervals."""
    cells = isoflop.cells(points)
    analysis = isoflop.analyse(cells, budgets=[p.budget for p in points])
    columns = (np.array([getattr(c, k) for c in cells], dtype=float) for k in ("params", "tokens", "loss"))
    law = approach3.fit(*columns)
    return cells, analysis, law, bootstrap.bootstrap(cells, law, resamples)


def section(points: Sequence[isoflop.Point], sweep_dir: str) -> tuple[list[str], list[str]]:
    """The report.md section and the plots it shows: (markdown lines, paths of the PNGs written)."""
    cells, analysis, law, intervals = fit(points)
    warnings = _grid_warnings(points) + analysis.warnings + _interval_warnings(analysis, intervals, law)
    for w in warnings:
        log.warning("%s", w)
    seeds = sorted({p.seed for p in points if p.seed is not None})
    lines = _approach2(points, analysis, intervals, seeds) + _approach3(cells, law, intervals, analysis)
    paths = scaling_plots.plot(analysis, intervals, law, sweep_dir)
    for path in paths:
        lines += ["", f"![{os.path.splitext(os.path.basename(path))[0]}]({os.path.basename(path)})"]
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in warnings]
    if any(len(c.losses) > 1 for c in cells):
        lines += _seeds_table(cells)
    return lines + _jobs_table(points), paths


def _with_interval(value: float | None, iv: bootstrap.Interval | None, fmt, resamples: int) -> str:
    """`0.705 (90% interval 0.61-0.78, 1,000 resamples)`; the value alone without an interval."""
    if value is None:
        return ""
    if iv is None:
        return fmt(value)
    sep = " to " if iv.low < 0 else "-"
    count = f"{resamples:,}" if iv.count == resamples else f"{iv.count:,} of {resamples:,}"
    return f"{fmt(value)} ({bootstrap.LEVEL:.0%} interval {fmt(iv.low)}{sep}{fmt(iv.high)}, {count} resamples)"


def _approach2(points, analysis: isoflop.Analysis, iv: bootstrap.Intervals, seeds: list[int]) -> list[str]:
    lines = [
        "",
        "## Scaling: IsoFLOP profiles (approach 2)",
        "",
        "N: parameters as the FLOPs count them (the head, no lookup tables); D: training tokens; C: training FLOPs, "
        "6N + attention per token times D. Each budget's final val losses are fitted with a parabola in ln N; its "
        "vertex is the compute-optimal N, and D_opt the tokens a model of that size trains on within the budget. "
        f"Intervals: the bootstrap's {bootstrap.LEVEL:.0%} (seeded; jobs resampled within each budget, seeds within "
        "each job, every fit redone).",
    ]
    if len(seeds) > 1:
        lines[-1] += f" Each (budget, size) is the mean over its seeds ({', '.join(map(str, seeds))})."
    lines += ["", "| budget C | finished jobs | N_opt | D_opt | D_opt / N_opt | val loss at N_opt | note |"]
    lines.append("|---|---|---|---|---|---|---|")
    for f in analysis.fits:
        n_all = sum(p.budget == f.budget for p in points)
        done = sum(len(c.losses) for c in f.cells)
        opt = [""] * 4
        if f.n_opt is not None:
            n_iv, d_iv = iv.n_opt.get(f.budget), iv.d_opt.get(f.budget)
            opt = [_si_range(f.n_opt, n_iv), _si_range(f.d_opt, d_iv), f"{f.d_opt / f.n_opt:.1f}", f"{f.loss_opt:.4f}"]
        note = "" if f.in_grid else "outside the grid" if f.n_opt else "no minimum"
        if f.in_grid and f.budget in iv.fixed:
            note = "no interval"
        lines.append(f"| {f.budget:.3g} | {done} of {n_all} | " + " | ".join([*opt, note]) + " |")
    if analysis.n_law and analysis.d_law:
        span = [f.budget for f in analysis.fits if f.in_grid]
        fmt = lambda x: f"{x:.3f}"
        lines += [
            "",
            f"**N_opt ∝ C^{analysis.n_law.exponent:.3f}, D_opt ∝ C^{analysis.d_law.exponent:.3f}** (fitted over "
            f"{len(span)} budgets, {min(span):.3g} to {max(span):.3g} FLOPs; Chinchilla: about 0.5 and 0.5):",
            "",
            f"- a = {_with_interval(analysis.n_law.exponent, iv.a, fmt, iv.resamples)}",
            f"- b = {_with_interval(analysis.d_law.exponent, iv.b, fmt, iv.resamples)}",
        ]
    return lines


def _si_range(value: float, iv: bootstrap.Interval | None) -> str:
    return si(value) if iv is None else f"{si(value)} ({si(iv.low)}-{si(iv.high)})"


def _approach3(cells, law: approach3.LawFit | None, iv: bootstrap.Intervals, analysis: isoflop.Analysis) -> list:
    lines = [
        "",
        "## Scaling: one law L(N, D) (approach 3)",
        "",
        f"L(N, D) = E + A / N^α + B / D^β fitted to the {len(cells)} finished (budget, size) means: the Huber loss "
        f"(δ = {approach3.HUBER_DELTA:g}) on ln L from the best {approach3.STARTS} of Hoffmann et al.'s grid of "
        "initialisations; a = β/(α+β) and b = α/(α+β) are the compute-optimal exponents it implies at C = 6ND.",
    ]
    if law is None:
        why = "fewer than 6 finished sizes" if len(cells) < 6 else "its exponents came out not positive"
        return [*lines, "", f"No fit: {why}."]
    fmt = {"E": "{:.3f}", "A": "{:.1f}", "B": "{:.1f}", "alpha": "{:.3f}", "beta": "{:.3f}", "a": "{:.3f}"}
    fmt["b"] = fmt["a"]
    lines += ["", "| fit | E | A | B | α | β | a | b |", "|---|---|---|---|---|---|---|---|"]
    lines.append("| this sweep | " + " | ".join(fmt[k].format(getattr(law, k)) for k in bootstrap.LAW_FIELDS) + " |")
    if iv.law:
        cells_iv = [
            "" if iv.law[k] is None else f"{fmt[k].format(iv.law[k].low)}-{fmt[k].format(iv.law[k].high)}"
            for k in bootstrap.LAW_FIELDS
        ]
        count = max((i.count for i in iv.law.values() if i), default=0)
        lines.append(
            f"| {bootstrap.LEVEL:.0%} interval ({count:,} of {iv.resamples:,} resamples) | "
            + " | ".join(cells_iv)
            + " |"
        )
    for name, ref in ANCHORS.items():
        ref_law = approach3.LawFit(**ref)
        lines.append(
            f"| {name} | " + " | ".join(fmt[k].format(getattr(ref_law, k)) for k in bootstrap.LAW_FIELDS) + " |"
        )
    lines += [
        "",
        "The published fits are token-level models of 44M to 16B parameters: a small sweep's E, A and B are in other "
        "units (its own tokens) at another scale, and compare with them only in kind.",
    ]
    return lines + ["", _agreement(analysis, law, iv)]


def _agreement(analysis: isoflop.Analysis, law: approach3.LawFit, iv: bootstrap.Intervals) -> str:
    """Whether approach 2's exponent a and the one approach 3's law implies agree within their intervals."""
    if analysis.n_law is None:
        return f"Approach 3 alone: a = {law.a:.3f}; approach 2 has no power law to compare."
    ours, theirs = iv.a, iv.law.get("a")
    both = (
        f"a = {analysis.n_law.exponent:.3f}"
        + (f" ({ours.low:.3f}-{ours.high:.3f})" if ours else "")
        + f" from the IsoFLOP profiles, {law.a:.3f}"
        + (f" ({theirs.low:.3f}-{theirs.high:.3f})" if theirs else "")
        + " from the law"
    )
    if ours is None or theirs is None:
        return f"**No intervals to compare the two approaches**: {both}."
    if ours.overlaps(theirs):
        return f"**Approaches 2 and 3 agree within their intervals**: {both}."
    return f"**Approaches 2 and 3 disagree**: {both}; the intervals do not overlap."


def _interval_warnings(analysis: isoflop.Analysis, iv: bootstrap.Intervals, law) -> list[str]:
    warnings = []
    for f in analysis.fits:
        if f.budget in iv.fixed and f.n_opt is not None:
            warnings.append(
                f"budget {f.budget:.3g}: 3 sizes with one seed each, through which the parabola passes exactly: no "
                "interval, and its noise is not in the exponents' intervals (add depths or seeds)"
            )
    if analysis.n_law is not None and iv.a is None:
        warnings.append("the exponents get no interval: no budget can vary under resampling (add depths or seeds)")
    if iv.a is not None and iv.a.count < 0.75 * iv.resamples:
        warnings.append(
            f"only {iv.a.count:,} of {iv.resamples:,} resamples kept 2 budgets with a minimum inside the grid: the "
            "exponents' intervals rest on those (add depths around the minima)"
        )
    return warnings


def _grid_warnings(points: Sequence[isoflop.Point]) -> list[str]:
    """The jobs left out (failed, unfinished) and those missing from the sweep's grid of budgets x depths x seeds."""
    seeds = {p.seed for p in points if p.seed is not None}
    warnings = [f"job {p.job} ({_where(p, seeds)}) {p.status}: left out of the fits" for p in points if not p.usable]
    if any(p.depth is None for p in points):
        return warnings  # shapes given explicitly: no grid to complete
    present = {(p.budget, p.depth, p.seed) for p in points}
    axes = (sorted({p.budget for p in points}), sorted({p.depth for p in points}), sorted(seeds) or [None])
    missing = [isoflop.Point("", b, "missing", depth=d, seed=s) for b, d, s in itertools.product(*axes)]
    missing = [p for p in missing if (p.budget, p.depth, p.seed) not in present]
    warnings += [
        f"no job for {_where(p, seeds)}: missing from the grid, the intervals are wider for it" for p in missing
    ]
    return warnings


def _where(p: isoflop.Point, seeds: set) -> str:
    where = f"budget {p.budget:.3g}" + ("" if p.depth is None else f", depth {p.depth}")
    return where + (f", seed {p.seed}" if len(seeds) > 1 else "")


def _seeds_table(cells: Sequence[isoflop.Cell]) -> list[str]:
    """Each (budget, size): its seeds' mean and spread."""
    lines = ["", "| budget C | N | D | seeds | mean val loss | std over seeds | jobs |", "|" + "---|" * 7]
    for c in cells:
        spread = "" if c.spread is None else f"{c.spread:.4f}"
        row = [f"{c.budget:.3g}", si(c.params), si(c.tokens), str(len(c.losses)), f"{c.loss:.4f}", spread]
        lines.append("| " + " | ".join([*row, ", ".join(c.jobs)]) + " |")
    return lines


def _jobs_table(points: Sequence[isoflop.Point]) -> list[str]:
    """Every job, failed and unfinished ones included, by budget and size."""
    lines = [
        "",
        "| job | budget C | depth | seed | N | D | C spent | val loss | tokens/s | status |",
        "|" + "---|" * 10,
    ]
    for p in sorted(points, key=lambda p: (p.budget, p.params or 0, int(p.job) if p.job.isdigit() else 0)):
        cells = [
            p.job,
            f"{p.budget:.3g}",
            "" if p.depth is None else str(p.depth),
            "" if p.seed is None else str(p.seed),
            si(p.params),
            si(p.tokens),
            "" if p.flops is None else f"{p.flops:.3g}",
            "" if p.val_loss is None else f"{p.val_loss:.4f}",
            "" if p.tokens_per_s is None else f"{p.tokens_per_s:,.0f}",
            p.status,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
