"""Training side of the predictor app: recipe configs, data loading, meta-training, calibration, pooled baseline.

``matmeta meta-train recipes/perovskites.toml`` ends here (through ``matmeta.predict``):

1. the graph store is read (built from the shared CSV first when missing) into a :class:`GraphTable`;
2. families (``b_site`` by default) are split train/val/test with a seed (leave-family-out);
3. targets are normalised with training-family statistics;
4. the engine meta-trains ``CrystalGNN`` on episodes of training families, early-stopping on
   validation families (``MetaTrainer``);
5. the MC-dropout uncertainty is calibrated on validation families (zero-shot and adapted);
6. the checkpoint is written with everything needed to use it (graph settings, statistics,
   split, elements seen, engine settings, recipe, version).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from matmeta.console import format_phases, timed
from matmeta.errors import RecipeError
from matmeta.models.gnn import GNNConfig
from matmeta.predict.calibrate import calibrate
from matmeta.predict.config import PredictorRecipe, set_hurdle
from matmeta.predict.data import (
    TARGETS,
    UNITS,
    TargetNames,
    TargetStats,
    ensure_store,
    load_table,
    loss_fn,
    pretrain_indices,
    split,
)
from matmeta.predict.pooled import _cached_pooled, load_pooled, pooled_key, train_pooled
from matmeta.tasks import FamilyEpisodes


# ---------------------------------------------------------------------- meta-training
def predictor_metadata(
    recipe: PredictorRecipe, graph_config: Any, stats: TargetStats, family_split: Any, elements: Sequence[int]
) -> dict[str, Any]:
    """The metadata every predictor checkpoint carries (the trainer adds its own ``training`` entry)."""
    from matmeta.recipes import config_to_dict

    names = TargetNames(*recipe.data.targets)
    return {
        "kind": "predictor",
        "model_class": "CrystalGNN",
        "model_config": config_to_dict(recipe.model),
        "graph_config": graph_config.to_dict(),
        "maml": config_to_dict(recipe.maml),
        "targets": {
            "names": list(names.names),
            "units": {name: names.unit(name) for name in names.names},
            "stats": stats.to_dict(),
            "source_columns": {names.energy: recipe.data.energy_column, names.gap: recipe.data.gap_column},
        },
        "families": {
            "by": recipe.data.family_by,
            "train": list(family_split.train),
            "val": list(family_split.val),
            "test": list(family_split.test),
        },
        "elements_seen": [int(z) for z in elements],
        "adapted": None,
    }


def meta_train_from_recipe(recipe: dict, recipe_path: Path, out: Path | None = None, steps: int | None = None) -> Path:
    """Meta-train the predictor described by ``recipe``; returns the checkpoint path."""
    from matmeta.checkpoint import save_checkpoint
    from matmeta.console import console
    from matmeta.recipes import config_to_dict

    cfg = PredictorRecipe.from_recipe(recipe, str(recipe_path))
    if cfg.meta_train.app != "predictor":
        raise RecipeError(f"{recipe_path}: [meta_train] app must be 'predictor' here, got {cfg.meta_train.app!r}")
    trainer_cfg = cfg.trainer
    if steps is not None:
        trainer_cfg = dataclasses.replace(trainer_cfg, outer_steps=int(steps))
    work = Path(cfg.meta_train.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if trainer_cfg.log_path is None:
        trainer_cfg = dataclasses.replace(trainer_cfg, log_path=work / "meta_train.jsonl")
    out = Path(out) if out is not None else Path(cfg.meta_train.out)
    torch.manual_seed(trainer_cfg.seed)

    phases: dict[str, float] = {}
    with timed(phases, "reading the store"):
        table, graph_config = load_table(ensure_store(cfg.data), cfg.data)
    if abs(graph_config.cutoff_angstrom - cfg.model.cutoff_angstrom) > 1e-9:
        raise RecipeError(
            f"{recipe_path}: [model] cutoff_angstrom {cfg.model.cutoff_angstrom} differs from the store's "
            f"graph cutoff {graph_config.cutoff_angstrom}"
        )
    family_split = split(table, cfg.data)
    trained = train_on_split(cfg, recipe, table, graph_config, family_split, work, trainer_cfg, phases)
    maml, stats, metadata, result, trainer = trained

    def training_entry() -> dict[str, Any]:
        return {
            "steps": result.steps,
            "best_step": result.best_step,
            "best_val_loss": result.best_val_loss,
            "stopped_early": result.stopped_early,
            "trainer": config_to_dict(trainer_cfg),
            "phase_seconds": {name: round(seconds, 1) for name, seconds in phases.items()},
        }

    if not trainer.info.is_main:  # under torchrun only rank 0 writes the checkpoint
        return out
    metadata["training"] = training_entry()
    metadata["uncertainty"] = {"method": "mc_dropout", "mc_samples": cfg.uncertainty.mc_samples}
    save_checkpoint(out, maml.state_dict(), metadata)  # the trained network is kept whatever calibration does
    with timed(phases, "calibration"):
        calibrate_trained(cfg, maml, table, stats, family_split, metadata)
    metadata["training"] = training_entry()
    save_checkpoint(out, maml.state_dict(), metadata)
    console.print(
        f"best validation query loss {result.best_val_loss} at step {result.best_step}; "
        f"uncertainty scales {metadata['uncertainty']['zero_shot']} (zero-shot), "
        f"{metadata['uncertainty']['adapted']} (adapted)"
    )
    console.print(f"wall time: {format_phases(phases)}")
    return out


def calibrate_trained(
    cfg: PredictorRecipe, maml: Any, table: Any, stats: TargetStats, family_split: Any, metadata: dict[str, Any]
) -> None:
    """The calibration step of meta-training: ``metadata["uncertainty"]`` (and ``sites_seen`` for site stores).

    Also run on its own for a trained checkpoint whose run stopped before it (``scripts/finish_calibration.py``).
    """
    metadata["uncertainty"] = calibrate(
        maml,
        table,
        stats,
        family_split.val,
        cfg.uncertainty.mc_samples,
        cfg.uncertainty.calibration_episodes,
        cfg.trainer.seed,
        train_families=pretrain_families(table, family_split, cfg.data),
    )
    if cfg.data.family_by in ("b_site", "a_site"):  # site labels exist for ABX3 perovskite stores only
        from matmeta.predict.domain import sites_seen

        metadata["sites_seen"] = sites_seen(ensure_store(cfg.data), family_split.train, cfg.data.family_by)


def train_on_split(
    cfg: PredictorRecipe,
    recipe: dict,
    table: Any,
    graph_config: Any,
    family_split: Any,
    work: Path,
    trainer_cfg: Any,
    phases: dict[str, float] | None = None,
) -> tuple[Any, TargetStats, dict[str, Any], Any, Any]:
    """Pooled pretraining + meta-training on ``family_split.train`` (early stopping on ``.val``).

    Sets ``table.y`` to the targets normalised with the training families' statistics; adds the
    wall time of each phase to ``phases`` when given.

    Returns:
        ``(maml, stats, metadata, trainer result, trainer)``; ``maml`` is set up for inference
        (the recipe's inference-time inner steps, the unknown-element embedding).
    """
    from matmeta.console import console
    from matmeta.meta.trainer import MetaTrainer
    from matmeta.predict.config import build_maml

    train_idx = pretrain_indices(table, family_split, cfg.data)
    stats = TargetStats.fit(table.energy[train_idx], table.band_gap[train_idx], table.n_atoms[train_idx])
    table.y = stats.encode(table.energy, table.band_gap, table.n_atoms)
    elements = table.elements(train_idx)
    console.print(
        f"{len(table)} structures, {len(set(table.families))} {cfg.data.family_by} families: "
        f"{len(family_split.train)} train / {len(family_split.val)} val / {len(family_split.test)} test; "
        f"pooled pretraining on {len(train_idx)} structures"
    )

    maml = build_maml(cfg.model, cfg.maml)
    seed = trainer_cfg.seed
    if cfg.pretrain.epochs > 0:
        with timed(phases, "pooled pretraining"):
            pool = pretrain_families(table, family_split, cfg.data)
            load_pooled(maml.model, _pooled_state(cfg, table, train_idx, pool, stats, work, seed))
    train_source = FamilyEpisodes(table, family_split.train, cfg.episodes.k_support, cfg.episodes.k_query, seed)
    val_source = FamilyEpisodes(table, family_split.val, cfg.episodes.k_support, cfg.episodes.k_query, seed + 1)
    metadata = predictor_metadata(cfg, graph_config, stats, family_split, elements)
    metadata["recipe"] = recipe
    train_loss: Any = loss_fn
    stacker = maml.stacker
    if cfg.robust.enabled:  # perturbed-structure tasks, drift-penalised loss
        from matmeta.predict.robust import EdgeVectors, RobustEpisodes, robust_loss_fn
        from matmeta.recipes import config_to_dict

        vectors = EdgeVectors(ensure_store(cfg.data))
        train_source = RobustEpisodes(train_source, vectors, cfg.robust)
        val_source = RobustEpisodes(val_source, vectors, cfg.robust)
        train_loss = robust_loss_fn(cfg.robust)
        maml.stacker = None  # perturbed tasks run in the engine's loop (the padded path knows no edge vectors)
        metadata["robust"] = config_to_dict(cfg.robust)
    trainer = MetaTrainer(
        maml, train_loss, train_source, trainer_cfg, val_source, work / "meta_train.ckpt", metadata=metadata
    )
    with timed(phases, "meta-training"):
        result = trainer.fit()
    maml.stacker = stacker
    if cfg.maml.adapt_steps is not None:  # inference-time steps (calibration, finetune, benchmark)
        maml.inner_steps = int(cfg.maml.adapt_steps)
    maml.model.set_unknown_embedding(elements)  # type: ignore[operator]
    set_hurdle(maml, metadata, cfg.uncertainty.open_shell_metal_offset)
    return maml, stats, metadata, result, trainer


def _pooled_state(
    cfg: PredictorRecipe, table: Any, train_idx: Any, train_families: Any, stats: TargetStats, work: Path, seed: int
) -> dict[str, torch.Tensor]:
    """Weights of the network pretrained on the pooled training families (cached in ``work/pooled.ckpt``)."""
    from matmeta.checkpoint import save_checkpoint
    from matmeta.console import console

    key = pooled_key(train_families, cfg.model, cfg.pretrain, seed, stats, len(table))
    state = _cached_pooled(work / "pooled.ckpt", key)
    if state is not None:
        console.print(f"pooled pretraining: reusing {work / 'pooled.ckpt'} (same data, split, config and seed)")
        return state
    pooled = train_pooled(
        table, train_idx, cfg.model, cfg.pretrain.epochs, cfg.pretrain.batch_size, cfg.pretrain.lr, seed
    )
    state = pooled.state_dict()
    save_checkpoint(work / "pooled.ckpt", state, {"kind": "pooled-cache", "pooled_key": key})
    return state


def pretrain_families(table: Any, family_split: Any, data: Any) -> list[str]:
    """The families whose structures the network was trained on (the reference of σ(x) and the domain)."""
    if data.pretrain_pool == "train_families":
        return list(family_split.train)
    held = set(family_split.val) | set(family_split.test)
    return sorted({f for f in table.families if f not in held})


def untrained_predictor(
    model_config: GNNConfig | None = None,
    settings: Any = None,
    graph_config: Any = None,
    stats: TargetStats | None = None,
    elements: Sequence[int] = tuple(range(1, 84)),
    seed: int = 0,
) -> Any:
    """A ``Predictor`` with random weights and complete metadata (for tests, examples and smoke runs)."""
    from matmeta.graphs import GraphConfig
    from matmeta.predict.config import MAMLSettings, build_maml
    from matmeta.predict.predictor import Predictor
    from matmeta.recipes import config_to_dict

    torch.manual_seed(seed)
    model_config = model_config or GNNConfig()
    settings = settings or MAMLSettings()
    graph_config = graph_config or GraphConfig(cutoff_angstrom=model_config.cutoff_angstrom)
    stats = stats or TargetStats(0.29, 0.14, 1.7, 1.4)
    maml = build_maml(model_config, settings, inference=True)
    maml.eval()
    metadata = {
        "kind": "predictor",
        "model_class": "CrystalGNN",
        "model_config": config_to_dict(model_config),
        "graph_config": graph_config.to_dict(),
        "maml": config_to_dict(settings),
        "targets": {"names": list(TARGETS), "units": UNITS, "stats": stats.to_dict()},
        "families": {"by": None, "train": [], "val": [], "test": []},
        "elements_seen": [int(z) for z in elements],
        "uncertainty": {"method": "mc_dropout", "mc_samples": 8},
        "adapted": None,
    }
    return Predictor(maml, metadata, None)
