"""What the few-shot benchmark compares MAML with: fixed episodes, fine-tuning, pooled networks, scores.

The baselines of ``matmeta bench recipes/fewshot_perovskites.toml`` (``bench/fewshot.py``): Adam
fine-tuning of a pooled network, pooled networks trained once and cached by what they were trained
on, and the per-method score accumulator. The federated benchmark reuses the episodes and fine-tuning.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.conformal import roc_auc
from matmeta.predict.data import GraphTable, TargetStats, loss_fn

Episode = tuple[str, np.ndarray, np.ndarray]  # family, support indices, query indices


def make_episodes(table: GraphTable, families: Sequence[str], k: int, per_family: int, query: int, seed: int) -> list:
    """Fixed episodes: for each family, ``per_family`` disjoint (support k, query) draws."""
    rng = np.random.default_rng(seed)
    episodes: list[Episode] = []
    for family in families:
        members = np.array([i for i, f in enumerate(table.families) if f == family])
        if len(members) < k + 2:
            continue
        for _ in range(per_family):
            order = rng.permutation(members)
            episodes.append((family, order[:k], order[k : k + query]))
    return episodes


def predict_outputs(forward: Callable, table: GraphTable, indices: np.ndarray) -> torch.Tensor:
    """Model outputs (G, 3) for the structures at ``indices``."""
    batch = table.batch(indices)
    with torch.no_grad():
        return forward(*batch.inputs())


def adam_finetune(model: torch.nn.Module, table: GraphTable, support: np.ndarray, steps: int, lr: float) -> Any:
    """A copy of ``model`` fine-tuned with Adam on ``support`` (all parameters, eval mode)."""
    tuned = copy.deepcopy(model)
    tuned.eval()
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    batch = table.batch(support)
    for _ in range(steps):
        loss = loss_fn(tuned, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return tuned


@dataclasses.dataclass
class Scores:
    """Per-episode results of one method at one k."""

    heat_mae: list[float] = dataclasses.field(default_factory=list)
    heat_pred: list[np.ndarray] = dataclasses.field(default_factory=list)
    heat_true: list[np.ndarray] = dataclasses.field(default_factory=list)
    p_metal: list[np.ndarray] = dataclasses.field(default_factory=list)
    gap_pred: list[np.ndarray] = dataclasses.field(default_factory=list)
    gap_true: list[np.ndarray] = dataclasses.field(default_factory=list)
    inside90: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, outputs: torch.Tensor, table: GraphTable, stats: TargetStats, query: np.ndarray) -> None:
        """Record predictions (model outputs (G, 3)) for the structures at ``query``."""
        n_atoms = torch.as_tensor(table.n_atoms[query], dtype=torch.float32)
        heat = stats.decode_heat(outputs[:, 0], n_atoms).numpy()
        self.add_heat(heat, table.energy[query])
        self.p_metal.append(torch.sigmoid(outputs[:, 1]).numpy())
        self.gap_pred.append(stats.decode_gap(outputs[:, 2]).numpy())
        self.gap_true.append(table.band_gap[query])

    def add_heat(self, heat: np.ndarray, truth: np.ndarray) -> None:
        """Record heat predictions only."""
        self.heat_mae.append(float(np.mean(np.abs(heat - truth))))
        self.heat_pred.append(heat)
        self.heat_true.append(truth)

    def gap_metrics(self, threshold: float) -> tuple[float, float, float]:
        """ROC-AUC of P(metal) (metals vs non-metals); MAE on true non-metals of the two-stage gap and of the regressor.

        The two-stage gap is 0 when P(metal) ≥ 0.5; the regressor alone ignores P(metal).
        """
        if not self.p_metal:
            return math.nan, math.nan, math.nan
        p = np.concatenate(self.p_metal)
        truth = np.concatenate(self.gap_true)
        metal = truth <= threshold
        auc = roc_auc(p, metal)
        nonmetal = ~metal
        if not nonmetal.any():
            return auc, math.nan, math.nan
        gap = np.concatenate(self.gap_pred)[nonmetal]
        two_stage = np.where(p[nonmetal] >= 0.5, 0.0, gap)
        return (
            auc,
            float(np.mean(np.abs(two_stage - truth[nonmetal]))),
            float(np.mean(np.abs(gap - truth[nonmetal]))),
        )


def choose_finetune_lr(
    pooled: torch.nn.Module,
    table: GraphTable,
    stats: TargetStats,
    episodes: list[Episode],
    steps: int,
    lrs: Sequence[float],
) -> tuple[float, dict[float, float]]:
    """The fine-tuning learning rate with the lowest heat MAE on validation episodes."""
    results = {}
    for lr in lrs:
        scores = Scores()
        for _, support, query in episodes:
            tuned = adam_finetune(pooled, table, support, steps, lr)
            scores.add(predict_outputs(tuned, table, query), table, stats, query)
        results[lr] = float(np.mean(scores.heat_mae))
    return min(results, key=results.get), results  # type: ignore[arg-type]


def pooled_model(
    table: GraphTable,
    indices: np.ndarray,
    model_config: Any,
    epochs: int,
    lr: float,
    seed: int,
    cache: Path,
    key: dict[str, Any],
    batch_size: int = 64,
    also_look_in: Sequence[Path] = (),
) -> torch.nn.Module:
    """Pooled network trained on ``indices``; reused from a cache file when it was trained with the same ``key``."""
    from matmeta.checkpoint import load_checkpoint, save_checkpoint
    from matmeta.console import console
    from matmeta.models.gnn import CrystalGNN
    from matmeta.predict.pooled import pooled_config, train_pooled

    for candidate in (*also_look_in, cache):
        if not Path(candidate).exists():
            continue
        try:
            tensors, metadata = load_checkpoint(candidate)
            if json.loads(json.dumps(metadata.get("pooled_key"))) == json.loads(json.dumps(key)):
                model = CrystalGNN(pooled_config(model_config))
                model.load_state_dict(tensors, strict=True)
                model.eval()
                console.print(f"pooled network: reusing {candidate} (trained on the same data, split, config, seed)")
                return model
        except Exception:  # noqa: BLE001 - a stale or broken cache is simply retrained
            continue
    start = time.perf_counter()
    model = train_pooled(table, indices, model_config, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    save_checkpoint(cache, model.state_dict(), {"kind": "pooled-cache", "pooled_key": key})
    console.print(
        f"pooled network: trained in {time.perf_counter() - start:.0f} s ({epochs} epochs), cached at {cache}"
    )
    return model


def random_split(
    table: GraphTable, model_config: Any, lr: float, epochs: int, seed: int, out_dir: Path, quick: bool
) -> tuple[float, int]:
    """Pooled network on a random 80/20 split of all structures; (test MAE eV/cell, training size)."""
    from matmeta.predict.pooled import training_fields

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    cut = int(0.8 * len(table))
    train, test = order[:cut], order[cut:]
    stats = TargetStats.fit(table.energy[train], table.band_gap[train], table.n_atoms[train])
    if quick:
        train, test = train[:64], test[:64]
    local = dataclasses.replace(table, y=stats.encode(table.energy, table.band_gap, table.n_atoms))
    key = {"split": "random80/20", "seed": seed, "epochs": epochs, "n": len(table),
           "model": training_fields(model_config), "lr": lr}  # fmt: skip
    model = pooled_model(local, train, model_config, epochs, lr, seed,
                         out_dir / "random_split.ckpt", key)  # fmt: skip
    outputs = predict_outputs(model, local, test)
    heat = stats.decode_heat(outputs[:, 0], torch.as_tensor(local.n_atoms[test], dtype=torch.float32)).numpy()
    return float(np.mean(np.abs(heat - local.energy[test]))), len(train)
