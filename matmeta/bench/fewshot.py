"""Few-shot benchmark of the predictor on test families never seen in meta-training (``matmeta bench``).

On the test families of the checkpoint's leave-family-out split, for each support size k and the
same episodes (one seed set) for every method:

1. MAML: the shipped meta-learned checkpoint, adapted on the support set (meta-learned steps/rates);
2. fine-tune: the same network pretrained on the pooled training families, then fine-tuned with
   Adam for the same number of steps; its learning rate is chosen on the validation families;
3. zero-shot: the pooled model without adaptation;
4. scratch: the network trained from random weights on the support set only;
5. mean: the support-set mean (heat_ref per atom times the atom count).

Reports MAE ± 95% CI of heat_ref, band-gap metrics (metal/non-metal ROC-AUC over all query
structures, non-metal gap MAE), calibration of MAML's 90% intervals, a random 80/20-split MAE of
the pooled network (vs the matbench_perovskites leaderboard), predict throughput and the wall time
of ``matmeta finetune`` on 10 structures. Plots and CSV go to ``out/bench/fewshot/``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.predict.calibrate import Z90
from matmeta.predict.data import GraphTable, TargetStats, loss_fn, mean_ci95

METHODS = ("MAML", "fine-tune", "zero-shot", "scratch", "mean")


@dataclasses.dataclass(frozen=True)
class FewshotConfig:
    """The ``[bench]`` section of ``recipes/fewshot_perovskites.toml``.

    Attributes:
        name: ``"fewshot"``.
        predictor_recipe: the meta-training recipe (data, split, model, pooled pretraining).
        checkpoint: the meta-learned checkpoint to evaluate (None: the recipe's output).
        ks: support sizes.
        episodes_per_family: episodes per test family and k.
        query_size: query structures per episode.
        finetune_lrs: learning-rate grid of the fine-tuning baseline (chosen on validation families).
        val_episodes_per_family: episodes per validation family for that choice.
        scratch_steps: Adam steps of the from-scratch baseline.
        scratch_lr: its learning rate.
        random_split_epochs: epochs of the pooled network on the random 80/20 split.
        throughput_structures: structures for the throughput measurement.
        seed: one seed for all episodes and trainings.
        out_dir: plots, CSV and cached pooled checkpoints.
    """

    name: str = "fewshot"
    predictor_recipe: Path = Path("recipes/perovskites.toml")
    checkpoint: Path | None = None
    ks: tuple[int, ...] = (5, 10, 20)
    episodes_per_family: int = 20
    query_size: int = 30
    finetune_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    val_episodes_per_family: int = 5
    scratch_steps: int = 100
    scratch_lr: float = 3e-3
    random_split_epochs: int = 60
    throughput_structures: int = 256
    seed: int = 0
    out_dir: Path = Path("out/bench/fewshot")


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
        self.add_heat(heat, table.heat_ref[query])
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


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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


# ---------------------------------------------------------------------- pooled networks (cached)
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
    from matmeta.predict.pooled import train_pooled

    for candidate in (*also_look_in, cache):
        if not Path(candidate).exists():
            continue
        try:
            tensors, metadata = load_checkpoint(candidate)
            if json.loads(json.dumps(metadata.get("pooled_key"))) == json.loads(json.dumps(key)):
                model = CrystalGNN(model_config)
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


# ---------------------------------------------------------------------- the benchmark
def run(recipe: dict, recipe_path: Path, quick: bool) -> None:
    """Run the benchmark (``matmeta bench recipes/fewshot_perovskites.toml``)."""
    from matmeta.recipes import config_from_dict

    config = config_from_dict(FewshotConfig, recipe.get("bench"), f"{recipe_path} [bench]")
    if quick:
        config = dataclasses.replace(
            config, ks=(5,), episodes_per_family=1, query_size=8, finetune_lrs=(1e-3,), val_episodes_per_family=1,
            scratch_steps=3, random_split_epochs=1, throughput_structures=8, out_dir=config.out_dir / "quick",
        )  # fmt: skip
    run_benchmark(config, quick=quick)


def run_benchmark(config: FewshotConfig, quick: bool = False) -> dict[str, Any]:
    """The whole benchmark; returns the summary also written to ``out_dir/summary.json``."""
    from matmeta.atomic import write_text_atomic
    from matmeta.console import console, print_table
    from matmeta.errors import CheckpointError
    from matmeta.predict.config import PredictorRecipe
    from matmeta.predict.data import ensure_store, family_indices, load_table
    from matmeta.predict.pooled import pooled_key
    from matmeta.predict.predictor import Predictor
    from matmeta.recipes import load_recipe

    torch.manual_seed(config.seed)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = PredictorRecipe.from_recipe(load_recipe(config.predictor_recipe), str(config.predictor_recipe))
    checkpoint = Path(config.checkpoint or recipe.meta_train.out)
    predictor = Predictor.load(checkpoint)
    stats = predictor.stats
    table, graph_config = load_table(ensure_store(recipe.data), recipe.data, stats=stats)
    if graph_config != predictor.graph_config:
        raise CheckpointError(f"{checkpoint}: graph settings {predictor.graph_config} differ from the store's")
    families = predictor.metadata["families"]
    train_f, val_f, test_f = families["train"], families["val"], families["test"]
    if quick:
        val_f, test_f = val_f[:1], test_f[:2]
    console.print(f"test families ({len(test_f)}): {', '.join(test_f)}; validation: {', '.join(val_f)}")
    steps = predictor.maml.inner_steps
    pre = recipe.pretrain
    model_config = predictor.model.config
    train_idx = family_indices(table, train_f)
    if quick:
        pre = dataclasses.replace(pre, epochs=1)
        train_idx = train_idx[:64]
    key = pooled_key(train_f, model_config, pre, recipe.trainer.seed, stats, len(table) if not quick else -1)
    pooled = pooled_model(
        table, train_idx, model_config, pre.epochs, pre.lr, recipe.trainer.seed, out_dir / "pooled.ckpt", key,
        batch_size=pre.batch_size, also_look_in=[] if quick else [Path(recipe.meta_train.work_dir) / "pooled.ckpt"],
    )  # fmt: skip

    # fine-tuning learning rate on validation families only
    val_episodes = make_episodes(table, val_f, 10, config.val_episodes_per_family, config.query_size, config.seed + 7)
    best_lr, lr_scan = choose_finetune_lr(pooled, table, stats, val_episodes, steps, config.finetune_lrs)
    console.print(
        f"fine-tune lr chosen on validation families: {best_lr:g} (val MAE by lr: "
        + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in lr_scan.items())
        + ")"
    )

    scores: dict[tuple[str, int], Scores] = {}
    coverage: dict[str, list[np.ndarray]] = {"heat_adapted": [], "gap_adapted": [], "heat_zero": []}
    scale_adapted = predictor.uncertainty.get("adapted", {})
    scale_zero = predictor.uncertainty.get("zero_shot", {})
    mc = int(predictor.uncertainty.get("mc_samples", 32))
    maml = predictor.maml
    maml.eval()
    from matmeta.console import progress
    from matmeta.models.gnn import CrystalGNN

    total = sum(
        len(make_episodes(table, test_f, k, config.episodes_per_family, config.query_size, config.seed + k))
        for k in config.ks
    )
    with progress() as bar:
        task = bar.add_task("episodes", total=total)
        for k in config.ks:
            episodes = make_episodes(table, test_f, k, config.episodes_per_family, config.query_size, config.seed + k)
            for number, (_, support, query) in enumerate(episodes):
                s_batch, q_batch = table.batch(support), table.batch(query)
                n_atoms_q = q_batch.n_atoms
                truth = table.heat_ref[query]
                # 1. MAML adapted (+ its calibrated MC-dropout interval)
                fast = maml.adapt(s_batch, loss_fn)
                with torch.no_grad():
                    out = maml(*q_batch.inputs(), params=fast)
                    samples = maml(*q_batch.inputs(), params=fast, mc_samples=mc)
                    zero_maml = maml(*q_batch.inputs())
                    zero_samples = maml(*q_batch.inputs(), mc_samples=mc)
                scores.setdefault(("MAML", k), Scores()).add(out, table, stats, query)
                scores.setdefault(("MAML (no adaptation)", k), Scores()).add(zero_maml, table, stats, query)
                heat = stats.decode_heat(out[:, 0], n_atoms_q).numpy()
                std = stats.decode_heat(samples[..., 0], n_atoms_q).std(0).numpy() * scale_adapted.get("heat_ref", 1.0)
                coverage["heat_adapted"].append(np.abs(heat - truth) <= Z90 * std)
                gap_truth = table.band_gap[query]
                nonmetal = gap_truth > stats.metal_threshold_ev
                gap = stats.decode_gap(out[:, 2]).numpy()
                gstd = stats.decode_gap(samples[..., 2]).std(0).numpy() * scale_adapted.get("band_gap", 1.0)
                coverage["gap_adapted"].append((np.abs(gap - gap_truth) <= Z90 * gstd)[nonmetal])
                zheat = stats.decode_heat(zero_maml[:, 0], n_atoms_q).numpy()
                zstd = stats.decode_heat(zero_samples[..., 0], n_atoms_q).std(0).numpy() * scale_zero.get(
                    "heat_ref", 1.0
                )
                coverage["heat_zero"].append(np.abs(zheat - truth) <= Z90 * zstd)
                # 2. pooled + fine-tuning, same number of steps
                tuned = adam_finetune(pooled, table, support, steps, best_lr)
                scores.setdefault(("fine-tune", k), Scores()).add(
                    predict_outputs(tuned, table, query), table, stats, query
                )
                # 3. pooled zero-shot
                scores.setdefault(("zero-shot", k), Scores()).add(
                    predict_outputs(pooled, table, query), table, stats, query
                )
                # 4. from scratch on the support set
                torch.manual_seed(config.seed * 100_003 + k * 1009 + number)
                scratch = CrystalGNN(model_config)
                scratch = adam_finetune(scratch, table, support, config.scratch_steps, config.scratch_lr)
                scores.setdefault(("scratch", k), Scores()).add(
                    predict_outputs(scratch, table, query), table, stats, query
                )
                # 5. support-set mean (per atom, times the atom count)
                per_atom = np.mean(table.heat_ref[support] / table.n_atoms[support])
                scores.setdefault(("mean", k), Scores()).add_heat(per_atom * table.n_atoms[query], truth)
                bar.update(task, advance=1)

    methods = ["MAML", "fine-tune", "zero-shot", "scratch", "mean", "MAML (no adaptation)"]
    rows, csv_rows = [], ["method,k,heat_mae_ev_per_cell,ci95,episodes"]
    for method in methods:
        cells = [method]
        for k in config.ks:
            mean, half = mean_ci95(scores[(method, k)].heat_mae)
            cells.append(f"{mean:.4f} ± {half:.4f}")
            csv_rows.append(f"{method},{k},{mean:.6f},{half:.6f},{len(scores[(method, k)].heat_mae)}")
        rows.append(cells)
    print_table(
        f"heat_ref MAE (eV/cell) ± 95% CI on {len(test_f)} test families "
        f"({config.episodes_per_family} episodes/family, query {config.query_size}, {steps} adaptation steps)",
        ["method", *[f"k={k}" for k in config.ks]],
        rows,
    )
    k_ref = 10 if 10 in config.ks else config.ks[0]
    ratio = {
        m: float(np.mean(scores[("MAML", k_ref)].heat_mae) / np.mean(scores[(m, k_ref)].heat_mae))
        for m in ("fine-tune", "zero-shot", "mean")
    }
    console.print(
        f"MAML / fine-tune at k={k_ref}: {ratio['fine-tune']:.3f} (goal ≤ 0.85); MAML / zero-shot: "
        f"{ratio['zero-shot']:.3f} (goal ≤ 0.70); MAML / support mean: {ratio['mean']:.3f}"
    )
    gap_rows = []
    for method in methods[:4] + ["MAML (no adaptation)"]:
        for k in config.ks:
            gap_rows.append((method, k, *scores[(method, k)].gap_metrics(stats.metal_threshold_ev)))
    print_table(
        "band gap on test-family queries: metal/non-metal ROC-AUC of P(metal); MAE on true non-metals (eV)",
        ["method", "k", "ROC-AUC", "two-stage gap MAE", "gap regressor MAE"],
        gap_rows,
    )
    cov = {
        name: float(np.mean(np.concatenate(v))) if v and np.concatenate(v).size else math.nan
        for name, v in coverage.items()
    }
    n_gap = int(sum(len(v) for v in coverage["gap_adapted"]))
    print_table(
        "calibration: fraction of true values inside the stated 90% interval (test families)",
        ["prediction", "coverage", "points"],
        [
            ("heat_ref, MAML adapted (all k)", cov["heat_adapted"], int(sum(len(v) for v in coverage["heat_adapted"]))),
            ("band gap of non-metals, MAML adapted", cov["gap_adapted"], n_gap),
            ("heat_ref, shipped model zero-shot", cov["heat_zero"], int(sum(len(v) for v in coverage["heat_zero"]))),
        ],
    )
    random_mae = random_split(table, model_config, recipe, config, out_dir, quick)
    print_table(
        "heat_ref MAE on a random 80/20 split of all perovskites (pooled network) vs matbench_perovskites",
        ["model", "MAE eV/cell", "training structures"],
        [
            ("CrystalGNN pooled (ours)", random_mae[0], random_mae[1]),
            ("ALIGNN (matbench leaderboard)", 0.029, "~15k (5-fold CV)"),
            ("MEGNet (matbench leaderboard)", 0.035, "~15k (5-fold CV)"),
            ("CGCNN (matbench leaderboard)", 0.045, "~15k (5-fold CV)"),
        ],
    )
    speed = throughput(predictor, table, test_f, config, out_dir, checkpoint)
    print_table("speed (this machine, CPU)", ["measurement", "value"], list(speed.items()))

    summary = {
        "test_families": list(test_f), "val_families": list(val_f), "finetune_lr": best_lr, "lr_scan": lr_scan,
        "inner_steps": steps, "heat_mae": {f"{m}@k={k}": mean_ci95(scores[(m, k)].heat_mae) for m in methods
                                           for k in config.ks},
        "ratios_k10": ratio, "gap": [list(r) for r in gap_rows], "coverage90": cov,
        "random_split_mae": random_mae[0], "speed": speed, "checkpoint": str(checkpoint), "quick": quick,
    }  # fmt: skip
    write_text_atomic(out_dir / "results.csv", "\n".join(csv_rows) + "\n")
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    plots(scores, methods, config.ks, k_ref, out_dir)
    console.print(f"wrote {out_dir}/results.csv, summary.json, mae_vs_k.png, parity_k{k_ref}.png")
    return summary


def random_split(
    table: GraphTable, model_config: Any, recipe: Any, config: FewshotConfig, out_dir: Path, quick: bool
) -> tuple[float, int]:
    """Pooled network on a random 80/20 split of all structures; (test MAE eV/cell, training size)."""
    from matmeta.predict.data import TargetStats

    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(table))
    cut = int(0.8 * len(table))
    train, test = order[:cut], order[cut:]
    stats = TargetStats.fit(table.heat_ref[train], table.band_gap[train], table.n_atoms[train])
    if quick:
        train, test = train[:64], test[:64]
    local = dataclasses.replace(table, y=stats.encode(table.heat_ref, table.band_gap, table.n_atoms))
    key = {"split": "random80/20", "seed": config.seed, "epochs": config.random_split_epochs, "n": len(table),
           "model": dataclasses.asdict(model_config), "lr": recipe.pretrain.lr}  # fmt: skip
    model = pooled_model(local, train, model_config, config.random_split_epochs, recipe.pretrain.lr, config.seed,
                         out_dir / "random_split.ckpt", key)  # fmt: skip
    outputs = predict_outputs(model, local, test)
    heat = stats.decode_heat(outputs[:, 0], torch.as_tensor(local.n_atoms[test], dtype=torch.float32)).numpy()
    return float(np.mean(np.abs(heat - local.heat_ref[test]))), len(train)


def throughput(
    predictor: Any, table: GraphTable, families: Sequence[str], config: FewshotConfig, out_dir: Path, checkpoint: Path
) -> dict[str, str]:
    """Predict throughput from CIF files and from the store; wall time of ``matmeta finetune`` on 10 structures."""
    from matmeta.io import read_structure_file, structure_to_cif, write_cif
    from matmeta.predict.data import ensure_store
    from matmeta.store.reader import GraphStore

    recipe_store = GraphStore(ensure_store(_recipe_data(config)))
    n = min(config.throughput_structures, len(recipe_store))
    cif_dir = out_dir / "throughput_cifs"
    cif_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_cif(recipe_store.structure(i), cif_dir / f"s{i:05d}.cif") for i in range(n)]
    start = time.perf_counter()
    structures = [read_structure_file(p)[0][1] for p in paths]
    predictor.predict_structures(structures)
    cif_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    from matmeta.predict.data import graph_from_data

    graphs = [graph_from_data(recipe_store[i], unknown_to=predictor.elements_seen) for i in range(n)]
    predictor.predict_graphs(graphs)
    store_rate = n / (time.perf_counter() - start)
    # matmeta finetune on 10 structures of a test family, as a user runs it (process start-up included)
    members = [i for i, f in enumerate(table.families) if f == families[0]][:10]
    support = out_dir / "finetune_support.csv"
    with support.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "cif", "heat_ref"])
        for i in members:
            writer.writerow([table.ids[i], structure_to_cif(recipe_store.structure(i)), table.heat_ref[i]])
    command = [sys.executable, "-m", "matmeta.cli", "finetune", "--support", str(support), "--target", "heat_ref",
               "--out", str(out_dir / "finetune_bench.ckpt"), "--model", str(checkpoint)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    status = "" if done.returncode == 0 else f" (FAILED: {done.stderr.strip().splitlines()[-1:]})"
    return {
        f"predict from CIF files ({n} structures, parse + graph + predict)": f"{cif_rate:.1f} structures/s",
        f"predict from the graph store ({n} structures)": f"{store_rate:.1f} structures/s",
        "matmeta finetune on 10 structures (wall, incl. start-up and LOO)": f"{wall:.1f} s{status} (goal < 10 s)",
    }


def _recipe_data(config: FewshotConfig) -> Any:
    from matmeta.predict.config import PredictorRecipe
    from matmeta.recipes import load_recipe

    return PredictorRecipe.from_recipe(load_recipe(config.predictor_recipe), str(config.predictor_recipe)).data


def plots(scores: dict, methods: Sequence[str], ks: Sequence[int], k_ref: int, out_dir: Path) -> None:
    """MAE vs k (one line per method) and a parity plot at ``k_ref``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in methods:
        values = [mean_ci95(scores[(method, k)].heat_mae) for k in ks]
        ax.errorbar(list(ks), [v[0] for v in values], yerr=[v[1] for v in values], marker="o", capsize=3, label=method)
    ax.set_xlabel("support structures k")
    ax.set_ylabel("heat_ref MAE on query (eV/cell)")
    ax.set_title("few-shot on unseen B-site families")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "mae_vs_k.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    for ax, method in zip(axes, ("MAML", "fine-tune", "zero-shot"), strict=True):
        s = scores[(method, k_ref)]
        truth, pred = np.concatenate(s.heat_true), np.concatenate(s.heat_pred)
        ax.scatter(truth, pred, s=4, alpha=0.4)
        lo, hi = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_title(f"{method}, k={k_ref}: MAE {np.mean(np.abs(truth - pred)):.3f}")
        ax.set_xlabel("DFT heat_ref (eV/cell)")
    axes[0].set_ylabel("predicted (eV/cell)")
    fig.tight_layout()
    fig.savefig(out_dir / f"parity_k{k_ref}.png", dpi=120)
    plt.close(fig)
