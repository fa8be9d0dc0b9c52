"""How ``matmeta finetune`` adapts the predictor: five candidates, chosen by leave-one-out error.

For a labelled support set of one family (1–50 structures, one target), the candidates are

* ``adapted``: the engine's inner loop on the support set (the meta-learned steps and rates);
* ``unadapted``: the checkpoint as it is;
* ``recalibrated``: the checkpoint with a fitted linear map of its output (scale + shift of the gap
  head or of the heat per atom) and, for band gaps, a shift of the metal logit so that the support's
  share of non-metals is matched — the systematic offset between the training fidelity (GLLB-SC
  DFT) and experiment is learned here, without bending the network;
* ``kriged``: the recalibration plus a Gaussian process on the support's recalibration residuals in the
  head's feature space (:mod:`matmeta.predict.kriging`): structures like a measured one inherit its
  residual (e.g. a family-specific offset between DFT and experiment), the weights stay untouched;
* ``support_mean``: the support mean (per atom for the energy) for every structure.

Targets are roles here (:data:`matmeta.predict.data.ENERGY` in eV/cell, :data:`~matmeta.predict.data.GAP`);
:meth:`matmeta.predict.predictor.Predictor.finetune` converts the public names and units.

Each is scored by leave-one-out MAE on the support set and the best is kept; its choice and
parameters go into the checkpoint metadata (``adapted``) and
:func:`matmeta.predict.calibration.calibrated_rows` applies them.
The 90% interval of the kept choice is the split-conformal quantile of its leave-one-out residuals
when the support set is large enough (≥ 9 structures), otherwise the validation-family one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from matmeta.predict.calibration import transform
from matmeta.predict.data import ENERGY

CHOICES = ("unadapted", "recalibrated", "kriged", "adapted", "support_mean")  # order = preference on ties
SLOPE_PRIOR = 1.0  # ridge weight pulling the recalibration slope to 1 (relative to the data's own weight)


def fit_linear(prediction: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Scale and shift with ``scale·prediction + shift ≈ values``, the slope shrunk towards 1.

    Minimises ``Σ (a p + b − y)² + λ Σ (p − p̄)² (a − 1)²`` (λ = :data:`SLOPE_PRIOR`): halfway between
    the least-squares slope and 1, so a handful of points cannot produce a wild slope. With one
    point or constant predictions it is a pure shift.

    Shapes:
        prediction, values: (n,) → (scale, shift).
    """
    p, y = np.asarray(prediction, float), np.asarray(values, float)
    var = float(np.var(p))
    scale = (
        1.0
        if var < 1e-12
        else (float(np.mean((p - p.mean()) * (y - y.mean()))) + SLOPE_PRIOR * var) / ((1.0 + SLOPE_PRIOR) * var)
    )
    return float(scale), float(y.mean() - scale * p.mean())


def fit_logit_shift(metal_logits: np.ndarray, is_metal: np.ndarray) -> float:
    """Shift ``c`` of the metal logits so the mean P(metal) equals the support's smoothed metal share.

    The target share is ``(n_metal + 0.5) / (n + 1)`` (never 0 or 1), found by bisection.

    Shapes:
        metal_logits, is_metal: (n,) → scalar.
    """
    logits = np.asarray(metal_logits, float)
    target = (float(np.sum(is_metal)) + 0.5) / (len(logits) + 1.0)
    low, high = -50.0, 50.0
    for _ in range(80):
        mid = (low + high) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) > target:
            high = mid
        else:
            low = mid
    return float((low + high) / 2)


def recalibration(raw: dict[str, np.ndarray], values: np.ndarray, target: str, threshold: float) -> dict[str, float]:
    """Fit the ``recalibrated`` candidate on support outputs ``raw`` (see :func:`raw_outputs`)."""
    if target == ENERGY:
        scale, shift = fit_linear(raw["heat_per_atom"], values / raw["n_atoms"])
        return {"scale": scale, "shift": shift, "metal_logit_shift": 0.0}
    metal = values <= threshold
    nonmetal = ~metal
    scale, shift = (1.0, 0.0) if not nonmetal.any() else fit_linear(raw["gap"][nonmetal], values[nonmetal])
    return {"scale": scale, "shift": shift, "metal_logit_shift": fit_logit_shift(raw["metal_logit"], metal)}


def kriging(raw: dict[str, np.ndarray], values: np.ndarray, target: str, threshold: float) -> dict[str, Any]:
    """Fit the ``kriged`` candidate: the recalibration and a GP on its residuals (non-metals only for gaps)."""
    from matmeta.predict.kriging import fit_gp

    linear = recalibration(raw, values, target, threshold)
    if target == ENERGY:
        used = np.ones(len(values), dtype=bool)
        residuals = values / raw["n_atoms"] - (linear["scale"] * raw["heat_per_atom"] + linear["shift"])
    else:
        used = values > threshold
        residuals = (values - (linear["scale"] * raw["gap"] + linear["shift"]))[used]
    return {**linear, "gp": fit_gp(raw["features"][used], residuals)}


def apply_choice(raw: dict[str, np.ndarray], choice: dict[str, Any] | None, target: str, p_cut: float) -> np.ndarray:
    """Predictions of ``target`` (eV/cell or eV) from raw outputs under a fitted choice.

    ``p_cut`` is the P(non-metal) at or above which a structure is called a non-metal (gap > 0).
    """
    out = transform(raw, choice, target)
    if target == ENERGY:
        return out["heat_per_atom"] * out["n_atoms"]
    p_nonmetal = 1.0 / (1.0 + np.exp(np.clip(out["metal_logit"], -60, 60)))
    return np.where(p_nonmetal >= p_cut, out["gap"], 0.0)


def fit_choice(kind: str, raw: dict[str, np.ndarray], values: np.ndarray, target: str, threshold: float) -> dict:
    """Fit candidate ``kind`` (``unadapted``, ``recalibrated``, ``kriged`` or ``support_mean``) on support outputs."""
    if kind == "kriged":
        return {"kind": kind, **kriging(raw, values, target, threshold)}
    if kind == "recalibrated":
        return {"kind": kind, **recalibration(raw, values, target, threshold)}
    if kind == "support_mean":
        mean = float(np.mean(values / raw["n_atoms"])) if target == ENERGY else float(np.mean(values))
        return {"kind": kind, "mean": mean}
    return {"kind": kind}


def _decoded(predictor: Any, out: torch.Tensor, n_atoms: torch.Tensor) -> dict[str, np.ndarray]:
    """The network's (G, 3) outputs in physical units: heat per atom, metal logit, non-metal gap, atom counts."""
    return {
        "heat_per_atom": (predictor.stats.decode_heat(out[:, 0], n_atoms) / n_atoms).numpy().astype(float),
        "metal_logit": out[:, 1].numpy().astype(float),
        "gap": predictor.stats.decode_gap(out[:, 2]).numpy().astype(float),
        "n_atoms": n_atoms.numpy().astype(float),
    }


def raw_outputs(predictor: Any, batch: Any, fast: dict | None = None) -> dict[str, np.ndarray]:
    """Model outputs in physical units before any choice: heat per atom, metal logit, non-metal gap, head features."""
    from matmeta.predict.kriging import head_features

    with torch.inference_mode(), head_features(predictor.model) as captured:
        out = predictor.maml(*batch.inputs(), params=fast)
    return {
        **_decoded(predictor, out, batch.n_atoms),
        "features": captured["features"].numpy().astype(float),
    }


def take(raw: dict[str, np.ndarray], index: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """The rows ``index`` of raw outputs."""
    return {key: value[np.asarray(index)] for key, value in raw.items()}


def leave_one_out(
    predictor: Any, items: list, values: np.ndarray, target: str, steps: int, loss: Any, robust: Any = None
) -> dict[str, np.ndarray]:
    """Leave-one-out predictions of every candidate (``unadapted`` is not refitted: it has no fit).

    With ``robust`` (:class:`matmeta.predict.robust.RobustSupport`) the adapted candidate adapts with the robust loss.

    Shapes:
        values: (n,) → each candidate: (n,) predictions (NaN where impossible, e.g. n = 1).
    """
    from matmeta.models.gnn import collate

    n = len(items)
    p_cut = predictor.nonmetal_cut
    threshold = predictor.stats.metal_threshold_ev
    raw = raw_outputs(predictor, collate(items))
    out = {kind: np.full(n, np.nan) for kind in CHOICES}
    out["unadapted"] = apply_choice(raw, {"kind": "unadapted"}, target, p_cut)
    if n < 2:
        return out
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        for kind in ("recalibrated", "kriged", "support_mean"):
            fitted = fit_choice(kind, take(raw, rest), values[rest], target, threshold)
            out[kind][i] = apply_choice(take(raw, [i]), fitted, target, p_cut)[0]
    if robust is None and getattr(predictor.maml, "stacker", None) is not None:
        adapted_raw = batched_loo_outputs(predictor, collate(items), loss, steps)
        out["adapted"] = apply_choice(adapted_raw, {"kind": "adapted"}, target, p_cut)
        return out
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        support = collate([items[j] for j in rest]) if robust is None else robust.batch(items, rest)
        fast = predictor.maml.adapt(support, loss if robust is None else robust.loss, steps=steps)
        adapted_raw = raw_outputs(predictor, collate([items[i]]), fast)
        out["adapted"][i] = apply_choice(adapted_raw, {"kind": "adapted"}, target, p_cut)[0]
    return out


def batched_loo_outputs(predictor: Any, batch: Any, loss: Any, steps: int) -> dict[str, np.ndarray]:
    """Raw outputs of structure i after adapting without it, for all i in one vmapped program.

    Copy i of the support carries weight 0 on structure i (:class:`matmeta.predict.batched.PaddedGraphs`),
    so its loss is the mean over the others: exact, since a structure's loss does not depend on
    the rest of the batch. The n adaptations share one ``autograd.grad`` per inner step.
    """
    from matmeta.predict.batched import leave_one_out_copies

    maml, n = predictor.maml, batch.num_graphs
    copies = leave_one_out_copies(batch, maml.stacker.needed)
    fast = maml.adapt_stacked(copies, n, loss, steps=steps)
    with torch.no_grad():
        out = maml.map_tasks(lambda forward, b: forward(*b.inputs(), **b.extra()), fast, copies)
    own = out[torch.arange(n), torch.arange(n)]  # (n, 3): structure i at the weights adapted without it
    return _decoded(predictor, own, batch.n_atoms)


def best_choice(
    loo: dict[str, np.ndarray], values: np.ndarray, scale: np.ndarray | float = 1.0
) -> tuple[str, dict[str, float]]:
    """The candidate with the lowest finite leave-one-out MAE (ties: earlier in :data:`CHOICES`).

    ``scale`` turns errors into the public unit (1 / atoms for a per-atom energy).
    """
    maes = {kind: float(np.mean(np.abs(pred - values) * scale)) for kind, pred in loo.items()}
    finite = {kind: mae for kind, mae in maes.items() if math.isfinite(mae)}
    best = min(finite, key=lambda kind: (round(finite[kind], 12), CHOICES.index(kind)))
    return best, maes


def finetune(
    predictor: Any,
    items: list,
    values: np.ndarray,
    target: str,
    steps: int,
    scale: np.ndarray | float = 1.0,
    robust: Any = None,
) -> tuple[Any, dict, dict[str, np.ndarray]]:
    """Score the candidates, fit the best on the whole support set.

    ``target`` is a role and ``values`` are in its internal unit; ``scale`` turns errors into the public
    unit (1 / atoms for a per-atom energy), in which the candidates are compared. With ``robust``
    (:class:`matmeta.predict.robust.RobustSupport`) the adapted candidate adapts with the robust loss.

    Returns:
        ``(fast, adapted, loo)``: the kept fast weights by name (None: the checkpoint's own), the
        checkpoint's ``adapted`` metadata entry, and every candidate's leave-one-out predictions.
    """
    from matmeta.conformal import conformal_quantile
    from matmeta.models.gnn import collate

    predictor.maml.eval()
    loo = leave_one_out(predictor, items, values, target, steps, predictor.loss, robust)
    if len(items) == 1:
        kept, maes = "adapted", {kind: math.nan for kind in CHOICES}
    else:
        kept, maes = best_choice(loo, values, scale)
    if len(items) == 1:
        maes["unadapted"] = float(np.mean(np.abs(loo["unadapted"] - values) * scale))
    kept_fast: dict[str, torch.Tensor] | None = None
    choice: dict[str, Any] = {"kind": kept}
    if kept == "adapted":
        if robust is None:
            fast = predictor.maml.adapt(collate(items), predictor.loss, steps=steps)
        else:
            fast = predictor.maml.adapt(robust.batch(items, range(len(items))), robust.loss, steps=steps)
        if all(torch.isfinite(v).all() for v in fast.values()):
            kept_fast = {name: value.detach() for name, value in fast.items()}
        else:  # diverged on the full set although leave-one-out did not: keep the unadapted weights
            kept, choice = "unadapted", {"kind": "unadapted"}
    elif kept in ("recalibrated", "kriged", "support_mean"):
        raw = raw_outputs(predictor, collate(items))
        choice = fit_choice(kept, raw, values, target, predictor.stats.metal_threshold_ev)
    residuals = np.abs(loo[kept] - values)
    if target == ENERGY:
        residuals = residuals / np.array([item[0].shape[0] for item in items], dtype=float)
    half = conformal_quantile(residuals, 0.9) if len(items) > 1 else math.inf
    adapted = {
        "target": target,
        "role": target,
        "n_support": len(items),
        "steps": steps,
        "kept": kept,
        "choice": choice,
        "loo_mae": maes,
        "loo_mae_adapted": None if math.isnan(maes["adapted"]) else maes["adapted"],
        "loo_mae_unadapted": maes["unadapted"],
        "loo_half_width": None if not math.isfinite(half) else half,
        "robust": None if robust is None else {"pgd_epsilon": robust.perturbation.size},
    }
    return kept_fast, adapted, loo
