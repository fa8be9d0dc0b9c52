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
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.conformal import roc_auc
from matmeta.predict.data import GraphTable


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
    from matmeta.bench.fewshot_mp_setup import prepare, random_split_scores
    from matmeta.console import progress

    torch.manual_seed(config.seed)
    setup = prepare(config, quick)
    predictor, table = setup.predictor, setup.table
    cut = predictor.nonmetal_cut
    zero_shot: dict[str, Predictions] = {"MAML (no adaptation)": Predictions(), "pooled": Predictions()}
    test_idx = setup.test_indices
    rows_predictions(predictor, table, test_idx, zero_shot["MAML (no adaptation)"])
    network_predictions(predict_outputs(setup.pooled, table, test_idx), table, test_idx, predictor.stats, cut,
                        zero_shot["pooled"])  # fmt: skip
    by_k: dict[int, dict[str, Predictions]] = {}
    episodes = {k: make_episodes(table, setup.test_families, k, config.episodes_per_family, config.query_size,
                                 config.seed + k) for k in config.ks}  # fmt: skip
    with progress() as bar:
        task = bar.add_task("episodes", total=sum(len(e) for e in episodes.values()))
        for k in config.ks:
            methods = by_k.setdefault(k, {m: Predictions() for m in ("MAML", "fine-tune", "zero-shot", "mean")})
            for _, support, query in episodes[k]:
                rows_predictions(adapted_predictor(predictor, table.batch(support), k), table, query, methods["MAML"])
                rows_predictions(predictor, table, query, methods["zero-shot"])
                tuned = adam_finetune(setup.pooled, table, support, setup.steps, setup.best_lr)
                network_predictions(predict_outputs(tuned, table, query), table, query, predictor.stats, cut,
                                    methods["fine-tune"])  # fmt: skip
                mean_predictions(table, support, query, methods["mean"])
                bar.update(task, advance=1)
    random_row = random_split_scores(setup, config, quick) if config.random_split else None
    return report(config, setup, zero_shot, by_k, random_row, quick)


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """``summary.json`` (atomic)."""
    from matmeta.atomic import write_text_atomic

    path = Path(out_dir) / "summary.json"
    write_text_atomic(path, json.dumps(summary, indent=2, default=float))
    return path
