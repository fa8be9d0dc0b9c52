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
"""

from __future__ import annotations

import math
from typing import Any


def half_widths(uncertainty: dict[str, Any], adapted: dict[str, Any]) -> tuple[float, float, float]:
    """Half-widths of the 90% intervals: heat_ref per atom (eV/atom), gap (eV) if called non-metal, if called metal."""
    conformal = uncertainty.get("conformal")
    if not conformal:
        return math.nan, math.nan, math.nan
    table = conformal["zero_shot"]
    if adapted.get("kept") == "adapted":
        by_k = conformal["adapted"]
        n = int(adapted.get("n_support", 10))
        table = by_k[min(by_k, key=lambda k: abs(int(k) - n))]
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
