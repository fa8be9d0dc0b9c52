"""Laplace uncertainty of JMAK fits: parameter covariance, derived-quantity errors, bands on X(t).

Around the fitted parameters θ* = (ln k, n) (normalised time), the negative log posterior of a
curve with Gaussian measurement noise σ and Gaussian prior precision Λ (none for a plain least-
squares fit) is approximated by its Gauss–Newton quadratic::

    H = Jᵀ J / σ² + Λ,    J_ij = ∂X(t_i)/∂θ_j = X'(z_i)·[1, ln t_i],    Cov θ = H⁻¹,

(MacKay, Neural Comput. 4, 448, 1992). Because z = ln k + n·ln t is *linear* in θ, z(t) is exactly
Gaussian under this posterior and the band X(t) = 1 − exp(−exp(z ± q·sd_z)) is the exact image
of the z band (X is monotone in z). Derived quantities (physical ln k, ln t_p) use the delta method.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor

from matmeta.models.jmak import Z_CLAMP, fraction_from_z


def _slope(z: Tensor) -> Tensor:
    """dX/dz = exp(z − exp(z)) (0 far in the tails, never NaN)."""
    z = z.clamp(-Z_CLAMP, Z_CLAMP)
    return torch.exp(z - torch.exp(z))


def laplace_covariance(
    ln_k: Tensor, n: Tensor, log_t: Tensor, mask: Tensor, noise: float | Tensor, prior_prec: Tensor | None = None
) -> Tensor:
    """Posterior covariance of (ln k, n) per curve.

    Args:
        ln_k: fitted ln k (normalised time).
        n: fitted Avrami exponent.
        log_t: the curves' normalised log times.
        mask: 1 for real points, 0 for padding.
        noise: measurement standard deviation σ of the fraction.
        prior_prec: prior precision of (ln k, n) — a ``(2, 2)`` matrix or a ``(2,)`` diagonal —
            or None for a flat prior.

    Shapes:
        - ln_k, n: ``(B,)``; log_t, mask: ``(B, P)``; prior_prec: ``(2, 2)`` or ``(2,)`` → ``(B, 2, 2)``.
    """
    g = _slope(ln_k[:, None] + n[:, None] * log_t) * mask
    jac = torch.stack([g, g * log_t], dim=-1)  # (B, P, 2)
    hess = jac.transpose(1, 2) @ jac / (torch.as_tensor(noise, dtype=jac.dtype) ** 2)
    if prior_prec is not None:
        prec = prior_prec.to(hess.dtype)
        hess = hess + (torch.diag(prec) if prec.dim() == 1 else prec).expand_as(hess)
    # a tiny ridge keeps degenerate curves (all points saturated) finite: their std is then huge, not NaN
    hess = hess + 1e-9 * torch.eye(2, dtype=hess.dtype)
    return torch.linalg.inv(hess)


def z_std(cov: Tensor, log_t: Tensor) -> Tensor:
    """Standard deviation of z(t) = ln k + n·ln t. Shapes: cov ``(B, 2, 2)``, log_t ``(B, Q)`` → ``(B, Q)``."""
    var = cov[:, 0, 0, None] + 2 * cov[:, 0, 1, None] * log_t + cov[:, 1, 1, None] * log_t**2
    return var.clamp(min=0).sqrt()


def quantile(level: float) -> float:
    """Two-sided standard-normal quantile for a central ``level`` interval (0.9 → 1.645)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def fraction_band(ln_k: Tensor, n: Tensor, cov: Tensor, log_t: Tensor, level: float = 0.9) -> tuple[Tensor, Tensor]:
    """Central ``level`` band (lower, upper) on X(t). Shapes: ln_k, n ``(B,)``; log_t ``(B, Q)`` → ``(B, Q)`` each."""
    z = ln_k[:, None] + n[:, None] * log_t
    half = quantile(level) * z_std(cov, log_t)
    return fraction_from_z(z - half), fraction_from_z(z + half)


def derived_std(
    ln_k: Tensor, n: Tensor, cov: Tensor, ln_t_ref: Tensor, fractions: tuple[float, ...]
) -> dict[str, Tensor]:
    """Delta-method standard deviations of physical ln k (s⁻ⁿ), n and ln t_p for each fraction p.

    Returns:
        ``{"ln_k": (B,), "n": (B,), "ln_t_<p>": (B,) …}`` with p as in ``f"{p:g}"``.

    Shapes:
        ln_k, n, ln_t_ref: ``(B,)``; cov: ``(B, 2, 2)``.
    """
    out = {"n": cov[:, 1, 1].clamp(min=0).sqrt()}
    # ln k_phys = ln k − n·ln t_ref: gradient (1, −ln t_ref)
    a = -ln_t_ref
    out["ln_k"] = (cov[:, 0, 0] + 2 * a * cov[:, 0, 1] + a * a * cov[:, 1, 1]).clamp(min=0).sqrt()
    for p in fractions:
        zp = math.log(-math.log1p(-p))
        # ln t_p = (z_p − ln k)/n (+ ln t_ref): gradient (−1/n, −(z_p − ln k)/n²)
        g0 = -1.0 / n
        g1 = -(zp - ln_k) / n**2
        var = g0 * g0 * cov[:, 0, 0] + 2 * g0 * g1 * cov[:, 0, 1] + g1 * g1 * cov[:, 1, 1]
        out[f"ln_t_{p:g}"] = var.clamp(min=0).sqrt()
    return out
