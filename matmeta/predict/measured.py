"""The measured-level band gap of a predictor: its fidelity head, inputs, loss and predictions.

A predictor trained on PBE gaps (the Materials Project model) carries a :class:`matmeta.models.fidelity.FidelityHead`
meta-learned on families of measured gaps (:mod:`matmeta.predict.measured_train`). It reads the PBE-level
network's own outputs for a structure — its head features, PBE gap and metal logit — plus the composition's
charge-balance flags, so the measured level costs one small MLP on top of the one network pass ``predict``
already makes. Its weights live in the predictor checkpoint under ``measured.`` and its settings, split and
calibration in the metadata entry ``measured_gap``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.predict import calibration
from matmeta.predict.calibration import measured_outputs  # noqa: F401 - re-exported for the head's callers

GAP_SCALE_EV = 1.0  # the gap term of the loss is ((gap − y) / 1 eV)²
PREFIX = "measured."  # the head's tensors in a predictor checkpoint
POOLED_PREFIX = "measured_pooled."  # the head after pooled fitting, before meta-learning (the fine-tune baseline)


def fidelity_inputs(
    point: Tensor, features: Tensor, graph_features: Tensor, stats: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """The fidelity head's inputs from the PBE-level network's outputs of a batch (decoded with ``stats``).

    Shapes:
        point: (G, 3) network outputs; features: (G, H) head features; graph_features: (G, 4) → x (G, H + 6),
        gap_pbe (G,) eV, logit_pbe (G,).
    """
    return calibration.fidelity_inputs(point, features, graph_features, stats.decode_gap(point[:, 2]))


def graph_composition(atomic_numbers: Tensor, n_atoms: Tensor) -> Tensor:
    """Per-graph composition flags of a batch (cached per site list).

    Shapes:
        atomic_numbers: (N,); n_atoms: (G,) → (G, 4).
    """
    from matmeta.predict.batched import _composition

    z, out, start = atomic_numbers.tolist(), [], 0
    for size in n_atoms.to(torch.int64).tolist():
        out.append(_composition(tuple(z[start : start + size]))[1])
        start += size
    return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 4)


def per_row_loss(forward: Any, batch: Sequence[Tensor]) -> Tensor:
    """BCE of the measured metal call + squared gap error of measured non-metals (1 eV scale), per row.

    ``batch``: ``(x, gap_pbe, logit_pbe, gap_measured, weight)``; a row of weight 0 is padding.

    Shapes:
        each: (n, ...) → (n,).
    """
    x, gap_pbe, logit_pbe, target, _ = batch
    out = forward(x, gap_pbe, logit_pbe)
    metal = (target <= 0).to(out.dtype)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], metal, reduction="none")
    gap = torch.where(target > 0, ((out[:, 1] - target) / GAP_SCALE_EV) ** 2, 0.0)
    return bce + gap


def loss_fn(forward: Any, batch: Sequence[Tensor]) -> Tensor:
    """Weighted mean of :func:`per_row_loss` (the engine's ``loss_fn``)."""
    weight = batch[4]
    return (per_row_loss(forward, batch) * weight).sum() / weight.sum().clamp(min=1e-12)


def reported_gap(p_metal: np.ndarray, gap: np.ndarray, cut: float) -> np.ndarray:
    """The measured-level gap a row reports: 0 when called metal (P(non-metal) below ``cut``)."""
    return np.where(1.0 - p_metal >= cut, gap, 0.0)


@dataclasses.dataclass
class MeasuredTable:
    """Fidelity inputs and measured gaps of every usable row (rows with a structure).

    Shapes:
        x: (n, F); gap_pbe, logit_pbe, gap: (n,); families: n names.
    """

    x: Tensor
    gap_pbe: Tensor
    logit_pbe: Tensor
    gap: Tensor
    families: list[str]
    formulas: list[str]

    def __len__(self) -> int:
        return len(self.families)

    def rows(self, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, ...]:
        """One batch ``(x, gap_pbe, logit_pbe, gap, weight)`` of the rows at ``indices``."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return (self.x[index], self.gap_pbe[index], self.logit_pbe[index], self.gap[index],
                torch.ones(len(index)))  # fmt: skip

    def inputs(self, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """The head's inputs of the rows at ``indices``."""
        return self.rows(indices)[:3]


def family_index(table: MeasuredTable, families: Sequence[str]) -> np.ndarray:
    """Rows of ``families``."""
    wanted = set(families)
    return np.array([i for i, f in enumerate(table.families) if f in wanted], dtype=np.int64)
