"""Validation-family MAE of predictor checkpoints on the same fixed episodes (compare meta-training runs).

    python scripts/val_mae.py RECIPE CKPT [CKPT ...]

RECIPE gives the store and the family key (e.g. recipes/mp.toml); every checkpoint must have been trained on that
split. For each checkpoint: its validation families, 5 episodes per family at k = 10 (support) and 30 query
structures (``matmeta.bench.fewshot_baselines.make_episodes``, seed 0, the same episodes for every checkpoint),
the network unadapted and adapted with the checkpoint's own inference steps and rates; energy MAE in the
checkpoint's public unit and non-metal gap MAE (eV, the gap head on structures above the metal threshold), averaged
over episodes. Validation only: never the test families.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


def val_mae(recipe_path: Path, checkpoint: Path, k: int = 10, per_family: int = 5, query: int = 30) -> dict:
    """``{"zero-shot": (energy MAE, gap MAE), "adapted": (...)}`` on the checkpoint's validation families."""
    from matmeta.bench.fewshot_baselines import make_episodes
    from matmeta.predict.config import PredictorRecipe
    from matmeta.predict.data import ensure_store, load_table
    from matmeta.predict.predictor import Predictor
    from matmeta.recipes import load_recipe

    recipe = PredictorRecipe.from_recipe(load_recipe(recipe_path), str(recipe_path))
    predictor = Predictor.load(checkpoint)
    predictor.maml.eval()
    table, _ = load_table(ensure_store(recipe.data), recipe.data, predictor.stats)
    episodes = make_episodes(table, predictor.metadata["families"]["val"], k, per_family, query, seed=0)
    per_atom = predictor.names.energy_per_atom
    scores: dict[str, list[tuple[float, float]]] = {"zero-shot": [], "adapted": []}
    for _, support, rest in episodes:
        batch = table.batch(rest)
        fast = predictor.maml.adapt(table.batch(support), predictor.loss)
        for name, params in (("zero-shot", None), ("adapted", fast)):
            with torch.no_grad():
                out = predictor.maml(*batch.inputs(), params=params, **batch.extra())
            n_atoms = batch.n_atoms.numpy()
            energy = predictor.stats.decode_heat(out[:, 0], batch.n_atoms).numpy()
            error = np.abs(energy - table.energy[rest]) / (n_atoms if per_atom else 1.0)
            truth = table.band_gap[rest]
            nonmetal = truth > predictor.stats.metal_threshold_ev
            gap = predictor.stats.decode_gap(out[:, 2]).numpy()
            gap_mae = float(np.mean(np.abs(gap[nonmetal] - truth[nonmetal]))) if nonmetal.any() else np.nan
            scores[name].append((float(np.mean(error)), gap_mae))
    return {
        name: (float(np.mean([e for e, _ in v])), float(np.nanmean([g for _, g in v]))) for name, v in scores.items()
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    for path in sys.argv[2:]:
        found = val_mae(Path(sys.argv[1]), Path(path))
        cells = ", ".join(f"{name}: energy {e:.4f}, non-metal gap {g:.4f} eV" for name, (e, g) in found.items())
        print(f"{path} (k=10, validation families): {cells}")
