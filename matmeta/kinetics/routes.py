"""Which fit a curve of fraction readings gets, each returning a :class:`~matmeta.kinetics.results.CurveFits`.

* a measured trace (:attr:`~matmeta.kinetics.data.Curve.dense`): the robust fit with incubation and
  plateau (:mod:`matmeta.kinetics.robust`) for ``maml`` and ``least-squares`` (3,000 points decide the
  curve; the prior would not move it), the Avrami line between 5 % and 95 % of the plateau for ``avrami``;
* a few readings, ``maml``: the exact posterior under the prior's generating distribution, t0 under
  the prior (:mod:`matmeta.kinetics.posterior`);
* a few readings, ``maml-adapt`` / ``least-squares`` / ``avrami``: the network's MAML adaptation, scipy
  ``curve_fit``, the Avrami line (:mod:`matmeta.kinetics.fit`), with t0 = 0 and y_max = 1 unless given
  (the readings are shifted and normalised, and the fit is mapped back).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.kinetics.data import Curve
from matmeta.kinetics.fit import Fits, fit_avrami, fit_least_squares, fit_maml, make_batch, pad_curves
from matmeta.kinetics.results import TIME_FRACTIONS, CurveFits
from matmeta.kinetics.uncertainty import derived_std, laplace_covariance

SAMPLES = 400
PLATEAU_SHARE = 0.05  # the Avrami line's plateau: the median of the trace's last 5 %
FALLBACK_POINTS = 100  # a trace is thinned to this many points for the fallback posterior


def fit_traces(curves: list[Curve], method: str, t0_s: float | None, y_max: float | None, seed: int = 0) -> CurveFits:
    """Measured traces: robust fit (``maml``, ``least-squares``) or the Avrami line (``avrami``)."""
    if method == "avrami":
        return _avrami_traces(curves, t0_s, y_max)
    from matmeta.kinetics.robust import fit_measured, ln_time_std

    fits = [fit_measured(c.time_s, c.fraction, t0_s=t0_s, y_max=y_max) for c in curves]

    def col(name: str) -> Tensor:
        return torch.tensor([getattr(f, name) for f in fits], dtype=torch.float64)

    ln_t_ref, n = col("ln_t_ref"), col("n")
    cov4 = torch.as_tensor(np.stack([f.cov for f in fits]), dtype=torch.float64)
    var_k = cov4[:, 0, 0] + ln_t_ref**2 * cov4[:, 1, 1] - 2 * ln_t_ref * cov4[:, 0, 1]
    std = {"ln_k": var_k.clamp(min=0).sqrt(), "n": cov4[:, 1, 1].clamp(min=0).sqrt()}
    std |= {"t0_s": cov4[:, 2, 2].clamp(min=0).sqrt(), "y_max": cov4[:, 3, 3].clamp(min=0).sqrt()}
    std |= {f"ln_t_{p:g}": torch.tensor([ln_time_std(f, p) for f in fits], dtype=torch.float64) for p in TIME_FRACTIONS}
    result = Fits(col("ln_k"), n, ln_t_ref, torch.tensor([f.ok for f in fits]), col("t0_s"), col("y_max"))
    samples = _gaussian_draws(result, cov4, seed)
    notes = ["robust trace" if f.ok else "" for f in fits]
    return CurveFits(curves, method, result, cov4[:, :2, :2], float(np.median([f.noise for f in fits])), std,
                     col("residual"), samples=samples, notes=notes)  # fmt: skip


def _gaussian_draws(fits: Fits, cov4: Tensor, seed: int) -> Tensor:
    """Draws of (ln k, n, t0, y_max) from the Laplace Gaussian (n ≥ 0.05, t0 ≥ 0, y_max > 0). Shapes: ``(B, S, 4)``."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.stack([fits.ln_k, fits.n, fits.t0, fits.top], -1)
    eye = 1e-12 * torch.eye(4, dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(cov4 + eye)
    root = vecs * vals.clamp(min=0).sqrt()[:, None, :]
    noise = torch.randn((mean.shape[0], SAMPLES, 4), generator=generator, dtype=torch.float64)
    draws = mean[:, None, :] + noise @ root.transpose(1, 2)
    lows = torch.tensor([-math.inf, 0.05, 0.0, 1e-3], dtype=torch.float64)
    return torch.maximum(draws, lows)


def _avrami_traces(curves: list[Curve], t0_s: float | None, y_max: float | None) -> CurveFits:
    """The classical Avrami line of each trace, on its points between 5 % and 95 % of the plateau."""
    from matmeta.kinetics.robust import point_noise

    t0 = 0.0 if t0_s is None else float(t0_s)
    tops = [float(np.median(c.fraction[-max(3, int(PLATEAU_SHARE * len(c.fraction))) :])) if y_max is None else y_max
            for c in curves]  # fmt: skip
    shifted = []
    for c, top in zip(curves, tops, strict=True):
        q = c.fraction / max(top, 1e-9)
        keep = (c.time_s > t0) & (q > 0.05) & (q < 0.95)
        shifted.append(Curve(c.name, c.time_s[keep] - t0, q[keep]))
    # fewer than two points in the window: the trace's own points (the line is then poor or fails, and says so)
    shifted = [s if len(s.time_s) >= 2 else Curve(c.name, np.maximum(c.time_s, 1e-9), np.clip(c.fraction, 0, 1))
               for s, c in zip(shifted, curves, strict=True)]  # fmt: skip
    time_s, fraction, mask = pad_curves(shifted)
    fits = fit_avrami(time_s, fraction, mask)
    noise = float(np.median([point_noise(c.fraction) for c in curves]))
    return _laplace(curves, "avrami", fits, time_s, fraction, mask, noise, None, t0, tops)


def _laplace(
    curves: list[Curve], method: str, fits: Fits, time_s: Tensor, fraction: Tensor, mask: Tensor, noise: float,
    prior_prec: Tensor | None, t0: float, tops: list[float],
) -> CurveFits:  # fmt: skip
    """Laplace covariance of (ln k, n) on the shifted, normalised readings, mapped back to t0 and y_max."""
    batch, _ = make_batch(time_s, fraction, mask, noise, fits.ln_t_ref)
    log_t = batch["log_t"].double()
    top = torch.tensor(tops, dtype=torch.float64)
    scaled = (noise / top.clamp(min=1e-9))[:, None, None]  # the σ of the normalised fractions
    cov = laplace_covariance(fits.ln_k, fits.n, log_t, mask, scaled, prior_prec)
    std = derived_std(fits.ln_k, fits.n, cov, fits.ln_t_ref, TIME_FRACTIONS)
    t0_t = torch.full_like(fits.n, t0)
    scaled_top = top if any(y != 1 for y in tops) else None
    full = Fits(fits.ln_k, fits.n, fits.ln_t_ref, fits.ok, t0_t if t0 else None, scaled_top)
    if t0:  # ln t_p = ln(t0 + t'_p): its std is the shifted one scaled by t'_p / t_p
        for p in TIME_FRACTIONS:
            shifted = fits.ln_time_at(p).exp()
            std[f"ln_t_{p:g}"] = std[f"ln_t_{p:g}"] * shifted / (shifted + t0)
    residual = _residual(curves, full)
    return CurveFits(curves, method, full, cov, noise, std, residual)


def _residual(curves: list[Curve], fits: Fits) -> Tensor:
    """Rms residual of each curve's measured fractions about its fit (absolute times)."""
    time_s, fraction, mask = pad_curves(curves)
    safe = torch.where(mask > 0, time_s, torch.ones_like(time_s)).clamp(min=1e-300)
    return ((fits.predict(safe) - fraction) ** 2 * mask).sum(1).div(mask.sum(1).clamp(min=1)).sqrt()


def fit_readings(
    curves: list[Curve], method: str, noise: float, t0_s: float | None, y_max: float | None,
    maml: Any = None, steps: int | None = None,
) -> CurveFits:  # fmt: skip
    """A few readings per curve with a classical fit or the network's adaptation (t0 and y_max given or 0 and 1)."""
    t0 = 0.0 if t0_s is None else float(t0_s)
    top = 1.0 if y_max is None else float(y_max)
    shifted = []
    for c in curves:
        keep = c.time_s > t0
        if keep.sum() < 2:  # fewer than two readings after t0: nothing to fit (the fallback takes it)
            keep = np.ones_like(keep)
        shifted.append(Curve(c.name, np.maximum(c.time_s[keep] - t0, 1e-9), c.fraction[keep] / top))
    time_s, fraction, mask = pad_curves(shifted)
    prior_prec = None
    if method in ("maml", "maml-adapt"):
        fits = fit_maml(maml, time_s, fraction, mask, noise, steps=steps)
        prior_prec = maml.model.prior_precision().detach().double()
    elif method == "avrami":
        fits = fit_avrami(time_s, fraction, mask)
    else:
        fits = fit_least_squares(time_s, fraction, mask)
    return _laplace(curves, method, fits, time_s, fraction, mask, noise, prior_prec, t0, [top] * len(curves))


def fit_posterior(
    curves: list[Curve], prior: Any, noise: float | None, t0_s: float | None, y_max: float | None, seed: int = 0,
) -> CurveFits:  # fmt: skip
    """A few readings per curve under the prior (:func:`~matmeta.kinetics.posterior.fit_fraction_posterior`).

    A measured trace handed here (the fallback of a failed trace fit) is thinned to
    :data:`FALLBACK_POINTS` evenly spaced points first.
    """
    from matmeta.kinetics.posterior import fit_fraction_posterior

    thin = []
    for c in curves:
        keep = c.time_s > 0
        t, x = c.time_s[keep], c.fraction[keep]
        if len(t) > FALLBACK_POINTS:
            pick = np.linspace(0, len(t) - 1, FALLBACK_POINTS).round().astype(int)
            t, x = t[pick], x[pick]
        thin.append(Curve(c.name, t, x))
    time_s, fraction, mask = pad_curves(thin)
    post = fit_fraction_posterior(time_s, fraction, mask, prior, noise=noise, t0_s=t0_s, y_max=y_max, seed=seed)
    residual = _residual(curves, post.fits)
    used = prior.noise if noise is None else float(noise)
    return CurveFits(curves, "maml", post.fits, post.cov, used, post.std, residual, ln_times=post.ln_times,
                     intervals=post.intervals, samples=post.samples, notes=["posterior"] * len(curves))  # fmt: skip
