"""Uncertainty calibration: MC-dropout spreads scaled so that 90% intervals cover 90% on validation families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from matmeta.meta.maml import MAML
from matmeta.predict.config import UncertaintyConfig
from matmeta.predict.data import GraphTable, TargetStats, family_indices, loss_fn

Z90 = 1.6448536269514722


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
