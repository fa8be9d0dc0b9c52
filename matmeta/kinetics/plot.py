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
    ln_t = {p: result.fits.ln_time_at(p) for p in (0.01, 0.99)}
    for i, curve in enumerate(curves):
        ax = axes[i // cols][i % cols]
        lo = min(float(ln_t[0.01][i]), math.log(float(min(curve.time_s)))) - 0.3
        hi = max(float(ln_t[0.99][i]), math.log(float(max(curve.time_s)))) + 0.3
        grid = torch.linspace(lo, hi, 200, dtype=torch.float64).exp()[None, :]
        sub = _select(result, i)
        band_lo, band_hi = sub.band(grid, level)
        ax.fill_between(grid[0], band_lo[0], band_hi[0], alpha=0.25, label=f"{level:.0%} band")
        ax.plot(grid[0], sub.fits.predict(grid)[0], label=f"{result.method} fit")
        ax.plot(curve.time_s, curve.fraction, "o", color="k", label="data")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.03, 1.03)
        ok = "" if bool(result.fits.ok[i]) else " (failed)"
        ax.set_title(f"{curve.name}: n={float(result.fits.n[i]):.2f}{ok}", fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("fraction X")
    for j in range(len(curves), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _select(result: Any, i: int) -> Any:
    """The i-th curve of a CurveFits as a one-curve CurveFits (same method, noise)."""
    import dataclasses

    from matmeta.kinetics.fit import Fits

    f = result.fits
    fits = Fits(f.ln_k[i : i + 1], f.n[i : i + 1], f.ln_t_ref[i : i + 1], f.ok[i : i + 1])
    std = {k: v[i : i + 1] for k, v in result.std.items()}
    return dataclasses.replace(
        result,
        curves=[result.curves[i]],
        fits=fits,
        cov=result.cov[i : i + 1],
        std=std,
        residual=result.residual[i : i + 1],
    )
