"""The observation model of TTT readings: a *time* read at a fixed fraction, with its error in log time.

A TTT diagram reports, for each temperature, the times at which the transformed fraction reaches
fixed values (start ≈ 1 %, 10 %, 90 %). The fraction is a convention, not a measurement; what
carries error is the time, read off a logarithmic axis (and rounded to two significant figures),
so the error is multiplicative: ``ln t_i = ln t(X_i; k, n) + ε_i``, ε ~ N(0, σ²). With
z_i = ln(−ln(1 − X_i)) fixed, the JMAK model is ``ln t_i = (z_i − ln k)/n``, linear in
(a, b) = (−ln k/n, 1/n):

* classical (``least-squares``): the linear regression of ln t on z — with two readings it *is*
  the exact two-point solve;
* prior (``maml``): the exact MAP of (ln k, n) under the meta-learned Gaussian prior and this
  likelihood (batched Gauss–Newton, converged), with Laplace covariance H⁻¹,
  H = JᵀJ/σ² + Λ. The Meta-SGD inner loop is not used here: its rates were learned for the
  fraction loss, and a converged MAP is what the prior and the likelihood define.

Default σ = :data:`LOG_TIME_NOISE` = 0.02 (2 % in time): TTT tables quote times to two or three
significant figures, a uniform rounding error of up to ±5 % … ±0.05 %, i.e. an sd of 0.03–2.9 %;
2 % covers the coarse end. It was set from this reading convention, not from a benchmark result.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from matmeta.kinetics.fit import Fits, _checked
from matmeta.models.jmak import z_from_fraction

LOG_TIME_NOISE = 0.02
N_MIN = 0.05


def normalised_log_time(time_s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(ln t − ln t_ref, ln t_ref)`` with t_ref the geometric mean of the real points.

    Shapes:
        time_s, mask: ``(B, P)`` → ``(B, P)``, ``(B,)``.
    """
    mask = mask.to(torch.float64)
    log_t = torch.log(torch.where(mask > 0, time_s.to(torch.float64), torch.ones_like(mask)))
    ln_ref = (log_t * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return (log_t - ln_ref[:, None]) * mask, ln_ref


def fit_log_time_ls(time_s: Tensor, fraction: Tensor, mask: Tensor) -> Fits:
    """Classical fit in log time: least-squares line ln t = a + b·z, all curves at once.

    Fails (``ok`` False) for curves with fewer than two distinct fractions strictly inside (0, 1)
    or a non-positive slope.

    Shapes:
        time_s, fraction, mask: ``(B, P)``.
    """
    lt, ln_ref = normalised_log_time(time_s, mask)
    x = fraction.to(torch.float64)
    w = mask.to(torch.float64) * ((x > 0) & (x < 1)).to(torch.float64)
    z = z_from_fraction(x, 1e-12) * w
    count = w.sum(1).clamp(min=1.0)
    mz, mt = z.sum(1) / count, (lt * w).sum(1) / count
    dz = (z - mz[:, None]) * w
    szz = (dz * dz).sum(1)
    b = (dz * (lt - mt[:, None])).sum(1) / szz.clamp(min=1e-300)
    a = mt - b * mz
    n = 1.0 / b
    return _checked(-a * n, n, ln_ref, (szz > 1e-12) & (b > 0))


def _residual_jacobian(ln_k: Tensor, n: Tensor, z: Tensor, lt: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Log-time residuals r = (z − ln k)/n − ln t and their Jacobian ∂r/∂(ln k, n). Shapes: ``(B,P)``, ``(B,P,2)``."""
    pred = (z - ln_k[:, None]) / n[:, None]
    r = (pred - lt) * mask
    jac = torch.stack([-mask / n[:, None], -pred / n[:, None] * mask], dim=-1)
    return r, jac


def fit_log_time_map(
    time_s: Tensor,
    fraction: Tensor,
    mask: Tensor,
    prior_mean: Tensor,
    prior_prec: Tensor,
    noise: float = LOG_TIME_NOISE,
    iterations: int = 40,
) -> tuple[Fits, Tensor]:
    """MAP of (ln k, n) (normalised time) under a Gaussian prior and the log-time likelihood.

    Batched Gauss–Newton from the prior mean, with step halving on n (n stays ≥ :data:`N_MIN`).

    Args:
        time_s: read times (s).
        fraction: the fixed fractions the times were read at.
        mask: 1 for real points, 0 for padding.
        prior_mean: ``(2,)`` or ``(B, 2)`` prior mean of (ln k − z̄, n) in normalised time, where z̄ is
            the mean z of each curve's fractions: with exact readings ln k = z̄ in normalised time,
            whatever the reading scheme (start/10 %, 10/90 %, …), so the prior does not depend on it.
        prior_prec: ``(2, 2)`` or ``(B, 2, 2)`` precision.
        noise: σ of ln t.
        iterations: Gauss–Newton steps.

    Returns:
        ``(fits, cov)``: the MAP and its Laplace covariance ``(B, 2, 2)``.

    Shapes:
        time_s, fraction, mask: ``(B, P)``.
    """
    lt, ln_ref = normalised_log_time(time_s, mask)
    m = mask.to(torch.float64)
    z = z_from_fraction(fraction.to(torch.float64), 1e-12) * m
    b = lt.shape[0]
    z_bar = z.sum(1) / m.sum(1).clamp(min=1.0)
    mu = prior_mean.to(torch.float64).expand(b, 2) + torch.stack([z_bar, torch.zeros_like(z_bar)], 1)
    lam = prior_prec.to(torch.float64).expand(b, 2, 2)
    theta = mu.clone()
    inv_var = 1.0 / noise**2
    for _ in range(iterations):
        r, jac = _residual_jacobian(theta[:, 0], theta[:, 1], z, lt, m)
        hess = jac.transpose(1, 2) @ jac * inv_var + lam
        grad = (jac.transpose(1, 2) @ r[..., None])[..., 0] * inv_var + (lam @ (theta - mu)[..., None])[..., 0]
        step = torch.linalg.solve(hess, -grad)
        # keep n positive: shrink steps that would push it below N_MIN
        room = (theta[:, 1] - N_MIN) / (-step[:, 1]).clamp(min=1e-300)
        scale = torch.where(step[:, 1] < 0, (0.9 * room).clamp(max=1.0), torch.ones_like(room))
        theta = theta + scale[:, None] * step
    r, jac = _residual_jacobian(theta[:, 0], theta[:, 1], z, lt, m)
    hess = jac.transpose(1, 2) @ jac * inv_var + lam + 1e-9 * torch.eye(2, dtype=torch.float64)
    cov = torch.linalg.inv(hess)
    fits = _checked(theta[:, 0], theta[:, 1], ln_ref, torch.isfinite(r).all(1))
    return fits, cov


def log_time_covariance(fits: Fits, time_s: Tensor, fraction: Tensor, mask: Tensor, noise: float) -> Tensor:
    """Laplace covariance of (ln k, n) of a flat-prior log-time fit. Shapes: ``(B, P)`` → ``(B, 2, 2)``."""
    lt, _ = normalised_log_time(time_s, mask)
    m = mask.to(torch.float64)
    z = z_from_fraction(fraction.to(torch.float64), 1e-12) * m
    _, jac = _residual_jacobian(fits.ln_k, fits.n, z, lt, m)
    hess = jac.transpose(1, 2) @ jac / noise**2 + 1e-9 * torch.eye(2, dtype=torch.float64)
    return torch.linalg.inv(hess)


def log_time_residual(fits: Fits, time_s: Tensor, fraction: Tensor, mask: Tensor) -> Tensor:
    """RMS of ln t_read − ln t_fit over each curve's points. Shapes: ``(B, P)`` → ``(B,)``."""
    m = mask.to(torch.float64)
    z = z_from_fraction(fraction.to(torch.float64), 1e-12)
    ln_t_fit = (z - fits.ln_k[:, None]) / fits.n[:, None] + fits.ln_t_ref[:, None]
    ln_t = torch.log(torch.where(m > 0, time_s.to(torch.float64), torch.ones_like(m)))
    return (((ln_t_fit - ln_t) * m) ** 2).sum(1).div(m.sum(1).clamp(min=1)).sqrt()


def z_of(fraction: float) -> float:
    """ln(−ln(1 − X)) of one fraction."""
    return math.log(-math.log1p(-fraction))
