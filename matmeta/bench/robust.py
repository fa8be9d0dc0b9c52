"""Robust adaptation benchmark (``matmeta bench recipes/robust.toml``): the standard start against the robust start.

On the test prototypes of the shipped split (never used for a choice), fixed k = 10 episodes; for each episode:

* **standard**: the shipped start adapted with the clean loss (what ``matmeta finetune`` does);
* **standard + adversarial fine-tuning**: the shipped start adapted with the robust loss
  (:func:`matmeta.predict.robust.robust_loss_fn`) for the same number of steps;
* **robust**: the start meta-trained on perturbed tasks (``recipes/mp_robust.toml``) adapted with the robust loss
  (what ``matmeta finetune --robust`` does).

On each episode's query structures: clean MAE; MAE under random rattles (σ per Cartesian component) and under PGD
displacements that maximise the error (ε per atom); the worst-case drift of the prediction (PGD, up and down, on
energy and gap separately, as ``predict --sensitivity``). Energy in eV/atom; the gap is the non-metal gap head on
structures whose PBE gap is above the metal threshold (eV).

Speed of robustness: the drift target is half the standard row's mean energy drift at ``drift_epsilon``; the table
gives, for the robust start and for adversarial fine-tuning from the standard start, the mean drift after each
number of robust inner steps and the first step count that reaches the target.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

STARTS = ("standard", "standard + adversarial fine-tuning", "robust")


@dataclasses.dataclass(frozen=True)
class RobustBenchConfig:
    """The ``[bench]`` section of ``recipes/robust.toml``.

    ``split``: ``"test"`` (the benchmark) or ``"val"`` (the validation families, where settings are chosen);
    ``robust_checkpoint``: a candidate robust start (default: the robust recipe's ``out``).
    """

    name: str = "robust"
    predictor_recipe: Path = Path("recipes/mp.toml")
    robust_recipe: Path = Path("recipes/mp_robust.toml")
    robust_checkpoint: Path | None = None
    split: str = "test"
    k: int = 10
    episodes_per_family: int = 2
    query_size: int = 20
    rattle_sigmas: tuple[float, ...] = (0.02, 0.05, 0.1)
    pgd_epsilons: tuple[float, ...] = (0.02, 0.05, 0.1)
    pgd_steps: int = 5
    drift_epsilon: float = 0.05
    finetune_epsilon: float = 0.05
    step_schedule: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50)
    seed: int = 0
    out_dir: Path = Path("out/bench/robust")


def run(recipe: dict, recipe_path: Path, quick: bool) -> None:
    """Run the benchmark (``matmeta bench recipes/robust.toml``)."""
    from matmeta.recipes import config_from_dict

    config = config_from_dict(RobustBenchConfig, recipe.get("bench"), f"{recipe_path} [bench]")
    if quick:
        config = dataclasses.replace(
            config, episodes_per_family=1, query_size=4, step_schedule=(0, 1, 2), pgd_steps=2,
            rattle_sigmas=config.rattle_sigmas[:1], pgd_epsilons=config.pgd_epsilons[:1],
            out_dir=config.out_dir / "quick",
        )  # fmt: skip
    run_benchmark(config, quick=quick)


@dataclasses.dataclass
class Scores:
    """Per-structure absolute errors and drifts of one start, pooled over episodes."""

    columns: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def add(self, name: str, values: np.ndarray) -> None:
        """Append the finite ``values`` to column ``name``."""
        self.columns.setdefault(name, []).extend(float(v) for v in values if np.isfinite(v))

    def mean(self, name: str) -> float:
        """Mean of column ``name`` (NaN when empty)."""
        values = self.columns.get(name, [])
        return float(np.mean(values)) if values else float("nan")


def _errors(predictor: Any, out: torch.Tensor, batch: Any, table: Any, query: np.ndarray) -> tuple[np.ndarray, ...]:
    """Energy error (eV/atom) and non-metal gap error (eV, NaN elsewhere) of each query structure."""
    stats = predictor.stats
    n_atoms = batch.graphs.n_atoms
    energy = stats.decode_heat(out[:, 0], n_atoms).numpy() / n_atoms.numpy()
    truth_e = table.energy[query] / n_atoms.numpy()
    gap_truth = table.band_gap[query]
    nonmetal = gap_truth > stats.metal_threshold_ev
    gap = np.where(nonmetal, np.abs(stats.decode_gap(out[:, 2]).numpy() - gap_truth), np.nan)
    return np.abs(energy - truth_e), gap


def _error_objective(batch: Any) -> Any:
    """PGD objective: the squared normalised energy error plus the non-metal gap error, per graph."""
    y = batch.graphs.y
    nonmetal = torch.isfinite(y[:, 2])

    def objective(out: torch.Tensor) -> torch.Tensor:
        gap = torch.where(nonmetal, (out[:, 2] - torch.nan_to_num(y[:, 2])) ** 2, 0.0)
        return (out[:, 0] - y[:, 0]) ** 2 + gap

    return objective


def score_query(
    predictor: Any, forward: Any, batch: Any, table: Any, query: np.ndarray, config: RobustBenchConfig, scores: Scores
) -> None:
    """Clean, rattled and PGD errors and the worst-case drift of ``forward`` on one query batch."""
    from matmeta.predict.robust import moved_distances, outputs_at, pgd_displacement, worst_drift

    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        energy, gap = _errors(predictor, outputs_at(forward, batch, moved_distances(batch)), batch, table, query)
    scores.add("clean energy", energy)
    scores.add("clean gap", gap)
    n = batch.graphs.atomic_numbers.shape[0]
    for sigma in config.rattle_sigmas:
        delta = torch.randn(n, 3, generator=generator) * sigma
        with torch.no_grad():
            out = outputs_at(forward, batch, moved_distances(batch, delta))
        energy, gap = _errors(predictor, out, batch, table, query)
        scores.add(f"rattle {sigma:g} energy", energy)
        scores.add(f"rattle {sigma:g} gap", gap)
    for epsilon in config.pgd_epsilons:
        delta = pgd_displacement(forward, batch, epsilon, config.pgd_steps, generator, _error_objective(batch))
        with torch.no_grad():
            out = outputs_at(forward, batch, moved_distances(batch, delta))
        energy, gap = _errors(predictor, out, batch, table, query)
        scores.add(f"pgd {epsilon:g} energy", energy)
        scores.add(f"pgd {epsilon:g} gap", gap)
    drift = worst_drift(forward, batch, config.drift_epsilon, config.pgd_steps, config.seed).numpy()
    nonmetal = table.band_gap[query] > predictor.stats.metal_threshold_ev
    scores.add("drift energy", drift[:, 0] * predictor.stats.heat_per_atom_std)
    scores.add("drift gap", np.where(nonmetal, drift[:, 1] * predictor.stats.gap_std, np.nan))


def adapt_schedule(predictor: Any, support: Any, loss: Any, schedule: tuple[int, ...]) -> dict[int, dict]:
    """Fast weights after each step count of ``schedule`` (one continued adaptation, not one per count)."""
    maml = predictor.maml
    fast: dict | None = None
    done, out = 0, {}
    for steps in sorted(schedule):
        if steps > done:
            fast = maml.adapt(support, loss, steps=steps - done, params=fast)
            done = steps
        out[steps] = fast if fast is not None else {n: p.detach() for n, p in maml.meta_parameters().items()}
    return out


def run_benchmark(config: RobustBenchConfig, quick: bool = False) -> dict[str, Any]:
    """The whole benchmark; returns the summary also written to ``out_dir/summary.json``."""
    from matmeta.bench.fewshot_baselines import make_episodes
    from matmeta.console import console, progress
    from matmeta.errors import RecipeError
    from matmeta.predict.config import PredictorRecipe
    from matmeta.predict.data import ensure_store, load_table
    from matmeta.predict.predictor import Predictor
    from matmeta.predict.robust import EdgeVectors, Perturbation, RobustConfig, robust_loss_fn, worst_drift
    from matmeta.recipes import config_from_dict, load_recipe

    torch.manual_seed(config.seed)
    base_recipe = PredictorRecipe.from_recipe(load_recipe(config.predictor_recipe), str(config.predictor_recipe))
    robust_raw = load_recipe(config.robust_recipe)
    robust_recipe = PredictorRecipe.from_recipe(robust_raw, str(config.robust_recipe))
    if config.split not in ("test", "val"):
        raise RecipeError(f"[bench] split must be 'test' or 'val', got {config.split!r}")
    robust_path = config.robust_checkpoint or robust_recipe.meta_train.out
    starts = {"standard": Predictor.load(base_recipe.meta_train.out), "robust": Predictor.load(robust_path)}
    for predictor in starts.values():
        predictor.maml.eval()
    standard = starts["standard"]
    table, _ = load_table(ensure_store(base_recipe.data), base_recipe.data, stats=standard.stats)
    vectors = EdgeVectors(ensure_store(base_recipe.data))
    robust_cfg = config_from_dict(RobustConfig, robust_raw.get("robust"), f"{config.robust_recipe} [robust]")
    robust_loss = robust_loss_fn(robust_cfg)
    test_families = list(standard.metadata["families"][config.split])[: 2 if quick else None]
    episodes = make_episodes(table, test_families, config.k, config.episodes_per_family, config.query_size, config.seed)
    steps = standard.maml.inner_steps
    scores = {name: Scores() for name in STARTS}
    curves: dict[str, dict[int, list[float]]] = {"robust": {}, "standard + adversarial fine-tuning": {}}
    with progress() as bar:
        task = bar.add_task("episodes", total=len(episodes))
        for number, (_, support, query) in enumerate(episodes):
            perturbation = Perturbation("pgd", config.finetune_epsilon, config.seed + number)
            support_batch = vectors.batch(table, support).with_perturbation(perturbation)
            query_batch = vectors.batch(table, query)
            plain = standard.maml.adapt(support_batch.graphs, standard.loss, steps=steps)
            score_query(standard, standard.maml.functional(plain), query_batch, table, query, config,
                        scores["standard"])  # fmt: skip
            schedule = tuple(sorted({*config.step_schedule, steps}))
            for name, predictor in (("standard + adversarial fine-tuning", standard), ("robust", starts["robust"])):
                by_steps = adapt_schedule(predictor, support_batch, robust_loss, schedule)
                forward = predictor.maml.functional(by_steps[steps])
                score_query(predictor, forward, query_batch, table, query, config, scores[name])
                for count, fast in by_steps.items():
                    drift = worst_drift(predictor.maml.functional(fast), query_batch, config.drift_epsilon,
                                        config.pgd_steps, config.seed)  # fmt: skip
                    values = (drift[:, 0] * predictor.stats.heat_per_atom_std).tolist()
                    curves[name].setdefault(count, []).extend(values)
            bar.update(task, advance=1)
    summary = summarise(config, scores, curves, steps, len(episodes), test_families)
    report(summary)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out_dir / "summary.json")
    console.print(f"summary: {out_dir / 'summary.json'}")
    return summary


def summarise(
    config: RobustBenchConfig, scores: dict[str, Scores], curves: dict, steps: int, n_episodes: int, families: list
) -> dict[str, Any]:
    """Means per start and metric, the drift curves, the step counts to the target, and the goals."""
    rows = {name: {metric: s.mean(metric) for metric in s.columns} for name, s in scores.items()}
    target = 0.5 * rows["standard"]["drift energy"]
    curve_means = {name: {int(k): float(np.mean(v)) for k, v in sorted(c.items())} for name, c in curves.items()}
    reached = {name: next((k for k, v in c.items() if v <= target), None) for name, c in curve_means.items()}
    standard, robust = rows["standard"], rows["robust"]
    goals = {
        "drift_ratio": robust["drift energy"] / standard["drift energy"],
        "clean_ratio": robust["clean energy"] / standard["clean energy"],
        "drift_goal_met": robust["drift energy"] <= 0.5 * standard["drift energy"]
        and robust["clean energy"] <= 1.05 * standard["clean energy"],
    }
    fast, slow = reached["robust"], reached["standard + adversarial fine-tuning"]
    goals["speed_goal_met"] = fast is not None and (slow is None or fast <= slow / 5)
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()},
        "families": families,
        "episodes": n_episodes,
        "adapt_steps": steps,
        "rows": rows,
        "drift_target_ev_per_atom": target,
        "drift_curves": curve_means,
        "steps_to_target": reached,
        "goals": goals,
    }


def report(summary: dict[str, Any]) -> None:
    """Print the tables."""
    from rich.table import Table

    from matmeta.console import console

    rows = summary["rows"]
    metrics = list(rows["standard"])
    table = Table(title=f"robust adaptation, {summary['episodes']} {summary['config']['split']} episodes, k = 10 "
                  "(energy MAE / drift eV/atom, non-metal gap eV)")  # fmt: skip
    table.add_column("metric")
    for name in STARTS:
        table.add_column(name, justify="right")
    for metric in metrics:
        table.add_row(metric, *(f"{rows[name].get(metric, float('nan')):.4f}" for name in STARTS))
    console.print(table)
    curves = summary["drift_curves"]
    counts = sorted({k for c in curves.values() for k in c})
    speed = Table(title=f"mean energy drift (eV/atom) after n robust inner steps; target "
                  f"{summary['drift_target_ev_per_atom']:.4f} = 0.5 x the standard row")  # fmt: skip
    speed.add_column("start")
    for k in counts:
        speed.add_column(str(k), justify="right")
    speed.add_column("steps to target", justify="right")
    for name, curve in curves.items():
        reached = summary["steps_to_target"][name]
        speed.add_row(
            name, *(f"{curve.get(k, float('nan')):.4f}" for k in counts), "-" if reached is None else str(reached)
        )
    console.print(speed)
    goals = summary["goals"]
    console.print(
        f"drift ratio robust / standard {goals['drift_ratio']:.3f} (goal <= 0.5), "
        f"clean ratio {goals['clean_ratio']:.3f} "
        f"(goal <= 1.05): {'met' if goals['drift_goal_met'] else 'not met'}; speed goal "
        f"{'met' if goals['speed_goal_met'] else 'not met'}"
    )
