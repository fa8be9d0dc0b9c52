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

import base64
import math
from typing import Any

import numpy as np

KIND = "nearest_training_head_features"  # the σ(x) kind (built by matmeta.predict.difficulty)
NEIGHBOURS = 1  # k of the k-nearest-neighbour mean distance (1, 5, 20 compared)
LEGACY_ROLES = {"heat_ref": "energy", "band_gap": "band_gap"}  # adapted checkpoints written before roles


def adapted_role(adapted: dict[str, Any]) -> str | None:
    """The role (``energy`` or ``band_gap``) an adapted checkpoint was fine-tuned on, None when not adapted."""
    role = adapted.get("role")
    return role if role is not None else LEGACY_ROLES.get(adapted.get("target", ""))


def _table(uncertainty: dict[str, Any], adapted: dict[str, Any]) -> dict[str, Any]:
    """The calibration entry that applies: zero-shot, or adapted at the nearest calibrated support size."""
    conformal = uncertainty["conformal"]
    if adapted.get("kept") != "adapted":
        return conformal["zero_shot"]
    by_k = conformal["adapted"]
    n = int(adapted.get("n_support", 10))
    return by_k[min(by_k, key=lambda k: abs(int(k) - n))]


def half_widths(uncertainty: dict[str, Any], adapted: dict[str, Any]) -> tuple[float, float, float]:
    """Half-widths of the 90% intervals: energy per atom (eV/atom), gap (eV) if called non-metal, if called metal."""
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
        if adapted_role(adapted) == "energy":
            heat = float(own)
        elif adapted_role(adapted) == "band_gap":
            called = uncalled = float(own)
    return heat, called, uncalled


def gap_half_widths(
    uncertainty: dict[str, Any],
    adapted: dict[str, Any],
    called_metal: np.ndarray,
    features: np.ndarray,
    sigma: np.ndarray | None = None,
) -> np.ndarray:
    """Per-structure 90% half-widths (eV) of the gap if non-metal.

    Locally adaptive (``q_class · σ(x)``) when the checkpoint has a ``difficulty`` entry and no
    finetune leave-one-out width overrides it; otherwise the constant class widths of :func:`half_widths`.
    ``sigma``: σ(x) of ``features`` when the caller has it (it is computed otherwise).

    Shapes:
        called_metal: (G,) bool; features: (G, H) head features of the predicting network → (G,).
    """
    _, called, uncalled = half_widths(uncertainty, adapted)
    constant = np.where(called_metal, uncalled, called)
    difficulty = uncertainty.get("difficulty")
    own = adapted.get("loo_half_width")
    overridden = adapted_role(adapted) == "band_gap" and own is not None and math.isfinite(own)
    table = _table(uncertainty, adapted) if uncertainty.get("conformal") else {}
    if not difficulty or overridden or "band_gap_scaled_called" not in table:
        return constant
    q = np.where(called_metal, float(table["band_gap_scaled_uncalled"]), float(table["band_gap_scaled_called"]))
    return q * (sigma if sigma is not None else _sigma(uncertainty, features))


def _sigma(uncertainty: dict[str, Any], features: np.ndarray) -> np.ndarray | None:
    """σ(x) of ``features`` under the checkpoint's ``difficulty`` entry, None without one."""
    difficulty = uncertainty.get("difficulty")
    return sigma(difficulty, features) if difficulty else None


def energy_half_widths(
    uncertainty: dict[str, Any], adapted: dict[str, Any], features: np.ndarray, sigma: np.ndarray | None = None
) -> np.ndarray:
    """Per-structure 90% half-widths of the energy per atom (eV/atom): ``q · σ(x)`` where calibrated so.

    Checkpoints whose calibration has ``heat_ref_per_atom_scaled`` widen the interval with the distance to
    the training data like the gap's; older ones (and a finetune leave-one-out width) state one width.

    Shapes:
        features: (G, H) head features → (G,).
    """
    constant = np.full(len(features), half_widths(uncertainty, adapted)[0])
    own = adapted.get("loo_half_width")
    overridden = adapted_role(adapted) == "energy" and own is not None and math.isfinite(own)
    table = _table(uncertainty, adapted) if uncertainty.get("conformal") else {}
    if overridden or "heat_ref_per_atom_scaled" not in table or not uncertainty.get("difficulty"):
        return constant
    sigma = sigma if sigma is not None else _sigma(uncertainty, features)
    return float(table["heat_ref_per_atom_scaled"]) * sigma


def reported_gap_half_widths(
    uncertainty: dict[str, Any],
    adapted: dict[str, Any],
    called_metal: np.ndarray,
    features: np.ndarray,
    sigma: np.ndarray | None = None,
) -> np.ndarray:
    """Per-structure 90% half-widths (eV) of the reported gap (0 when called metal); NaN when not calibrated.

    Calibrated on every structure of the calibration families (metals included), by predicted class.

    Shapes:
        called_metal: (G,) bool; features: (G, H) → (G,).
    """
    table = _table(uncertainty, adapted) if uncertainty.get("conformal") else {}
    if "band_gap_reported_called" not in table:
        return np.full(len(features), math.nan)
    own = adapted.get("loo_half_width")
    if adapted_role(adapted) == "band_gap" and own is not None and math.isfinite(own):
        return np.full(len(features), float(own))
    if "band_gap_reported_scaled_called" not in table or not uncertainty.get("difficulty"):
        return np.where(called_metal, table["band_gap_reported_uncalled"], table["band_gap_reported_called"])
    q = np.where(called_metal, table["band_gap_reported_scaled_uncalled"], table["band_gap_reported_scaled_called"])
    return q * (sigma if sigma is not None else _sigma(uncertainty, features))


def measured_half_width(uncertainty: dict[str, Any], called_metal: np.ndarray, n_support: int | None) -> np.ndarray:
    """Per-row 90 % half-widths of the reported measured gap: zero-shot, or adapted at the nearest support size.

    Shapes:
        called_metal: (G,) bool → (G,).
    """
    table = uncertainty.get("zero_shot", {})
    if n_support is not None and uncertainty.get("adapted"):
        by_k = uncertainty["adapted"]
        table = by_k[min(by_k, key=lambda k: abs(int(k) - n_support))]
    return np.where(called_metal, float(table.get("uncalled", np.nan)), float(table.get("called", np.nan)))


# ---------------------------------------------------------------------- σ(x)
def decode_features(entry: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_features`; shape (n, H), float64."""
    raw = np.frombuffer(base64.b64decode(entry["base64"]), dtype="<f2")
    return raw.reshape(tuple(int(s) for s in entry["shape"])).astype(float)


def knn_distance(features: np.ndarray, reference: np.ndarray, k: int = NEIGHBOURS, chunk: int = 1024) -> np.ndarray:
    """Mean Euclidean distance of each row of ``features`` to its ``k`` nearest rows of ``reference``.

    Shapes:
        features: (m, H); reference: (n, H) → (m,).
    """
    features, reference = np.asarray(features, float), np.asarray(reference, float)
    ref_sq = (reference * reference).sum(1)
    out = np.empty(len(features))
    k = min(k, len(reference))
    for begin in range(0, len(features), chunk):
        block = features[begin : begin + chunk]
        d2 = (block * block).sum(1)[:, None] + ref_sq[None, :] - 2.0 * block @ reference.T
        nearest = np.partition(np.maximum(d2, 0.0), k - 1, axis=1)[:, :k]
        out[begin : begin + chunk] = np.sqrt(nearest).mean(1)
    return out


def sigma(entry: dict[str, Any], features: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """σ(x) = offset + d_k(x) / scale for head ``features`` (m, H); shape (m,).

    ``reference`` may pass the already decoded reference features (to decode them once).
    """
    if entry.get("kind") != KIND:
        raise ValueError(f"unknown difficulty kind {entry.get('kind')!r}")
    reference = decode_features(entry["reference"]) if reference is None else reference
    distance = knn_distance(features, reference, int(entry.get("neighbours", NEIGHBOURS)))
    return float(entry["offset"]) + distance / float(entry["scale"])
