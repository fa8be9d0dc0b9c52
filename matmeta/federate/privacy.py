"""Differential privacy of the labs' updates: clip at the lab, Gaussian noise on the server's mean.

Each lab clips its update to global norm ``C`` (``clip_arrays``); the server adds
``N(0, (σ C / n)²)`` to the mean of the ``n`` accepted updates (``noise_``): the Gaussian mechanism
on a sum of sensitivity ``C`` (add/remove one lab), as in DP-FedAvg (McMahan et al., ICLR 2018) and
Flower's client-side fixed-clipping wrapper. The budget of ``R`` noisy rounds is the Rényi-DP
composition of the Gaussian mechanism (Mironov 2017): ``ε(α) = R α / (2σ²) + log(1/δ)/(α − 1)``,
minimised over α. No subsampling amplification is claimed (every lab takes part every round).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from matmeta.federate.messages import global_norm


def clip_arrays(arrays: Sequence[np.ndarray], clip: float) -> list[np.ndarray]:
    """The arrays scaled to global norm ≤ ``clip``."""
    norm = global_norm(arrays)
    scale = min(1.0, clip / (norm + 1e-12))
    return [np.asarray(a, dtype=np.float32) * np.float32(scale) for a in arrays]


def noise_(update: dict[str, Tensor], clip: float, multiplier: float, n_labs: int, generator: torch.Generator) -> None:
    """Add ``N(0, (multiplier · clip / n_labs)²)`` to every entry of the mean update, in place."""
    std = multiplier * clip / max(n_labs, 1)
    for g in update.values():
        g.add_(torch.randn(g.shape, generator=generator, dtype=g.dtype) * std)


def epsilon(rounds: int, multiplier: float, delta: float) -> float:
    """(ε, δ)-DP budget of ``rounds`` Gaussian-mechanism rounds with noise multiplier σ (RDP composition)."""
    if rounds <= 0:
        return 0.0
    if multiplier <= 0:
        return math.inf
    orders = [1.0 + x / 10.0 for x in range(1, 100)] + list(range(12, 256))
    return float(min(rounds * a / (2 * multiplier**2) + math.log(1 / delta) / (a - 1) for a in orders))
