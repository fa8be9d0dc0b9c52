"""Joint TTT fit of one phase: smooth n(T), a C-curve for the rate, per-temperature scatter, Laplace posterior.

Model of the readings of one phase (temperature T_j in K, reading p at fraction X_p, time t_jp)::

    ln t_jp = ln τ(T_j) + δ_j + z_p / n + ε_jp,     z_p = ln(−ln(1 − X_p)),
    ln τ(T) = c + Q/(R·T) − q·ln(T_e − T),          δ_j ~ N(0, s²),  ε_jp ~ N(0, σ²).

* **n shared within the phase**: one mechanism per phase (the Avrami exponent of a mechanism
  does not change with temperature in the JMAK picture); the meta-learned TTT prior's n
  (:mod:`matmeta.kinetics.ttt_prior`) is its prior.
* **The C-curve** ln τ(T) is the Zener–Hillert / Kirkaldy–Venugopalan form (Kirkaldy &
  Venugopalan, in *Phase Transformations in Ferrous Alloys*, TMS 1984): the rate is a thermodynamic
  driving force growing with undercooling, ∝ (T_e − T)^q, times diffusion, ∝ exp(−Q/RT). Above
  the nose the undercooling vanishes at T_e and times diverge; below it diffusion freezes and the
  Arrhenius side takes over — the two sides of a TTT "C". It is parametrised by the **nose
  temperature** T_N (where d ln τ/dT = 0), T_e > every measured T, and q > 0; Q follows from
  Q/R = q·T_N²/(T_e − T_N). The curve is smooth, has exactly one nose, and every parameter is a
  physical quantity.
* **δ_j**: what the C-curve does not explain at one temperature (scatter of the diagram), integrated
  out analytically (each temperature's readings have covariance σ²I + s²11ᵀ), so s and σ are
  estimated, not assumed.
* **The start line**: its fraction X_s = START_FRACTION·e^u is fitted (u ~ N(0, 0.5²)): a
  diagram's start line is drawn at its maker's detection threshold (0.5–1 % by convention, see
  :func:`matmeta.kinetics.data.implied_start_fraction`), so the phase's own readings decide it.

The fit maximises the marginal posterior of θ = (ln n, c, T_e, T_N, ln q, u, ln s, ln σ) with
L-BFGS from several starts; its Laplace approximation (the Hessian at the optimum) gives the
posterior, and bands come from posterior samples. A held-out temperature is predicted from its
own readings through the conditional mean of δ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import MatmetaInputError
from matmeta.kinetics.data import START_FRACTION, TTT_FRACTIONS, TTTRow
from matmeta.kinetics.logtime import LOG_TIME_NOISE

KELVIN = 273.15
NAMES = ("ln_n", "c", "ln_te_gap", "ln_nose_gap", "ln_q", "u", "ln_s", "ln_sigma", "beta", "ln_s_n")
BETA_PRIOR_SD = 0.2
U_PRIOR_SD = 0.5
MIN_TEMPERATURES = 4


def _z(x: Tensor | float) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    return torch.log(-torch.log1p(-x))


@dataclasses.dataclass
class PhaseData:
    """The readings of one phase as flat tensors (K, fraction index 0/1/2 = start/10 %/90 %, ln t)."""

    phase: str
    temperature_k: Tensor
    which: Tensor
    ln_t: Tensor
    group: Tensor
    slots: Tensor

    @property
    def reference(self) -> tuple[float, float]:
        """(T_max, T_mid) in K: T_e lies above T_max; n(T) is centred at T_mid."""
        temps = self.temperature_k
        return float(temps.max()), float(0.5 * (temps.max() + temps.min()))

    @classmethod
    def from_rows(cls, rows: Sequence[TTTRow], which: tuple[int, ...] = (0, 1, 2)) -> PhaseData:
        """Readings of ``rows`` (one phase); ``which`` picks start/10 %/90 % readings of every row."""
        temps, kinds, times, groups = [], [], [], []
        for g, row in enumerate(rows):
            for i in which:
                temps.append(row.temperature_c + KELVIN)
                kinds.append(i)
                times.append(math.log((row.t_start, row.t_10, row.t_90)[i]))
                groups.append(g)
        return cls(
            rows[0].phase if rows else "",
            torch.tensor(temps, dtype=torch.float64),
            torch.tensor(kinds),
            torch.tensor(times, dtype=torch.float64),
            torch.tensor(groups),
            torch.tensor([[g * len(which) + k for k in range(len(which))] for g in range(len(rows))]).reshape(
                -1, len(which)
            ),
        )


@dataclasses.dataclass
class Params:
    """Physical values of θ (all tensors; differentiable when θ is)."""

    n: Tensor
    beta: Tensor
    t_mid: float
    c: Tensor
    te: Tensor
    nose: Tensor
    q: Tensor
    u: Tensor
    s: Tensor
    sigma: Tensor
    s_n: Tensor

    @property
    def q_over_r(self) -> Tensor:
        """Q/R (K) from the nose condition Q/R = q·T_N²/(T_e − T_N)."""
        return self.q * self.nose**2 / (self.te - self.nose)

    def ln_tau(self, temperature_k: Tensor) -> Tensor:
        """The C-curve's ln τ(T) the C-curve (T ≥ T_e is clamped 0.01 K below T_e)."""
        gap = (self.te - temperature_k).clamp(min=1e-2)
        return self.c + self.q_over_r / temperature_k - self.q * torch.log(gap)

    def n_at(self, temperature_k: Tensor) -> Tensor:
        """n(T) = n·exp(β·(T − T_mid)/100 K): smoothly varying within the phase (β = 0: shared)."""
        return self.n * torch.exp(self.beta * (temperature_k - self.t_mid) / 100.0)

    def z_of(self, which: Tensor) -> Tensor:
        """The z of each reading kind (start uses the fitted start fraction)."""
        z_fixed = _z(torch.tensor(TTT_FRACTIONS, dtype=torch.float64))
        z_start = _z(START_FRACTION * torch.exp(self.u))
        return torch.where(which == 0, z_start, z_fixed[which])

    def ln_time(self, temperature_k: Tensor, fraction: float | None = None, which: Tensor | None = None) -> Tensor:
        """The C-curve's ln t (δ = 0) at ``fraction`` (or at the reading kinds ``which``)."""
        z = self.z_of(which) if which is not None else _z(fraction)
        return self.ln_tau(temperature_k) + z / self.n_at(temperature_k)


def unpack(theta: Tensor, t_max: float, t_mid: float) -> Params:
    """θ (unconstrained, ``(10,)``) → :class:`Params`; T_e = T_max + e^·, T_N = T_e − e^·."""
    te = t_max + torch.exp(theta[2])
    return Params(
        n=torch.exp(theta[0]),
        beta=theta[8],
        t_mid=t_mid,
        c=theta[1],
        te=te,
        nose=te - torch.exp(theta[3]),
        q=torch.exp(theta[4]),
        u=theta[5],
        s=torch.exp(theta[6]),
        sigma=torch.sqrt(LOG_TIME_NOISE**2 / 4 + torch.exp(2 * theta[7])),
        s_n=torch.exp(theta[9]),
    )


def _deviation_loadings(p: Params, temperature_k: Tensor, z: Tensor) -> Tensor:
    """U with readings' covariance σ²I + UUᵀ: columns s·1 (δ) and s_n·z/n(T) (η). Shapes: ``(..., K, 2)``."""
    a = z / p.n_at(temperature_k)
    return torch.stack([p.s * torch.ones_like(a), p.s_n * a], dim=-1)


def reading_covariance(p: Params, temperature_k: Tensor, z: Tensor) -> Tensor:
    """Covariance of ln t readings of one temperature: σ²I + s²11ᵀ + s_n²·aaᵀ with a = z/n(T).

    δ (a shift of ln t) and η (a relative change of n: z/n → z/n·(1 − η)) are the temperature's
    own deviations from the smooth phase law, integrated out (η to first order).

    Shapes:
        temperature_k, z: ``(..., K)`` → ``(..., K, K)``.
    """
    u = _deviation_loadings(p, temperature_k, z)
    return p.sigma**2 * torch.eye(z.shape[-1], dtype=torch.float64) + u @ u.transpose(-1, -2)


def neg_log_posterior(theta: Tensor, data: PhaseData, n_prior: tuple[float, float]) -> Tensor:
    """−log p(θ | readings) up to a constant, with each temperature's (δ, η) integrated out.

    Woodbury form of σ²I + UUᵀ (U: K × 2), so every temperature costs a closed-form 2 × 2 solve.
    """
    p = unpack(theta, *data.reference)
    slots, real = data.slots.clamp(min=0), (data.slots >= 0).to(torch.float64)
    temps, which = data.temperature_k[slots], data.which[slots]
    r = (data.ln_t[slots] - p.ln_time(temps, which=which)) * real
    u = _deviation_loadings(p, temps, p.z_of(which)) * real[..., None]
    v = p.sigma**2
    m00 = v + (u[..., 0] ** 2).sum(-1)
    m11 = v + (u[..., 1] ** 2).sum(-1)
    m01 = (u[..., 0] * u[..., 1]).sum(-1)
    w0, w1 = (u[..., 0] * r).sum(-1), (u[..., 1] * r).sum(-1)
    det = m00 * m11 - m01**2
    quad = ((r * r).sum(-1) - (m11 * w0**2 - 2 * m01 * w0 * w1 + m00 * w1**2) / det) / v
    logdet = (real.sum(-1) - 2) * torch.log(v) + torch.log(det)
    nll = 0.5 * (quad + logdet).sum()
    mean_n, sd_n = n_prior
    te_gap = p.te - p.nose
    priors = (
        ((p.n - mean_n) / sd_n) ** 2
        + (p.u / U_PRIOR_SD) ** 2
        + (theta[8] / BETA_PRIOR_SD) ** 2
        + ((theta[4] - math.log(2.5)) / 1.0) ** 2  # q: a few (2 for bainite, 3 for ferrite/pearlite)
        + ((torch.log(te_gap) - math.log(100.0)) / 1.0) ** 2  # the nose: tens to hundreds of K below T_e
        + ((theta[6] - math.log(0.1)) / 2.0) ** 2
        + ((theta[9] - math.log(0.05)) / 2.0) ** 2
        + ((theta[7] - math.log(LOG_TIME_NOISE)) / 1.0) ** 2  # reading error beyond rounding: around 2 %
    )
    return nll + 0.5 * priors


def _starts(data: PhaseData, n0: float) -> list[list[float]]:
    """Initial θs: nose at the fastest temperature, a few T_e gaps and q values; c matched to the data."""
    t_max = data.reference[0]
    fastest = float(data.temperature_k[torch.argmin(data.ln_t - data.which.float())])
    out = []
    for gap in (15.0, 150.0):
        for q in (2.5,):
            nose_gap = max(t_max + gap - fastest, 5.0)
            theta = torch.tensor([math.log(n0), 0.0, math.log(gap), math.log(nose_gap), math.log(q), 0.0,
                                  math.log(0.1), math.log(0.02), 0.0, math.log(0.05)], dtype=torch.float64)  # fmt: skip
            p = unpack(theta, *data.reference)
            theta[1] = float((data.ln_t - p.ln_time(data.temperature_k, which=data.which)).mean())
            out.append(theta.tolist())
    return out


def _minimise(data: PhaseData, n_prior: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Best θ over the starts: scipy BFGS with torch gradients, then a trust-region Newton polish.

    BFGS can stall in the long curved valleys of (T_e, q, c); a few exact-Hessian trust-region
    steps from its best point reach the optimum it was heading for.
    """
    from scipy.optimize import minimize

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        theta = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        value = neg_log_posterior(theta, data, n_prior)
        if not torch.isfinite(value):
            return 1e12, np.zeros_like(x)
        (grad,) = torch.autograd.grad(value, theta)
        return float(value.detach()), grad.numpy()

    def hess(x: np.ndarray) -> np.ndarray:
        theta = torch.tensor(x, dtype=torch.float64)
        return torch.autograd.functional.hessian(lambda t: neg_log_posterior(t, data, n_prior), theta).numpy()

    best_x, best_f = None, math.inf
    for start in _starts(data, n_prior[0]):
        result = minimize(fun, np.array(start), jac=True, method="BFGS", options={"maxiter": 2000})
        if result.fun < best_f:
            best_x, best_f = result.x, float(result.fun)
    if best_x is None or not math.isfinite(best_f):
        raise MatmetaInputError(f"phase {data.phase}: the TTT fit found no finite optimum")
    polish = minimize(fun, best_x, jac=True, hess=hess, method="trust-exact", options={"maxiter": 40})
    if polish.fun < best_f:
        best_x, best_f = polish.x, float(polish.fun)
    return best_x, best_f


@dataclasses.dataclass
class PhaseFit:
    """The joint fit of one phase: MAP θ, its Laplace covariance and the data it was fitted to."""

    phase: str
    theta: Tensor
    cov: Tensor
    data: PhaseData
    neg_log_post: float

    @property
    def params(self) -> Params:
        """Physical parameters at the MAP."""
        return unpack(self.theta, *self.data.reference)

    def samples(self, count: int = 400, seed: int = 0) -> list[Params]:
        """Draws from the Laplace posterior."""
        gen = torch.Generator().manual_seed(seed)
        chol = torch.linalg.cholesky(self.cov)
        eps = torch.randn(count, len(NAMES), generator=gen, dtype=torch.float64)
        return [unpack(self.theta + chol @ e, *self.data.reference) for e in eps]

    def summary(self) -> dict[str, float]:
        """MAP values with Laplace standard deviations (delta method) of the physical parameters."""
        p = self.params
        draws = self.samples(200)

        def sd(f: Any) -> float:
            return float(torch.stack([f(d) for d in draws]).std())

        return {
            "n": float(p.n), "n_std": sd(lambda d: d.n), "n_slope_per_100K": float(p.beta),
            "T_mid_C": p.t_mid - KELVIN,
            "nose_C": float(p.nose) - KELVIN, "nose_C_std": sd(lambda d: d.nose),
            "Te_C": float(p.te) - KELVIN, "Te_C_std": sd(lambda d: d.te),
            "q": float(p.q), "Q_kJ_mol": float(p.q_over_r) * 8.314462618e-3,
            "start_fraction": START_FRACTION * math.exp(float(p.u)),
            "scatter_s": float(p.s), "scatter_n": float(p.s_n), "read_sigma": float(p.sigma),
        }  # fmt: skip

    def predict(self, temperature_c: float, readings: dict[int, float], fraction: float) -> float:
        """The ln t at ``fraction`` at a temperature with ``readings`` {kind: t (s)}: C-curve + E[deviation | them]."""
        p = self.params
        kinds = torch.tensor(sorted(readings))
        temp = torch.full((len(kinds) + 1,), temperature_c + KELVIN, dtype=torch.float64)
        z = torch.cat([p.z_of(kinds), _z(fraction).reshape(1)])
        full = reading_covariance(p, temp, z)
        r = torch.tensor([math.log(readings[int(k)]) for k in kinds], dtype=torch.float64)
        r = r - p.ln_time(temp[:-1], which=kinds)
        k = len(kinds)
        cross = full[k, :k]  # the target reading's own σ² sits on the diagonal only
        shift = cross @ torch.linalg.solve(full[:k, :k], r)
        return float(p.ln_time(temp[-1:], fraction)[0] + shift)

    def line(self, temperature_c: Tensor, fraction: float, level: float = 0.9) -> tuple[Tensor, Tensor, Tensor]:
        """The C-curve's ln t at ``fraction`` over temperatures (°C): MAP and central ``level`` band.

        The band is the Laplace posterior's, by the delta method (linear in θ around the MAP); the
        start line (``fraction == START_FRACTION``) is drawn at the phase's fitted start fraction.
        """
        from statistics import NormalDist

        temp = temperature_c.to(torch.float64) + KELVIN
        start = torch.zeros(1, dtype=torch.long)

        def ln_t(theta: Tensor) -> Tensor:
            q = unpack(theta, *self.data.reference)
            z = q.z_of(start) if fraction == START_FRACTION else _z(fraction)
            return q.ln_tau(temp) + z / q.n_at(temp)

        centre = ln_t(self.theta)
        jac = torch.autograd.functional.jacobian(ln_t, self.theta)
        sd = ((jac @ self.cov) * jac).sum(-1).clamp(min=0).sqrt()
        half = NormalDist().inv_cdf(0.5 + level / 2) * sd
        return centre, centre - half, centre + half


def fit_phase(rows: Sequence[TTTRow], n_prior: tuple[float, float] | None = None) -> PhaseFit:
    """Joint TTT fit of one phase's clean rows.

    Args:
        rows: rows of one phase (at least :data:`MIN_TEMPERATURES` temperatures).
        n_prior: (mean, sd) of n (default: the shipped TTT prior's).

    Raises:
        MatmetaInputError: too few temperatures, or no finite optimum.
    """
    rows = list(rows)
    phase = rows[0].phase if rows else "?"
    if len({r.temperature_c for r in rows}) < MIN_TEMPERATURES:
        raise MatmetaInputError(
            f"phase {phase}: {len(rows)} clean temperature(s); a TTT fit needs at least {MIN_TEMPERATURES}"
        )
    if n_prior is None:
        from matmeta.kinetics.ttt_prior import load_ttt_prior

        mean, prec = load_ttt_prior()
        n_prior = (float(mean[1]), float(torch.linalg.inv(prec)[1, 1].sqrt()))
    data = PhaseData.from_rows(rows)
    x, value = _minimise(data, n_prior)
    theta = torch.tensor(x, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(lambda t: neg_log_posterior(t, data, n_prior), theta)
    evals, evecs = torch.linalg.eigh(0.5 * (hess + hess.T))
    cov = evecs @ torch.diag(1.0 / evals.clamp(min=1e-2)) @ evecs.T  # flat directions: sd ≤ 10, never NaN
    return PhaseFit(phase, theta, cov, data, value)
