"""Run the calibration step of ``matmeta meta-train`` on a checkpoint whose run stopped before it.

    python scripts/finish_calibration.py RECIPE [CHECKPOINT]

``meta-train`` writes the trained network before calibrating it, so a run that stops during calibration leaves a
checkpoint without intervals. This reads the recipe's store and split and the checkpoint's own target statistics,
calibrates exactly as meta-training does (:func:`matmeta.predict.train.calibrate_trained`) and rewrites the
checkpoint in place (temp file + rename), weights unchanged. CHECKPOINT defaults to the recipe's ``out``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main() -> None:
    """Calibrate and save."""
    from matmeta.predict.config import PredictorRecipe
    from matmeta.predict.data import ensure_store, load_table, split
    from matmeta.predict.predictor import Predictor
    from matmeta.predict.train import calibrate_trained
    from matmeta.recipes import load_recipe

    torch.set_num_threads(1)
    recipe_path = Path(sys.argv[1])
    cfg = PredictorRecipe.from_recipe(load_recipe(recipe_path), str(recipe_path))
    checkpoint = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(cfg.meta_train.out)
    predictor = Predictor.load(checkpoint)
    table, _ = load_table(ensure_store(cfg.data), cfg.data, stats=predictor.stats)
    metadata = dict(predictor.metadata)
    torch.manual_seed(cfg.trainer.seed)
    calibrate_trained(cfg, predictor.maml, table, predictor.stats, split(table, cfg.data), metadata)
    Predictor(predictor.maml, metadata, None).save(checkpoint)
    print(f"{checkpoint}: calibrated ({', '.join(k for k in metadata['uncertainty'] if k != 'method')})")


if __name__ == "__main__":
    main()
