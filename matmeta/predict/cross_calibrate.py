"""Cross-family (out-of-fold) calibration of the predictor's band-gap intervals.

Why: split-conformal intervals hold for a new family only when the calibration residuals are
exchangeable with that family's. The seven validation families hold 52 non-metals, 32 of them in
one family, and they proved easier than new families (session 5: leave-one-validation-family-out
coverage 0.90, test families 0.64). Here the TRAINING families calibrate too, out of fold: they
are split into ``folds`` family-grouped folds; for each fold the recipe is run unchanged on the
other training families (pooled pretraining, Meta-SGD, early stopping on the same validation
families) and that model's residuals on the fold's families are kept — the family-grouped
cross-conformal scheme (Vovk 2015; Barber et al., Ann. Statist. 49, 486, 2021, "CV+"). A fold
model has seen 4/5 of the training families, so its errors on a new family are, if anything,
larger than the shipped model's: the widths lean conservative.

Each fold's residuals use the fold model's own non-metal cut and σ(x) (distance to ITS training
structures, scaled by the median over the validation non-metals), exactly as the shipped model's
are computed (:func:`matmeta.predict.calibrate.calibration_parts`). They join the shipped model's
validation residuals in the gap's Mondrian quantiles; the heat widths keep the validation
calibration (they already cover).

Folds are cached as ``<work_dir>/cross/fold<i>of<k>.npz`` (no pickles), so ``matmeta calibrate``
resumes, and ``--fold i`` lets the folds run as separate processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.predict.calibrate import CalibrationParts

SAVED_KEYS = ("heat", "heat_std", "gap", "gap_std", "p_nonmetal", "nonmetal", "family", "sigma", "called")


def family_folds(families: Sequence[str], folds: int, seed: int) -> list[tuple[str, ...]]:
    """``families`` dealt into ``folds`` seeded, disjoint, near-equal groups (each sorted)."""
    if not 2 <= folds <= len(families):
        raise ValueError(f"folds must be between 2 and the number of families ({len(families)}), got {folds}")
    order = sorted(families)
    np.random.default_rng(seed).shuffle(order)
    return [tuple(sorted(order[i::folds])) for i in range(folds)]


def fold_path(work_dir: Path, fold: int, folds: int) -> Path:
    """Where fold ``fold`` of ``folds`` keeps its residuals."""
    return Path(work_dir) / "cross" / f"fold{fold}of{folds}.npz"


RESIDUAL_SETTINGS = ("mc_samples", "calibration_episodes", "open_shell_metal_offset")


def fold_key(recipe: dict[str, Any], held_out: Sequence[str], residuals: bool = True) -> str:
    """Digest of what a fold depends on: the recipe's model, training and data settings, its families.

    ``residuals``: include the post-training settings the residuals also depend on (False: the key of
    the fold's trained network alone). The number of folds is in the file name, so ``cross_folds``
    itself is not part of it.
    """
    relevant = {name: recipe.get(name) for name in ("data", "model", "pretrain", "maml", "episodes", "trainer")}
    if residuals:
        uncertainty = recipe.get("uncertainty") or {}
        relevant["uncertainty"] = {key: uncertainty.get(key) for key in RESIDUAL_SETTINGS if key in uncertainty}
    relevant["held_out"] = sorted(held_out)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _joined(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([np.asarray(part[key]) for part in parts]) for key in SAVED_KEYS}


def save_parts(path: Path, parts: CalibrationParts, key: str) -> None:
    """Write a fold's residuals (zero-shot, and all adaptation episodes joined) atomically as .npz."""
    from matmeta.atomic import atomic_path

    arrays = {f"zero/{name}": value for name, value in _joined([parts.zero]).items()}
    episodes = [part for by_k in parts.adapted.values() for part in by_k]
    arrays.update({f"adapted/{name}": value for name, value in _joined(episodes).items()})
    arrays["key"], arrays["cut"] = np.asarray(key), np.asarray(parts.cut)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_parts(path: Path, key: str) -> CalibrationParts | None:
    """A fold's residuals, or None when missing or computed for other settings (``key``)."""
    if not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        if str(data["key"]) != key:
            return None
        zero = {name: data[f"zero/{name}"] for name in SAVED_KEYS}
        adapted = {name: data[f"adapted/{name}"] for name in SAVED_KEYS}
        return CalibrationParts(zero, {"all": [adapted]}, float(data["cut"]), None)


TRAINED_NAME = "trained.ckpt"


def save_trained(path: Path, maml: Any, metadata: dict[str, Any]) -> None:
    """Keep a fold's trained network (safetensors), so new post-training settings need no retraining."""
    from matmeta.checkpoint import save_checkpoint

    save_checkpoint(path, maml.state_dict(), metadata)


def load_trained(path: Path, key: str, table: Any, offset: float) -> tuple[Any, Any] | None:
    """A fold's trained network and target statistics when ``path`` holds them for ``key`` (else None).

    Sets ``table.y`` to the fold's normalisation (as training does) and the network's open-shell offset.
    """
    from matmeta.predict.config import set_hurdle
    from matmeta.predict.predictor import Predictor

    if not Path(path).is_file():
        return None
    predictor = Predictor.load(path)
    if predictor.metadata.get("fold_key") != key:
        return None
    table.y = predictor.stats.encode(table.energy, table.band_gap, table.n_atoms)
    set_hurdle(predictor.maml, predictor.metadata, offset)
    return predictor.maml, predictor.stats


def predictor_recipe(recipe_path: Path) -> tuple[dict[str, Any], Any]:
    """The recipe (raw dict and ``PredictorRecipe``); a one-line error unless it trains the predictor."""
    from matmeta.errors import RecipeError
    from matmeta.predict.config import PredictorRecipe
    from matmeta.recipes import load_recipe

    recipe = load_recipe(recipe_path)
    app = (recipe.get("meta_train") or {}).get("app")
    if app != "predictor":
        raise RecipeError(
            f"{recipe_path}: calibration needs a predictor recipe ([meta_train] app = 'predictor'), got {app!r}"
        )
    return recipe, PredictorRecipe.from_recipe(recipe, str(recipe_path))


@dataclasses.dataclass
class FoldContext:
    """What every fold of one recipe shares: the recipe, its graph table and its family split (loaded once)."""

    recipe_path: Path
    recipe: dict[str, Any]
    cfg: Any
    table: Any
    graph_config: Any
    split: Any


def fold_context(recipe_path: Path) -> FoldContext:
    """Read the predictor recipe and its store once for all folds."""
    from matmeta.predict.data import ensure_store, load_table, split

    recipe, cfg = predictor_recipe(recipe_path)
    table, graph_config = load_table(ensure_store(cfg.data), cfg.data)
    return FoldContext(Path(recipe_path), recipe, cfg, table, graph_config, split(table, cfg.data))


def run_fold(
    recipe_path: Path, fold: int, folds: int | None = None, context: FoldContext | None = None
) -> CalibrationParts:
    """Meta-train the recipe without fold ``fold``'s training families; their residuals (cached, resumable).

    ``folds``: default the recipe's ``cross_folds``; ``context``: the recipe and table already loaded.
    """
    from matmeta.errors import RecipeError
    from matmeta.predict.calibrate import calibration_parts
    from matmeta.predict.train import train_on_split
    from matmeta.tasks import FamilySplit

    ctx = context or fold_context(recipe_path)
    recipe, cfg, whole = ctx.recipe, ctx.cfg, ctx.split
    folds = int(folds or cfg.uncertainty.cross_folds)
    if not (2 <= folds <= len(whole.train) and 0 <= fold < folds):
        raise RecipeError(
            f"{recipe_path}: fold {fold} of {folds} folds: need 2 ≤ folds ≤ {len(whole.train)} training families "
            f"and 0 ≤ fold < folds"
        )
    held_out = family_folds(whole.train, folds, cfg.trainer.seed)[fold]
    path, key = fold_path(Path(cfg.meta_train.work_dir), fold, folds), fold_key(recipe, held_out)
    cached = load_parts(path, key)
    if cached is not None:
        return cached
    import torch

    torch.manual_seed(cfg.trainer.seed)
    train = tuple(name for name in whole.train if name not in held_out)
    fold_split = FamilySplit(train=train, val=whole.val, test=held_out)
    work = path.parent / f"fold{fold}of{folds}"
    work.mkdir(parents=True, exist_ok=True)
    network_key = fold_key(recipe, held_out, residuals=False)
    trained = load_trained(work / TRAINED_NAME, network_key, ctx.table, cfg.uncertainty.open_shell_metal_offset)
    if trained is None:
        trainer_cfg = dataclasses.replace(cfg.trainer, log_path=work / "meta_train.jsonl")
        maml, stats, metadata, *_ = train_on_split(
            cfg, recipe, ctx.table, ctx.graph_config, fold_split, work, trainer_cfg
        )
        save_trained(work / TRAINED_NAME, maml, {**metadata, "fold_key": network_key})
    else:
        maml, stats = trained
    u = cfg.uncertainty
    parts = calibration_parts(
        maml, ctx.table, stats, held_out, u.mc_samples, u.calibration_episodes, cfg.trainer.seed,
        train_families=train, reference_families=whole.val,
    )  # fmt: skip
    save_parts(path, parts, key)
    return parts


def cross_calibrate(
    recipe_path: Path,
    checkpoint: Path | None = None,
    folds: int | None = None,
    on_fold: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every fold, then recalibrate ``checkpoint`` (default: the recipe's) with them; its entry."""
    from matmeta.predict.data import ensure_store

    context = fold_context(recipe_path)
    cfg = context.cfg
    folds = int(folds or cfg.uncertainty.cross_folds)
    extra = []
    for fold in range(folds):
        extra.append(run_fold(recipe_path, fold, folds, context))
        if on_fold is not None:
            on_fold(fold)
    checkpoint = Path(checkpoint or cfg.meta_train.out)
    settings = cfg.uncertainty
    return recalibrate_checkpoint(
        checkpoint,
        ensure_store(cfg.data),
        extra_gap_parts=extra,
        open_shell_metal_offset=settings.open_shell_metal_offset,
        new_family_shift=settings.new_family_gap_shift,
        new_family_platt=settings.new_family_platt,
        new_family_shift_adapted=settings.new_family_gap_shift_adapted,
    )


def recalibrate_checkpoint(
    checkpoint: Path,
    store: Path,
    out: Path | None = None,
    seed: int = 0,
    extra_gap_parts: Sequence[CalibrationParts] = (),
    open_shell_metal_offset: float | None = None,
    new_family_shift: bool = False,
    new_family_platt: bool = False,
    new_family_shift_adapted: bool = False,
) -> dict[str, Any]:
    """Recompute the ``uncertainty`` entry of a predictor checkpoint on its validation families; write it back.

    ``extra_gap_parts``: out-of-fold residuals of the training families (:mod:`matmeta.predict.cross_calibrate`).
    ``open_shell_metal_offset``: set this metal-logit hurdle on the network first (None: keep the checkpoint's).
    ``new_family_shift`` / ``new_family_platt`` / ``new_family_shift_adapted``: fit the new-family
    zero-shot gap offset / P(non-metal) recalibration / adapted gap offset (all need ``extra_gap_parts``).
    """
    from matmeta.checkpoint import save_checkpoint
    from matmeta.predict.calibrate import calibration_parts, uncertainty_entry
    from matmeta.predict.config import DataConfig
    from matmeta.predict.data import load_table
    from matmeta.predict.predictor import Predictor
    from matmeta.store.reader import GraphStore

    predictor = Predictor.load(checkpoint)
    if open_shell_metal_offset is not None:
        from matmeta.predict.config import set_hurdle

        set_hurdle(predictor.maml, predictor.metadata, open_shell_metal_offset)
    columns, names = predictor.metadata["targets"].get("source_columns", {}), predictor.names
    energy_column, gap_column = columns.get(names.energy, "heat_ref"), columns.get(names.gap, "ind_gap")
    store_targets = tuple(GraphStore(Path(store)).target_names)
    config = DataConfig(
        store=Path(store), family_by=predictor.metadata["families"]["by"] or "b_site", store_targets=store_targets,
        energy_column=energy_column, gap_column=gap_column, targets=names.names,
    )  # fmt: skip
    table, _ = load_table(Path(store), config, stats=predictor.stats)
    samples = int(predictor.uncertainty.get("mc_samples", 32))
    val = predictor.metadata["families"]["val"]
    episodes = int((predictor.metadata.get("recipe") or {}).get("uncertainty", {}).get("calibration_episodes", 60))
    train = predictor.metadata["families"]["train"]
    parts = calibration_parts(predictor.maml, table, predictor.stats, val, samples, episodes, seed, train)
    result = uncertainty_entry(
        parts, samples, val, extra_gap_parts, new_family_shift, new_family_platt, new_family_shift_adapted
    )
    if extra_gap_parts:
        result["cross_family"] = {
            "folds": len(extra_gap_parts),
            "families": sorted({str(f) for extra in extra_gap_parts for f in extra.zero["family"]}),
        }
    metadata = {**predictor.metadata, "uncertainty": result}
    save_checkpoint(out or checkpoint, predictor.maml.state_dict(), metadata)
    return result
