"""``matmeta finetune --target band_gap``: adapt the measured-level gap to a lab's measurements.

The candidates, each scored by leave-one-out MAE of the reported gap (0 when called metal) on the support
set, the best kept (ties: earlier in :data:`CHOICES`):

* ``unadapted``: the meta-learned head as it is;
* ``recalibrated``: its gap mapped by a linear fit on the support's non-metals (slope shrunk towards 1)
  and its metal logit shifted to the support's share of metals;
* ``adapted``: the engine's inner loop on the head (the meta-learned steps and rates) — the PBE network
  is not touched, so this is quick and exact leave-one-out is cheap;
* ``support_mean``: the support's mean gap for every structure.

A measured 0 is a metal. The kept choice goes into the checkpoint's ``adapted`` entry (``role`` =
``measured_gap``) and :func:`matmeta.predict.calibration.calibrated_rows` applies it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from matmeta.predict.calibration import measured_choice as apply  # noqa: F401 - the kept choice, one definition
from matmeta.predict.data import MEASURED
from matmeta.predict.measured import loss_fn, measured_outputs, reported_gap

CHOICES = ("unadapted", "recalibrated", "adapted", "support_mean")
ROLE = MEASURED  # "measured_gap"


def support_inputs(predictor: Any, structures: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's inputs of the support structures (one pass of the PBE network)."""
    from matmeta.models.gnn import collate
    from matmeta.predict.kriging import head_features
    from matmeta.predict.measured import fidelity_inputs, graph_composition

    graphs, _ = predictor.graphs(structures)
    batch = collate([(*g, torch.full((3,), float("nan"))) for g in graphs])
    with torch.inference_mode(), head_features(predictor.model) as captured:
        point = predictor.forward(*batch.inputs())
    return fidelity_inputs(point, captured["features"], graph_composition(batch.atomic_numbers, batch.n_atoms),
                           predictor.stats)  # fmt: skip


def fit(kind: str, out: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """Fit candidate ``kind`` on the support's head outputs ``out`` and measured ``values``."""
    from matmeta.predict.adaptation import fit_linear, fit_logit_shift

    if kind == "recalibrated":
        nonmetal = values > 0
        scale, shift = fit_linear(out[nonmetal, 1], values[nonmetal]) if nonmetal.any() else (1.0, 0.0)
        logit = np.log(np.clip(out[:, 0], 1e-12, 1 - 1e-12) / np.clip(1 - out[:, 0], 1e-12, 1))
        return {"kind": kind, "scale": scale, "shift": shift, "metal_logit_shift": fit_logit_shift(logit, ~nonmetal)}
    if kind == "support_mean":
        return {"kind": kind, "mean": float(np.mean(values))}
    return {"kind": kind}


def finetune_measured(predictor: Any, structures: list[Any], values: np.ndarray, steps: int | None) -> tuple[Any, Any]:
    """``Predictor.finetune`` of the measured-level gap: score the candidates by leave-one-out, fit the best.

    Returns:
        The adapted predictor (the head's fast weights and the ``adapted`` entry; the PBE network untouched)
        and its :class:`~matmeta.predict.report.FinetuneReport`.
    """
    from matmeta.predict.report import FinetuneReport

    steps = predictor.measured.inner_steps if steps is None else int(steps)
    inputs = support_inputs(predictor, structures)
    fast, adapted, loo = choose(predictor.measured, predictor.measured_cut, inputs, values, steps)
    report = FinetuneReport(
        "band_gap", "eV", len(values), steps, adapted["loo_mae"], adapted["kept"],
        [float(v) for v in loo["adapted"]], {kind: [float(v) for v in p] for kind, p in loo.items()},
    )  # fmt: skip
    adapted["base_checkpoint"] = str(predictor.path.name if predictor.path else None)
    metadata = {**predictor.metadata, "adapted": adapted}
    # type(predictor) is Predictor: importing it here would close an import cycle (predictor imports this module)
    adapted_predictor = type(predictor)(predictor.maml, metadata, None, measured=predictor.measured, measured_fast=fast)
    return adapted_predictor, report


def choose(
    head: Any, cut: float, inputs: tuple[torch.Tensor, ...], values: np.ndarray, steps: int | None
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any], dict[str, np.ndarray]]:
    """:func:`finetune_measured` on the head's inputs of the support (the benchmark calls this directly)."""
    from matmeta.conformal import conformal_quantile

    values = np.asarray(values, dtype=float)
    n = len(values)
    base = measured_outputs(head, inputs)
    loo = {kind: np.full(n, np.nan) for kind in CHOICES}
    loo["unadapted"] = reported_gap(base[:, 0], base[:, 1], cut)
    target = torch.as_tensor(values, dtype=torch.float32)
    for i in range(n if n > 1 else 0):
        rest = np.array([j for j in range(n) if j != i])
        for kind in ("recalibrated", "support_mean"):
            one = apply(base[i : i + 1], fit(kind, base[rest], values[rest]))
            loo[kind][i] = reported_gap(one[:, 0], one[:, 1], cut)[0]
        batch = (*(t[rest] for t in inputs), target[rest], torch.ones(len(rest)))
        fast = head.adapt(batch, loss_fn, steps=steps)
        one = measured_outputs(head, tuple(t[i : i + 1] for t in inputs), fast)
        loo["adapted"][i] = reported_gap(one[:, 0], one[:, 1], cut)[0]
    maes = {kind: float(np.mean(np.abs(p - values))) for kind, p in loo.items()}
    finite = {k: v for k, v in maes.items() if math.isfinite(v)}
    kept = "adapted" if n == 1 else min(finite, key=lambda k: (round(finite[k], 12), CHOICES.index(k)))
    fast, choice = None, {"kind": kept}
    if kept == "adapted":
        fast = head.adapt((*inputs, target, torch.ones(n)), loss_fn, steps=steps)
    elif kept in ("recalibrated", "support_mean"):
        choice = fit(kept, base, values)
    half = conformal_quantile(np.abs(loo[kept] - values), 0.9) if n > 1 else math.inf
    entry = {
        "target": "band_gap", "role": ROLE, "n_support": n, "steps": steps, "kept": kept, "choice": choice,
        "loo_mae": maes, "loo_mae_adapted": None if math.isnan(maes["adapted"]) else maes["adapted"],
        "loo_mae_unadapted": maes["unadapted"], "loo_half_width": None if not math.isfinite(half) else half,
    }  # fmt: skip
    return fast, entry, loo
