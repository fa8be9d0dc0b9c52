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
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.errors import RecipeError, StoreError
from matmeta.meta.maml import MAML
from matmeta.models.gnn import CrystalGNN, GNNConfig
from matmeta.predictor_data import TARGETS, UNITS, FamilyEpisodes, GraphTable, TargetStats, graph_from_data, loss_fn

Z90 = 1.6448536269514722


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the structures come from and how they are grouped (a recipe's ``[data]`` section).

    Attributes:
        store: graph store path (LMDB).
        source_csv: CSV to build the store from when it is missing, relative to the shared data
            directory (``$MATMETA_SHARED_DATA``, default ``../shared/data``).
        family_by: family key (``b_site``, ``a_site``, ``anion_set``, ...).
        heat_column: store target holding the heat of formation (eV/cell).
        gap_column: store target holding the band gap (eV).
        split_fractions: train/val/test fractions of the families.
        split_seed: seed of the family split.
        min_family_size: families with fewer structures are left out of every split.
    """

    store: Path = Path("out/perov.lmdb")
    source_csv: str = "perovskites/perovskites.csv"
    family_by: str = "b_site"
    heat_column: str = "heat_ref"
    gap_column: str = "ind_gap"
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    min_family_size: int = 50


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """Episodes for meta-training (a recipe's ``[episodes]`` section).

    Attributes:
        k_support: support sizes, one picked at random per task.
        k_query: query size.
    """

    k_support: tuple[int, ...] = (5, 10, 20)
    k_query: int = 20


@dataclasses.dataclass(frozen=True)
class UncertaintyConfig:
    """MC-dropout uncertainty and its calibration on validation families (``[uncertainty]``).

    Attributes:
        mc_samples: dropout samples per prediction.
        calibration_k: unused (kept so older recipes load): adapted calibration runs at k = 5, 10, 20.
        calibration_episodes: validation episodes per support size for the adapted calibration
            (split-conformal quantiles, :mod:`matmeta.predictor_calibrate`).
    """

    mc_samples: int = 32
    calibration_k: int = 10
    calibration_episodes: int = 60


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Pooled pretraining before meta-training (a recipe's ``[pretrain]`` section).

    The meta-learned start is initialised from the network trained on all training families
    pooled (the same network the fine-tuning baseline starts from); ``epochs = 0`` starts
    meta-training from random weights.

    Attributes:
        epochs: passes over the pooled training families.
        lr: peak learning rate (one-cycle schedule, AdamW).
        batch_size: structures per batch.
    """

    epochs: int = 60
    lr: float = 2e-3
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """The ``[meta_train]`` section.

    Attributes:
        app: must be ``"predictor"``.
        out: the final checkpoint.
        work_dir: intermediate files (trainer checkpoint, resume state, log).
    """

    app: str = "predictor"
    out: Path = Path("out/predictor/predictor.ckpt")
    work_dir: Path = Path("out/predictor")


@dataclasses.dataclass(frozen=True)
class PredictorRecipe:
    """All settings of a predictor meta-training run, one dataclass per recipe section."""

    meta_train: MetaTrainConfig
    data: DataConfig
    model: GNNConfig
    maml: Any  # MAMLSettings (imported lazily from matmeta.predict to avoid a cycle)
    episodes: EpisodeConfig
    pretrain: PretrainConfig
    trainer: Any  # TrainerConfig
    uncertainty: UncertaintyConfig

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], where: str = "recipe") -> PredictorRecipe:
        """Build from a recipe dict; unknown sections or keys are refused."""
        from matmeta.meta.trainer import TrainerConfig
        from matmeta.predict import MAMLSettings
        from matmeta.recipes import config_from_dict

        sections = {
            "meta_train": MetaTrainConfig,
            "data": DataConfig,
            "model": GNNConfig,
            "maml": MAMLSettings,
            "episodes": EpisodeConfig,
            "pretrain": PretrainConfig,
            "trainer": TrainerConfig,
            "uncertainty": UncertaintyConfig,
        }
        extra = sorted(set(recipe) - set(sections))
        if extra:
            raise RecipeError(f"{where}: unknown section(s) {', '.join(extra)}; known: {', '.join(sections)}")
        built = {name: config_from_dict(kind, recipe.get(name), f"{where} [{name}]") for name, kind in sections.items()}
        return cls(**built)


def ensure_store(config: DataConfig, graph_config: Any = None) -> Path:
    """The recipe's store; built from the shared CSV (``source_csv``) when it does not exist yet."""
    from matmeta.datasets import ensure_store as ensure_dataset_store

    return ensure_dataset_store(
        config.store, config.source_csv, graph_config, targets=(config.heat_column, "ind_gap", "dir_gap")
    )


def load_table(store_path: Path, config: DataConfig, stats: TargetStats | None = None) -> tuple[GraphTable, Any]:
    """All graphs of a store with raw targets (``y`` normalised only when ``stats`` is given).

    Returns:
        ``(table, graph_config)``.
    """
    from matmeta.store import GraphStore

    store = GraphStore(store_path)
    names = list(store.target_names)
    for column in (config.heat_column, config.gap_column):
        if column not in names:
            raise StoreError(f"{store_path}: store has targets {names}, not {column!r}")
    targets = np.asarray(store.targets, dtype=float)
    heat = targets[:, names.index(config.heat_column)]
    gap = targets[:, names.index(config.gap_column)]
    graphs = [graph_from_data(store[i]) for i in range(len(store))]
    families = list(store.family_keys(config.family_by))
    table = GraphTable(graphs, torch.empty(0), heat, gap, families, list(store.ids))
    n_atoms = table.n_atoms
    table.y = (stats or TargetStats.fit(heat, gap, n_atoms)).encode(heat, gap, n_atoms)
    return table, store.graph_config


def family_indices(table: GraphTable, families: Sequence[str]) -> np.ndarray:
    """Indices of the structures whose family is in ``families``."""
    wanted = set(families)
    return np.array([i for i, f in enumerate(table.families) if f in wanted], dtype=np.int64)


def split(table: GraphTable, config: DataConfig) -> Any:
    """Seeded leave-family-out split (``FamilySplit``)."""
    from matmeta.tasks import split_families

    return split_families(
        table.families, fractions=config.split_fractions, seed=config.split_seed, min_size=config.min_family_size
    )


# ---------------------------------------------------------------------- calibration
def mc_predict(
    maml: MAML, table: GraphTable, indices: np.ndarray, fast: dict | None, samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point outputs (G, 3) and MC-dropout samples (S, G, 3) with fast weights ``fast``."""
    batch = table.batch(indices)
    with torch.inference_mode():
        return maml(*batch.inputs(), params=fast), maml(*batch.inputs(), params=fast, mc_samples=samples)


def _scale(errors: list[np.ndarray], stds: list[np.ndarray]) -> float:
    """Factor s such that |error| ≤ Z90 · s · σ for 90% of the points."""
    err, std = np.concatenate(errors), np.concatenate(stds)
    ok = np.isfinite(err) & np.isfinite(std) & (std > 0)
    if ok.sum() < 5:
        return 1.0
    return float(np.quantile(np.abs(err[ok]) / std[ok], 0.9) / Z90)


def calibrate(
    maml: MAML, table: GraphTable, stats: TargetStats, families: Sequence[str], config: UncertaintyConfig, seed: int
) -> dict[str, Any]:
    """Scales of the MC-dropout spread so 90% intervals hold on ``families`` (zero-shot and adapted)."""
    from matmeta.tasks import EpisodeSampler

    maml.eval()
    result: dict[str, Any] = {"method": "mc_dropout", "mc_samples": config.mc_samples, "interval": 0.9}
    index = family_indices(table, families)
    n_atoms = torch.as_tensor(table.n_atoms, dtype=torch.float32)
    torch.manual_seed(seed)

    def errors(idx: np.ndarray, fast: dict | None) -> tuple[np.ndarray, ...]:
        point, mc = mc_predict(maml, table, idx, fast, config.mc_samples)
        na = n_atoms[idx]
        heat_err = stats.decode_heat(point[:, 0], na).numpy() - table.heat_ref[idx]
        heat_std = stats.decode_heat(mc[..., 0], na).std(0).numpy()
        nonmetal = table.band_gap[idx] > stats.metal_threshold_ev
        gap_err = np.where(nonmetal, stats.decode_gap(point[:, 2]).numpy() - table.band_gap[idx], np.nan)
        gap_std = stats.decode_gap(mc[..., 2]).std(0).numpy()
        return heat_err, heat_std, gap_err, gap_std

    h_err, h_std, g_err, g_std = errors(index, None)
    result["zero_shot"] = {"heat_ref": _scale([h_err], [h_std]), "band_gap": _scale([g_err], [g_std])}
    k = config.calibration_k
    sampler = EpisodeSampler(table.families, list(families), k, 30, seed)
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for _ in range(config.calibration_episodes):
        episode = sampler.sample(generator)
        fast = maml.adapt(table.batch(episode.support), loss_fn)
        for store, values in zip(parts, errors(np.asarray(episode.query), fast), strict=True):
            store.append(values)
    result["adapted"] = {"heat_ref": _scale(parts[0], parts[1]), "band_gap": _scale(parts[2], parts[3])}
    result["calibration_k"] = k
    return result


# ---------------------------------------------------------------------- pooled baseline
def train_pooled(
    table: GraphTable,
    indices: np.ndarray,
    model_config: GNNConfig,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> CrystalGNN:
    """Train ``CrystalGNN`` on the pooled structures at ``indices`` (Adam, cosine decay).

    This is the standard transfer-learning baseline's pretraining (and the random-split model).
    """
    from matmeta.console import progress as progress_bar
    from matmeta.predictor_data import per_example_loss

    torch.manual_seed(seed)
    model = CrystalGNN(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    steps_per_epoch = max(1, math.ceil(len(indices) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    model.train()
    with progress_bar(disable=None if progress is None else not progress) as bar:
        task = bar.add_task("pooled training", total=epochs)
        for _ in range(epochs):
            order = rng.permutation(indices)
            for begin in range(0, len(order), batch_size):
                batch = table.batch(order[begin : begin + batch_size])
                loss = per_example_loss(model, batch).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
                schedule.step()
            bar.update(task, advance=1)
    model.eval()
    return model


def pooled_key(
    families: Sequence[str], model_config: GNNConfig, pretrain: PretrainConfig, seed: int, stats: TargetStats, n: int
) -> dict[str, Any]:
    """What identifies a pooled network (to reuse a cached one only when it was trained the same way)."""
    return {
        "families": sorted(families),
        "model": dataclasses.asdict(model_config),
        "pretrain": dataclasses.asdict(pretrain),
        "seed": seed,
        "stats": stats.to_dict(),
        "n": n,
    }


# ---------------------------------------------------------------------- meta-training
def predictor_metadata(
    recipe: PredictorRecipe, graph_config: Any, stats: TargetStats, family_split: Any, elements: Sequence[int]
) -> dict[str, Any]:
    """The metadata every predictor checkpoint carries (the trainer adds its own ``training`` entry)."""
    from matmeta.recipes import config_to_dict

    return {
        "kind": "predictor",
        "model_class": "CrystalGNN",
        "model_config": config_to_dict(recipe.model),
        "graph_config": graph_config.to_dict(),
        "maml": config_to_dict(recipe.maml),
        "targets": {
            "names": list(TARGETS),
            "units": UNITS,
            "stats": stats.to_dict(),
            "source_columns": {"heat_ref": recipe.data.heat_column, "band_gap": recipe.data.gap_column},
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


def _cached_pooled(path: Path, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """Weights of a pooled network cached at ``path`` when it was trained with the same ``key``."""
    import json

    from matmeta.checkpoint import load_checkpoint

    if not path.exists():
        return None
    try:
        tensors, metadata = load_checkpoint(path)
    except Exception:  # noqa: BLE001 - a broken cache is simply retrained
        return None
    same = json.loads(json.dumps(metadata.get("pooled_key"))) == json.loads(json.dumps(key))
    return tensors if same else None


def meta_train_from_recipe(recipe: dict, recipe_path: Path, out: Path | None = None, steps: int | None = None) -> Path:
    """Meta-train the predictor described by ``recipe``; returns the checkpoint path."""
    from matmeta.checkpoint import save_checkpoint
    from matmeta.console import console
    from matmeta.domain import sites_seen
    from matmeta.meta.trainer import MetaTrainer
    from matmeta.predict import build_maml
    from matmeta.predictor_calibrate import calibrate as calibrate_predictor
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

    table, graph_config = load_table(ensure_store(cfg.data), cfg.data)
    if abs(graph_config.cutoff_angstrom - cfg.model.cutoff_angstrom) > 1e-9:
        raise RecipeError(
            f"{recipe_path}: [model] cutoff_angstrom {cfg.model.cutoff_angstrom} differs from the store's "
            f"graph cutoff {graph_config.cutoff_angstrom}"
        )
    family_split = split(table, cfg.data)
    train_idx = family_indices(table, family_split.train)
    stats = TargetStats.fit(table.heat_ref[train_idx], table.band_gap[train_idx], table.n_atoms[train_idx])
    table.y = stats.encode(table.heat_ref, table.band_gap, table.n_atoms)
    elements = table.elements(train_idx)
    console.print(
        f"{len(table)} structures, {len(set(table.families))} {cfg.data.family_by} families: "
        f"{len(family_split.train)} train / {len(family_split.val)} val / {len(family_split.test)} test"
    )

    maml = build_maml(cfg.model, cfg.maml)
    seed = trainer_cfg.seed
    if cfg.pretrain.epochs > 0:
        key = pooled_key(family_split.train, cfg.model, cfg.pretrain, seed, stats, len(table))
        state = _cached_pooled(work / "pooled.ckpt", key)
        if state is None:
            pooled = train_pooled(
                table, train_idx, cfg.model, cfg.pretrain.epochs, cfg.pretrain.batch_size, cfg.pretrain.lr, seed
            )
            state = pooled.state_dict()
            save_checkpoint(work / "pooled.ckpt", state, {"kind": "pooled-cache", "pooled_key": key})
        else:
            console.print(f"pooled pretraining: reusing {work / 'pooled.ckpt'} (same data, split, config and seed)")
        maml.model.load_state_dict(state)
    train_source = FamilyEpisodes(table, family_split.train, cfg.episodes.k_support, cfg.episodes.k_query, seed)
    val_source = FamilyEpisodes(table, family_split.val, cfg.episodes.k_support, cfg.episodes.k_query, seed + 1)
    metadata = predictor_metadata(cfg, graph_config, stats, family_split, elements)
    metadata["recipe"] = recipe
    trainer = MetaTrainer(
        maml, loss_fn, train_source, trainer_cfg, val_source, work / "meta_train.ckpt", metadata=metadata
    )
    result = trainer.fit()
    if cfg.maml.adapt_steps is not None:  # inference-time steps (calibration below, finetune, benchmark)
        maml.inner_steps = int(cfg.maml.adapt_steps)
    maml.model.set_unknown_embedding(elements)  # type: ignore[operator]
    metadata["uncertainty"] = calibrate_predictor(
        maml, table, stats, family_split.val, cfg.uncertainty.mc_samples, cfg.uncertainty.calibration_episodes, seed
    )
    metadata["sites_seen"] = sites_seen(ensure_store(cfg.data), family_split.train)
    metadata["training"] = {
        "steps": result.steps,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "trainer": config_to_dict(trainer_cfg),
    }
    if not trainer.info.is_main:  # under torchrun only rank 0 writes the checkpoint
        return out
    save_checkpoint(out, maml.state_dict(), metadata)
    console.print(
        f"best validation query loss {result.best_val_loss} at step {result.best_step}; "
        f"uncertainty scales {metadata['uncertainty']['zero_shot']} (zero-shot), "
        f"{metadata['uncertainty']['adapted']} (adapted)"
    )
    return out


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
    from matmeta.predict import MAMLSettings, Predictor, build_maml
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
