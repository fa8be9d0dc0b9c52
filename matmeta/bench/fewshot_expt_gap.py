"""Few-shot benchmark of the measured-level gap (``matmeta bench recipes/fewshot_expt_gap.toml``).

Leave-family-out on the measured-gap test families of the checkpoint's ``measured_gap`` split (families
never used for any choice), at k = 5 / 10 / 20 (a family too small for k + 5 query structures is left out of
that k), on the same episodes for every method:

* zero-shot: the meta-learned measured-level head, unadapted;
* adapted: the head after the engine's inner loop on the support (the meta-learned steps and rates);
* finetune: what ``matmeta finetune --target band_gap`` keeps — the best of unadapted / recalibrated /
  adapted / support mean by leave-one-out on the support;
* fine-tune (Adam): the head after pooled fitting, before meta-learning, fine-tuned with Adam for the same
  number of steps (learning rate chosen on the validation families): transfer learning without MAML;
* PBE: the network's own PBE-level gap (what a PBE-trained model predicts for a measurement);
* PBE + linear: the PBE-level gap with a linear map fitted on the support's measured non-metals and its
  metal logit shifted to the support's share of metals;
* support mean;
* composition peer: gradient-boosted trees on element statistics (:mod:`matmeta.bench.composition_peer`)
  trained on every measured formula outside the test families, with or without a structure.

Reported per method and k, overall and per family: the non-metal MAE (true non-metals), the MAE over all
structures (a called metal predicts 0) and the metal ROC-AUC; coverage of the stated 90 % intervals for the
zero-shot and adapted head.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.bench.fewshot_expt_gap_report import METHODS
from matmeta.conformal import roc_auc


@dataclasses.dataclass(frozen=True)
class ExptGapBenchConfig:
    """The ``[bench]`` section of ``recipes/fewshot_expt_gap.toml``."""

    name: str = "fewshot_expt_gap"
    checkpoint: Path | None = None
    ks: tuple[int, ...] = (5, 10, 20)
    episodes_per_family: int = 20
    max_query: int = 30
    min_query: int = 5
    finetune_lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03)
    seed: int = 0
    out_dir: Path = Path("out/bench/fewshot_expt_gap")


@dataclasses.dataclass
class Scored:
    """Predictions of one method at one k: family, P(metal), reported gap, truth, inside the 90 % interval."""

    family: list[str] = dataclasses.field(default_factory=list)
    p_metal: list[np.ndarray] = dataclasses.field(default_factory=list)
    gap: list[np.ndarray] = dataclasses.field(default_factory=list)
    truth: list[np.ndarray] = dataclasses.field(default_factory=list)
    inside: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, family: str, p_metal: np.ndarray, gap: np.ndarray, truth: np.ndarray, inside: Any = None) -> None:
        """One episode's query predictions."""
        self.family.extend([family] * len(truth))
        self.p_metal.append(np.asarray(p_metal, float))
        self.gap.append(np.asarray(gap, float))
        self.truth.append(np.asarray(truth, float))
        self.inside.append(np.full(len(truth), np.nan) if inside is None else np.asarray(inside, float))

    def metrics(self, family: str | None = None) -> dict[str, float]:
        """Non-metal MAE, MAE over all, metal ROC-AUC, interval coverage (of one family, or all)."""
        p, g, t, inside = (np.concatenate(x) for x in (self.p_metal, self.gap, self.truth, self.inside))
        if family is not None:
            keep = np.asarray(self.family) == family
            p, g, t, inside = p[keep], g[keep], t[keep], inside[keep]
        nonmetal = t > 0
        both = nonmetal.any() and (~nonmetal).any()
        return {
            "n": int(len(t)), "n_nonmetal": int(nonmetal.sum()),
            "mae_nonmetal": float(np.mean(np.abs(g - t)[nonmetal])) if nonmetal.any() else float("nan"),
            "mae_all": float(np.mean(np.abs(g - t))),
            "metal_auc": float(roc_auc(p, ~nonmetal)) if both and np.ptp(p) > 0 else float("nan"),
            "coverage": float(np.nanmean(inside)) if np.isfinite(inside).any() else float("nan"),
        }  # fmt: skip


def run(recipe: dict, recipe_path: Path, quick: bool) -> None:
    """Run the benchmark."""
    from matmeta.recipes import config_from_dict

    config = config_from_dict(ExptGapBenchConfig, recipe.get("bench"), f"{recipe_path} [bench]")
    if quick:
        config = dataclasses.replace(config, ks=(5,), episodes_per_family=1, out_dir=config.out_dir / "quick")
    run_benchmark(config, quick)


def run_benchmark(config: ExptGapBenchConfig, quick: bool = False) -> dict[str, Any]:
    """Every method on the same episodes; prints the tables and writes ``summary.json``."""
    from matmeta.bench.composition_peer import trained_peer
    from matmeta.bench.fewshot_expt_gap_report import report
    from matmeta.errors import CheckpointError
    from matmeta.predict.measured import reported_gap
    from matmeta.predict.measured_data import read_measured
    from matmeta.predict.measured_train import network_table
    from matmeta.predict.predictor import Predictor
    from matmeta.store.datasets import shared_data_dir
    from matmeta.store.reader import GraphStore

    predictor = Predictor.load(config.checkpoint)
    entry = predictor.metadata.get("measured_gap")
    if predictor.measured is None or not entry:
        raise CheckpointError(f"{predictor.path}: no measured-level gap (train it with recipes/expt_gap.toml)")
    data = entry["recipe"]["data"]
    store = GraphStore(data["store"])
    rows = read_measured(shared_data_dir() / data["csv"], store, entry["families"]["by"])
    table = network_table(predictor, store, rows)
    test = list(entry["families"]["test"])[: 2 if quick else None]
    peer = trained_peer(rows, test, config.seed)
    pooled = pooled_head(predictor)
    val_episodes = list(episodes(table, entry["families"]["val"], (10,), 3, config, np.random.default_rng(1)))
    lr, scan = choose_lr(predictor, pooled, table, val_episodes, config.finetune_lrs)
    scores = {(m, k): Scored() for m in METHODS for k in config.ks}
    for family, k, support, query in episodes(table, test, config.ks, config.episodes_per_family, config,
                                              np.random.default_rng(config.seed)):  # fmt: skip
        score_episode(predictor, table, peer, family, k, support, query, scores)
        tuned = adam_finetune(pooled, table.rows(support), predictor.measured.inner_steps, lr)
        out = measured_outputs_of(tuned, table.inputs(query))
        scores[("fine-tune (Adam)", k)].add(family, out[:, 0], reported_gap(out[:, 0], out[:, 1],
                                            predictor.measured_cut), table.gap.numpy()[query])  # fmt: skip
    return report(config, scores, test, quick, {"fine_tune_lr": lr, "fine_tune_lr_scan": scan})


def episodes(table: Any, families: list[str], ks: tuple[int, ...], per_family: int, config: Any, rng: Any) -> Any:
    """``(family, k, support, query)`` episodes of ``families`` (a family too small for k + min_query is skipped)."""
    names = np.asarray(table.families)
    for k in ks:
        for family in families:
            members = np.flatnonzero(names == family)
            if len(members) < k + config.min_query:
                continue
            for _ in range(per_family):
                order = rng.permutation(members)
                yield family, k, order[:k], order[k : k + config.max_query]


def pooled_head(predictor: Any) -> torch.nn.Module:
    """The head after pooled fitting, before meta-learning (``measured_pooled.*`` of the checkpoint)."""
    import copy

    from matmeta.checkpoint import load_checkpoint
    from matmeta.predict.measured import POOLED_PREFIX

    tensors, _ = load_checkpoint(predictor.path)
    head = copy.deepcopy(predictor.measured.model)
    head.load_state_dict({k[len(POOLED_PREFIX) :]: v for k, v in tensors.items() if k.startswith(POOLED_PREFIX)})
    return head.eval()


def adam_finetune(head: torch.nn.Module, batch: tuple, steps: int, lr: float) -> torch.nn.Module:
    """A copy of ``head`` after ``steps`` Adam steps on ``batch``."""
    import copy

    from matmeta.predict.measured import loss_fn

    tuned = copy.deepcopy(head)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    for _ in range(steps):
        loss = loss_fn(tuned, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tuned


def measured_outputs_of(head: torch.nn.Module, inputs: tuple) -> np.ndarray:
    """``[P(metal), gap]`` of a plain head module."""
    with torch.no_grad():
        out = head(*inputs)
    return np.stack([torch.sigmoid(out[:, 0]).numpy(), out[:, 1].clamp(min=0.0).numpy()], axis=1).astype(float)


def choose_lr(predictor: Any, pooled: Any, table: Any, val: list, lrs: tuple[float, ...]) -> tuple[float, dict]:
    """The Adam learning rate with the lowest non-metal MAE of the reported gap on validation episodes."""
    from matmeta.predict.measured import reported_gap

    scan = {}
    for lr in lrs:
        errors = []
        for _, _, support, query in val:
            out = measured_outputs_of(adam_finetune(pooled, table.rows(support), predictor.measured.inner_steps, lr),
                                      table.inputs(query))  # fmt: skip
            truth = table.gap.numpy()[query]
            gap = reported_gap(out[:, 0], out[:, 1], predictor.measured_cut)
            errors.extend(np.abs(gap - truth)[truth > 0].tolist())
        scan[lr] = float(np.mean(errors)) if errors else float("nan")
    return min(scan, key=lambda lr: scan[lr]), scan


def score_episode(
    predictor: Any, table: Any, peer: Any, family: str, k: int, support: np.ndarray, query: np.ndarray, scores: dict
) -> None:
    """Every method on one episode."""
    from matmeta.predict.adaptation import fit_linear, fit_logit_shift
    from matmeta.predict.measured import loss_fn, measured_outputs, reported_gap
    from matmeta.predict.measured_adapt import apply, choose
    from matmeta.predict.measured_calibrate import half_width

    head, cut, truth = predictor.measured, predictor.measured_cut, table.gap.numpy()[query].astype(float)
    uncertainty = predictor.metadata["measured_gap"]["uncertainty"]

    def add(method: str, out: np.ndarray, n_support: int | None = None, intervals: bool = False) -> None:
        gap = reported_gap(out[:, 0], out[:, 1], cut)
        inside = None
        if intervals:
            half = half_width(uncertainty, 1.0 - out[:, 0] < cut, n_support)
            inside = (np.maximum(gap - half, 0.0) - 1e-9 <= truth) & (truth <= gap + half + 1e-9)
        scores[(method, k)].add(family, out[:, 0], gap, truth, inside)

    add("zero-shot", measured_outputs(head, table.inputs(query)), intervals=True)
    fast = head.adapt(table.rows(support), loss_fn)
    add("adapted", measured_outputs(head, table.inputs(query), fast), n_support=k, intervals=True)
    kept_fast, entry, _ = choose(head, cut, table.inputs(support), table.gap.numpy()[support], None)
    out = measured_outputs(head, table.inputs(query), kept_fast if entry["kept"] == "adapted" else None)
    add("finetune", apply(out, entry["choice"]))
    # the PBE level, as the network states it (its own metal call), and its linear recalibration on the support
    p_pbe = torch.sigmoid(table.logit_pbe).numpy().astype(float)
    pbe = np.where(1.0 - p_pbe >= predictor.nonmetal_cut, table.gap_pbe.numpy(), 0.0)
    scores[("PBE", k)].add(family, p_pbe[query], pbe[query], truth)
    values, s_gap = table.gap.numpy()[support], table.gap_pbe.numpy()[support]
    s_logit = table.logit_pbe.numpy()[support]
    nonmetal = values > 0
    scale, shift = fit_linear(s_gap[nonmetal], values[nonmetal]) if nonmetal.any() else (1.0, 0.0)
    logit = table.logit_pbe.numpy()[query] + fit_logit_shift(s_logit, ~nonmetal)
    p_lin = 1.0 / (1.0 + np.exp(-logit))
    lin_gap = np.clip(scale * table.gap_pbe.numpy()[query] + shift, 0.0, None)
    scores[("PBE + linear", k)].add(family, p_lin, np.where(1.0 - p_lin >= predictor.nonmetal_cut, lin_gap, 0.0), truth)
    scores[("support mean", k)].add(family, np.full(len(query), float(np.mean(~nonmetal))),
                                    np.full(len(query), float(np.mean(values))), truth)  # fmt: skip
    peer_out = peer.predict([table.formulas[i] for i in query])
    scores[("composition peer", k)].add(family, peer_out[:, 0], peer.reported(peer_out), truth)
