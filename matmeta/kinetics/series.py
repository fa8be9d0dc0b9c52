"""Isothermal curves of one material at several temperatures, fitted jointly with an Arrhenius rate.

Curve j at temperature T_j is X_j(t) = y_j·(1 − exp(−((t − t0_j)/τ_j)^{n_j})), with the characteristic
time τ = k^(−1/n) (units of s whatever n is) following Arrhenius::

    ln τ_j = c0 + (Q/R)·(1/T_j − 1/T̄),

so Q is the activation energy of the characteristic rate 1/τ (for a shared n, that of k is n·Q). n is
either shared by all temperatures or one per temperature (``n_model``; ``auto`` takes the lower BIC,
χ² + p·ln N on the standardised residuals, with χ² and N counted in effective points where trace
residuals are correlated). A measured trace keeps its own
incubation t0_j and plateau y_j; a curve of a few readings has t0 = 0 and y = 1 (normalised readings),
unless given. The joint fit is robust least squares (soft-L1 at 3 standard deviations) on residuals
standardised by each curve's noise (a trace: the rms misfit of its own fit; readings: the prior's σ),
started from the curves' own fits. Its covariance is the Gauss–Newton one, inflated for the lag-1
autocorrelation of the residuals (:mod:`matmeta.kinetics.robust`).

The half time at an unmeasured temperature is t50(T) = t0(T) + τ(T)·(ln 2)^{1/n(T)}: τ from the
Arrhenius line, n(T) the shared n or the per-temperature n's weighted line in 1/T, and t0(T) = s̄·τ(T)
with s̄ the mean t0_j/τ_j (the incubation scales with the characteristic time). Its interval comes from
draws of the parameters from their Gaussian.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np

from matmeta.errors import MatmetaInputError
from matmeta.kinetics.data import Curve
from matmeta.kinetics.synthetic import GAS_CONSTANT

N_MODELS = ("auto", "shared", "per-temperature")
SOFT_SCALE = 3.0
DRAWS = 2000


@dataclasses.dataclass
class _Layout:
    """Which entries of the parameter vector are what: [c0, c1 (kK), n…, t0…, y…]."""

    curves: int
    shared: bool
    free_t0: list[int]
    free_y: list[int]

    @property
    def size(self) -> int:
        return 2 + (1 if self.shared else self.curves) + len(self.free_t0) + len(self.free_y)

    def unpack(self, p: np.ndarray, t0: np.ndarray, y: np.ndarray) -> tuple:
        """(c0, c1, n per curve, t0 per curve, y per curve) from ``p`` (fixed t0, y from the arrays)."""
        j = self.curves
        nn = 1 if self.shared else j
        n = np.full(j, p[2]) if self.shared else p[2 : 2 + nn]
        t0, y = t0.copy(), y.copy()
        t0[self.free_t0] = p[2 + nn : 2 + nn + len(self.free_t0)]
        y[self.free_y] = p[2 + nn + len(self.free_t0) :]
        return p[0], p[1], n, t0, y


@dataclasses.dataclass
class SeriesFit:
    """A joint fit of one material's isothermal curves (see the module docstring).

    Shapes:
        ``temperature_k``, ``n``, ``t0_s``, ``y_max``, ``ln_tau``: ``(J,)`` (one per curve);
        ``params``, ``cov``: the joint parameter vector and its covariance.
    """

    names: list[str]
    temperature_k: np.ndarray
    n_model: str
    q_kj_mol: float
    q_std_kj_mol: float
    n: np.ndarray
    n_std: np.ndarray
    t0_s: np.ndarray
    y_max: np.ndarray
    ln_tau: np.ndarray
    bic: dict[str, float]
    inv_t_mean: float
    params: np.ndarray
    cov: np.ndarray
    layout: _Layout
    residual: np.ndarray

    def t50(self, temperature_k: float, level: float = 0.9) -> tuple[float, float, float]:
        """Half time (s) at ``temperature_k`` with its central ``level`` interval: ``(t50, lo, hi)``."""
        point = self._t50(self.params, temperature_k)
        rng = np.random.default_rng(0)
        vals, vecs = np.linalg.eigh(0.5 * (self.cov + self.cov.T))
        draws = self.params + rng.standard_normal((DRAWS, len(self.params))) @ (vecs * np.sqrt(vals.clip(0))).T
        ts = np.array([self._t50(p, temperature_k) for p in draws])
        ts = ts[np.isfinite(ts)]
        lo, hi = np.quantile(ts, [0.5 - level / 2, 0.5 + level / 2]) if ts.size else (math.nan, math.nan)
        return point, float(lo), float(hi)

    def _t50(self, p: np.ndarray, temperature_k: float) -> float:
        c0, c1, n, t0, _ = self.layout.unpack(p, self.t0_s, self.y_max)
        u = 1000.0 * (1.0 / self.temperature_k - self.inv_t_mean)
        ln_tau = c0 + c1 * u
        at = 1000.0 * (1.0 / temperature_k - self.inv_t_mean)
        tau = math.exp(c0 + c1 * at)
        if self.layout.shared or len(set(self.temperature_k)) < 3:
            n_t = float(np.mean(n))
        else:
            slope, icpt = np.polyfit(u, n, 1)
            n_t = float(icpt + slope * at)
        n_t = max(n_t, 0.05)
        share = float(np.mean(t0 / np.exp(ln_tau)))
        return share * tau + tau * math.log(2.0) ** (1.0 / n_t)


def _residuals(layout: _Layout, p: np.ndarray, data: list, u: np.ndarray, t0: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Standardised residuals of all curves, concatenated."""
    c0, c1, n, t0, y = layout.unpack(p, t0, y)
    out = []
    for j, (t, x, sigma) in enumerate(data):
        d = t - t0[j]
        after = d > 0
        z = np.clip(n[j] * (np.log(np.where(after, d, 1.0)) - (c0 + c1 * u[j])), -30, 30)
        pred = np.where(after, -np.expm1(-np.exp(z)), 0.0) * y[j]
        out.append((pred - x) / sigma)
    return np.concatenate(out)


def _solve(layout: _Layout, p0: np.ndarray, data: list, u: np.ndarray, t0: np.ndarray, y: np.ndarray):
    """Robust least squares of one n model; returns (solution, Jacobian, standardised residuals)."""
    from scipy.optimize import least_squares

    lo = np.full(layout.size, -np.inf)
    hi = np.full(layout.size, np.inf)
    nn = 1 if layout.shared else layout.curves
    lo[2 : 2 + nn], hi[2 : 2 + nn] = 0.05, 10.0
    k = 2 + nn
    lo[k : k + len(layout.free_t0)] = 0.0
    hi[k : k + len(layout.free_t0)] = [data[j][0].max() for j in layout.free_t0]
    lo[k + len(layout.free_t0) :], hi[k + len(layout.free_t0) :] = 1e-3, 1.5
    p0 = np.clip(p0, lo + 1e-9, hi - 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sol = least_squares(lambda q: _residuals(layout, q, data, u, t0, y), p0, bounds=(lo, hi),
                            loss="soft_l1", f_scale=SOFT_SCALE, x_scale="jac")  # fmt: skip
    return sol.x, sol.jac, sol.fun


def _inflation(r: np.ndarray, data: list) -> float:
    """AR(1) variance inflation (1 + ρ)/(1 − ρ) of the residuals, ρ their lag-1 correlation within curves."""
    rhos, start = [], 0
    for t, _, _ in data:
        seg = r[start : start + len(t)]
        start += len(t)
        if len(seg) > 3 and seg.std() > 0:
            rhos.append((len(seg), float(np.corrcoef(seg[:-1], seg[1:])[0, 1])))
    rho = sum(m * c for m, c in rhos) / max(sum(m for m, _ in rhos), 1) if rhos else 0.0
    rho = min(max(rho, 0.0), 0.99) if math.isfinite(rho) else 0.0
    return (1 + rho) / (1 - rho)


def _score(layout: _Layout, jac: np.ndarray, r: np.ndarray, inflate: float) -> tuple[np.ndarray, float]:
    """Covariance and BIC of one solution, points counted as effective points (``inflate`` each)."""
    n_eff = max(len(r) / inflate, layout.size + 1.0)
    chi2 = float(np.sum(r**2)) / inflate
    scale2 = max(chi2 / max(n_eff - layout.size, 1.0), 1.0)  # never below the stated noise
    cov = scale2 * inflate * np.linalg.pinv(jac.T @ jac)
    return cov, chi2 + layout.size * math.log(n_eff)


def fit_series(
    curves: Sequence[Curve], n_model: str = "auto", starts: object = None, t0_s: float | None = None,
    y_max: float | None = None,
) -> SeriesFit:  # fmt: skip
    """Fit one material's isothermal curves jointly (see the module docstring).

    Args:
        curves: curves with ``temperature_k`` set (at least two distinct temperatures).
        n_model: ``auto`` (lower BIC), ``shared`` or ``per-temperature``.
        starts: the curves' own fits (a :class:`~matmeta.kinetics.results.CurveFits`); default: fitted here.
        t0_s: a given incubation time for every curve (default: fitted for traces, 0 for readings).
        y_max: a given plateau for every curve (default: fitted for traces, 1 for readings).

    Raises:
        MatmetaInputError: a curve without a temperature, fewer than two temperatures, unknown ``n_model``.
    """
    if n_model not in N_MODELS:
        raise MatmetaInputError(f"--n-model {n_model}: choose one of {', '.join(N_MODELS)}")
    missing = [c.name for c in curves if c.temperature_k is None]
    if missing:
        raise MatmetaInputError(f"--by temperature: curve {missing[0]!r} has no temperature (a temperature_C or "
                                "temperature_K column)")  # fmt: skip
    temps = np.array([float(c.temperature_k) for c in curves])
    if len(set(temps.tolist())) < 2:
        raise MatmetaInputError("--by temperature: the curves are all at one temperature; a series needs two or more")
    if starts is None:
        from matmeta.kinetics.api import fit_curves

        starts = fit_curves(list(curves), method="least-squares")
    f = starts.fits
    n0, t0_all, y_all = f.n.numpy(), f.t0.numpy().copy(), f.top.numpy().copy()
    ln_tau0 = (-f.physical_ln_k() / f.n).numpy()
    inv_mean = float(np.mean(1.0 / temps))
    u = 1000.0 * (1.0 / temps - inv_mean)
    c1, c0 = np.polyfit(u, ln_tau0, 1)
    sparse = [j for j, c in enumerate(curves) if not c.dense]
    t0_all[sparse] = 0.0 if t0_s is None else t0_s
    y_all[sparse] = 1.0 if y_max is None else y_max
    if t0_s is not None:
        t0_all[:] = t0_s
    if y_max is not None:
        y_all[:] = y_max
    dense = [j for j, c in enumerate(curves) if c.dense]
    free_t0 = dense if t0_s is None else []
    free_y = dense if y_max is None else []
    data = []
    for j, c in enumerate(curves):
        sigma = max(float(starts.residual[j]), 1e-4) if c.dense else max(float(starts.noise), 1e-4)
        data.append((np.asarray(c.time_s, float), np.asarray(c.fraction, float), sigma))
    solved = {}
    for model in ("per-temperature", "shared") if n_model == "auto" else (n_model,):
        layout = _Layout(len(curves), model == "shared", free_t0, free_y)
        n_start = [float(np.median(n0))] if layout.shared else list(n0)
        p0 = np.array([c0, c1, *n_start, *t0_all[free_t0], *y_all[free_y]])
        solved[model] = (layout, *_solve(layout, p0, data, u, t0_all, y_all))
    # one count of effective points for both models: that of the more flexible model's residuals
    inflate = _inflation(next(iter(solved.values()))[3], data)
    fits = {m: (layout, p, *_score(layout, jac, r, inflate), r) for m, (layout, p, jac, r) in solved.items()}
    chosen = min(fits, key=lambda m: fits[m][3])
    layout, p, cov, _, r = fits[chosen]
    c0, c1, n, t0, y = layout.unpack(p, t0_all, y_all)
    nn = 1 if layout.shared else layout.curves
    n_sd = np.sqrt(np.clip(np.diag(cov)[2 : 2 + nn], 0, None))
    q = c1 * 1000.0 * GAS_CONSTANT / 1000.0  # c1 in K·10³ → Q/R in K; Q in kJ/mol
    q_sd = math.sqrt(max(cov[1, 1], 0.0)) * GAS_CONSTANT
    return SeriesFit(
        [c.name for c in curves], temps, chosen, float(q), float(q_sd), n,
        np.full(len(curves), n_sd[0]) if layout.shared else n_sd, t0, y, c0 + c1 * u,
        {m: v[3] for m, v in fits.items()}, inv_mean, p, cov, layout, _rms(r, data),
    )  # fmt: skip


def _rms(r: np.ndarray, data: list) -> np.ndarray:
    """Per-curve rms residual in fraction units."""
    out, start = [], 0
    for t, _, sigma in data:
        seg = r[start : start + len(t)] * sigma
        start += len(t)
        out.append(float(np.sqrt(np.mean(seg**2))))
    return np.array(out)
