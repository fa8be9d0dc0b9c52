"""Bar charts of an explanation: each support point's influence per query (matplotlib, written atomically)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from matmeta.atomic import atomic_path
from matmeta.errors import MatmetaError
from matmeta.explain.report import Explanation


def plot_explanation(
    explanation: Explanation | Sequence[Explanation],
    path: str | Path,
    unit: str = "",
    max_panels: int = 12,
    max_support: int = 15,
) -> Path:
    """Bar chart per query: exact LOO influence of each support point (bars) and the estimate (dots).

    Flagged support points ("check this measurement") are drawn in red. Written atomically; the
    format follows the file suffix (png, pdf, svg).

    Args:
        explanation: the result of :func:`explain_adaptation`, or several (e.g. one per JMAK curve).
        path: output image.
        unit: unit of the query outputs, for the axis label.
        max_panels: at most this many panels (the first queries).
        max_support: the most influential support points shown per panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    explanations = [explanation] if isinstance(explanation, Explanation) else list(explanation)
    panels = [(e, j) for e in explanations for j in range(len(e.query_names))][:max_panels]
    if not panels:
        raise MatmetaError("nothing to plot: no query outputs")
    m = len(panels)
    cols = min(m, 3)
    rows = -(-m // cols)
    shown = min(max(len(e.support_names) for e, _ in panels), max_support)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 0.5 + (0.28 * shown + 0.9) * rows), squeeze=False)
    for p in range(rows * cols):
        ax = axes[p // cols][p % cols]
        if p >= m:
            ax.axis("off")
            continue
        e, j = panels[p]
        flagged = set(e.flagged)
        order = np.argsort(-np.abs(e.loo[:, j]), kind="stable")[:shown][::-1]
        names = [e.support_names[i] for i in order]
        colors = ["tab:red" if name in flagged else "tab:blue" for name in names]
        y = np.arange(len(order))
        ax.barh(y, e.loo[order, j], color=colors, alpha=0.8, label="leave-one-out")
        if e.approx is not None:
            ax.plot(e.approx[order, j], y, "k.", label="through inner loop")
        ax.axvline(0.0, color="0.5", lw=0.8)
        ax.set_yticks(y, names, fontsize=7)
        rho = e.spearman[j]
        title = f"{e.query_names[j]}: {e.predictions[j]:.4g} {unit}".strip()
        ax.set_title(title + ("" if math.isnan(rho) else f"\nSpearman ρ = {rho:.2f}"), fontsize=8)
        ax.set_xlabel(f"influence (with − without){f' [{unit}]' if unit else ''}", fontsize=8)
        if p == 0:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=130)
    plt.close(fig)
    return path
