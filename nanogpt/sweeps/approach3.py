"""Chinchilla's approach 3: one law L(N, D) = E + A / N^α + B / D^β fitted to every finished (budget, size).

The parametrisation and objective are Hoffmann et al.'s (2022) and Epoch AI's replication's (Besiroglu et al.
2024): parameters θ = (a, b, e, α, β) with A = exp(a), B = exp(b), E = exp(e), so that
ln L = logsumexp(a - α ln N, b - β ln D, e), and the Huber loss (δ = 1e-3) between that and the observed ln L.
The objective has many local minima, so a fit starts from Hoffmann's grid of initialisations (a, b in 0-25,
e in -1 to 1, α, β in 0-2), evaluated at once, and refines the best few. Where the papers refine with L-BFGS,
we use Levenberg-Marquardt on the Huber loss's reweighted least squares, vectorised over starts and bootstrap
resamples so that a thousand refits cost milliseconds; it runs to a tight step tolerance, the convergence Epoch
found Chinchilla's fit lacked. At fixed C = 6ND the law's optimum is N_opt ∝ C^(β/(α+β)) and
D_opt ∝ C^(α/(α+β)): the exponents approach 2 measures directly.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

HUBER_DELTA = 1e-3
STARTS = 16  # grid points refined: the grid's lowest objectives
MAX_STEPS = 300
_GRID = np.array(
    list(
        itertools.product(
            np.arange(0, 26, 5.0),  # a
            np.arange(0, 26, 5.0),  # b
            np.arange(-1, 1.01, 0.5),  # e
            np.arange(0, 2.01, 0.5),  # alpha
            np.arange(0, 2.01, 0.5),  # beta
        )
    )
)


@dataclass(frozen=True)
class LawFit:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @property
    def a(self) -> float:
        """N_opt ∝ C^a at fixed C = 6ND."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def theta(self) -> np.ndarray:
        return np.array([math.log(self.A), math.log(self.B), math.log(self.E), self.alpha, self.beta])

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> LawFit:
        a, b, e, alpha, beta = (float(v) for v in theta)
        return cls(math.exp(e), math.exp(a), math.exp(b), alpha, beta)

    def __call__(self, n: float | np.ndarray, d: float | np.ndarray) -> np.ndarray:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta


def _huber(r: np.ndarray) -> np.ndarray:
    return np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))


def _terms(theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray) -> tuple[np.ndarray, ...]:
    """The law's three terms in logs, for fits (..., 5) over points (..., k)."""
    a, b, e, alpha, beta = (theta[..., i : i + 1] for i in range(5))
    return a - alpha * ln_n, b - beta * ln_d, np.broadcast_to(e, np.broadcast_shapes(e.shape, ln_n.shape))


def _residuals(theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, jacobian: bool = False):
    """ln L(θ) - observed ln L, (..., k); with `jacobian`, also d residual / dθ, (..., k, 5)."""
    t_n, t_d, t_e = _terms(theta, ln_n, ln_d)
    top = np.maximum(np.maximum(t_n, t_d), t_e)  # logsumexp without overflow
    p_n, p_d, p_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(t_e - top)
    total = p_n + p_d + p_e
    r = top + np.log(total) - ln_l
    if not jacobian:
        return r
    p_n, p_d, p_e = p_n / total, p_d / total, p_e / total
    return r, np.stack([p_n, p_d, p_e, -p_n * ln_n, -p_d * ln_d], axis=-1)


def objective(theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray) -> np.ndarray:
    """The summed Huber loss of each fit, (...)."""
    return _huber(_residuals(theta, ln_n, ln_d, ln_l)).sum(axis=-1)


def minimise(theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray) -> np.ndarray:
    """Each row of θ (R, 5) refined on its own points (R, k): Levenberg-Marquardt steps on the reweighted least
    squares whose minimum is the Huber loss's (weight 1 inside δ, δ/|r| outside), a step kept only where it lowers
    that fit's objective."""
    theta = theta.copy()
    f = objective(theta, ln_n, ln_d, ln_l)
    damping = np.full(len(theta), 1e-3)
    active = np.arange(len(theta))  # the fits still moving
    eye = np.eye(5)
    for _ in range(MAX_STEPS):
        th, n, d, lo = theta[active], ln_n[active], ln_d[active], ln_l[active]
        r, jac = _residuals(th, n, d, lo, jacobian=True)
        w = np.where(np.abs(r) <= HUBER_DELTA, 1.0, HUBER_DELTA / np.maximum(np.abs(r), HUBER_DELTA))
        grad = np.einsum("rk,rki->ri", w * r, jac)
        hess = np.einsum("rk,rki,rkj->rij", w, jac, jac)
        scale = np.einsum("rii->ri", hess)[:, :, None] * eye + 1e-12 * eye
        step = np.linalg.solve(hess + damping[active, None, None] * scale, -grad[..., None])[..., 0]
        f_trial = objective(th + step, n, d, lo)
        better = f_trial < f[active]
        theta[active[better]] += step[better]
        f[active[better]] = f_trial[better]
        damping[active] = np.clip(np.where(better, damping[active] / 3, damping[active] * 4), 1e-9, 1e9)
        # A fit stops when its step no longer moves it: converged, or damped to a standstill.
        active = active[np.abs(step).max(axis=1) > 1e-9]
        if len(active) == 0:
            break
    return theta


def _grid_best(ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray, count: int) -> np.ndarray:
    """The `count` grid points of lowest objective, best first."""
    order = np.argsort(objective(_GRID, ln_n, ln_d, ln_l))
    return _GRID[order[:count]]


def fit(params: np.ndarray, tokens: np.ndarray, losses: np.ndarray) -> LawFit | None:
    """The law through these (N, D, loss); None with fewer than 6 points (more than the five parameters) or an
    optimum whose exponents are not positive."""
    if len(losses) < 6:
        return None
    ln_n, ln_d, ln_l = (np.log(np.asarray(v, dtype=float)) for v in (params, tokens, losses))
    starts = _grid_best(ln_n, ln_d, ln_l, STARTS)
    rows = (np.broadcast_to(v, (len(starts), len(v))) for v in (ln_n, ln_d, ln_l))
    ln_n, ln_d, ln_l = rows
    refined = minimise(starts, ln_n, ln_d, ln_l)
    best = refined[int(np.argmin(objective(refined, ln_n, ln_d, ln_l)))]
    return LawFit.from_theta(best) if best[3] > 0 and best[4] > 0 else None


def refit(start: LawFit, params: np.ndarray, tokens: np.ndarray, losses: np.ndarray) -> list[LawFit | None]:
    """The law refitted to each row of (R, k) resampled points, from the sweep's own optimum; None where the
    exponents come out not positive."""
    ln_n, ln_d, ln_l = (np.log(np.asarray(v, dtype=float)) for v in (params, tokens, losses))
    theta = minimise(np.tile(start.theta, (len(ln_l), 1)), ln_n, ln_d, ln_l)
    return [LawFit.from_theta(t) if t[3] > 0 and t[4] > 0 else None for t in theta]
