"""Residual kriging for ``finetune``: a Gaussian process on the support's residuals in the head's feature space.

The ``kriged`` finetune candidate is the linear recalibration of
:mod:`matmeta.predict.adaptation` plus the posterior mean of a zero-mean Gaussian process fitted
to the support's recalibration residuals. Inputs of the GP are the network's own features: the
hidden layer of the output head (after its SiLU), which every head output is a linear function
of. A query near support structures of the same kind (e.g. another stannate when two stannates
were measured) inherits their residual; a query far from all of them keeps the recalibrated
value. The network is not bent: its weights are untouched.

Kernel ``k(a, b) = s² exp(−|a − b|² / 2ℓ²) + σ² δ_ab`` with ``s² + σ² = mean(r²)`` of the
residuals ``r``; ``ℓ`` (a multiple of the median pairwise distance) and the noise share
``σ² / (s² + σ²)`` are chosen by maximum marginal likelihood on the support only, over a fixed
grid (type-II maximum likelihood; Rasmussen & Williams 2006, ch. 5). With fewer than
:data:`MIN_POINTS` residuals the correction is zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from matmeta.models.gnn import head_features  # noqa: F401 - re-exported: callers read the head's features here
from matmeta.predict.calibration import gp_mean, sq_distances  # noqa: F401 - gp_mean re-exported

LENGTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # × median pairwise feature distance of the support
NOISE_SHARES = (0.1, 0.25, 0.5, 0.75, 0.9)  # σ² / (s² + σ²)
MIN_POINTS = 3


def fit_gp(features: np.ndarray, residuals: np.ndarray) -> dict[str, Any]:
    """Fit the residual GP on support ``features`` (n, H) and ``residuals`` (n,); a JSON-ready dict.

    Returns:
        ``length_scale``, ``signal_var``, ``noise_var``, ``features`` (n × H lists) and ``alpha``
        (``K⁻¹ r``); an empty correction (``alpha`` all zero) below :data:`MIN_POINTS` points or
        for residuals that are all zero.
    """
    x = np.asarray(features, float)
    r = np.asarray(residuals, float)
    total = float(np.mean(r**2)) if r.size else 0.0
    empty = {"length_scale": 1.0, "signal_var": 0.0, "noise_var": 0.0, "features": x.tolist(), "alpha": [0.0] * len(r)}
    if len(r) < MIN_POINTS or total <= 1e-24:
        return empty
    d2 = sq_distances(x, x)
    median = float(np.median(np.sqrt(d2[np.triu_indices(len(x), 1)])))
    if median <= 0.0:
        return empty
    best: tuple[float, float, float, np.ndarray] | None = None
    for factor in LENGTH_FACTORS:
        length = factor * median
        correlation = np.exp(-d2 / (2.0 * length**2))
        for share in NOISE_SHARES:
            cov = (1.0 - share) * total * correlation + share * total * np.eye(len(r))
            chol = np.linalg.cholesky(cov)
            alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, r))
            evidence = -0.5 * float(r @ alpha) - float(np.log(np.diag(chol)).sum())
            if best is None or evidence > best[0] + 1e-12:
                best = (evidence, length, share, alpha)
    assert best is not None
    _, length, share, alpha = best
    return {
        "length_scale": float(length), "signal_var": float((1.0 - share) * total), "noise_var": float(share * total),
        "features": x.tolist(), "alpha": [float(a) for a in alpha],
    }  # fmt: skip
