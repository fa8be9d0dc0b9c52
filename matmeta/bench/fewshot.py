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

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.bench.fewshot_baselines import (
    Scores,
    adam_finetune,
    choose_finetune_lr,
    make_episodes,
    pooled_model,
    predict_outputs,
    roc_auc,
)
from matmeta.predict.calibrate import Z90
from matmeta.predict.data import GraphTable, loss_fn

__all__ = ["FewshotConfig", "adam_finetune", "make_episodes", "predict_outputs", "roc_auc", "run", "run_benchmark"]

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


@dataclasses.dataclass
class Setup:
    """What every episode shares: the checkpoint under test, the data, the split and the pooled baseline."""

    predictor: Any
    table: GraphTable
    checkpoint: Path
    recipe: Any
    val_f: list[str]
    test_f: list[str]
    steps: int
    pooled: torch.nn.Module
    best_lr: float
    lr_scan: dict[float, float]
    out_dir: Path

    @property
    def model_config(self) -> Any:
        """The checkpoint's architecture as trained (the open-shell offset is set after training)."""
        return dataclasses.replace(self.predictor.model.config, open_shell_metal_offset=0.0)


@dataclasses.dataclass
class Results:
    """Per-episode results: heat scores by (method, k), band-gap metrics, MC-dropout coverage."""

    gaps: Any
    scores: dict[tuple[str, int], Scores] = dataclasses.field(default_factory=dict)
    coverage: dict[str, list[np.ndarray]] = dataclasses.field(
        default_factory=lambda: {"heat_adapted": [], "gap_adapted": [], "heat_zero": []}
    )

    def score(self, method: str, k: int) -> Scores:
        return self.scores.setdefault((method, k), Scores())


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
    from matmeta.bench.fewshot_gap import GapBench
    from matmeta.bench.fewshot_report import report
    from matmeta.console import progress

    torch.manual_seed(config.seed)
    setup = prepare(config, quick)
    setup.predictor.maml.eval()
    results = Results(gaps=GapBench(setup.predictor))
    episodes = {
        k: make_episodes(setup.table, setup.test_f, k, config.episodes_per_family, config.query_size, config.seed + k)
        for k in config.ks
    }
    with progress() as bar:
        task = bar.add_task("episodes", total=sum(len(e) for e in episodes.values()))
        for k in config.ks:
            for number, (_, support, query) in enumerate(episodes[k]):
                score_maml(setup, results, k, support, query)
                score_baselines(setup, config, results, k, number, support, query)
                bar.update(task, advance=1)
    return report(config, setup, results, quick)


def prepare(config: FewshotConfig, quick: bool) -> Setup:
    """Load the checkpoint and its store, train (or reuse) the pooled network, choose its fine-tuning rate."""
    from matmeta.console import console
    from matmeta.errors import CheckpointError
    from matmeta.predict.config import PredictorRecipe
    from matmeta.predict.data import ensure_store, family_indices, load_table
    from matmeta.predict.pooled import pooled_key
    from matmeta.predict.predictor import Predictor
    from matmeta.recipes import load_recipe

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
    hurdle = predictor.model.config.open_shell_metal_offset  # set after training, as the recipe does
    model_config = dataclasses.replace(predictor.model.config, open_shell_metal_offset=0.0)  # as trained
    train_idx = family_indices(table, train_f)
    if quick:
        pre = dataclasses.replace(pre, epochs=1)
        train_idx = train_idx[:64]
    key = pooled_key(train_f, model_config, pre, recipe.trainer.seed, stats, len(table) if not quick else -1)
    pooled = pooled_model(
        table, train_idx, model_config, pre.epochs, pre.lr, recipe.trainer.seed, out_dir / "pooled.ckpt", key,
        batch_size=pre.batch_size, also_look_in=[] if quick else [Path(recipe.meta_train.work_dir) / "pooled.ckpt"],
    )  # fmt: skip
    pooled.config = dataclasses.replace(model_config, open_shell_metal_offset=hurdle)
    # fine-tuning learning rate on validation families only
    val_episodes = make_episodes(table, val_f, 10, config.val_episodes_per_family, config.query_size, config.seed + 7)
    best_lr, lr_scan = choose_finetune_lr(pooled, table, stats, val_episodes, steps, config.finetune_lrs)
    console.print(
        f"fine-tune lr chosen on validation families: {best_lr:g} (val MAE by lr: "
        + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in lr_scan.items())
        + ")"
    )
    return Setup(predictor, table, checkpoint, recipe, list(val_f), list(test_f), steps, pooled, best_lr, lr_scan,
                 out_dir)  # fmt: skip


def score_maml(setup: Setup, results: Results, k: int, support: np.ndarray, query: np.ndarray) -> None:
    """MAML adapted on the support set and unadapted, with its calibrated MC-dropout coverage."""
    from matmeta.predict.kriging import head_features

    table, predictor = setup.table, setup.predictor
    stats, maml = predictor.stats, predictor.maml
    scale_adapted = predictor.uncertainty.get("adapted", {})
    scale_zero = predictor.uncertainty.get("zero_shot", {})
    mc = int(predictor.uncertainty.get("mc_samples", 32))
    s_batch, q_batch = table.batch(support), table.batch(query)
    n_atoms_q = q_batch.n_atoms
    truth, gap_truth = table.energy[query], table.band_gap[query]
    fast = maml.adapt(s_batch, loss_fn)
    with torch.no_grad():
        with head_features(maml.model) as adapted_features:
            out = maml(*q_batch.inputs(), params=fast)
        samples = maml(*q_batch.inputs(), params=fast, mc_samples=mc)
        with head_features(maml.model) as zero_features:
            zero_maml = maml(*q_batch.inputs())
        zero_samples = maml(*q_batch.inputs(), mc_samples=mc)
    results.score("MAML", k).add(out, table, stats, query)
    results.score("MAML (no adaptation)", k).add(zero_maml, table, stats, query)
    results.gaps.add_outputs("MAML", k, out, gap_truth, mode="adapted")
    results.gaps.add_outputs("MAML (no adaptation)", k, zero_maml, gap_truth, mode="zero_shot")
    results.gaps.add_intervals("adapted", k, out, table, query, adapted_features["features"].numpy())
    results.gaps.add_intervals("zero_shot", k, zero_maml, table, query, zero_features["features"].numpy())
    heat = stats.decode_heat(out[:, 0], n_atoms_q).numpy()
    std = stats.decode_heat(samples[..., 0], n_atoms_q).std(0).numpy() * scale_adapted.get("heat_ref", 1.0)
    results.coverage["heat_adapted"].append(np.abs(heat - truth) <= Z90 * std)
    nonmetal = gap_truth > stats.metal_threshold_ev
    gap = stats.decode_gap(out[:, 2]).numpy()
    gstd = stats.decode_gap(samples[..., 2]).std(0).numpy() * scale_adapted.get("band_gap", 1.0)
    results.coverage["gap_adapted"].append((np.abs(gap - gap_truth) <= Z90 * gstd)[nonmetal])
    zheat = stats.decode_heat(zero_maml[:, 0], n_atoms_q).numpy()
    zstd = stats.decode_heat(zero_samples[..., 0], n_atoms_q).std(0).numpy() * scale_zero.get("heat_ref", 1.0)
    results.coverage["heat_zero"].append(np.abs(zheat - truth) <= Z90 * zstd)


def score_baselines(
    setup: Setup, config: FewshotConfig, results: Results, k: int, number: int, support: np.ndarray, query: np.ndarray
) -> None:
    """Pooled + fine-tuning (same steps), pooled zero-shot, from scratch, support mean, linear recalibration."""
    from matmeta.models.gnn import CrystalGNN

    table, stats = setup.table, setup.predictor.stats
    truth, gap_truth = table.energy[query], table.band_gap[query]
    tuned = predict_outputs(adam_finetune(setup.pooled, table, support, setup.steps, setup.best_lr), table, query)
    results.score("fine-tune", k).add(tuned, table, stats, query)
    results.gaps.add_outputs("fine-tune", k, tuned, gap_truth)
    pooled_out = predict_outputs(setup.pooled, table, query)
    results.score("zero-shot", k).add(pooled_out, table, stats, query)
    results.gaps.add_outputs("zero-shot", k, pooled_out, gap_truth, mode="zero_shot")
    torch.manual_seed(config.seed * 100_003 + k * 1009 + number)
    scratch = adam_finetune(CrystalGNN(setup.model_config), table, support, config.scratch_steps, config.scratch_lr)
    results.score("scratch", k).add(predict_outputs(scratch, table, query), table, stats, query)
    per_atom = np.mean(table.energy[support] / table.n_atoms[support])  # support mean per atom x atom count
    results.score("mean", k).add_heat(per_atom * table.n_atoms[query], truth)
    # linear recalibration of the unadapted checkpoint (and the support mean's band gap)
    results.score("recalibrated", k).add_heat(results.gaps.add_baselines(k, support, query, table), truth)
