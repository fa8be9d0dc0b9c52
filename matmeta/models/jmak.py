"""JMAK (Johnson–Mehl–Avrami–Kolmogorov) transformation kinetics as a two-parameter ``nn.Module``.

Avrami, J. Chem. Phys. 7, 1103 (1939); 8, 212 (1940); Johnson & Mehl, Trans. AIME 135, 416 (1939);
Kolmogorov, Izv. Akad. Nauk SSSR 3, 355 (1937). The transformed fraction at time t is::

    X(t) = 1 − exp(−k·tⁿ) = 1 − exp(−exp(z)),   z = ln k + n·ln t.

The module holds one curve's parameters ``ln_k`` and ``n`` (scalars; the MAML engine adapts them
per curve) and a correlated Gaussian prior over them (``prior_mean``; precision Λ = L·Lᵀ with
L = [[exp(l₀/2), 0], [c, exp(l₁/2)]] from ``prior_log_prec`` = (l₀, l₁) and ``prior_offdiag`` = c:
not adapted, but meta-learned). Times are *normalised*: the module reads ``log_t = ln(t / t_ref)`` with ``t_ref``
the geometric mean of a curve's measured times, so ``ln_k`` is ln k in units of ``t_ref^-n`` and
the physical value is ``ln k_phys = ln_k − n·ln t_ref`` (see :func:`physical_ln_k`). In centred
log time the two parameters are nearly decorrelated and their scale does not depend on whether a
curve lives at milliseconds or months — no initial guess is needed.

Fast weights may carry a leading batch dimension (shape ``(B, 1)``): then one call evaluates B
curves at once, which is how batched fits run.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LN_LN2 = math.log(math.log(2.0))
Z_CLAMP = 30.0  # exp(±30): X is exactly 0 or 1 in float32 beyond this; keeps gradients finite


def fraction_from_z(z: Tensor) -> Tensor:
    """X = 1 − exp(−exp(z)), evaluated without overflow (z clamped to ±30)."""
    return -torch.expm1(-torch.exp(z.clamp(-Z_CLAMP, Z_CLAMP)))


def z_from_fraction(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Inverse of :func:`fraction_from_z`: ln(−ln(1 − X)), with X clipped to [eps, 1 − eps]."""
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(-torch.log1p(-x))


class JMAK(nn.Module):
    """One JMAK curve in normalised time, with a Gaussian prior over its parameters.

    Args:
        ln_k: initial ln k (normalised time units).
        n: initial Avrami exponent.
        prior_std: initial prior standard deviations of (ln k, n).

    Shapes:
        - log_t: ``(..., P)`` normalised log times ln(t / t_ref).
        - parameters ``ln_k``, ``n``: ``()`` (meta) or ``(B, 1)`` (batched fast weights).
        - output: ``(..., P)`` fractions in [0, 1].
    """

    adapted = ("ln_k", "n")

    def __init__(
        self, ln_k: float = 0.0, n: float = 2.0, prior_std: tuple[float, float] = (1.5, 1.0), window: bool = False
    ) -> None:
        super().__init__()
        self.ln_k = nn.Parameter(torch.tensor(float(ln_k)))
        self.n = nn.Parameter(torch.tensor(float(n)))
        self.prior_mean = nn.Parameter(torch.tensor([float(ln_k), float(n)]))
        self.prior_log_prec = nn.Parameter(-2.0 * torch.log(torch.tensor([float(s) for s in prior_std])))
        self.prior_offdiag = nn.Parameter(torch.tensor(0.0))
        self.window = window
        if window:  # ln of the window [w0, w1]·t50 the times were taken in, and the log-weight of its edges;
            # it starts closed (w0 = w1 = 1: ln t50 pulled to the middle of the times, so gradients flow)
            # and meta-training opens it
            self.window_log = nn.Parameter(torch.zeros(2))
            self.window_log_weight = nn.Parameter(torch.tensor(math.log(100.0)))

    def prior_precision(self) -> Tensor:
        """The prior precision matrix Λ = L·Lᵀ of (ln k, n). Shapes: ``(2, 2)``."""
        diag = (0.5 * self.prior_log_prec).exp()
        zero = torch.zeros((), dtype=diag.dtype)
        chol = torch.stack([torch.stack([diag[0], zero]), torch.stack([self.prior_offdiag, diag[1]])])
        return chol @ chol.T

    def z(self, log_t: Tensor) -> Tensor:
        """ln(−ln(1 − X)) at ``log_t`` (linear in the parameters)."""
        return self.ln_k + self.n * log_t

    def forward(self, log_t: Tensor) -> tuple[Tensor, Tensor]:
        """Fractions at ``log_t`` and the prior penalty of the current parameters.

        Returns:
            ``(X, penalty)``: X of shape ``log_t.shape``; penalty ½·(θ − μ)ᵀΛ(θ − μ) = ½‖Lᵀ(θ − μ)‖²,
            shape ``()`` or ``(B, 1)`` like the parameters.
        """
        diag = (0.5 * self.prior_log_prec).exp()
        d_lnk = self.ln_k - self.prior_mean[0]
        d_n = self.n - self.prior_mean[1]
        penalty = 0.5 * ((diag[0] * d_lnk + self.prior_offdiag * d_n) ** 2 + (diag[1] * d_n) ** 2)
        if self.window:
            penalty = penalty + self.window_penalty(log_t)
        return fraction_from_z(self.z(log_t)), penalty

    def window_penalty(self, log_t: Tensor) -> Tensor:
        """Prior that the times lie in a window [w0, w1]·t50 (a sampling design; meta-learned w0, w1, weight).

        The times bound ln t50 to [max ln t − ln w1, min ln t − ln w0]; beyond the bounds the penalty
        grows as ½·weight·distance². ``log_t`` is normalised (mean 0 over the real points; padding 0,
        which lies between the real minimum and maximum), so max/min over the last axis are the real ones.

        Shapes:
            log_t ``(..., P)`` → like the parameters (``()`` or ``(B, 1)``).
        """
        lo = log_t.amax(-1, keepdim=True) - self.window_log[1]
        hi = log_t.amin(-1, keepdim=True) - self.window_log[0]
        if self.ln_k.dim() == 0:
            lo, hi = lo.reshape(()), hi.reshape(())
        ln_t50 = (LN_LN2 - self.ln_k) / self.n.clamp(min=1e-3)
        outside = torch.relu(lo - ln_t50) ** 2 + torch.relu(ln_t50 - hi) ** 2
        return 0.5 * self.window_log_weight.exp() * outside


def physical_ln_k(ln_k_norm: Tensor, n: Tensor, ln_t_ref: Tensor) -> Tensor:
    """Ln k in s^-n from ln k in ``t_ref^-n`` units: ln k − n·ln t_ref."""
    return ln_k_norm - n * ln_t_ref


def log_time_at_fraction(ln_k: Tensor, n: Tensor, fraction: float) -> Tensor:
    """Ln t at which X reaches ``fraction``: (ln(−ln(1 − X)) − ln k) / n (same time units as ln k)."""
    return (math.log(-math.log1p(-fraction)) - ln_k) / n
