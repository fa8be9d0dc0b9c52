"""Scoring of the Materials Project few-shot benchmark: one method's predictions in public units, and its metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from matmeta.conformal import roc_auc
from matmeta.predict.data import GraphTable


@dataclasses.dataclass
class Predictions:
    """Predictions of one method on some structures, in public units, with what is needed to score them."""

    family: list[str] = dataclasses.field(default_factory=list)
    energy: list[float] = dataclasses.field(default_factory=list)
    energy_true: list[float] = dataclasses.field(default_factory=list)
    gap: list[float] = dataclasses.field(default_factory=list)
    gap_true: list[float] = dataclasses.field(default_factory=list)
    p_metal: list[float] = dataclasses.field(default_factory=list)
    energy_inside: list[float] = dataclasses.field(default_factory=list)
    gap_inside: list[float] = dataclasses.field(default_factory=list)

    def extend(self, **columns: Sequence[Any]) -> None:
        """Append one batch (every column the same length; missing interval columns are NaN)."""
        n = len(columns["energy"])
        for name in ("family", "energy", "energy_true", "gap", "gap_true", "p_metal", "energy_inside", "gap_inside"):
            values = columns.get(name)
            getattr(self, name).extend(list(values) if values is not None else [np.nan] * n)

    def metrics(self, mask: np.ndarray | None = None) -> dict[str, float]:
        """MAE of the energy (eV/atom), of the gap (all, non-metals), metal ROC-AUC, interval coverage."""
        arrays = {name: np.asarray(getattr(self, name), dtype=float) for name in (
            "energy", "energy_true", "gap", "gap_true", "p_metal", "energy_inside", "gap_inside")}  # fmt: skip
        if mask is not None:
            arrays = {name: values[mask] for name, values in arrays.items()}
        nonmetal = arrays["gap_true"] > 0
        gap_error = np.abs(arrays["gap"] - arrays["gap_true"])
        both = nonmetal.any() and (~nonmetal).any() and np.isfinite(arrays["p_metal"]).all()
        return {
            "n": int(len(arrays["energy"])),
            "energy_mae": float(np.mean(np.abs(arrays["energy"] - arrays["energy_true"]))),
            "gap_mae": float(np.mean(gap_error)),
            "gap_mae_nonmetal": float(np.mean(gap_error[nonmetal])) if nonmetal.any() else float("nan"),
            "metal_auc": float(roc_auc(arrays["p_metal"], ~nonmetal)) if both else float("nan"),
            "energy_coverage": _mean_finite(arrays["energy_inside"]),
            "gap_coverage": _mean_finite(arrays["gap_inside"]),
        }


def _mean_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


# ---------------------------------------------------------------------- scoring one method
def rows_predictions(predictor: Any, table: GraphTable, indices: np.ndarray, out: Predictions) -> None:
    """Score ``predict``'s own rows (intervals included) for the structures at ``indices``."""
    energy_name, gap_name = predictor.names.names
    rows = predictor.predict_graphs([table.graphs[int(i)] for i in indices])
    energy_true = table.energy[indices] / table.n_atoms[indices]
    gap_true = table.band_gap[indices]
    e_lo, e_hi = (np.array([r[f"{energy_name}_{s}"] for r in rows], dtype=float) for s in ("lo", "hi"))
    g_lo, g_hi = (np.array([r[f"{gap_name}_{s}"] for r in rows], dtype=float) for s in ("lo", "hi"))
    out.extend(
        family=[table.families[int(i)] for i in indices],
        energy=[r[energy_name] for r in rows],
        energy_true=energy_true,
        gap=[r[gap_name] for r in rows],
        gap_true=gap_true,
        p_metal=[r["p_metal"] for r in rows],
        energy_inside=((e_lo <= energy_true) & (energy_true <= e_hi)).astype(float),
        gap_inside=((g_lo - 1e-9 <= gap_true) & (gap_true <= g_hi + 1e-9)).astype(float),
    )


def network_predictions(
    outputs: torch.Tensor, table: GraphTable, indices: np.ndarray, stats: Any, cut: float, out: Predictions
) -> None:
    """Score raw network outputs (G, 3): energy per atom, the gap called at P(non-metal) ≥ ``cut``."""
    n_atoms = torch.as_tensor(table.n_atoms[indices], dtype=torch.float32)
    energy = (stats.decode_heat(outputs[:, 0], n_atoms) / n_atoms).numpy()
    p_metal = torch.sigmoid(outputs[:, 1]).numpy()
    gap = np.where(1.0 - p_metal >= cut, stats.decode_gap(outputs[:, 2]).numpy(), 0.0)
    out.extend(
        family=[table.families[int(i)] for i in indices],
        energy=energy,
        energy_true=table.energy[indices] / table.n_atoms[indices],
        gap=gap,
        gap_true=table.band_gap[indices],
        p_metal=p_metal,
    )


def mean_predictions(table: GraphTable, support: np.ndarray, query: np.ndarray, out: Predictions) -> None:
    """The support mean of the energy per atom and of the gap, for every query structure."""
    gap_support = table.band_gap[support]
    share_metal = float(np.mean(gap_support <= 0))
    out.extend(
        family=[table.families[int(i)] for i in query],
        energy=np.full(len(query), np.mean(table.energy[support] / table.n_atoms[support])),
        energy_true=table.energy[query] / table.n_atoms[query],
        gap=np.full(len(query), float(np.mean(gap_support))),
        gap_true=table.band_gap[query],
        p_metal=np.full(len(query), share_metal),
    )


def adapted_predictor(predictor: Any, support_batch: Any, k: int) -> Any:
    """The checkpoint adapted on one support set by the engine's inner loop, as ``finetune`` keeps it."""
    from matmeta.predict.data import loss_fn
    from matmeta.predict.predictor import Predictor

    fast = predictor.maml.adapt(support_batch, loss_fn)
    adapted = {"kept": "adapted", "n_support": k, "role": None, "target": None, "choice": {"kind": "adapted"}}
    return Predictor(predictor.maml, {**predictor.metadata, "adapted": adapted}, predictor.path, fast=fast)
