"""Band-gap and interval rows of the few-shot benchmark (issue 12), kept apart from :mod:`matmeta.bench.fewshot`.

For every method and support size: ROC-AUC of P(non-metal) against the DFT label, non-metal
recall / precision / balanced accuracy at the checkpoint's shipped threshold, MAE of the final
band gap (0 when called metal) on true non-metals and on all query structures. Split-conformal
90% interval coverage on the test families (zero-shot and MAML-adapted, heat_ref and non-metal
gaps), and leave-one-out MAE of every ``finetune`` candidate on ``data/lab_perovskites.csv``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.conformal import classification_metrics, roc_auc


@dataclasses.dataclass
class GapRecord:
    """Per-query band-gap predictions of one method at one k."""

    p_nonmetal: list[np.ndarray] = dataclasses.field(default_factory=list)
    final_gap: list[np.ndarray] = dataclasses.field(default_factory=list)
    truth: list[np.ndarray] = dataclasses.field(default_factory=list)

    def metrics(self, cut: float, metal_threshold_ev: float) -> dict[str, float]:
        """ROC-AUC, recall, precision, balanced accuracy at ``cut``; MAE on non-metals and on all."""
        p, final, truth = (np.concatenate(v) for v in (self.p_nonmetal, self.final_gap, self.truth))
        nonmetal = truth > metal_threshold_ev
        out = {"roc_auc": roc_auc(p, nonmetal) if np.ptp(p) > 0 else 0.5}
        out.update(classification_metrics(p, nonmetal, cut))
        out["mae_nonmetal"] = float(np.mean(np.abs(final - truth)[nonmetal])) if nonmetal.any() else math.nan
        out["mae_all"] = float(np.mean(np.abs(final - truth)))
        out["nonmetals"] = int(nonmetal.sum())
        return out


class GapBench:
    """Collects band-gap predictions and interval hits during the benchmark's episode loop.

    Args:
        predictor: the evaluated checkpoint (threshold, statistics, conformal half-widths).
    """

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.stats = predictor.stats
        self.cut = predictor.nonmetal_cut
        self.new_family_shift = float(predictor.uncertainty.get("new_family_gap_shift", 0.0))  # test families: new
        self.adapted_shift = float(predictor.uncertainty.get("new_family_gap_shift_adapted", 0.0))
        self.conformal = predictor.uncertainty.get("conformal")
        self.records: dict[tuple[str, int], GapRecord] = {}
        self.hits: dict[str, list[np.ndarray]] = {}
        self.widths: dict[str, list[np.ndarray]] = {}
        self.gap_families: dict[str, list[np.ndarray]] = {}  # family of every recorded non-metal gap hit

    def gap_offset(self, mode: str | None) -> float:
        """The new-family gap offset (eV) ``predict`` adds to ``mode`` outputs: ``zero_shot``, ``adapted`` or None."""
        return {"zero_shot": self.new_family_shift, "adapted": self.adapted_shift}.get(mode or "", 0.0)

    def add_outputs(
        self, method: str, k: int, outputs: torch.Tensor, truth: np.ndarray, mode: str | None = None
    ) -> None:
        """Record model outputs (G, 3) (normalised) for query gaps ``truth`` (eV).

        ``mode``: ``zero_shot`` / ``adapted`` for outputs that get the checkpoint's new-family gap
        offsets (:meth:`gap_offset`); None for baselines.
        """
        p_nonmetal = 1.0 - torch.sigmoid(outputs[:, 1]).numpy()
        gap = self.stats.decode_gap(outputs[:, 2]).numpy() + self.gap_offset(mode)
        self.add_arrays(method, k, p_nonmetal, np.where(p_nonmetal >= self.cut, gap, 0.0), truth)

    def probability_rows(self, method: str = "MAML (no adaptation)") -> list[tuple[str, float, float, int]]:
        """Brier score and calibration error of ``method``'s P(non-metal), all k pooled: raw and recalibrated.

        Every test family's B site is new to the network, so ``predict`` would show the checkpoint's
        ``new_family_platt`` probability for all of these zero-shot calls (the calls are the same).
        """
        from matmeta.conformal import brier_score, expected_calibration_error, platt

        records = [record for (name, _), record in self.records.items() if name == method]
        if not records:
            return []
        p = np.concatenate([x for r in records for x in r.p_nonmetal])
        nonmetal = np.concatenate([x for r in records for x in r.truth]) > self.stats.metal_threshold_ev
        rows = [("raw P", brier_score(p, nonmetal), expected_calibration_error(p, nonmetal), int(p.size))]
        coefficients = self.predictor.uncertainty.get("new_family_platt")
        if coefficients:
            q = platt(p, coefficients["a"], coefficients["b"])
            rows.append(("new-family recalibrated P", brier_score(q, nonmetal), expected_calibration_error(q, nonmetal),
                         int(q.size)))  # fmt: skip
        return rows

    def add_arrays(self, method: str, k: int, p_nonmetal: np.ndarray, final: np.ndarray, truth: np.ndarray) -> None:
        """Record P(non-metal) and final band gaps (eV) directly."""
        record = self.records.setdefault((method, k), GapRecord())
        record.p_nonmetal.append(np.asarray(p_nonmetal, float))
        record.final_gap.append(np.asarray(final, float))
        record.truth.append(np.asarray(truth, float))

    def add_baselines(self, k: int, support: np.ndarray, query: np.ndarray, table: Any) -> np.ndarray:
        """Linear recalibration and support mean for both targets; returns the recalibrated heat (eV/cell)."""
        from matmeta.predict.adaptation import fit_choice, raw_outputs, transform
        from matmeta.predict.data import ENERGY

        truth = table.band_gap[query]
        raw_s = raw_outputs(self.predictor, table.batch(support))
        raw_q = raw_outputs(self.predictor, table.batch(query))
        threshold = self.stats.metal_threshold_ev
        heat_fit = fit_choice("recalibrated", raw_s, table.energy[support], ENERGY, threshold)
        gap_s = table.band_gap[support]
        gap_q = transform(raw_q, fit_choice("recalibrated", raw_s, gap_s, "band_gap", threshold), "band_gap")
        p_nonmetal = 1.0 / (1.0 + np.exp(np.clip(gap_q["metal_logit"], -60, 60)))
        self.add_arrays("recalibrated", k, p_nonmetal, np.where(p_nonmetal >= self.cut, gap_q["gap"], 0.0), truth)
        mean = np.full(len(query), float(np.mean(gap_s)))
        self.add_arrays("mean", k, np.full(len(query), float(np.mean(gap_s > threshold))), mean, truth)
        return transform(raw_q, heat_fit, ENERGY)["heat_per_atom"] * raw_q["n_atoms"]

    def add_intervals(
        self, mode: str, k: int, outputs: torch.Tensor, table: Any, query: np.ndarray, features: np.ndarray
    ) -> None:
        """Interval hits of the split-conformal 90% intervals (``mode``: ``zero_shot`` or ``adapted``).

        The gap intervals are the ones ``predict`` states (:func:`matmeta.predict.intervals.gap_half_widths`,
        locally adaptive when the checkpoint has a ``difficulty`` entry); ``features`` are the gap-head
        features (G, H) of the network that made ``outputs``. Their mean half-width is recorded too.
        """
        from matmeta.predict.intervals import gap_half_widths

        if not self.conformal:
            return
        half = self.conformal["zero_shot"] if mode == "zero_shot" else self.conformal["adapted"][str(k)]
        n_atoms = torch.as_tensor(table.n_atoms[query], dtype=torch.float32)
        heat = self.stats.decode_heat(outputs[:, 0], n_atoms).numpy()
        inside = np.abs(heat - table.energy[query]) <= half["heat_ref_per_atom"] * n_atoms.numpy()
        self.hits.setdefault(f"heat_ref, {mode}", []).append(inside)
        nonmetal = table.band_gap[query] > self.stats.metal_threshold_ev
        gap = self.stats.decode_gap(outputs[:, 2]).numpy() + self.gap_offset(mode)
        called = 1.0 - torch.sigmoid(outputs[:, 1]).numpy() >= self.cut
        adapted = {"kept": "adapted", "n_support": k} if mode == "adapted" else {}
        width = gap_half_widths(self.predictor.uncertainty, adapted, ~called, features)
        hit = np.abs(gap - table.band_gap[query]) <= width
        self.hits.setdefault(f"band gap of non-metals, {mode}", []).append(hit[nonmetal])
        self.widths.setdefault(f"band gap of non-metals, {mode}", []).append(width[nonmetal])
        families = np.asarray([table.families[int(i)] for i in query])
        self.gap_families.setdefault(mode, []).append(families[nonmetal])

    def gap_rows(self, methods: list[str], ks: list[int]) -> list[tuple]:
        """One row per (method, k) with the band-gap metrics."""
        rows = []
        for method in methods:
            for k in ks:
                if (method, k) not in self.records:
                    continue
                m = self.records[(method, k)].metrics(self.cut, self.stats.metal_threshold_ev)
                rows.append((method, k, m["roc_auc"], m["recall"], m["precision"], m["balanced_accuracy"],
                             m["mae_nonmetal"], m["mae_all"]))  # fmt: skip
        return rows

    def coverage_rows(self) -> list[tuple]:
        """One row per interval kind: coverage, number of points and mean half-width of the gap intervals (eV)."""
        rows = []
        for name, v in self.hits.items():
            width = float(np.mean(np.concatenate(self.widths[name]))) if name in self.widths else math.nan
            rows.append((name, float(np.mean(np.concatenate(v))), int(sum(len(x) for x in v)), width))
        return rows


def family_coverage_rows(gaps: GapBench) -> list[tuple]:
    """Non-metal gap coverage per test family: (family, zero-shot coverage, points, adapted coverage, points).

    Split-conformal coverage is marginal over families; this shows whether one family carries the miss.
    """
    by_mode = {}
    for mode in ("zero_shot", "adapted"):
        hits = gaps.hits.get(f"band gap of non-metals, {mode}", [])
        if hits:
            by_mode[mode] = (np.concatenate(gaps.gap_families[mode]), np.concatenate(hits))
    if len(by_mode) < 2:
        return []
    rows = []
    for family in sorted(set(by_mode["zero_shot"][0]) | set(by_mode["adapted"][0])):
        row: list[Any] = [family]
        for mode in ("zero_shot", "adapted"):
            families, hits = by_mode[mode]
            chosen = hits[families == family]
            row += [float(np.mean(chosen)) if chosen.size else math.nan, int(chosen.size)]
        rows.append(tuple(row))
    return rows


def lab_rows(predictor: Any, csv_path: Path = Path("data/lab_perovskites.csv")) -> list[tuple[str, float, str]]:
    """Leave-one-out MAE (eV) of every finetune candidate on the lab-measured oxide gaps."""
    from matmeta.predict.support import read_support

    if not csv_path.exists():
        return []
    _, structures, values, _ = read_support(csv_path, "band_gap", None, "path", "cif")
    _, report = predictor.finetune(structures, values, "band_gap")
    return [(kind, mae, "kept" if kind == report.kept else "") for kind, mae in report.loo_mae.items()]
