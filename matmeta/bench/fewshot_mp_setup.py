"""What the Materials Project few-shot benchmark shares: checkpoint, data, pooled network, random split."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.predict.data import GraphTable


@dataclasses.dataclass
class Setup:
    """The checkpoint under test, its store as a table, the split and the pooled baseline with its fine-tuning rate."""

    predictor: Any
    table: GraphTable
    checkpoint: Path
    recipe: Any
    val_families: list[str]
    test_families: list[str]
    steps: int
    pooled: torch.nn.Module
    best_lr: float
    lr_scan: dict[float, float]
    out_dir: Path

    @property
    def test_indices(self) -> np.ndarray:
        """Every structure of the test families."""
        from matmeta.predict.data import family_indices

        return family_indices(self.table, self.test_families)


def prepare(config: Any, quick: bool) -> Setup:
    """Load the checkpoint and its store, reuse (or train) the pooled network, choose its fine-tuning rate."""
    from matmeta.bench.fewshot_baselines import choose_finetune_lr, make_episodes, pooled_model
    from matmeta.console import console
    from matmeta.errors import CheckpointError
    from matmeta.predict.config import PredictorRecipe
    from matmeta.predict.data import ensure_store, load_table, pretrain_indices, split
    from matmeta.predict.pooled import pooled_key
    from matmeta.predict.predictor import Predictor
    from matmeta.predict.train import pretrain_families
    from matmeta.recipes import load_recipe

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = PredictorRecipe.from_recipe(load_recipe(config.predictor_recipe), str(config.predictor_recipe))
    checkpoint = Path(config.checkpoint or recipe.meta_train.out)
    predictor = Predictor.load(checkpoint)
    table, graph_config = load_table(ensure_store(recipe.data), recipe.data, stats=predictor.stats)
    if graph_config != predictor.graph_config:
        raise CheckpointError(f"{checkpoint}: graph settings {predictor.graph_config} differ from the store's")
    families = predictor.metadata["families"]
    val_f, test_f = list(families["val"]), list(families["test"])
    family_split = split(table, recipe.data)
    if quick:
        val_f, test_f = val_f[:1], test_f[:2]
    console.print(f"test families ({len(test_f)}): {', '.join(test_f)}")
    pre, seed = recipe.pretrain, recipe.trainer.seed
    pool = pretrain_families(table, family_split, recipe.data)
    train_idx = pretrain_indices(table, family_split, recipe.data)
    if quick:
        pre, train_idx = dataclasses.replace(pre, epochs=1), train_idx[:64]
    key = pooled_key(pool, recipe.model, pre, seed, predictor.stats, len(table) if not quick else -1)
    pooled = pooled_model(
        table, train_idx, recipe.model, pre.epochs, pre.lr, seed, out_dir / "pooled.ckpt", key,
        batch_size=pre.batch_size, also_look_in=[] if quick else [Path(recipe.meta_train.work_dir) / "pooled.ckpt"],
    )  # fmt: skip
    steps = predictor.maml.inner_steps
    val_episodes = make_episodes(table, val_f, 10, config.val_episodes_per_family, config.query_size, config.seed + 7)
    best_lr, lr_scan = choose_finetune_lr(pooled, table, predictor.stats, val_episodes, steps, config.finetune_lrs)
    console.print(
        f"fine-tune lr chosen on validation families: {best_lr:g} (val energy MAE by lr, eV/cell: "
        + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in lr_scan.items())
        + ")"
    )
    return Setup(predictor, table, checkpoint, recipe, val_f, test_f, steps, pooled, best_lr, lr_scan, out_dir)


def random_split_scores(setup: Setup, config: Any, quick: bool) -> dict[str, Any]:
    """The recipe's pooled network on a random 80 / 10 / 10 split of every structure: validation and test metrics."""
    from matmeta.bench.fewshot_baselines import predict_outputs
    from matmeta.bench.fewshot_mp_scores import Predictions, network_predictions

    model, local, stats, splits = random_split_model(setup.table, setup.recipe, config.seed, config.out_dir, quick)
    scores = {}
    for name in ("validation", "test"):
        indices, out = splits[name], Predictions()
        for begin in range(0, len(indices), 1024):
            chunk = indices[begin : begin + 1024]
            network_predictions(predict_outputs(model, local, chunk), local, chunk, stats, 0.5, out)
        scores[name] = out.metrics()
    return {"n_train": len(splits["train"]), **scores}


def random_split_model(
    table: GraphTable, recipe: Any, seed: int, out_dir: Path, quick: bool = False
) -> tuple[torch.nn.Module, GraphTable, Any, dict[str, np.ndarray]]:
    """The recipe's pooled network trained on a random 80 % of every structure (cached in ``out_dir``).

    Returns:
        ``(model, table normalised with the split's statistics, the statistics, train / validation / test indices)``.
    """
    from matmeta.bench.fewshot_baselines import pooled_model
    from matmeta.predict.data import TargetStats
    from matmeta.predict.pooled import training_fields

    order = np.random.default_rng(seed).permutation(len(table))
    n_train, n_val = int(0.8 * len(table)), int(0.1 * len(table))
    train, val, test = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    stats = TargetStats.fit(table.energy[train], table.band_gap[train], table.n_atoms[train])
    pre = recipe.pretrain
    if quick:
        pre, train, val, test = dataclasses.replace(pre, epochs=1), train[:64], val[:32], test[:32]
    local = dataclasses.replace(table, y=stats.encode(table.energy, table.band_gap, table.n_atoms))
    key = {"split": "random80/10/10", "seed": seed, "pretrain": dataclasses.asdict(pre), "n": len(table),
           "model": training_fields(recipe.model)}  # fmt: skip
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model = pooled_model(local, train, recipe.model, pre.epochs, pre.lr, recipe.trainer.seed,
                         Path(out_dir) / "random_split.ckpt", key, batch_size=pre.batch_size)  # fmt: skip
    return model, local, stats, {"train": train, "validation": val, "test": test}
