"""Calibration of a trained predictor on its VALIDATION families (never the test families).

:func:`calibrate` returns the checkpoint's ``uncertainty`` entry:

* ``nonmetal_threshold``: the P(non-metal) cut with the best balanced accuracy among cuts whose
  precision is at least 0.3 (zero-shot);
* ``conformal``: split-conformal 90% half-widths (:mod:`matmeta.conformal`) of the heat of
  formation per atom (eV/atom) and of the gap of true non-metals (eV), zero-shot and after
  adaptation on k = 5 / 10 / 20 support structures of a validation family (heat per k; the
  non-metal gap pooled over k, non-metals being ~4% of the queries). The gap has Mondrian
  half-widths by predicted class as well (``band_gap_nonmetal_called`` for structures called
  non-metal at the threshold, ``band_gap_nonmetal_uncalled`` for those called metal: a non-metal
  the classifier missed has a much less reliable gap, so one pooled width over-covers the first
  group and under-covers the second). Calibrated with the training families, the gap also gets
  locally adaptive half-widths ``band_gap_scaled_called`` / ``_uncalled``: quantiles of
  ``|error| / σ(x)``, the interval being ``± q · σ(x)`` with σ from the ``difficulty`` entry
  (:mod:`matmeta.predict.difficulty`: distance to the nearest training structure in the gap head's
  features), and ``held_out_family_coverage`` (``_scaled``): leave-one-validation-family-out coverage
  of the constant and the normalised widths;
* ``zero_shot`` / ``adapted``: scales of the MC-dropout spread (``±σ`` columns), as before.

:func:`matmeta.predict.cross_calibrate.recalibrate_checkpoint` reruns it on an existing checkpoint (same split,
same store).
:func:`calibration_parts` keeps the raw residuals and :func:`uncertainty_entry` takes the quantiles, so
other models' out-of-fold residuals on the training families can join the gap's quantiles
(``matmeta calibrate``, :mod:`matmeta.predict.cross_calibrate`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from matmeta.conformal import balanced_threshold, conformal_quantile, family_held_out_coverage, mondrian_quantiles
from matmeta.meta.maml import MAML
from matmeta.predict.data import GraphTable, TargetStats, family_indices, loss_fn
from matmeta.tasks import families_of_size

Z90 = 1.6448536269514722
LEVEL = 0.9
MIN_PRECISION = 0.3  # a non-metal call should be right at least 3 times in 10 (the operating point)
ADAPT_KS = (5, 10, 20)
CALIBRATION_QUERY = 30  # query structures per adapted calibration episode (fewer where no family has k + 30)


def _residuals(
    maml: MAML, table: GraphTable, stats: TargetStats, idx: np.ndarray, fast: dict | None, samples: int
) -> dict[str, np.ndarray]:
    """Per structure: heat residual per atom, MC σ, gap residual (NaN: metal), σ, P(nm), features, family."""
    from matmeta.predict.kriging import head_features

    batch = table.batch(idx)
    with torch.inference_mode():
        with head_features(maml.model) as captured:
            point = maml(*batch.inputs(), params=fast)
        mc = maml(*batch.inputs(), params=fast, mc_samples=samples) if samples > 1 else point[None]
    n_atoms = batch.n_atoms
    nonmetal = table.band_gap[idx] > stats.metal_threshold_ev
    heat = stats.decode_heat(point[:, 0], n_atoms).numpy()
    gap = stats.decode_gap(point[:, 2]).numpy()
    return {
        "heat": (heat - table.energy[idx]) / n_atoms.numpy(),
        "heat_std": _spread(stats.decode_heat(mc[..., 0], n_atoms)).numpy() / n_atoms.numpy(),
        "gap": np.where(nonmetal, gap - table.band_gap[idx], np.nan),
        "gap_pred": gap,
        "gap_true": np.asarray(table.band_gap[idx], float),
        "gap_std": _spread(stats.decode_gap(mc[..., 2])).numpy(),
        "p_nonmetal": 1.0 - torch.sigmoid(point[:, 1]).numpy(),
        "nonmetal": nonmetal,
        "features": captured["features"].numpy().astype(float),
        "family": np.asarray([table.families[i] for i in idx]),
    }


def _spread(samples: torch.Tensor) -> torch.Tensor:
    """Standard deviation over MC samples (dim 0); NaN with a single sample (no spread to measure)."""
    return samples.std(0) if samples.shape[0] > 1 else torch.full_like(samples[0], float("nan"))


def _mc_scale(errors: np.ndarray, stds: np.ndarray) -> float:
    """Factor s such that |error| ≤ Z90 · s · σ for 90% of the points (the MC-dropout ``±σ``)."""
    ok = np.isfinite(errors) & np.isfinite(stds) & (stds > 0)
    if ok.sum() < 5:
        return 1.0
    return float(np.quantile(np.abs(errors[ok]) / stds[ok], LEVEL) / Z90)


def _summary(parts: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Conformal half-widths of ``parts`` (each with its ``called`` flags: P(non-metal) ≥ its model's cut)."""
    common = [key for key in parts[0] if key != "features" and all(key in p for p in parts)]  # older saved parts
    joined = {key: np.concatenate([p[key] for p in parts]) for key in common}
    called = joined["called"]
    by_call = mondrian_quantiles(np.abs(joined["gap"]), called, LEVEL)
    out = {
        "heat_ref_per_atom": conformal_quantile(np.abs(joined["heat"]), LEVEL),
        "band_gap_nonmetal": by_call["pooled"],
        "band_gap_nonmetal_called": by_call["true"],
        "band_gap_nonmetal_uncalled": by_call["false"],
        "n_heat": int(np.isfinite(joined["heat"]).sum()),
        "n_gap": int(np.isfinite(joined["gap"]).sum()),
        "mc_heat_ref": _mc_scale(joined["heat"], joined["heat_std"]),
        "mc_band_gap": _mc_scale(joined["gap"], joined["gap_std"]),
    }
    if "gap_true" in joined:  # the reported gap (0 when called metal) against the truth, every structure
        known = np.isfinite(joined["gap_true"])
        reported = np.abs(np.where(called, joined["gap_pred"], 0.0) - joined["gap_true"])[known]
        by_reported = mondrian_quantiles(reported, called[known], LEVEL)
        out["band_gap_reported_called"] = by_reported["true"]
        out["band_gap_reported_uncalled"] = by_reported["false"]
    if "sigma" in joined:  # normalised scores |error| / σ(x): the half-width is q · σ(x)
        plain, scaled, family = np.abs(joined["gap"]), np.abs(joined["gap"]) / joined["sigma"], joined["family"]
        by_scaled = mondrian_quantiles(scaled, called, LEVEL)
        out.update({
            "band_gap_scaled": by_scaled["pooled"], "band_gap_scaled_called": by_scaled["true"],
            "band_gap_scaled_uncalled": by_scaled["false"],
            "held_out_family_coverage": family_held_out_coverage(plain, called, family)["all"],
            "held_out_family_coverage_scaled": family_held_out_coverage(scaled, called, family)["all"],
            "heat_ref_per_atom_scaled": conformal_quantile(np.abs(joined["heat"]) / joined["sigma"], LEVEL),
        })  # fmt: skip
        if "gap_true" in joined:
            scaled_reported = reported / joined["sigma"][known]
            by_scaled_reported = mondrian_quantiles(scaled_reported, called[known], LEVEL)
            out.update({
                "band_gap_reported_scaled_called": by_scaled_reported["true"],
                "band_gap_reported_scaled_uncalled": by_scaled_reported["false"],
            })  # fmt: skip
    return out


GAP_KEYS = (
    "band_gap_nonmetal", "band_gap_nonmetal_called", "band_gap_nonmetal_uncalled", "n_gap",
    "band_gap_scaled", "band_gap_scaled_called", "band_gap_scaled_uncalled",
    "held_out_family_coverage", "held_out_family_coverage_scaled",
)  # fmt: skip


@dataclasses.dataclass
class CalibrationParts:
    """Raw residuals of one model on its calibration families (before any quantile is taken).

    Attributes:
        zero: per structure (:func:`_residuals`, plus ``called`` and, with training families, ``sigma``).
        adapted: per support size k (as a string), one such dict per adaptation episode.
        cut: the model's P(non-metal) threshold (balanced accuracy at precision ≥ ``MIN_PRECISION``).
        difficulty: the model's σ(x) entry (:mod:`matmeta.predict.difficulty`), or None.
    """

    zero: dict[str, np.ndarray]
    adapted: dict[str, list[dict[str, np.ndarray]]]
    cut: float
    difficulty: dict[str, Any] | None


def calibration_parts(
    maml: MAML,
    table: GraphTable,
    stats: TargetStats,
    families: Sequence[str],
    mc_samples: int = 32,
    episodes_per_k: int = 30,
    seed: int = 0,
    train_families: Sequence[str] | None = None,
    reference_families: Sequence[str] | None = None,
) -> CalibrationParts:
    """Zero-shot and adapted residuals of ``maml`` on ``families`` (see the module doc).

    The non-metal cut and σ's scale come from ``reference_families`` (default: ``families``): a
    cross-family fold (:mod:`matmeta.predict.cross_calibrate`) takes them from the validation
    families, as the shipped model does, and its residuals from its held-out training families.
    """
    from matmeta.predict.difficulty import difficulty_entry, sigma
    from matmeta.tasks import EpisodeSampler

    maml.eval()
    torch.manual_seed(seed)
    zero = _residuals(maml, table, stats, family_indices(table, families), None, mc_samples)
    reference = zero
    if reference_families is not None:
        reference = _residuals(maml, table, stats, family_indices(table, reference_families), None, 1)
    cut = balanced_threshold(reference["p_nonmetal"], reference["nonmetal"], MIN_PRECISION)
    generator = torch.Generator().manual_seed(seed)
    by_k: dict[str, list[dict[str, np.ndarray]]] = {}
    for k in ADAPT_KS:
        largest = max(Counter(f for f in table.families if f in set(families)).values(), default=0)
        query = min(CALIBRATION_QUERY, largest - k)  # small calibration families: shorter queries
        usable = families_of_size(table.families, families, k + query) if query >= 1 else []
        if not usable:
            continue
        sampler = EpisodeSampler(table.families, usable, k, query, seed + k)
        by_k[str(k)] = []
        for _ in range(episodes_per_k):
            episode = sampler.sample(generator)
            fast = maml.adapt(table.batch(episode.support), loss_fn)
            by_k[str(k)].append(_residuals(maml, table, stats, np.asarray(episode.query), fast, mc_samples))
    everything = [zero, *(part for parts in by_k.values() for part in parts)]
    difficulty = None
    if train_families:
        train_features = _training_features(maml, table, train_families)
        difficulty = difficulty_entry(train_features, reference["features"][reference["nonmetal"]])
        for part in everything:
            part["sigma"] = sigma(difficulty, part["features"])
        difficulty["domain_limit"] = float(np.max(zero["sigma"]) - difficulty["offset"])  # farthest calibrated
    for part in everything:
        part["called"] = part["p_nonmetal"] >= cut
    return CalibrationParts(zero, by_k, cut, difficulty)


MAX_REFERENCE = 8192  # training structures whose features define σ(x) (a seeded sample of larger sets)


def _training_features(maml: MAML, table: GraphTable, families: Sequence[str], chunk: int = 512) -> np.ndarray:
    """Gap-head features (base network) of the structures of the training ``families``; shape (n, H).

    At most :data:`MAX_REFERENCE` of them (a seeded sample): they are stored in the checkpoint, and the
    distance to the nearest of 8,192 is as informative as to the nearest of 28,000 at a third of the size.
    """
    from matmeta.predict.kriging import head_features

    idx = family_indices(table, families)
    if len(idx) > MAX_REFERENCE:
        idx = np.sort(np.random.default_rng(0).choice(idx, MAX_REFERENCE, replace=False))
    blocks = []
    with torch.inference_mode():
        for begin in range(0, len(idx), chunk):
            batch = table.batch(idx[begin : begin + chunk])
            with head_features(maml.model) as captured:
                maml(*batch.inputs())
            blocks.append(captured["features"].numpy().astype(float))
    return np.concatenate(blocks)


def calibrate(
    maml: MAML,
    table: GraphTable,
    stats: TargetStats,
    families: Sequence[str],
    mc_samples: int = 32,
    episodes_per_k: int = 30,
    seed: int = 0,
    train_families: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``uncertainty`` metadata of a predictor, from the validation ``families`` (see the module doc).

    With ``train_families`` the gap also gets normalised half-widths (``band_gap_scaled*``) and the
    ``difficulty`` entry that defines σ(x) (:mod:`matmeta.predict.difficulty`).
    """
    parts = calibration_parts(maml, table, stats, families, mc_samples, episodes_per_k, seed, train_families)
    return uncertainty_entry(parts, mc_samples, families)


def _adapted_list(parts: CalibrationParts) -> list[dict[str, np.ndarray]]:
    return [part for episodes in parts.adapted.values() for part in episodes]


def uncertainty_entry(
    parts: CalibrationParts,
    mc_samples: int,
    families: Sequence[str],
    extra_gap_parts: Sequence[CalibrationParts] = (),
    new_family_shift: bool = False,
    new_family_platt: bool = False,
    new_family_shift_adapted: bool = False,
) -> dict[str, Any]:
    """The checkpoint's ``uncertainty`` entry from the shipped model's ``parts``.

    ``extra_gap_parts`` (other models' residuals on other families: cross-family calibration) join
    ``parts`` in the gap's quantiles, and their zero-shot predictions in the choice of the non-metal
    cut (:func:`pooled_cut`); the heat widths stay those of ``parts`` alone. With ``new_family_shift``
    they also fix the zero-shot gap offset of new families (:func:`gap_shift`), which then enters the
    zero-shot gap residuals and is stored as ``new_family_gap_shift``. With ``new_family_platt`` the
    zero-shot P(non-metal) of those families is recalibrated (:func:`matmeta.conformal.fit_platt`) and
    stored as ``new_family_platt`` (``a``, ``b``). With ``new_family_shift_adapted`` (and
    ``new_family_shift``) the adapted gaps get their own offset, fitted the same way on the adapted
    residuals and stored as ``new_family_gap_shift_adapted``.
    """
    cut, shift, adapted_shift = parts.cut, None, 0.0
    if extra_gap_parts:
        cut = pooled_cut([parts, *extra_gap_parts])
        parts, extra_gap_parts = with_cut(parts, cut), [with_cut(extra, cut) for extra in extra_gap_parts]
        if new_family_shift:
            shift = gap_shift([parts, *extra_gap_parts])
            if new_family_shift_adapted:
                adapted_shift = gap_shift([parts, *extra_gap_parts], adapted=True)
            parts = with_gap_shift(parts, shift, adapted_shift)
            extra_gap_parts = [with_gap_shift(e, shift, adapted_shift) for e in extra_gap_parts]
    zero_summary = _summary([parts.zero])
    adapted = {k: _summary(episodes) for k, episodes in parts.adapted.items()}
    pooled = _summary(_adapted_list(parts))  # non-metals are rare (~4%): one gap quantile over all k
    if extra_gap_parts:
        zero_summary.update(_gap_only(_summary([parts.zero, *(extra.zero for extra in extra_gap_parts)])))
        others = [part for extra in extra_gap_parts for part in _adapted_list(extra)]
        pooled.update(_gap_only(_summary(_adapted_list(parts) + others)))
    for entry in adapted.values():
        entry.update(_gap_only(pooled))
    ref = adapted.get("10") or next(iter(adapted.values()))
    out = {
        "method": "split_conformal+mc_dropout",
        "mc_samples": mc_samples,
        "interval": LEVEL,
        "nonmetal_threshold": cut,
        "conformal": {"level": LEVEL, "zero_shot": zero_summary, "adapted": adapted},
        "zero_shot": {"heat_ref": zero_summary["mc_heat_ref"], "band_gap": zero_summary["mc_band_gap"]},
        "adapted": {"heat_ref": ref["mc_heat_ref"], "band_gap": ref["mc_band_gap"]},
        "calibration_k": 10,
        "calibrated_on": sorted(families),
    }
    if parts.difficulty is not None:
        out["difficulty"] = parts.difficulty
    if shift is not None:
        out["new_family_gap_shift"] = shift
    if adapted_shift:
        out["new_family_gap_shift_adapted"] = adapted_shift
    if new_family_platt and extra_gap_parts:
        from matmeta.conformal import fit_platt

        a, b = fit_platt(*_zero_shot_calls([parts, *extra_gap_parts]))
        out["new_family_platt"] = {"a": a, "b": b}
    return out


def _zero_shot_calls(all_parts: Sequence[CalibrationParts]) -> tuple[np.ndarray, np.ndarray]:
    """P(non-metal) and the true class of every zero-shot prediction of ``all_parts``, pooled."""
    p = np.concatenate([np.asarray(each.zero["p_nonmetal"], float) for each in all_parts])
    nonmetal = np.concatenate([np.asarray(each.zero["nonmetal"], bool) for each in all_parts])
    return p, nonmetal


def pooled_cut(all_parts: Sequence[CalibrationParts]) -> float:
    """The non-metal cut chosen on the zero-shot predictions of every family of ``all_parts`` together.

    Same rule as for one model (balanced accuracy at precision ≥ ``MIN_PRECISION``), on the shipped
    model's validation families and the fold models' held-out training families (for the shipped
    recipe 37 families and 193 non-metals instead of 7 and 52).
    """
    return balanced_threshold(*_zero_shot_calls(all_parts), MIN_PRECISION)


def gap_shift(all_parts: Sequence[CalibrationParts], adapted: bool = False) -> float:
    """The offset (eV) for non-metal gaps of new families: median of −residual over ``all_parts``.

    Zero-shot residuals, or with ``adapted`` those after adaptation (all k). The families here are new
    to the model that predicted them (validation families; held-out folds).
    """
    chosen = [part for each in all_parts for part in (_adapted_list(each) if adapted else [each.zero])]
    residuals = np.concatenate([np.asarray(part["gap"], float) for part in chosen])
    residuals = residuals[np.isfinite(residuals)]
    return float(-np.median(residuals)) if residuals.size else 0.0


def with_gap_shift(parts: CalibrationParts, shift: float, adapted_shift: float = 0.0) -> CalibrationParts:
    """A copy of ``parts`` whose zero-shot gap predictions are ``shift`` eV higher, adapted ones ``adapted_shift``."""

    def moved(part: dict[str, np.ndarray], by: float) -> dict[str, np.ndarray]:
        return {**part, "gap": np.asarray(part["gap"], float) + by}

    adapted = {k: [moved(part, adapted_shift) for part in episodes] for k, episodes in parts.adapted.items()}
    return dataclasses.replace(parts, zero=moved(parts.zero, shift), adapted=adapted)


def with_cut(parts: CalibrationParts, cut: float) -> CalibrationParts:
    """A copy of ``parts`` whose structures are called non-metal at ``cut`` (the inputs are not changed)."""

    def recut(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**part, "called": np.asarray(part["p_nonmetal"]) >= cut}

    adapted = {k: [recut(part) for part in episodes] for k, episodes in parts.adapted.items()}
    return dataclasses.replace(parts, zero=recut(parts.zero), adapted=adapted, cut=cut)


def _gap_only(summary: dict[str, float]) -> dict[str, float]:
    return {key: summary[key] for key in GAP_KEYS if key in summary}
