"""The scaling section's figures: isoflop.png (each budget's losses against N, its parabola, the vertex with its
interval, approach 3's law along the budget) and frontier.png (N_opt and D_opt against C with their intervals
and both approaches' power laws). Log axes carry only labels that fit: powers of ten, or 1-2-5 steps within a
decade, never matplotlib's minor labels, which run together over spans shorter than a decade.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from nanogpt.sweeps import approach3, bootstrap, isoflop
from nanogpt.sweeps.isoflop import si

log = logging.getLogger("nanogpt")


def plot(a: isoflop.Analysis, iv: bootstrap.Intervals, law: approach3.LawFit | None, sweep_dir: str) -> list[str]:
    """The figures' paths; [] without matplotlib or without a finished job."""
    if not any(f.cells for f in a.fits):
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on clusters
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no isoflop.png or frontier.png (pip install matplotlib)")
        return []
    paths = [_plot_isoflop(plt, a, iv, law, os.path.join(sweep_dir, "isoflop.png"))]
    if a.n_law and a.d_law:
        paths.append(_plot_frontier(plt, a, iv, law, os.path.join(sweep_dir, "frontier.png")))
    return paths


def log_ticks(lo: float, hi: float) -> list[float]:
    """Between 3 and 7 round values in [lo, hi]: powers of ten (every other one over many decades), or 1-3,
    1-2-5, ... steps where the span is shorter."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 5, 7), range(1, 10)):
        ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in mantissas if lo <= m * 10.0**k <= hi]
        if len(ticks) > 7:
            return ticks[:: -(-len(ticks) // 7)]
        if len(ticks) >= 3:
            return ticks
    return ticks


def _readable_log_axis(ax, which: str, label) -> None:
    """Fixed major ticks from log_ticks over the limits the data set, labelled by `label`; no minor labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)  # kept: the ticks are chosen for them
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: label(v)))
    axis.set_minor_formatter(NullFormatter())


def flops_label(c: float) -> str:
    """3e10, 1e11: what the presets write."""
    mantissa, exponent = f"{c:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _plot_isoflop(plt, a: isoflop.Analysis, iv: bootstrap.Intervals, law, path: str) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(a.fits)))
    for f, color in zip(a.fits, colors, strict=True):
        if not f.cells:
            continue
        n = np.array([c.params for c in f.cells], dtype=float)
        for c in f.cells:  # every seed, faint, under the means
            ax.plot([c.params] * len(c.losses), c.losses, ".", color=color, alpha=0.35, markersize=4)
        spread = [c.spread or 0.0 for c in f.cells]
        ax.errorbar(n, [c.loss for c in f.cells], yerr=spread, fmt="o", color=color, label=f"C = {f.budget:.2g}")
        x = np.linspace(math.log(n.min()) - 0.2, math.log(n.max()) + 0.2, 100)
        if f.coeffs is not None:
            ax.plot(np.exp(x), np.polyval(f.coeffs, x), "-", color=color, alpha=0.7)
        if law is not None and len(set(n)) >= 2:  # the law along this budget's D(N)
            slope, icpt = np.polyfit(np.log(n), np.log([c.tokens for c in f.cells]), 1)
            ax.plot(np.exp(x), law(np.exp(x), np.exp(icpt + slope * x)), "--", color=color, alpha=0.6)
        if f.n_opt is not None and f.in_grid:
            band = iv.n_opt.get(f.budget)
            xerr = None if band is None else [[f.n_opt - band.low], [band.high - f.n_opt]]
            star = ax.errorbar([f.n_opt], [f.loss_opt], xerr=xerr, fmt="*", color=color, markersize=14, capsize=4)
            star[0].set_markeredgecolor("black")
    ax.set_xscale("log")
    _readable_log_axis(ax, "x", si)
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final val loss (dots: seeds; bars: their spread)")
    title = "IsoFLOP profiles: parabolas (solid), stars at their minima with intervals"
    ax.set_title(title + ("\ndashed: approach 3's law L(N, D) along each budget" if law else ""), fontsize="medium")
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize="small")
    return _save(plt, fig, path)


def _plot_frontier(plt, a: isoflop.Analysis, iv: bootstrap.Intervals, law, path: str) -> str:
    good = [f for f in a.fits if f.in_grid]
    c = np.array([f.budget for f in good])
    line = np.geomspace(c.min() / 1.5, c.max() * 1.5, 50)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (
        (axes[0], a.n_law, "n_opt", iv.a, "a", "N_opt (parameters)"),
        (axes[1], a.d_law, "d_opt", iv.b, "b", "D_opt (tokens)"),
    )
    for ax, power, key, band, name, what in panels:
        values = np.array([getattr(f, key) for f in good])
        bands = [getattr(iv, key).get(f.budget) for f in good]
        low = np.array([v - b.low if b else 0.0 for v, b in zip(values, bands, strict=True)])
        high = np.array([b.high - v if b else 0.0 for v, b in zip(values, bands, strict=True)])
        ax.errorbar(c, values, yerr=[low, high], fmt="o", color="tab:blue", capsize=4, label="fitted minima")
        label = f"approach 2: ∝ C^{power.exponent:.3f}"
        if band:
            label += f" ({band.low:.2f}-{band.high:.2f})"
        ax.plot(line, power(line), "-", color="tab:orange", label=label)
        if law is not None:  # the same exponent from the law, through the middle budget's value
            slope = getattr(law, name)
            mid = len(c) // 2
            ax.plot(
                line,
                values[mid] * (line / c[mid]) ** slope,
                "--",
                color="tab:green",
                label=f"approach 3: ∝ C^{slope:.3f}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        _readable_log_axis(ax, "x", flops_label)
        _readable_log_axis(ax, "y", si)
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize="small")
    fig.suptitle(f"Compute-optimal frontier, {bootstrap.LEVEL:.0%} intervals (Chinchilla: exponents about 0.5 and 0.5)")
    return _save(plt, fig, path)


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
