"""Meta-training of the inverse-design decoder from a generator recipe (``matmeta meta-train``).

One job: ``[meta_train] app = "generator"`` → a checkpoint. :func:`meta_train_from_recipe` reads the
graph store (:func:`matmeta.design_data.load_design_data`), splits its families leave-family-out
exactly as the predictor does (:func:`family_split`), and meta-trains
:class:`matmeta.models.decoder.CrystalCVAE` with the engine (:class:`matmeta.meta.trainer.MetaTrainer`)
on :class:`matmeta.design_data.DecoderEpisodes`, writing a self-describing checkpoint that
:class:`matmeta.design.Generator` loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# where meta-training writes the shipped decoder by default, and what ``Generator.load()`` reads
from matmeta.checkpoint import SHIPPED_DIR as CHECKPOINT_DIR
from matmeta.design.data import CellArrays, DecoderEpisodes, element_features, load_design_data, loss_fn, site_elements
from matmeta.errors import RecipeError
from matmeta.models.decoder import CrystalCVAE, DecoderConfig

DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "CrystalCVAE-Perovskites-2026-11-26-BandGap.ckpt"


@dataclass(frozen=True)
class GeneratorTrainConfig:
    """The ``[meta_train]`` section of a generator recipe (besides ``app``).

    Attributes:
        store: graph store of the training structures.
        gap_target: band-gap target in the store (the one the predictor predicts as ``band_gap``).
        family_by: family key that defines tasks.
        split_seed: seed of the leave-family-out split.
        split_fractions: train / validation / test fractions of the families.
        k_support: unlabelled examples the inner loop adapts on.
        k_query: labelled cells per task for the outer loss.
        k_nonmetal: query cells drawn from the family's non-metals.
        null_prob: condition dropout on the query set.
        zero_shot_prob: fraction of episodes without adaptation (see ``DecoderEpisodes``).
        inner_lr: inner step size (initial value; Meta-SGD learns one per tensor).
        inner_steps: inner steps.
        first_order: first-order MAML.
        adapt: which parameters adapt ("all", "head" = the decoder only, ...).
        checkpoint: output path (relative to the repository root).
    """

    store: Path = Path("out/perov.lmdb")
    gap_target: str = "ind_gap"
    family_by: str = "b_site"
    split_seed: int = 0
    split_fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    k_support: int = 5
    k_query: int = 16
    k_nonmetal: int = 6
    null_prob: float = 0.2
    zero_shot_prob: float = 0.5
    inner_lr: float = 0.05
    inner_steps: int = 2
    first_order: bool = False
    adapt: str = "head"
    checkpoint: Path = DEFAULT_CHECKPOINT


def _repo_root(recipe_path: Path) -> Path:
    return Path(recipe_path).resolve().parent.parent


def _resolve(path: Path, recipe_path: Path) -> Path:
    return path if path.is_absolute() else _repo_root(recipe_path) / path


def family_split(arrays: CellArrays, config: GeneratorTrainConfig) -> Any:
    """The leave-family-out split of the store's families (``matmeta.tasks.split_families``).

    Called exactly as the predictor's recipe does (same families, fractions and seed), so the
    held-out test families are unseen by both the decoder and the predictor that scores it.
    """
    from matmeta.tasks import split_families

    return split_families(sorted(set(arrays.families)), fractions=tuple(config.split_fractions), seed=config.split_seed)


def meta_train_from_recipe(recipe: dict, recipe_path: Path, out: Path | None = None, steps: int | None = None) -> Path:
    """Meta-train the decoder from a recipe; returns the checkpoint path.

    Sections: ``[meta_train]`` (``GeneratorTrainConfig`` + ``app``), ``[model]`` (``DecoderConfig``
    without ``elements``), ``[trainer]`` (``TrainerConfig``).
    """
    from matmeta import __version__
    from matmeta.meta.maml import MAML
    from matmeta.meta.trainer import MetaTrainer, TrainerConfig
    from matmeta.recipes import config_from_dict, config_to_dict

    section = {k: v for k, v in recipe.get("meta_train", {}).items() if k != "app"}
    cfg = config_from_dict(GeneratorTrainConfig, section, f"{recipe_path}[meta_train]")
    model_section = dict(recipe.get("model", {}))
    if "elements" in model_section:
        raise RecipeError(f"{recipe_path}[model]: elements come from the store, do not set them")
    trainer_section = dict(recipe.get("trainer", {}))
    if steps is not None:
        trainer_section["outer_steps"] = int(steps)
    if trainer_section.get("log_path"):
        trainer_section["log_path"] = str(_resolve(Path(trainer_section["log_path"]), recipe_path))
    tcfg = config_from_dict(TrainerConfig, trainer_section, f"{recipe_path}[trainer]")
    from matmeta.store.datasets import ensure_store

    store = ensure_store(_resolve(cfg.store, recipe_path))
    arrays, _, elements = load_design_data(
        store, cfg.gap_target, cfg.family_by, min_family_size=cfg.k_support + cfg.k_query
    )
    model_section = {**model_section, "elements": list(elements), "element_features": element_features(elements)}
    mcfg = config_from_dict(DecoderConfig, model_section, f"{recipe_path}[model]")
    split = family_split(arrays, cfg)
    torch.manual_seed(tcfg.seed)
    model = CrystalCVAE(mcfg)
    maml = MAML(model, cfg.inner_lr, cfg.inner_steps, first_order=cfg.first_order, learn_inner_lr=True, adapt=cfg.adapt)
    common = dict(
        k_support=cfg.k_support,
        k_query=cfg.k_query,
        k_nonmetal=cfg.k_nonmetal,
        latent_dim=mcfg.latent_dim,
        gap_scale_ev=mcfg.gap_scale_ev,
        source=str(store),
    )
    train_src = DecoderEpisodes(
        arrays, split.train, null_prob=cfg.null_prob, zero_shot_prob=cfg.zero_shot_prob, **common
    )
    val_src = DecoderEpisodes(arrays, split.val, null_prob=0.0, **common) if split.val else None
    path = Path(out) if out is not None else _resolve(cfg.checkpoint, recipe_path)
    gaps = arrays.gap.numpy()
    train_mask = np.isin(np.array(arrays.families), np.array(split.train))
    metadata = {
        "kind": "generator",
        "model_class": "CrystalCVAE",
        "model_config": config_to_dict(mcfg),
        "train_config": config_to_dict(cfg),
        "gap_target": cfg.gap_target,
        "gap_range_ev": [0.0, float(gaps[train_mask].max())],
        "family_by": cfg.family_by,
        "families": {"train": list(split.train), "val": list(split.val), "test": list(split.test)},
        "site_elements": site_elements(arrays, elements),
        "recipe": recipe,
        "matmeta_version": __version__,
    }
    trainer = MetaTrainer(maml, loss_fn, train_src, tcfg, val_source=val_src, checkpoint_path=path, metadata=metadata)
    trainer.fit()
    return path
