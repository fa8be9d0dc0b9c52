"""Plots of real measurements (matplotlib, Agg): a DSC trace with its baseline and fit, a temperature series."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAX_TRACES = 6


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from matmeta.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_dsc(result: Any, path: str | Path, level: float = 0.9) -> Path:
    """Per trace (the first :data:`MAX_TRACES`): heat flow with baseline and limits above, X(t) with the fit below.

    Args:
        result: a :class:`~matmeta.kinetics.measured_api.DSCFits`.
        path: image file (format from its suffix).
        level: coverage of the fit's band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = result.traces[:MAX_TRACES]
    fig, axes = plt.subplots(2, len(traces), figsize=(4.6 * len(traces), 6.4), squeeze=False)
    for i, trace in enumerate(traces):
        top, bottom = axes[0][i], axes[1][i]
        top.plot(trace.time_s, trace.heat_flow, lw=0.8, color="k", label="heat flow")
        top.plot(trace.time_s, trace.baseline, "--", color="tab:red", label="baseline")
        for limit in trace.limits:
            top.axvline(limit, color="tab:red", lw=0.6, alpha=0.6)
        kind = "detected" if trace.detected else "given"
        top.set_title(f"{trace.name}: limits {trace.limits[0]:.4g}–{trace.limits[1]:.4g} s ({kind})", fontsize=8)
        top.set_xlabel("time (s)")
        top.set_ylabel("heat flow")
        sub = result.fits.select([i])
        grid = torch.linspace(float(trace.curve.time_s[0]), float(trace.curve.time_s[-1]), 300, dtype=torch.float64)
        grid = grid.clamp(min=1e-9)[None, :]
        lo, hi = sub.band(grid, level)
        bottom.fill_between(grid[0], lo[0], hi[0], alpha=0.25, label=f"{level:.0%} band")
        bottom.plot(grid[0], sub.median_curve(grid)[0], label=f"{sub.method} fit")
        bottom.scatter(trace.curve.time_s, trace.curve.fraction, s=2, color="k", alpha=0.5, label="∫ (q − baseline)")
        n, t0 = float(sub.fits.n[0]), float(sub.fits.t0[0])
        t50 = math.exp(float(sub.ln_time(0.5)[0]))
        bottom.set_title(f"n = {n:.3g}, t0 = {t0:.3g} s, t50 = {t50:.4g} s", fontsize=8)
        bottom.set_xlabel("time (s)")
        bottom.set_ylabel("fraction X")
        bottom.set_ylim(-0.03, 1.05)
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7, loc="lower right")
    return _save(fig, Path(path))


def plot_series(result: Any, path: str | Path) -> Path:
    """The curves with the joint fit (left) and the Arrhenius line of the characteristic time (right).

    Args:
        result: a :class:`~matmeta.kinetics.measured_api.SeriesResult`.
        path: image file (format from its suffix).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.series
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(s.names)))
    for j, curve in enumerate(result.fits.curves):
        t = np.asarray(curve.time_s, float)
        grid = np.linspace(max(t.min(), 1e-9), t.max() * 1.2, 300) if curve.dense else np.geomspace(
            t[t > 0].min() / 3, t.max() * 3, 300)  # fmt: skip
        shifted = np.clip(grid - s.t0_s[j], 0, None)
        x = s.y_max[j] * -np.expm1(-((shifted / math.exp(s.ln_tau[j])) ** s.n[j]))
        label = f"{s.temperature_k[j] - 273.15:.4g} °C"
        left.plot(grid, x, color=colours[j], label=label)
        left.scatter(t, curve.fraction, s=2 if curve.dense else 16, color=colours[j], alpha=0.6)
    if not any(c.dense for c in result.fits.curves):
        left.set_xscale("log")
    left.set_xlabel("time (s)")
    left.set_ylabel("fraction X")
    left.set_title(f"joint fit ({s.n_model} n)", fontsize=9)
    left.legend(fontsize=7)
    inv = 1000.0 / s.temperature_k
    right.scatter(inv, -s.ln_tau, color="k", label="curves (joint fit)")
    line = np.linspace(inv.min() - 0.05, inv.max() + 0.05, 50)
    c0, c1 = s.params[0], s.params[1]
    right.plot(line, -(c0 + c1 * (line - 1000.0 * s.inv_t_mean)), color="tab:blue",
               label=f"Q = {s.q_kj_mol:.4g} ± {s.q_std_kj_mol:.2g} kJ/mol")  # fmt: skip
    for celsius, t50, _, _ in result.predictions:
        right.axvline(1000.0 / (celsius + 273.15), color="tab:red", lw=0.7, alpha=0.7)
        right.annotate(f"t50({celsius:g} °C) = {t50:.4g} s", (1000.0 / (celsius + 273.15), float(-s.ln_tau.mean())),
                       fontsize=7, rotation=90, va="center")  # fmt: skip
    right.set_xlabel("1000 / T (1/K)")
    right.set_ylabel("ln(1/τ)  (τ in s)")
    right.set_title("Arrhenius: characteristic rate 1/τ = k^(1/n)", fontsize=9)
    right.legend(fontsize=7)
    return _save(fig, Path(path))
