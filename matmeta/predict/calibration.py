"""Calibration of a prediction, applied in one place: network outputs → the numbers a user reads.

One prediction (:meth:`matmeta.predict.predictor.Predictor.predict_rows`) reads the checkpoint once, builds the
graphs once, runs the network once (the point and the MC-dropout samples from one pass of the graph part), and then
calls :func:`calibrated_rows` once. Everything the checkpoint's own calibration data says is applied here, each
step keyed by that data (a checkpoint without an entry gets the step's identity):

* decoding: the energy in its unit, the gap (0 when called metal at the checkpoint's cut), P(metal);
* an adapted checkpoint's kept choice (:mod:`matmeta.predict.adaptation`: recalibrated, kriged, support mean);
* 90 % intervals: split-conformal half-widths of the calibration families, Mondrian by predicted class, widened
  by σ(x) (the distance to the training data in the network's head features) where calibrated so; an adapted
  checkpoint's own leave-one-out width for its target;
* the measured-level gap (the fidelity head, :mod:`matmeta.predict.measured`) with its intervals;
* new-family corrections: a gap offset and a P(non-metal) recalibration for a structure whose family (of the
  checkpoint's kind, e.g. the B site) is none of its training families — fitted out of fold by ``matmeta
  calibrate`` for the perovskite checkpoint; the Materials Project checkpoint has none;
* the out-of-domain flag: an element never seen in training (or, with ``sites_seen``, at a new site), or a
  feature distance beyond the calibration families' farthest.

The interval rules are :mod:`matmeta.predict.intervals`' (with σ(x)); this module applies them.

Reason for the size (~430 lines): it is the one module a prediction's numbers pass through after the network
(issue 32); splitting it again puts a seventh ``predict/`` file on every prediction's path.

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from matmeta.models.gnn import GraphBatch
from matmeta.predict.data import ENERGY, GAP, MEASURED
from matmeta.predict.intervals import (
    LEGACY_ROLES,
    _sigma,
    energy_half_widths,
    gap_half_widths,
    measured_half_width,
    reported_gap_half_widths,
)

CORRECTIONS = ("new_family_gap_shift", "new_family_gap_shift_adapted", "new_family_platt")  # uncertainty keys
UNCHECKED = object()  # a structure's site check not made yet (``out_of_domain`` makes it)


# ---------------------------------------------------------------------- the entry point
def calibrated_rows(
    predictor: Any,
    point: Tensor,
    mc: Tensor | None,
    batch: GraphBatch,
    features: Tensor,
    structures: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows of a batch: point outputs (G, 3), MC samples (S, G, 3) or None, head features (G, H).

    With ``structures`` (one per graph) the rows also get the new-family corrections and ``out_of_domain``.
    Keys, for the checkpoint's targets E (energy) and G (gap): ``E``, ``E_std``, ``E_lo``, ``E_hi`` (90%
    interval) in E's unit; ``G`` (0 when called metal), ``G_std``, ``G_lo``, ``G_hi``; ``p_metal``;
    ``gap_if_nonmetal`` with ``gap_lo`` / ``gap_hi``; ``feature_distance`` (σ(x) − 1: distance to the
    training data in units of the calibration's median, None without a difficulty entry); the measured-level
    ``band_gap`` (its gap until a measured-level one exists, for a checkpoint whose gap is not ``band_gap``).
    """
    numbers = _network_numbers(predictor, point, mc, batch, features, structures)  # every call out of here first
    rows = _assembled(predictor, numbers)
    if structures is None:
        return rows
    checks = numbers["site_checks"] or [(False, UNCHECKED)] * len(rows)
    corrected = _corrected(predictor, rows, [new for new, _ in checks])
    return [_with_domain(predictor, s, r, why) for s, r, (_, why) in zip(structures, corrected, checks, strict=True)]


def _network_numbers(
    predictor: Any, point: Tensor, mc: Tensor | None, batch: GraphBatch, features: Tensor, structures: Any
) -> dict:
    """The outputs decoded with the checkpoint's statistics, the measured-level outputs, the site checks.

    The measured level needs a fidelity head; the site checks, a checkpoint with site labels or new-family
    corrections (the perovskite one).
    """
    stats, n_atoms = predictor.stats, batch.n_atoms
    gap = stats.decode_gap(point[:, 2])
    numbers: dict[str, Any] = {
        "heat_per_atom": (stats.decode_heat(point[:, 0], n_atoms) / n_atoms).numpy().astype(float),
        "metal_logit": point[:, 1].numpy().astype(float),
        "gap": gap.numpy().astype(float),
        "gap_tensor": gap,
        "n_atoms": n_atoms.numpy().astype(float),
        "features": features.numpy().astype(float),
        "per_atom": predictor.names.energy_per_atom,
        "names": predictor.names.names,
    }
    if mc is not None:
        numbers["heat_mc"] = stats.decode_heat(mc[..., 0], n_atoms).std(0).numpy()  # eV/cell
        numbers["gap_mc"] = stats.decode_gap(mc[..., 2]).std(0).numpy()
    if predictor.measured is not None:
        inputs = fidelity_inputs(point, features, batch.graph_features, numbers["gap_tensor"])
        numbers["measured"] = measured_outputs(predictor.measured, inputs, predictor.measured_fast)
    corrections = any(predictor.uncertainty.get(key) for key in CORRECTIONS)
    numbers["site_checks"] = None
    if structures is not None and (corrections or predictor.sites_seen):
        from matmeta.predict.domain import site_checks

        families = predictor.metadata.get("families") or {}
        numbers["site_checks"] = site_checks(structures, predictor.sites_seen, families, corrections)
    return numbers


def fidelity_inputs(point: Tensor, features: Tensor, graph_features: Tensor, gap_pbe: Tensor) -> tuple[Tensor, ...]:
    """The measured-level head's inputs from the PBE-level network's outputs of a batch.

    Shapes:
        point: (G, 3) network outputs; features: (G, H) head features; graph_features: (G, 4); gap_pbe: (G,) eV
        (the decoded gap output) → x (G, H + 6), gap_pbe (G,) eV, logit_pbe (G,).
    """
    import torch

    logit = point[:, 1].clamp(-20.0, 20.0)
    x = torch.cat([features, gap_pbe[:, None] / 3.0, logit[:, None] / 10.0, graph_features], dim=1)
    return x, gap_pbe, logit


def measured_outputs(maml: Any, inputs: tuple[Tensor, ...], fast: dict | None = None) -> np.ndarray:
    """The measured-level head's ``[P(metal), gap eV ≥ 0]`` of every row (with fast weights when adapted).

    Shapes:
        → (n, 2).
    """
    import torch

    with torch.no_grad():
        out = maml(*inputs, params=fast)
    return np.stack([torch.sigmoid(out[:, 0]).numpy(), out[:, 1].clamp(min=0.0).numpy()], axis=1).astype(float)


def _assembled(predictor: Any, numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """Decoded numbers → rows: the kept choice and the metal calls, then the intervals, then the rows.

    In that order on purpose: the interval functions (:mod:`matmeta.predict.intervals`) are called in one block.
    """
    uncertainty, metadata = predictor.uncertainty, predictor.metadata
    adapted = metadata.get("adapted") or {}
    scale = uncertainty.get("adapted" if adapted.get("kept") == "adapted" else "zero_shot", {})
    raw = {k: numbers[k] for k in ("heat_per_atom", "metal_logit", "gap", "n_atoms", "features")}
    role = adapted.get("role") or LEGACY_ROLES.get(adapted.get("target", ""))  # intervals.adapted_role
    if role in (ENERGY, GAP):
        raw = transform(raw, adapted.get("choice"), role)
    feats, atoms = raw["features"], raw["n_atoms"]
    per = 1.0 if numbers["per_atom"] else atoms  # public energy = per_atom · per
    energy = raw["heat_per_atom"] * per
    p_metal = 1.0 / (1.0 + np.exp(-np.clip(raw["metal_logit"], -60, 60)))
    gap = raw["gap"]
    if "heat_mc" in numbers:
        energy_std = numbers["heat_mc"] / atoms * per * scale.get("heat_ref", 1.0)
        gap_std = numbers["gap_mc"] * scale.get("band_gap", 1.0)
    else:
        energy_std, gap_std = np.full_like(energy, math.nan), np.full_like(gap, math.nan)
    metal = (1.0 - p_metal) < nonmetal_cut(uncertainty)
    band_gap = np.where(metal, 0.0, gap)
    band_gap_std = np.where(metal, np.sqrt((1 - p_metal) * (gap_std**2 + gap**2)), gap_std)
    measured = _measured_level(metadata, numbers["measured"], adapted) if "measured" in numbers else None
    # the intervals, in one block
    sigma_x = _sigma(uncertainty, feats)
    energy_half = energy_half_widths(uncertainty, adapted, feats, sigma_x) * per
    gap_half = gap_half_widths(uncertainty, adapted, metal, feats, sigma_x)
    reported_half = reported_gap_half_widths(uncertainty, adapted, metal, feats, sigma_x)
    if measured is not None:
        measured["half"] = measured["loo_half"] if measured["loo_half"] is not None else measured_half_width(
            measured["uncertainty"], measured["called_metal"], measured["n_support"]
        )  # fmt: skip
    e, g = numbers["names"]
    rows = []
    for i in range(len(energy)):
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
            "feature_distance": None if sigma_x is None else float(sigma_x[i] - 1.0),
        }
        if measured is not None:
            row.update(_measured_row(measured, i))
        elif g != "band_gap":
            row["band_gap"] = row[g]  # no measured-level head: the model's own gap
        rows.append(row)
    return rows


def legend(predictor: Any) -> dict[str, Any]:
    """What a table of rows needs to say about them: target names and units, the metal cuts (as P(metal))."""
    uncertainty = predictor.uncertainty
    cuts = {"metal_above": 1.0 - nonmetal_cut(uncertainty), "new_family_metal_above": 1.0 - new_family_cut(uncertainty)}
    energy, gap = predictor.names.names
    return {"energy": energy, "gap": gap, "energy_unit": predictor.names.unit(energy), **cuts}


def nonmetal_cut(uncertainty: dict[str, Any]) -> float:
    """P(non-metal) at or above which a structure is called a non-metal (chosen on the calibration families)."""
    return float(uncertainty.get("nonmetal_threshold", 0.5))


def measured_cut(metadata: dict[str, Any]) -> float:
    """P(non-metal) at or above which the measured level calls a non-metal (its validation families' cut)."""
    return float(((metadata.get("measured_gap") or {}).get("uncertainty") or {}).get("nonmetal_threshold", 0.5))


def new_family_cut(uncertainty: dict[str, Any]) -> float:
    """The non-metal cut on the recalibrated P of a new family: the same calls as :func:`nonmetal_cut` on raw P."""
    from matmeta.conformal import platt

    coefficients = uncertainty.get("new_family_platt")
    cut = nonmetal_cut(uncertainty)
    return float(platt(cut, coefficients["a"], coefficients["b"])) if coefficients else cut


def _measured_level(metadata: dict[str, Any], out: np.ndarray, adapted: dict[str, Any]) -> dict[str, Any]:
    """The measured level of every graph before its interval: gap (0 when called metal), P(metal), width inputs.

    ``out``: the fidelity head's ``[P(metal), gap]`` rows; an adaptation on measured gaps applies its kept choice
    (``recalibrated`` / ``support_mean``) and states its own leave-one-out width.
    """
    own = adapted.get("role") == MEASURED
    if own:
        out = measured_choice(out, adapted.get("choice") or {})
    cut = measured_cut(metadata)
    loo = adapted.get("loo_half_width") if own else None
    return {
        "gap": np.where(1.0 - out[:, 0] >= cut, out[:, 1], 0.0),  # matmeta.predict.measured.reported_gap
        "p_metal": out[:, 0],
        "called_metal": 1.0 - out[:, 0] < cut,
        "uncertainty": (metadata.get("measured_gap") or {}).get("uncertainty", {}),
        "n_support": int(adapted["n_support"]) if own and adapted.get("kept") == "adapted" else None,
        "loo_half": None if loo is None else np.full(len(out), float(loo)),
    }


def _measured_row(measured: dict[str, Any], i: int) -> dict[str, Any]:
    """Row ``i``'s measured-level columns: ``band_gap`` with its 90 % interval and ``p_metal_measured``."""
    gap, half = measured["gap"][i], measured["half"][i]
    return {"band_gap": float(gap), "band_gap_lo": _finite(max(gap - half, 0.0)), "band_gap_hi": _finite(gap + half),
            "p_metal_measured": float(measured["p_metal"][i])}  # fmt: skip


def measured_choice(out: np.ndarray, choice: dict[str, Any]) -> np.ndarray:
    """``[P(metal), gap]`` rows under a fitted ``recalibrated`` / ``support_mean`` choice (others: unchanged)."""
    kind = choice.get("kind")
    out = np.array(out, dtype=float)
    if kind == "recalibrated":
        logit = np.log(np.clip(out[:, 0], 1e-12, 1 - 1e-12) / np.clip(1 - out[:, 0], 1e-12, 1))
        out[:, 0] = 1.0 / (1.0 + np.exp(-(logit + choice["metal_logit_shift"])))
        out[:, 1] = np.clip(choice["scale"] * out[:, 1] + choice["shift"], 0.0, None)
    elif kind == "support_mean":
        out[:, 0] = 0.0 if choice["mean"] > 0 else 1.0
        out[:, 1] = choice["mean"]
    return out


def _finite(value: float) -> float | None:
    """``value`` as a float, None when it is not finite (no calibrated interval in the checkpoint)."""
    return float(value) if math.isfinite(value) else None


# ---------------------------------------------------------------------- an adapted checkpoint's kept choice
def transform(raw: dict[str, np.ndarray], choice: dict[str, Any] | None, target: str) -> dict[str, np.ndarray]:
    """Raw outputs with a fitted choice applied to ``target`` (the other target is left as it is)."""
    kind = (choice or {}).get("kind", "unadapted")
    out = dict(raw)
    if kind in ("unadapted", "adapted"):
        return out
    correction = 0.0
    if kind == "kriged":
        correction = gp_mean(choice["gp"], raw["features"])  # type: ignore[index]
    if target == ENERGY:
        if kind == "support_mean":
            out["heat_per_atom"] = np.full_like(raw["heat_per_atom"], choice["mean"])  # type: ignore[index]
        else:
            out["heat_per_atom"] = choice["scale"] * raw["heat_per_atom"] + choice["shift"] + correction  # type: ignore[index]
        return out
    if kind == "support_mean":
        out["gap"] = np.full_like(raw["gap"], choice["mean"])  # type: ignore[index]
        out["metal_logit"] = np.full_like(raw["metal_logit"], -30.0 if choice["mean"] > 0 else 30.0)  # type: ignore[index]
    else:
        out["gap"] = np.clip(choice["scale"] * raw["gap"] + choice["shift"] + correction, 0.0, None)  # type: ignore[index]
        out["metal_logit"] = raw["metal_logit"] + choice["metal_logit_shift"]  # type: ignore[index]
    return out


def sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape (len(a), len(b))."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def gp_mean(gp: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Posterior mean of the residual at query ``features`` (m, H); shape (m,)."""
    alpha = np.asarray(gp["alpha"], float)
    if not alpha.size or not np.any(alpha):
        return np.zeros(len(features))
    support = np.asarray(gp["features"], float)
    correlation = np.exp(-sq_distances(np.asarray(features, float), support) / (2.0 * gp["length_scale"] ** 2))
    return gp["signal_var"] * correlation @ alpha


# ---------------------------------------------------------------------- families and the domain
def _with_domain(predictor: Any, structure: Any, row: dict[str, Any], site_reason: Any) -> dict[str, Any]:
    """``row`` with its ``out_of_domain`` reason; an energy interval that cannot widen is dropped out of domain.

    A checkpoint calibrated with distance-scaled energy widths widens the interval itself; an older one
    (the perovskite checkpoint) states one width for every structure, which is uncalibrated for a structure
    unlike its training data: ``E_lo`` / ``E_hi`` become None there.
    """
    reason = out_of_domain(predictor, structure, row, site_reason)
    out = {**row, "out_of_domain": reason}
    table = (predictor.uncertainty.get("conformal") or {}).get("zero_shot", {})
    if reason and "heat_ref_per_atom_scaled" not in table:
        energy = predictor.names.energy
        out[f"{energy}_lo"] = out[f"{energy}_hi"] = None
    return out


def out_of_domain(
    predictor: Any, structure: Any, row: dict[str, Any] | None = None, site_reason: Any = UNCHECKED
) -> str | None:
    """Why ``structure`` lies outside the training data, or None.

    An element never seen in training (or, for a checkpoint with site labels, at a new A/B/X site or
    another structure type: :func:`matmeta.predict.domain.domain_flags`); with its prediction ``row``,
    also a distance to the training data in the network's features beyond the farthest structure of
    the calibration families (``difficulty.domain_limit``): its interval is then an extrapolation.
    ``site_reason``: the site check already made for the batch (:func:`matmeta.predict.domain.site_checks`).
    """
    if predictor.sites_seen and site_reason is UNCHECKED:
        from matmeta.predict.domain import domain_flags

        reasons = [domain_flags(structure, predictor.sites_seen)]
    elif predictor.sites_seen:
        reasons = [site_reason]
    else:
        reasons = [unseen_elements(structure, predictor.elements_seen)]
    limit = (predictor.uncertainty.get("difficulty") or {}).get("domain_limit")
    distance = (row or {}).get("feature_distance")
    if limit is not None and distance is not None and distance > float(limit):
        reasons.append(f"feature distance {distance:.2f} beyond the calibration's {float(limit):.2f}")
    return "; ".join(r for r in reasons if r) or None


def unseen_warning(unseen: Sequence[int], identity: bool = True) -> str | None:
    """The predict row's warning for elements never seen in training (None when there are none)."""
    if not unseen:
        return None
    how = "a generic element embedding" if identity else "its element descriptors only"
    return f"element(s) never seen in training: {symbols(unseen)}; prediction uses {how}"


def unseen_elements(structure: Any, seen: set[int]) -> str | None:
    """Which elements of ``structure`` are outside ``seen``, as a one-line reason, or None."""
    new = sorted({int(z) for z in structure.atomic_numbers} - set(seen))
    return f"element(s) {symbols(new)} never seen in training" if new else None


def symbols(numbers: Sequence[int]) -> str:
    """Element symbols of atomic numbers, comma-separated."""
    from pymatgen.core.periodic_table import Element

    return ", ".join(Element.from_Z(int(z)).symbol for z in numbers)


def new_family_corrections(
    rows: Sequence[dict[str, Any]], new: Sequence[bool], shift: float, platt: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Prediction rows corrected where the structure's family is ``new``: gap + ``shift`` eV, P(non-metal) recalibrated.

    ``new``: per row, whether its structure's family (of the checkpoint's kind, e.g. the B site) is none of the
    checkpoint's training families (:func:`matmeta.predict.domain.family_unseen`).

    Why: on families the network never saw (held out, out of fold) zero-shot gaps come out low by
    about half an eV and P(non-metal) is over-confident (of the calls with P ≥ 0.8, 56 % are
    non-metals), while on its training families neither holds. The checkpoint's
    ``new_family_gap_shift`` and ``new_family_platt`` (``a``, ``b``: P ← sigmoid(a·logit P + b)) are fitted
    on those families by :func:`matmeta.predict.calibrate.uncertainty_entry`. The call (metal or
    non-metal) does not change: the recalibration is monotone, and the cut on the recalibrated P is the
    checkpoint's cut mapped the same way (:func:`new_family_cut`).
    Each row gets ``gap_shift`` (the eV added: 0 or ``shift``) and ``p_recalibrated``; the interval
    keeps its half-width.
    """
    from matmeta.conformal import platt as recalibrated

    out = []
    for row, is_new in zip(rows, new, strict=True):
        is_new = bool((shift or platt) and is_new)
        applied = float(shift) if is_new and shift else 0.0
        row = {**row, "gap_shift": applied, "p_recalibrated": bool(is_new and platt)}
        if applied:
            gap = row["gap_if_nonmetal"] + applied
            if row["gap_hi"] is not None:
                half = row["gap_hi"] - row["gap_if_nonmetal"]
                row["gap_lo"], row["gap_hi"] = max(gap - half, 0.0), gap + half
            row["gap_if_nonmetal"] = gap
            if row["band_gap"] != 0.0:  # called non-metal (a metal's band gap is exactly 0)
                row["band_gap"] = gap
        if is_new and platt:
            row["p_metal"] = 1.0 - float(recalibrated(1.0 - row["p_metal"], platt["a"], platt["b"]))
        out.append(row)
    return out


def _corrected(predictor: Any, rows: list[dict[str, Any]], new: Sequence[bool]) -> list[dict[str, Any]]:
    """``rows`` with the checkpoint's new-family corrections (zero-shot only: none once adapted).

    Only a checkpoint calibrated with them (the perovskite one) has any; others get their rows back.
    """
    uncertainty = predictor.uncertainty
    adapted = predictor.metadata.get("adapted") or {}
    if not any(uncertainty.get(key) for key in CORRECTIONS):  # a checkpoint without new-family corrections
        return rows
    if predictor.fast is not None or adapted:  # the inner loop without gap labels keeps the offset
        role = adapted.get("role") or LEGACY_ROLES.get(adapted.get("target", ""))
        blind = adapted.get("kept") == "adapted" and role != GAP
        shift = float(uncertainty.get("new_family_gap_shift_adapted", 0.0)) if blind else 0.0
        return new_family_corrections(rows, new, shift)
    shift = float(uncertainty.get("new_family_gap_shift", 0.0))
    return new_family_corrections(rows, new, shift, uncertainty.get("new_family_platt"))
