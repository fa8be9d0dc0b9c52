"""Readings drawn from dense measured curves, and the fits that predict the dense curve's t50 and t90 from them.

A *scheme* says where readings come from: ``early`` (measured fraction, normalised by the dense fit's
plateau, in [0.05, 0.5)), ``spread`` ([0.05, 0.95]) and ``noisy`` (spread, plus Gaussian noise σ on the
fraction, clipped to [0, 1]). Each draw picks m distinct points of the trace uniformly at random
(seeded): a reading is a measured (time, fraction) pair, with the trace's own noise and misfit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from matmeta.kinetics.data import Curve

SCHEMES = ("early", "spread", "noisy")
METHODS = {
    "meta-prior (default fit)": "maml",
    "MAML adaptation (old default)": "maml-adapt",
    "least squares": "least-squares",
    "least squares, t0 fitted": "least-squares+t0",
    "Avrami": "avrami",
}


@dataclasses.dataclass(frozen=True)
class Reference:
    """A dense curve and its robust fit's t50, t90 (s) and plateau."""

    curve: Curve
    t50: float
    t90: float
    y_max: float


def draw_readings(
    ref: Reference, scheme: str, count: int, draws: int, windows: dict[str, tuple[float, float]],
    noise: float, rng: np.random.Generator,
) -> list[Curve]:  # fmt: skip
    """``draws`` curves of ``count`` readings each from ``ref``'s trace (fractions normalised by its plateau)."""
    t = np.asarray(ref.curve.time_s, float)
    x = np.asarray(ref.curve.fraction, float) / ref.y_max
    lo, hi = windows["early" if scheme == "early" else "spread"]
    pool = np.nonzero((x >= lo) & (x < hi) & (t > 0))[0]
    out = []
    for d in range(draws):
        pick = np.sort(rng.choice(pool, size=count, replace=False))
        frac = x[pick] + (noise * rng.standard_normal(count) if scheme == "noisy" else 0.0)
        out.append(Curve(f"{ref.curve.name}#{scheme}{count}.{d}", t[pick], np.clip(frac, 0.0, 1.0)))
    return out


def predict(
    method: str, curves: list[Curve], prior: Any, level: float, noise: float | None = None
) -> dict[str, np.ndarray]:
    """Predicted ln t50, ln t90, their central ``level`` intervals and whether the fit held, per curve.

    A classical fit that failed (no finite fit with n > 0) counts as failed here, although ``jmak fit``
    would hand that curve to the prior (``fallback``): its row scores the classical method alone.
    """
    if method == "least-squares+t0":
        return _least_squares_t0(curves, level, noise)
    from matmeta.kinetics.api import fit_curves

    result = fit_curves(curves, method=method, prior=prior, noise=noise)
    out = {"fallback": np.array([n.startswith("under the prior") for n in result.notes], dtype=bool)}
    out["ok"] = result.fits.ok.numpy().copy() & ~out["fallback"]
    for p, key in ((0.5, "t50"), (0.9, "t90")):
        lo, hi = result.interval(p, level)
        out[key] = result.ln_time(p).numpy()
        out[f"{key}_lo"], out[f"{key}_hi"] = lo.numpy(), hi.numpy()
    return out


def _least_squares_t0(curves: list[Curve], level: float, noise: float | None) -> dict[str, np.ndarray]:
    """Plain least squares of (ln k, n, t0) with y_max = 1 (3+ readings), Laplace intervals at σ (default 0.02)."""
    from statistics import NormalDist

    from matmeta.kinetics.fit import DEFAULT_NOISE
    from matmeta.kinetics.robust import fit_measured, ln_time_std

    q = NormalDist().inv_cdf(0.5 + level / 2)
    keys = ("t50", "t50_lo", "t50_hi", "t90", "t90_lo", "t90_hi")
    out = {k: np.full(len(curves), math.nan) for k in keys}
    out["ok"] = np.zeros(len(curves), dtype=bool)
    out["fallback"] = np.zeros(len(curves), dtype=bool)
    for i, c in enumerate(curves):
        if len(c.time_s) < 3:
            continue
        f = fit_measured(c.time_s, c.fraction, y_max=1.0, loss="linear", sigma=noise or DEFAULT_NOISE)
        if not f.ok:
            continue
        out["ok"][i] = True
        for p, key in ((0.5, "t50"), (0.9, "t90")):
            zp = math.log(-math.log1p(-p))
            centre = math.log(f.t0_s + math.exp((zp - f.ln_k) / f.n + f.ln_t_ref))
            half = q * ln_time_std(f, p)
            out[key][i], out[f"{key}_lo"][i], out[f"{key}_hi"][i] = centre, centre - half, centre + half
    return out


def errors(pred: dict[str, np.ndarray], t90: np.ndarray) -> np.ndarray:
    """|relative error| of t90 per curve (NaN where the fit failed)."""
    ok = pred["ok"] & np.isfinite(pred["t90"])
    return np.where(ok, np.abs(np.exp(np.where(ok, pred["t90"], 0.0)) / t90 - 1), np.nan)


def paired(ours: np.ndarray, theirs: np.ndarray, seed: int = 0) -> tuple[float, float, int, float, float]:
    """Medians of two methods' t90 errors over the curves both fitted, and a 95 % bootstrap CI of their difference."""
    both = np.isfinite(ours) & np.isfinite(theirs)
    a, b = ours[both], theirs[both]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, (2000, a.size))
    diff = np.median(a[idx], axis=1) - np.median(b[idx], axis=1)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float(np.median(a)), float(np.median(b)), int(a.size), float(lo), float(hi)


def score(pred: dict[str, np.ndarray], t50: np.ndarray, t90: np.ndarray) -> dict[str, float]:
    """Median |relative error| of t50 and t90, p90 of t90's, interval coverage, failures and fallbacks."""
    ok = pred["ok"] & np.isfinite(pred["t50"]) & np.isfinite(pred["t90"])
    e50 = np.abs(np.exp(pred["t50"][ok]) / t50[ok] - 1)
    e90 = np.abs(np.exp(pred["t90"][ok]) / t90[ok] - 1)
    c50 = (pred["t50_lo"][ok] <= np.log(t50[ok])) & (np.log(t50[ok]) <= pred["t50_hi"][ok])
    c90 = (pred["t90_lo"][ok] <= np.log(t90[ok])) & (np.log(t90[ok]) <= pred["t90_hi"][ok])
    nan = math.nan
    return {
        "t50_err": float(np.median(e50)) if e50.size else nan,
        "t90_err": float(np.median(e90)) if e90.size else nan,
        "t90_p90": float(np.percentile(e90, 90)) if e90.size else nan,
        "cover50": float(np.mean(c50)) if c50.size else nan,
        "cover90": float(np.mean(c90)) if c90.size else nan,
        "failures": int((~ok).sum()),
        "fallbacks": int(pred["fallback"].sum()),
    }
