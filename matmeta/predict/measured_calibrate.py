"""Calibration of the measured-level gap on its validation families: the non-metal cut and 90 % intervals.

On every row of the validation families (zero-shot) and on adapted episodes (k of the head's support
sizes, query = the rest of the family up to ``k_query``): the cut on P(non-metal) with the best balanced
accuracy at precision ≥ 0.3 (as for the PBE level), then split-conformal 90 % half-widths of the reported
gap (0 when called metal) by predicted class (Mondrian: a structure called metal and one called non-metal
have very different errors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from matmeta.conformal import balanced_threshold, mondrian_quantiles
from matmeta.predict.intervals import measured_half_width as half_width  # noqa: F401 - re-exported
from matmeta.predict.measured import family_index, loss_fn, measured_outputs, reported_gap

LEVEL = 0.9
MIN_PRECISION = 0.3
EPISODES_PER_FAMILY = 10


def _half_widths(p_metal: np.ndarray, gap: np.ndarray, truth: np.ndarray, cut: float) -> dict[str, float]:
    called = 1.0 - p_metal >= cut
    error = np.abs(reported_gap(p_metal, gap, cut) - truth)
    by_call = mondrian_quantiles(error, called, LEVEL)
    return {"called": float(by_call["true"]), "uncalled": float(by_call["false"]), "n": int(len(truth))}


def calibrate_measured(maml: Any, table: Any, families: Sequence[str], settings: Any, seed: int) -> dict[str, Any]:
    """The ``uncertainty`` part of a checkpoint's ``measured_gap`` entry (see the module doc)."""
    maml.eval()
    index = family_index(table, families)
    zero = measured_outputs(maml, table.inputs(index))
    truth = table.gap.numpy()[index].astype(float)
    cut = balanced_threshold(1.0 - zero[:, 0], truth > 0, MIN_PRECISION)
    adapted: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(seed)
    members = {f: index[np.asarray(table.families)[index] == f] for f in families}
    for k in settings.k_support:
        outs, truths = [], []
        for rows in members.values():
            if len(rows) < k + 2:
                continue
            for _ in range(EPISODES_PER_FAMILY):
                order = rng.permutation(rows)
                support, query = order[:k], order[k : k + settings.k_query]
                fast = maml.adapt(table.rows(support), loss_fn)
                outs.append(measured_outputs(maml, table.inputs(query), fast))
                truths.append(table.gap.numpy()[query].astype(float))
        if outs:
            joined = np.concatenate(outs)
            adapted[str(k)] = _half_widths(joined[:, 0], joined[:, 1], np.concatenate(truths), cut)
    torch.manual_seed(seed)
    return {
        "level": LEVEL,
        "nonmetal_threshold": float(cut),
        "zero_shot": _half_widths(zero[:, 0], zero[:, 1], truth, cut),
        "adapted": adapted,
        "calibrated_on": sorted(families),
    }
