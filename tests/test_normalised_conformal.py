"""Locally adaptive (normalised) conformal gap intervals: σ(x) from head features, checkpoint round trip."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest


def _heteroscedastic(rng: np.random.Generator, reference: np.ndarray, entry: dict, n: int):
    """Features at random distances from the reference cloud; errors whose spread is 0.4 · σ(x) itself."""
    from matmeta.predict.difficulty import sigma

    directions = rng.normal(size=(n, reference.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    features = directions * rng.uniform(0.0, 4.0, size=(n, 1))
    s = sigma(entry, features)
    errors = np.abs(rng.normal(0.0, 0.4 * s))
    called = rng.random(n) < 0.5
    return features, s, errors, called


def test_normalised_score_covers_every_sigma_bin_where_a_constant_width_does_not():
    from matmeta.conformal import conformal_quantile, mondrian_quantiles
    from matmeta.predict.difficulty import decode_features, difficulty_entry
    from matmeta.predict.intervals import gap_half_widths

    rng = np.random.default_rng(0)
    train = rng.normal(0.0, 0.1, size=(400, 4))
    entry = difficulty_entry(train, rng.normal(0.0, 1.0, size=(200, 4)))
    assert decode_features(entry["reference"]).shape == (400, 4)
    feats, s, errors, called = _heteroscedastic(rng, train, entry, 3000)
    q = mondrian_quantiles(errors / s, called, 0.9)
    constant = conformal_quantile(errors, 0.9)
    uncertainty = {
        "difficulty": entry,
        "conformal": {"zero_shot": {"heat_ref_per_atom": 0.1, "band_gap_nonmetal": constant,
                                    "band_gap_scaled_called": q["true"], "band_gap_scaled_uncalled": q["false"],
                                    "band_gap_nonmetal_called": constant, "band_gap_nonmetal_uncalled": constant}},
    }  # fmt: skip
    feats, s, errors, called = _heteroscedastic(rng, train, entry, 30000)
    width = gap_half_widths(uncertainty, {}, ~called, feats)
    assert np.allclose(width, np.where(called, q["true"], q["false"]) * s)
    edges = np.quantile(s, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    bins = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 4)
    normalised = [np.mean(errors[bins == b] <= width[bins == b]) for b in range(5)]
    flat = [np.mean(errors[bins == b] <= constant) for b in range(5)]
    assert all(abs(c - 0.9) <= 0.025 for c in normalised), normalised
    assert flat[-1] < 0.8 and flat[0] > 0.97  # one width: too narrow where σ is large, too wide where small
    # a finetune leave-one-out width on the gap overrides the adaptive one; no difficulty entry: constant widths
    own = gap_half_widths(uncertainty, {"target": "band_gap", "loo_half_width": 1.7}, ~called[:5], feats[:5])
    assert np.allclose(own, 1.7)
    old = {"conformal": uncertainty["conformal"]}
    assert np.allclose(gap_half_widths(old, {}, ~called[:5], feats[:5]), constant)


def test_family_held_out_coverage_sees_a_family_whose_errors_are_larger():
    from matmeta.conformal import family_held_out_coverage

    rng = np.random.default_rng(1)
    families = np.repeat(np.array(list("abcdef")), 400)
    scores = np.abs(rng.normal(size=families.size))
    groups = rng.random(families.size) < 0.5
    same = family_held_out_coverage(scores, groups, families)
    assert same["all"] == pytest.approx(0.9, abs=0.02) and set(same) == {"all", *"abcdef"}
    harder = family_held_out_coverage(np.where(families == "f", 3.0 * scores, scores), groups, families)
    # family f held out: calibrated on a..e, it covers far less than 90% of its points; the others over-cover
    assert harder["f"] < 0.6 and min(harder[f] for f in "abcde") > 0.9


def test_knn_distance_is_the_mean_distance_to_the_k_nearest_rows():
    from matmeta.predict.difficulty import knn_distance

    reference = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    query = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert np.allclose(knn_distance(query, reference, 1), [0.0, 3.0])
    assert np.allclose(knn_distance(query, reference, 2), [1.5, 3.5])


def test_shipped_checkpoint_round_trips_its_difficulty_and_old_metadata_keeps_constant_widths(tmp_path: Path):
    from matmeta.io import read_structure_file
    from matmeta.predict.difficulty import decode_features
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load("perovskites")
    entry = predictor.uncertainty["difficulty"]
    reference = decode_features(entry["reference"])
    assert reference.shape[1] == predictor.model.config.hidden and len(reference) > 1000
    assert entry["offset"] == 1.0 and entry["scale"] > 0
    folder = Path(__file__).parents[1] / "data" / "structures"
    structures = [read_structure_file(folder / f"{name}.cif")[0][1] for name in ("SrTiO3", "LaFeO3")]
    before = predictor.predict_structures(structures, mc_samples=0)
    predictor.save(tmp_path / "again.ckpt")
    again = Predictor.load(tmp_path / "again.ckpt")
    assert again.uncertainty["difficulty"] == entry
    np.testing.assert_equal(again.predict_structures(structures, mc_samples=0), before)  # NaN std == NaN std
    # the same weights with the metadata of a checkpoint calibrated before σ(x): the old constant widths
    metadata = copy.deepcopy(predictor.metadata)
    del metadata["uncertainty"]["difficulty"]
    conformal = metadata["uncertainty"]["conformal"]
    for table in [conformal["zero_shot"], *conformal["adapted"].values()]:
        for key in [k for k in table if "scaled" in k]:
            del table[key]
    Predictor(predictor.maml, metadata).save(tmp_path / "old.ckpt")
    old = Predictor.load(tmp_path / "old.ckpt").predict_structures(structures, mc_samples=0)
    widths = metadata["uncertainty"]["conformal"]["zero_shot"]
    assert old[0]["gap_hi"] - old[0]["gap_if_nonmetal"] == pytest.approx(widths["band_gap_nonmetal_called"], abs=1e-6)
    assert old[1]["gap_hi"] - old[1]["gap_if_nonmetal"] == pytest.approx(widths["band_gap_nonmetal_uncalled"], abs=1e-6)
    assert [r["gap_if_nonmetal"] for r in old] == [r["gap_if_nonmetal"] for r in before]


def test_calibrate_with_training_families_adds_sigma_and_keeps_the_constant_widths(random_graph_table):
    import torch

    from matmeta.conformal import conformal_quantile
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.calibrate import calibrate
    from matmeta.predict.data import family_indices
    from matmeta.predict.difficulty import decode_features, knn_distance, sigma
    from matmeta.predict.kriging import head_features
    from matmeta.predict.train import untrained_predictor

    rng = np.random.default_rng(3)
    families = [f for f in "ABCDE" for _ in range(52)]  # k = 20 support + 30 query
    table, stats = random_graph_table(rng, families)
    predictor = untrained_predictor(GNNConfig(hidden=16, layers=1, n_rbf=8), stats=stats)
    val = ["C", "D", "E"]
    plain = calibrate(predictor.maml, table, stats, val, mc_samples=2, episodes_per_k=2, seed=0)
    full = calibrate(
        predictor.maml, table, stats, val, mc_samples=2, episodes_per_k=2, seed=0, train_families=["A", "B"]
    )
    assert "difficulty" not in plain and "band_gap_scaled_called" not in plain["conformal"]["zero_shot"]
    for key, value in plain["conformal"]["zero_shot"].items():  # the constant widths do not change
        assert full["conformal"]["zero_shot"][key] == value
    entry = full["difficulty"]
    assert entry["reference"]["shape"] == [104, 16]
    idx = family_indices(table, val)
    with torch.inference_mode(), head_features(predictor.model) as captured:
        out = predictor.maml(*table.batch(idx).inputs())
    features = captured["features"].numpy().astype(float)
    nonmetal = table.band_gap[idx] > 0
    reference = decode_features(entry["reference"])
    assert entry["scale"] == pytest.approx(np.median(knn_distance(features[nonmetal], reference)), rel=1e-6)
    errors = np.abs(stats.decode_gap(out[:, 2]).numpy() - table.band_gap[idx])[nonmetal]
    assert full["conformal"]["zero_shot"]["band_gap_scaled"] == pytest.approx(
        conformal_quantile(errors / sigma(entry, features[nonmetal]), 0.9), rel=1e-5
    )
    coverage = full["conformal"]["adapted"]["10"]["held_out_family_coverage_scaled"]
    assert 0.0 <= coverage <= 1.0
