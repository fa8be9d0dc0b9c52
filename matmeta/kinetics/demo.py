"""The documented synthetic example inputs of ``data/``: a DSC trace and a temperature series with known kinetics.

``data/dsc_trace.csv`` (:func:`demo_dsc_trace`): one isothermal trace, X(t) = 1 − exp(−k·(t − t0)ⁿ) with
n = 2, t0 = 60 s and a half time of 600 s counted from t0, as an exothermic peak of −25 mW·s in total
(downward, as many instruments plot it) on a drifting baseline 0.05 + 2·10⁻⁵·t mW, read every 5 s for an
hour with noise of 0.3 % of the peak height (seed 11).

``data/jmak_series.csv`` (:func:`demo_series`): one material at 300, 320, 340 and 360 °C, four readings
each between 0.3 and 2.5 × t50, n = 2 at every temperature, Arrhenius characteristic time
τ = k^(−1/n) with Q = 180 kJ/mol and τ = 1000 s at 330 °C (a temperature not measured: t50 there is
1000·(ln 2)^(1/2) = 832.6 s), fractions with 2 % noise (seed 7).
"""

from __future__ import annotations

import math

import numpy as np

from matmeta.kinetics.synthetic import GAS_CONSTANT

DSC_TRUTH = {"n": 2.0, "t0_s": 60.0, "t50_shifted_s": 600.0, "heat_mJ": -25.0}
SERIES_TRUTH = {"n": 2.0, "q_kj_mol": 180.0, "tau_s_at_330C": 1000.0, "temperatures_C": (300, 320, 340, 360)}


def demo_dsc_trace(seed: int = 11) -> list[tuple[str, float, float]]:
    """Rows ``(curve, time_s, heat_flow_mW)`` of the demo DSC trace."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, 3600.0 + 1e-9, 5.0)
    n, t0, t50 = DSC_TRUTH["n"], DSC_TRUTH["t0_s"], DSC_TRUTH["t50_shifted_s"]
    k = math.log(2.0) / t50**n
    d = np.clip(t - t0, 0.0, None)
    rate = np.where(d > 0, k * n * d ** (n - 1) * np.exp(-k * d**n), 0.0)
    q = DSC_TRUTH["heat_mJ"] * rate + 0.05 + 2e-5 * t
    q = q + 0.003 * abs(DSC_TRUTH["heat_mJ"]) * rate.max() * rng.standard_normal(t.size)
    return [("demo_trace", float(a), float(b)) for a, b in zip(t, q, strict=True)]


def demo_series(seed: int = 7) -> list[tuple[str, float, float, float]]:
    """Rows ``(curve, temperature_C, time_s, fraction)`` of the demo temperature series."""
    rng = np.random.default_rng(seed)
    n, q = SERIES_TRUTH["n"], SERIES_TRUTH["q_kj_mol"] * 1e3
    rows = []
    for celsius in SERIES_TRUTH["temperatures_C"]:
        temp = celsius + 273.15
        tau = SERIES_TRUTH["tau_s_at_330C"] * math.exp(q / GAS_CONSTANT * (1 / temp - 1 / (330 + 273.15)))
        t50 = tau * math.log(2.0) ** (1 / n)
        times = np.sort(np.exp(rng.uniform(math.log(0.3 * t50), math.log(2.5 * t50), 4)))
        frac = np.clip(-np.expm1(-((times / tau) ** n)) + 0.02 * rng.standard_normal(4), 0.0, 1.0)
        rows += [(f"{celsius}C", float(celsius), float(a), float(b)) for a, b in zip(times, frac, strict=True)]
    return rows


def write_demo_files(folder: str) -> None:
    """Write ``dsc_trace.csv`` and ``jmak_series.csv`` into ``folder`` (how ``data/`` was made)."""
    from pathlib import Path

    from matmeta.atomic import write_table

    trace = [{"curve": c, "time_s": f"{t:g}", "heat_flow_mW": f"{q:.6f}"} for c, t, q in demo_dsc_trace()]
    write_table(Path(folder) / "dsc_trace.csv", trace)
    series = [{"curve": c, "temperature_C": f"{temp:g}", "time_s": f"{t:.5g}", "fraction": f"{x:.4f}"}
              for c, temp, t, x in demo_series()]  # fmt: skip
    write_table(Path(folder) / "jmak_series.csv", series)
