"""Dense measured curves (dilatometry, DSC, in-situ diffraction): a robust fit of X(t) with incubation and plateau.

The model is X(t) = y_max·(1 − exp(−k·(t − t0)ⁿ)) for t > t0 and 0 before: t0 the incubation time,
y_max the fraction the curve tops out at (below 1 when the transformation stops short, as bainite
does). Each of t0 and y_max is fitted or given. A trace of thousands of points is fitted by scipy's
trust-region least squares with the soft-L1 loss ρ(r) = 2·(√(1 + (r/c)²) − 1), quadratic for
|r| ≲ c and linear beyond, so a few outliers (a spike, a dropped reading) do not pull the curve;
c is :data:`LOSS_SCALE` times the robust spread of a plain least-squares fit's residuals (a real
trace's misfit is mostly the model's, not the instrument's: scaling by the point noise alone would
make every point an outlier). Times are scaled by a
reference t_ref (the time the trace reaches half its plateau) so the parameters are of order one.

The covariance is the Gauss–Newton one, σ_r²·(JᵀJ)⁻¹ with σ_r the robust scale of the residuals,
multiplied by (1 + ρ₁)/(1 − ρ₁) with ρ₁ the lag-1 autocorrelation of the residuals: a dense trace's
misfit is smooth, not independent from point to point, and without that factor 3,000 points would
claim an uncertainty a hundred times too small (the AR(1) variance inflation of a mean).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from matmeta.models.jmak import LN_LN2

LOSS = "soft_l1"
LOSS_SCALE = 3.0
N_BOUNDS = (0.05, 10.0)
Y_MAX_BOUNDS = (1e-3, 1.5)
PARAMS = ("ln_k", "n", "t0_s", "y_max")


@dataclasses.dataclass
class MeasuredFit:
    """One dense fit: parameters, covariance and residual scale.

    Attributes:
        ln_k: ln k in units of t_ref⁻ⁿ (time t − t0 divided by t_ref).
        n, t0_s, y_max: the Avrami exponent, incubation time (s) and plateau.
        ln_t_ref: ln of the reference time (s).
        cov: ``(4, 4)`` covariance of (ln k, n, t0, y_max); rows of given parameters are 0.
        noise: the trace's point-to-point noise σ̂; ``residual``: rms residual.
        ok: the optimiser converged to finite values with n > 0.
    """

    ln_k: float
    n: float
    t0_s: float
    y_max: float
    ln_t_ref: float
    cov: np.ndarray
    noise: float
    residual: float
    ok: bool


def point_noise(fraction: np.ndarray) -> float:
    """Point-to-point noise σ̂ of a dense trace: 1.4826·MAD of first differences / √2 (floored at 1e-6)."""
    diff = np.diff(np.asarray(fraction, dtype=float))
    if diff.size == 0:
        return 1e-6
    mad = np.median(np.abs(diff - np.median(diff)))
    return max(1.4826 * mad / math.sqrt(2.0), 1e-6)


def _model(theta: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X at scaled times ``tau`` and the Jacobian ``(P, 4)`` in (ln k, n, u = t0/t_ref, y)."""
    a, n, u, y = theta
    d = tau - u
    after = d > 0
    ld = np.log(np.where(after, d, 1.0))
    z = np.clip(a + n * ld, -30.0, 30.0)
    f = np.where(after, -np.expm1(-np.exp(z)), 0.0)
    g = np.where(after, np.exp(z - np.exp(z)), 0.0)  # dF/dz
    jac = np.stack([y * g, y * g * ld, -y * g * n / np.where(after, d, 1.0), f], axis=1)
    return y * f, jac


def _start(tau: np.ndarray, x: np.ndarray, y0: float, u0: float) -> np.ndarray:
    """Start (ln k, n, u, y) from the Avrami line of the points between 5 % and 95 % of the plateau."""
    q = x / y0
    keep = (q > 0.05) & (q < 0.95) & (tau > u0)
    if keep.sum() < 2:
        return np.array([LN_LN2, 1.5, u0, y0])
    lt = np.log(tau[keep] - u0)
    zz = np.log(-np.log1p(-q[keep]))
    n, a = np.polyfit(lt, zz, 1)
    return np.array([a, float(np.clip(n, 0.3, 6.0)), u0, y0])


class _Problem:
    """Residuals and Jacobian of the free parameters of one trace (the others held at ``base``)."""

    def __init__(self, tau: np.ndarray, x: np.ndarray, free: np.ndarray, base: np.ndarray) -> None:
        self.tau, self.x, self.free, self.base = tau, x, free, base

    def full(self, p: np.ndarray) -> np.ndarray:
        """All four parameters from the free ones."""
        theta = self.base.copy()
        theta[self.free] = p
        return theta

    def resid(self, p: np.ndarray) -> np.ndarray:
        """Model minus data."""
        return _model(self.full(p), self.tau)[0] - self.x

    def jac(self, p: np.ndarray) -> np.ndarray:
        """Jacobian of :meth:`resid` in the free parameters."""
        return _model(self.full(p), self.tau)[1][:, self.free]

    def solve(self, p0: np.ndarray, bounds: tuple, loss: str, scale: float) -> object:
        """Scipy's trust-region reflective least squares from ``p0`` (None if it raised)."""
        from scipy.optimize import least_squares

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return least_squares(self.resid, p0, jac=self.jac, bounds=bounds, loss=loss, f_scale=scale,
                                     max_nfev=100)  # fmt: skip
        except (ValueError, np.linalg.LinAlgError):
            return None


def fit_measured(
    time_s: np.ndarray, fraction: np.ndarray, t0_s: float | None = None, y_max: float | None = None,
    loss: str = LOSS, sigma: float | None = None,
) -> MeasuredFit:  # fmt: skip
    """Robust fit of one dense curve (see the module docstring).

    Plain least squares first (from three starts of t0), then the robust loss from its solution with
    the scale c = :data:`LOSS_SCALE` × the robust spread of its residuals (1.4826·MAD, at least the
    point noise): residuals beyond a few times the curve's own misfit count linearly.

    Args:
        time_s: times (s, ≥ 0, increasing).
        fraction: measured fractions (not clipped: noise around 0 and the plateau is kept).
        t0_s: given incubation time (None: fitted, ≥ 0).
        y_max: given plateau (None: fitted).
        loss: scipy loss for the second stage (``soft_l1``; ``linear``: plain least squares only).
        sigma: a stated noise σ for the covariance (a few readings: their residuals say nothing);
            default: the residuals' robust scale with the AR(1) inflation.
    """
    t, x = np.asarray(time_s, dtype=float), np.asarray(fraction, dtype=float)
    noise = point_noise(x)
    tail = x[-max(3, len(x) // 20) :]
    y0 = float(np.clip(np.median(tail), 0.05, Y_MAX_BOUNDS[1])) if y_max is None else float(y_max)
    half = t[np.argmax(x >= 0.5 * y0)] if (x >= 0.5 * y0).any() else float(np.median(t[t > 0]))
    t_ref = max(float(half), 1e-9)
    tau = t / t_ref
    free = np.array([True, True, t0_s is None, y_max is None])
    u_hi = 1.0  # t0 before the time the trace reaches half its plateau (t_ref)
    starts = [0.0, 0.3, 0.6] if t0_s is None else [float(t0_s) / t_ref]
    lo = np.array([-60.0, N_BOUNDS[0], 0.0, Y_MAX_BOUNDS[0]])[free]
    hi = np.array([60.0, N_BOUNDS[1], u_hi, Y_MAX_BOUNDS[1]])[free]
    best = None
    for u0 in starts:
        problem = _Problem(tau, x, free, _start(tau, x, y0, u0))
        p0 = np.clip(problem.base[free], lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        sol = problem.solve(p0, (lo, hi), "linear", 1.0)
        if sol is not None and (best is None or sol.cost < best[0].cost):
            best = (sol, problem)
    if best is None:
        return MeasuredFit(LN_LN2, 1.0, 0.0, 1.0, math.log(t_ref), np.zeros((4, 4)), noise, math.inf, False)
    sol, problem = best
    if loss != "linear":
        r = sol.fun[: len(x)]
        spread = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), noise)
        robust = problem.solve(sol.x, (lo, hi), loss, LOSS_SCALE * spread)
        sol = robust if robust is not None else sol
    return _finish(problem.full(sol.x), tau, x, free, t_ref, noise, sigma)


def _finish(
    theta: np.ndarray, tau: np.ndarray, x: np.ndarray, free: np.ndarray, t_ref: float, noise: float,
    sigma: float | None = None,
) -> MeasuredFit:  # fmt: skip
    """Covariance (robust residual scale, AR(1) inflation; or the stated σ) and the :class:`MeasuredFit` in seconds."""
    pred, jac = _model(theta, tau)
    r = x - pred
    scale = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), noise) if sigma is None else float(sigma)
    rho = float(np.corrcoef(r[:-1], r[1:])[0, 1]) if len(r) > 3 and r.std() > 0 and sigma is None else 0.0
    rho = min(max(rho, 0.0), 0.99) if math.isfinite(rho) else 0.0
    j = jac[:, free]
    cov = np.zeros((4, 4))
    try:
        inner = np.linalg.inv(j.T @ j + 1e-12 * np.eye(j.shape[1]))
    except np.linalg.LinAlgError:
        inner = np.full((j.shape[1], j.shape[1]), np.inf)
    cov[np.ix_(free, free)] = scale**2 * inner * (1 + rho) / (1 - rho)
    units = np.array([1.0, 1.0, t_ref, 1.0])  # u = t0/t_ref → seconds
    cov = cov * units[:, None] * units[None, :]
    a, n, u, y = theta
    ok = bool(np.all(np.isfinite(theta)) and n > 0)
    return MeasuredFit(float(a), float(n), float(u * t_ref), float(y), math.log(t_ref), cov, noise,
                       float(np.sqrt(np.mean(r**2))), ok)  # fmt: skip


def ln_time_std(fit: MeasuredFit, fraction: float) -> float:
    """Delta-method standard deviation of ln t_p, t_p = t0 + t_ref·exp((z_p − ln k)/n)."""
    zp = math.log(-math.log1p(-fraction))
    shifted = math.exp((zp - fit.ln_k) / fit.n + fit.ln_t_ref)
    total = fit.t0_s + shifted
    grad = np.array([-shifted / (fit.n * total), -shifted * (zp - fit.ln_k) / (fit.n**2 * total), 1.0 / total, 0.0])
    return float(math.sqrt(max(grad @ fit.cov @ grad, 0.0)))
