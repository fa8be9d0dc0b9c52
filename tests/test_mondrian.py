"""Mondrian (per-group) split-conformal half-widths: coverage within each group, not only on average."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores |error| of two groups: 80% precise (σ = 0.2), 20% noisy (σ = 2)."""
    noisy = rng.random(n) < 0.2
    return np.abs(rng.normal(0.0, np.where(noisy, 2.0, 0.2))), noisy


def test_mondrian_covers_each_group_where_a_pooled_width_does_not():
    from matmeta.conformal import conformal_quantile, mondrian_quantiles

    rng = np.random.default_rng(0)
    scores, noisy = _draw(rng, 2000)
    widths = mondrian_quantiles(scores, noisy, 0.9)
    fresh, fresh_noisy = _draw(rng, 20000)
    width = np.where(fresh_noisy, widths["true"], widths["false"])
    for group in (fresh_noisy, ~fresh_noisy):
        assert np.mean(fresh[group] <= width[group]) == pytest.approx(0.9, abs=0.02)
    pooled = conformal_quantile(scores, 0.9)
    assert widths["pooled"] == pooled
    assert np.mean(fresh[fresh_noisy] <= pooled) < 0.75  # one width for all under-covers the noisy group


def test_mondrian_falls_back_to_the_pooled_width_for_a_tiny_group():
    from matmeta.conformal import mondrian_quantiles

    scores = np.arange(1.0, 21.0)
    groups = np.zeros(20, dtype=bool)
    groups[:3] = True  # 3 scores: too few for a 90% rank
    widths = mondrian_quantiles(scores, groups, 0.9)
    assert widths["true"] == widths["pooled"] == 19.0
    assert widths["false"] == 20.0  # 17 scores: rank ⌈18·0.9⌉ = 17, the largest of 4..20
    assert math.isinf(mondrian_quantiles(scores[:3], groups[:3], 0.9)["pooled"])


def test_half_widths_by_predicted_class_and_finetune_override():
    from matmeta.predict.intervals import half_widths

    entry = {"heat_ref_per_atom": 0.05, "band_gap_nonmetal": 1.0}
    old = {"conformal": {"zero_shot": entry, "adapted": {"10": entry}}}
    assert half_widths(old, {}) == (0.05, 1.0, 1.0)  # calibrated before Mondrian widths: one width
    new = {"conformal": {"zero_shot": {**entry, "band_gap_nonmetal_called": 0.8, "band_gap_nonmetal_uncalled": 2.5}}}
    assert half_widths(new, {}) == (0.05, 0.8, 2.5)
    own = {"kept": "kriged", "target": "band_gap", "loo_half_width": 1.7}
    assert half_widths(new, own) == (0.05, 1.7, 1.7)


def test_shipped_predictor_states_the_adaptive_gap_interval_of_the_predicted_class():
    import torch

    from matmeta.io import read_structure_file
    from matmeta.models.gnn import collate
    from matmeta.predict.difficulty import sigma
    from matmeta.predict.kriging import head_features
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load("perovskites")
    widths = predictor.uncertainty["conformal"]["zero_shot"]
    folder = Path(__file__).parents[1] / "data" / "structures"
    structures = [read_structure_file(folder / f"{name}.cif")[0][1] for name in ("SrTiO3", "LaFeO3")]
    insulator, metal = predictor.predict_structures(structures, mc_samples=0)
    assert insulator["band_gap"] > 0 and metal["band_gap"] == 0.0  # the shipped model's calls
    graphs, _ = predictor.graphs(structures)
    with torch.inference_mode(), head_features(predictor.model) as captured:
        predictor.forward(*collate([(*g, torch.full((3,), float("nan"))) for g in graphs]).inputs())
    s = sigma(predictor.uncertainty["difficulty"], captured["features"].numpy().astype(float))
    assert insulator["gap_hi"] - insulator["gap_if_nonmetal"] == pytest.approx(
        widths["band_gap_scaled_called"] * s[0], rel=1e-5
    )
    assert metal["gap_hi"] - metal["gap_if_nonmetal"] == pytest.approx(
        widths["band_gap_scaled_uncalled"] * s[1], rel=1e-5
    )
    assert widths["band_gap_scaled_uncalled"] != widths["band_gap_scaled_called"]  # one quantile per class
    assert predictor.uncertainty["cross_family"]["folds"] == 5  # training families calibrate too, out of fold
    assert widths["n_gap"] > 150
