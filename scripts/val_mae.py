"""Validation-family MAE of predictor checkpoints on the same fixed episodes (compare meta-training runs).

    python scripts/val_mae.py STORE CKPT [CKPT ...]

For each checkpoint: the validation families of its split, 5 episodes per family at k = 10
(support) and 30 query structures (``matmeta.bench.fewshot.make_episodes``, seed 0), adapted with
the checkpoint's own inference steps and rates; heat_ref MAE (eV/cell) and non-metal gap MAE (eV)
of the adapted model, averaged over episodes. Validation only: never the test families.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


def val_mae(store: Path, checkpoint: Path, k: int = 10, per_family: int = 5, query: int = 30) -> tuple[float, float]:
    """(heat_ref MAE eV/cell, non-metal gap MAE eV) on the checkpoint's validation families."""
    from matmeta.bench.fewshot import make_episodes
    from matmeta.predict.config import DataConfig
    from matmeta.predict.data import load_table
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load(checkpoint)
    table, _ = load_table(store, DataConfig(store=store), predictor.stats)
    episodes = make_episodes(table, predictor.metadata["families"]["val"], k, per_family, query, seed=0)
    heat, gap = [], []
    for _, support, rest in episodes:
        fast = predictor.maml.adapt(table.batch(support), predictor.loss)
        batch = table.batch(rest)
        with torch.no_grad():
            out = predictor.maml(*batch.inputs(), params=fast)
        pred_heat = predictor.stats.decode_heat(out[:, 0], batch.n_atoms).numpy()
        heat.append(np.mean(np.abs(pred_heat - table.heat_ref[rest])))
        truth = table.band_gap[rest]
        nonmetal = truth > predictor.stats.metal_threshold_ev
        if nonmetal.any():
            gap.append(np.mean(np.abs(predictor.stats.decode_gap(out[:, 2]).numpy()[nonmetal] - truth[nonmetal])))
    return float(np.mean(heat)), float(np.mean(gap))


if __name__ == "__main__":
    torch.set_num_threads(1)
    for path in sys.argv[2:]:
        heat_mae, gap_mae = val_mae(Path(sys.argv[1]), Path(path))
        print(f"{path}: val heat_ref MAE {heat_mae:.4f} eV/cell, non-metal gap MAE {gap_mae:.4f} eV (k=10)")
