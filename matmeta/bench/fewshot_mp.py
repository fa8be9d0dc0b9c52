"""Few-shot benchmark of the Materials Project predictor on test prototypes (``matmeta bench recipes/fewshot_mp.toml``).

On the test families of the checkpoint's fixed split (structure prototypes never used for any choice),
side by side in one run:

* zero-shot: the shipped meta-learned checkpoint, unadapted, through ``predict``'s own path (its 90%
  intervals and out-of-domain flags are the ones a user gets), on every structure of the test families;
* pooled: the network after pooled pretraining on every structure outside the validation and test
  families (the CGCNN-style, non-meta baseline; the meta-learned start begins here);
* at k = 5 / 10 / 20, on the same episodes: MAML (the engine's inner loop with the meta-learned rates),
  fine-tune (the pooled network, Adam for the same number of steps, its learning rate chosen on the
  validation families), and the support mean;
* a random-split row: the recipe's pooled network trained on a random 80 / 10 / 10 split of all
  structures (the setting of the CGCNN / MEGNet / ALIGNN numbers).

Metrics: formation-energy MAE (eV/atom), PBE gap MAE over all structures (a called metal counts 0) and
over true non-metals, metal ROC-AUC, coverage of the 90% intervals, overall and per family; predict
throughput end to end. Tables print; ``summary.json`` and ``per_family.csv`` go to ``out_dir``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class FewshotMPConfig:
    """The ``[bench]`` section of ``recipes/fewshot_mp.toml``.

    Attributes:
        name: ``"fewshot_mp"``.
        predictor_recipe: the meta-training recipe (data, split, model, pooled pretraining).
        checkpoint: the checkpoint under test (None: the recipe's output).
        ks: support sizes.
        episodes_per_family: episodes per test family and k.
        query_size: query structures per episode.
        finetune_lrs: the fine-tuning baseline's learning rates (chosen on validation families).
        val_episodes_per_family: validation episodes per family for that choice.
        random_split: also train and score the random 80/10/10 split.
        throughput_structures: CIF files predicted end to end for the throughput row.
        seed: one seed for episodes and trainings.
        out_dir: results.
        compare_checkpoints: other meta-trained starts of the same split (e.g. the learned activation of
            ``recipes/mp_rational_activation.toml``), scored beside the shipped one: zero-shot and MAML at every k.
    """

    name: str = "fewshot_mp"
    predictor_recipe: Path = Path("recipes/mp.toml")
    checkpoint: Path | None = None
    ks: tuple[int, ...] = (5, 10, 20)
    episodes_per_family: int = 10
    query_size: int = 30
    finetune_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    val_episodes_per_family: int = 3
    random_split: bool = True
    throughput_structures: int = 2000
    seed: int = 0
    out_dir: Path = Path("out/bench/fewshot_mp")
    compare_checkpoints: tuple[Path, ...] = ()


# ---------------------------------------------------------------------- the benchmark
def run(recipe: dict, recipe_path: Path, quick: bool) -> None:
    """Run the benchmark (``matmeta bench recipes/fewshot_mp.toml``)."""
    from matmeta.recipes import config_from_dict

    config = config_from_dict(FewshotMPConfig, recipe.get("bench"), f"{recipe_path} [bench]")
    if quick:
        config = dataclasses.replace(
            config, ks=(5,), episodes_per_family=1, query_size=8, finetune_lrs=(1e-3,), val_episodes_per_family=1,
            random_split=False, throughput_structures=16, out_dir=config.out_dir / "quick",
        )  # fmt: skip
    run_benchmark(config, quick=quick)


def run_benchmark(config: FewshotMPConfig, quick: bool = False) -> dict[str, Any]:
    """The whole benchmark; returns the summary also written to ``out_dir/summary.json``."""
    from matmeta.bench.fewshot_baselines import adam_finetune, make_episodes, predict_outputs
    from matmeta.bench.fewshot_mp_report import report
    from matmeta.bench.fewshot_mp_scores import (
        Predictions,
        adapted_predictor,
        mean_predictions,
        network_predictions,
        rows_predictions,
    )
    from matmeta.bench.fewshot_mp_setup import prepare, random_split_scores
    from matmeta.console import progress

    torch.manual_seed(config.seed)
    setup = prepare(config, quick)
    predictor, table = setup.predictor, setup.table
    cut = predictor.nonmetal_cut
    zero_shot: dict[str, Any] = {"MAML (no adaptation)": Predictions(), "pooled": Predictions()}
    test_idx = setup.test_indices
    rows_predictions(predictor, table, test_idx, zero_shot["MAML (no adaptation)"])
    others = compared_starts(config, setup)
    for name, other in others.items():
        zero_shot[f"{name} (no adaptation)"] = Predictions()
        rows_predictions(other, table, test_idx, zero_shot[f"{name} (no adaptation)"])
    network_predictions(predict_outputs(setup.pooled, table, test_idx), table, test_idx, predictor.stats, cut,
                        zero_shot["pooled"])  # fmt: skip
    by_k: dict[int, dict[str, Any]] = {}
    episodes = {k: make_episodes(table, setup.test_families, k, config.episodes_per_family, config.query_size,
                                 config.seed + k) for k in config.ks}  # fmt: skip
    with progress() as bar:
        task = bar.add_task("episodes", total=sum(len(e) for e in episodes.values()))
        for k in config.ks:
            names = ("MAML", *others, "fine-tune", "zero-shot", "mean")
            methods = by_k.setdefault(k, {m: Predictions() for m in names})
            for _, support, query in episodes[k]:
                rows_predictions(adapted_predictor(predictor, table.batch(support), k), table, query, methods["MAML"])
                for name, other in others.items():
                    rows_predictions(adapted_predictor(other, table.batch(support), k), table, query, methods[name])
                rows_predictions(predictor, table, query, methods["zero-shot"])
                tuned = adam_finetune(setup.pooled, table, support, setup.steps, setup.best_lr)
                network_predictions(predict_outputs(tuned, table, query), table, query, predictor.stats, cut,
                                    methods["fine-tune"])  # fmt: skip
                mean_predictions(table, support, query, methods["mean"])
                bar.update(task, advance=1)
    random_row = random_split_scores(setup, config, quick) if config.random_split else None
    return report(config, setup, zero_shot, by_k, random_row, quick)


def compared_starts(config: FewshotMPConfig, setup: Any) -> dict[str, Any]:
    """The ``compare_checkpoints`` by row name (``MAML, <activation> activation``), checked to share the split."""
    from matmeta.errors import CheckpointError
    from matmeta.predict.predictor import Predictor

    starts = {}
    for path in config.compare_checkpoints:
        other = Predictor.load(path)
        if list(other.metadata["families"]["test"]) != list(setup.predictor.metadata["families"]["test"]):
            raise CheckpointError(f"{path}: its test families differ from {setup.checkpoint}'s")
        if other.stats != setup.predictor.stats:
            raise CheckpointError(f"{path}: its target statistics differ from {setup.checkpoint}'s")
        activation = other.metadata["model_config"].get("activation", "silu")
        starts[f"MAML, {activation} activation"] = other
    return starts
