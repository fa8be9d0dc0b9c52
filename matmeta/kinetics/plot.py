"""Plots of JMAK fits: measured points, fitted curve and its uncertainty band (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

MAX_PANELS = 12


def plot_fits(result: Any, path: str | Path, level: float = 0.9, max_panels: int = MAX_PANELS) -> Path:
    """One panel per curve (the first ``max_panels``): data, fit and central ``level`` band; written atomically.

    Args:
        result: a :class:`matmeta.kinetics.api.CurveFits`.
        path: image file (format from its suffix, e.g. ``.png``).
        level: coverage of the band.
        max_panels: at most this many curves are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from matmeta.atomic import atomic_path

    path = Path(path)
    curves = result.curves[:max_panels]
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for i, curve in enumerate(curves):
        _panel(axes[i // cols][i % cols], result.select([i]), curve, level, NullFormatter)
    for j in range(len(curves), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _panel(ax: Any, sub: Any, curve: Any, level: float, null_formatter: Any) -> None:
    """One curve: its band, its (median) fit and its points; a measured trace on a linear time axis."""
    lo_t, hi_t = (float(sub.fits.ln_time_at(p)[0]) for p in (0.01, 0.99))
    positive = curve.time_s[curve.time_s > 0]
    first = float(positive.min()) if positive.size else 1.0
    lo = min(lo_t, math.log(first)) - 0.3
    hi = max(hi_t, math.log(float(max(curve.time_s)))) + 0.3
    if curve.dense:
        grid = torch.linspace(float(min(curve.time_s)), math.exp(hi), 300, dtype=torch.float64)[None, :]
        grid = grid.clamp(min=1e-9)
    else:
        grid = torch.linspace(lo, hi, 200, dtype=torch.float64).exp()[None, :]
    band_lo, band_hi = sub.band(grid, level)
    ax.fill_between(grid[0], band_lo[0], band_hi[0], alpha=0.25, label=f"{level:.0%} band")
    ax.plot(grid[0], sub.median_curve(grid)[0], label=f"{sub.method} fit")
    style = {"s": 2, "alpha": 0.5} if curve.dense else {"s": 18}
    ax.scatter(curve.time_s, curve.fraction, color="k", label="data", zorder=3, **style)
    if not curve.dense:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(null_formatter())
    ax.set_ylim(-0.03, 1.03)
    ok = "" if bool(sub.fits.ok[0]) else " (failed)"
    t0 = float(sub.fits.t0[0])
    extra = f", t0={t0:.3g} s" if t0 > 0 else ""
    top = float(sub.fits.top[0])
    extra += f", y_max={top:.3g}" if abs(top - 1) > 1e-9 else ""
    ax.set_title(f"{curve.name}\nn={float(sub.fits.n[0]):.2f}{extra}{ok}", fontsize=8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("fraction X")
