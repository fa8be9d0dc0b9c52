"""Prediction rows: the network's outputs of a batch decoded into the checkpoint's target names and units.

:func:`decode_rows` is the one place where outputs become numbers a user reads: the energy in its unit, the
gap (0 when called metal), P(metal), the calibrated 90 % intervals (widening with the distance to the
training data where the checkpoint's calibration says how), an adapted checkpoint's kept choice, and the
measured-level gap of a checkpoint with a fidelity head.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor

from matmeta.models.gnn import GraphBatch
from matmeta.predict.data import ENERGY, GAP


def decode_rows(
    self: Any, point: Tensor, mc: Tensor | None, batch: GraphBatch, features: Tensor
) -> list[dict[str, Any]]:
    """Decode model outputs (point (G, 3), MC samples (S, G, 3), head features (G, H)) into rows.

    Keys, for the checkpoint's targets E (energy) and G (gap): ``E``, ``E_std``, ``E_lo``, ``E_hi`` (90%
    interval) in E's unit; ``G`` (0 when called metal), ``G_std``, ``G_lo``, ``G_hi``; ``p_metal``;
    ``gap_if_nonmetal`` with ``gap_lo`` / ``gap_hi``; ``feature_distance`` (σ(x) − 1: distance to the
    training data in units of the calibration's median, None without a difficulty entry). A checkpoint
    whose gap is not ``band_gap`` also gets ``band_gap``, its gap until a measured-level one exists.
    """
    from matmeta.predict.adaptation import transform
    from matmeta.predict.intervals import (
        _sigma,
        adapted_role,
        energy_half_widths,
        gap_half_widths,
        reported_gap_half_widths,
    )

    adapted = self.metadata.get("adapted") or {}
    scale = self.uncertainty.get("adapted" if adapted.get("kept") == "adapted" else "zero_shot", {})
    n_atoms = batch.n_atoms
    feats = features.numpy().astype(float)
    raw = {
        "heat_per_atom": (self.stats.decode_heat(point[:, 0], n_atoms) / n_atoms).numpy().astype(float),
        "metal_logit": point[:, 1].numpy().astype(float),
        "gap": self.stats.decode_gap(point[:, 2]).numpy().astype(float),
        "n_atoms": n_atoms.numpy().astype(float),
        "features": feats,
    }
    role = adapted_role(adapted)
    if role in (ENERGY, GAP):
        raw = transform(raw, adapted.get("choice"), role)
    atoms = raw["n_atoms"]
    per = 1.0 if self.names.energy_per_atom else atoms  # public energy = per_atom · per
    energy = raw["heat_per_atom"] * per
    p_metal = 1.0 / (1.0 + np.exp(-np.clip(raw["metal_logit"], -60, 60)))
    gap = raw["gap"]
    if mc is not None:
        energy_std = self.stats.decode_heat(mc[..., 0], n_atoms).std(0).numpy() / atoms * per
        energy_std = energy_std * scale.get("heat_ref", 1.0)
        gap_std = self.stats.decode_gap(mc[..., 2]).std(0).numpy() * scale.get("band_gap", 1.0)
    else:
        energy_std, gap_std = np.full_like(energy, math.nan), np.full_like(gap, math.nan)
    metal = (1.0 - p_metal) < self.nonmetal_cut
    band_gap = np.where(metal, 0.0, gap)
    band_gap_std = np.where(metal, np.sqrt((1 - p_metal) * (gap_std**2 + gap**2)), gap_std)
    sigma = _sigma(self.uncertainty, feats)
    energy_half = energy_half_widths(self.uncertainty, adapted, feats, sigma) * per
    gap_half = gap_half_widths(self.uncertainty, adapted, metal, feats, sigma)
    reported_half = reported_gap_half_widths(self.uncertainty, adapted, metal, feats, sigma)
    measured = measured_rows(self, point, features, batch, adapted) if self.measured is not None else None
    e, g = self.names.names
    rows = []
    for i in range(point.shape[0]):
        row: dict[str, Any] = {
            e: float(energy[i]),
            f"{e}_std": float(energy_std[i]),
            f"{e}_lo": _finite(energy[i] - energy_half[i]),
            f"{e}_hi": _finite(energy[i] + energy_half[i]),
            g: float(band_gap[i]),
            f"{g}_std": float(band_gap_std[i]),
            f"{g}_lo": _finite(max(band_gap[i] - reported_half[i], 0.0)),
            f"{g}_hi": _finite(band_gap[i] + reported_half[i]),
            "p_metal": float(p_metal[i]),
            "gap_if_nonmetal": float(gap[i]),
            "gap_lo": _finite(max(gap[i] - gap_half[i], 0.0)),
            "gap_hi": _finite(gap[i] + gap_half[i]),
            "feature_distance": None if sigma is None else float(sigma[i] - 1.0),
        }
        if measured is not None:
            row.update(measured[i])
        elif g != "band_gap":
            row["band_gap"] = row[g]  # no measured-level head: the model's own gap
        rows.append(row)
    return rows


def measured_rows(
    self: Any, point: Tensor, features: Tensor, batch: GraphBatch, adapted: dict[str, Any]
) -> list[dict[str, Any]]:
    """The measured-level gap of every graph: ``band_gap``, ``band_gap_lo`` / ``_hi`` (90 %), ``p_metal_measured``.

    ``band_gap`` is 0 when the measured level calls a metal; an adaptation on measured gaps applies its kept choice.
    """
    from matmeta.predict.measured import fidelity_inputs, graph_composition, measured_outputs, reported_gap
    from matmeta.predict.measured_adapt import ROLE, apply
    from matmeta.predict.measured_calibrate import half_width

    inputs = fidelity_inputs(point, features, graph_composition(batch.atomic_numbers, batch.n_atoms), self.stats)
    out = measured_outputs(self.measured, inputs, self.measured_fast)
    own = adapted.get("role") == ROLE
    if own:
        out = apply(out, adapted.get("choice") or {})
    cut = self.measured_cut
    gap = reported_gap(out[:, 0], out[:, 1], cut)
    uncertainty = (self.metadata.get("measured_gap") or {}).get("uncertainty", {})
    n_support = int(adapted["n_support"]) if own and adapted.get("kept") == "adapted" else None
    half = half_width(uncertainty, 1.0 - out[:, 0] < cut, n_support)
    if own and adapted.get("loo_half_width") is not None:
        half = np.full(len(gap), float(adapted["loo_half_width"]))
    return [
        {"band_gap": float(gap[i]), "band_gap_lo": _finite(max(gap[i] - half[i], 0.0)),
         "band_gap_hi": _finite(gap[i] + half[i]), "p_metal_measured": float(out[i, 0])}
        for i in range(len(gap))
    ]  # fmt: skip


def _finite(value: float) -> float | None:
    """``value`` as a float, None when it is not finite (no calibrated interval in the checkpoint)."""
    return float(value) if math.isfinite(value) else None
