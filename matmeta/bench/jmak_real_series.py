"""Synthetic temperature series for the Q check of ``matmeta bench recipes/jmak_real.toml``.

A series is one material at four temperatures T_mid ± 50 K (T_mid uniform in 500–1100 K): Q uniform in
80–350 kJ/mol, n uniform in the prior's 0.5–5 and shared (jitter 0.05), the characteristic time at T_mid
log-uniform in 1–10⁴ s. A *trace* series has 300 points from 0 to t0 + 4τ with incubation (half of the
series, t0 up to τ), a plateau uniform in 0.6–1 and noise 0.005; a *readings* series has a few readings
per temperature in 0.3–2.5 × t50, t0 = 0, plateau 1, noise 0.02 (clipped to [0, 1]).
"""

from __future__ import annotations

import math

import numpy as np

from matmeta.kinetics.data import Curve
from matmeta.kinetics.synthetic import GAS_CONSTANT


def synthetic_series(points: int, rng: np.random.Generator) -> tuple[list[Curve], float]:
    """One series (``points`` readings per curve; 0: traces) and its true Q (kJ/mol)."""
    q = rng.uniform(80.0, 350.0)
    t_mid = rng.uniform(500.0, 1100.0)
    temps = t_mid + np.array([-50.0, -50.0 / 3, 50.0 / 3, 50.0])
    n = rng.uniform(0.5, 5.0)
    ln_tau_mid = rng.uniform(0.0, 4.0) * math.log(10.0)
    incubation = rng.random() < 0.5
    inv_mean = float(np.mean(1.0 / temps))
    curves = []
    for temp in temps:
        tau = math.exp(ln_tau_mid + q * 1e3 / GAS_CONSTANT * (1.0 / temp - inv_mean))
        n_t = n + 0.05 * rng.standard_normal()
        if points == 0:
            t0 = rng.uniform(0.0, 1.0) * tau if incubation else 0.0
            y = rng.uniform(0.6, 1.0)
            t = np.linspace(0.0, t0 + 4.0 * tau, 300)
            noise = 0.005
        else:
            t0, y, noise = 0.0, 1.0, 0.02
            t50 = tau * math.log(2.0) ** (1.0 / n_t)
            t = np.sort(np.exp(rng.uniform(math.log(0.3 * t50), math.log(2.5 * t50), points)))
        x = y * np.where(t > t0, -np.expm1(-((np.clip(t - t0, 0.0, None) / tau) ** n_t)), 0.0)
        x = x + noise * rng.standard_normal(t.size)
        if points:
            x = np.clip(x, 0.0, 1.0)
        curves.append(Curve(f"T{temp:.0f}K", t, x, temperature_k=float(temp)))
    return curves, q


def synthetic_series_errors(count: int, points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|relative error| of Q, whether Q's 90 % interval held it, and whether n was shared, over ``count`` series."""
    from matmeta.kinetics.measured_api import fit_series_curves

    rng = np.random.default_rng([seed, points])
    errors, covered, shared = [], [], []
    for _ in range(count):
        curves, q = synthetic_series(points, rng)
        fit = fit_series_curves(curves).series
        errors.append(abs(fit.q_kj_mol / q - 1.0))
        covered.append(abs(fit.q_kj_mol - q) <= 1.645 * fit.q_std_kj_mol)
        shared.append(fit.n_model == "shared")
    return np.array(errors), np.array(covered), np.array(shared)
