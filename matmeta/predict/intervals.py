"""Which 90% interval half-width a predictor states, given how (and whether) it was adapted.

* not adapted, or the unadapted weights kept: the zero-shot split-conformal half-widths of the
  checkpoint's validation calibration (:mod:`matmeta.predict.calibrate`);
* adapted weights: the adapted half-widths for the calibrated support size nearest to the
  support set's size;
* for the fine-tuned target, when the support set had ≥ 9 structures: the split-conformal quantile
  of the kept candidate's own leave-one-out residuals (``loo_half_width``), which also covers a
  systematic shift between the support data and the training fidelity.

The gap half-width depends on the predicted class (Mondrian calibration, see
:mod:`matmeta.predict.calibrate`): one for structures called non-metal, one for those called metal
(their ``gap_if_nonmetal``). Checkpoints calibrated before that use one pooled width for both;
older checkpoints without conformal calibration get NaN half-widths (no interval stated).

Checkpoints with a ``difficulty`` entry state locally adaptive gap intervals
(:func:`gap_half_widths`): the class's normalised quantile times σ(x) of each structure
(:mod:`matmeta.predict.difficulty`), so a structure far from the training data gets a wider
interval. Without that entry the constant widths above are used, as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _table(uncertainty: dict[str, Any], adapted: dict[str, Any]) -> dict[str, Any]:
    """The calibration entry that applies: zero-shot, or adapted at the nearest calibrated support size."""
    conformal = uncertainty["conformal"]
    if adapted.get("kept") != "adapted":
        return conformal["zero_shot"]
    by_k = conformal["adapted"]
    n = int(adapted.get("n_support", 10))
    return by_k[min(by_k, key=lambda k: abs(int(k) - n))]


def half_widths(uncertainty: dict[str, Any], adapted: dict[str, Any]) -> tuple[float, float, float]:
    """Half-widths of the 90% intervals: heat_ref per atom (eV/atom), gap (eV) if called non-metal, if called metal."""
    conformal = uncertainty.get("conformal")
    if not conformal:
        return math.nan, math.nan, math.nan
    table = _table(uncertainty, adapted)
    heat, gap = float(table["heat_ref_per_atom"]), float(table["band_gap_nonmetal"])
    called, uncalled = (
        float(table.get("band_gap_nonmetal_called", gap)),
        float(table.get("band_gap_nonmetal_uncalled", gap)),
    )
    own = adapted.get("loo_half_width")
    if own is not None and math.isfinite(own):
        if adapted.get("target") == "heat_ref":
            heat = float(own)
        elif adapted.get("target") == "band_gap":
            called = uncalled = float(own)
    return heat, called, uncalled


def gap_half_widths(
    uncertainty: dict[str, Any], adapted: dict[str, Any], called_metal: np.ndarray, features: np.ndarray
) -> np.ndarray:
    """Per-structure 90% half-widths (eV) of the gap if non-metal.

    Locally adaptive (``q_class · σ(x)``) when the checkpoint has a ``difficulty`` entry and no
    finetune leave-one-out width overrides it; otherwise the constant class widths of :func:`half_widths`.

    Shapes:
        called_metal: (G,) bool; features: (G, H) head features of the predicting network → (G,).
    """
    _, called, uncalled = half_widths(uncertainty, adapted)
    constant = np.where(called_metal, uncalled, called)
    difficulty = uncertainty.get("difficulty")
    own = adapted.get("loo_half_width")
    overridden = adapted.get("target") == "band_gap" and own is not None and math.isfinite(own)
    table = _table(uncertainty, adapted) if uncertainty.get("conformal") else {}
    if not difficulty or overridden or "band_gap_scaled_called" not in table:
        return constant
    from matmeta.predict.difficulty import sigma

    q = np.where(called_metal, float(table["band_gap_scaled_uncalled"]), float(table["band_gap_scaled_called"]))
    return q * sigma(difficulty, features)
