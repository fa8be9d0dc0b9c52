"""Cross-family calibration: folds, cached residuals, and which quantiles the out-of-fold residuals change."""

from __future__ import annotations

import numpy as np
import pytest


def test_family_folds_partition_the_families_reproducibly():
    from matmeta.predict.cross_calibrate import family_folds

    families = [f"F{i:02d}" for i in range(30)]
    folds = family_folds(families, 5, seed=0)
    assert sorted(f for fold in folds for f in fold) == sorted(families)
    assert [len(fold) for fold in folds] == [6] * 5
    assert folds == family_folds(list(reversed(families)), 5, seed=0)  # order of the input does not matter
    assert folds != family_folds(families, 5, seed=1)
    with pytest.raises(ValueError, match="folds"):
        family_folds(families[:3], 4, seed=0)


@pytest.fixture
def parts(random_graph_table):
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.calibrate import calibration_parts
    from matmeta.predict.train import untrained_predictor

    rng = np.random.default_rng(5)
    table, stats = random_graph_table(rng, [f for f in "ABCDEF" for _ in range(52)])
    maml = untrained_predictor(GNNConfig(hidden=16, layers=1, n_rbf=8), stats=stats).maml
    shipped = calibration_parts(maml, table, stats, ["C", "D"], 2, 2, 0, train_families=["A", "B"])
    fold = calibration_parts(
        maml, table, stats, ["E", "F"], 2, 2, 0, train_families=["A", "B"], reference_families=["C", "D"]
    )
    return shipped, fold


def test_a_fold_takes_its_cut_and_scale_from_the_reference_families(parts):
    shipped, fold = parts
    assert fold.cut == shipped.cut  # same model, same reference (validation) families
    assert fold.difficulty["scale"] == shipped.difficulty["scale"]
    assert set(fold.zero["family"]) == {"E", "F"}
    np.testing.assert_array_equal(fold.zero["called"], fold.zero["p_nonmetal"] >= fold.cut)


def test_out_of_fold_residuals_join_only_the_gap_quantiles(parts):
    from matmeta.conformal import mondrian_quantiles
    from matmeta.predict.calibrate import uncertainty_entry

    shipped, fold = parts
    alone = uncertainty_entry(shipped, 2, ["C", "D"])
    joined = uncertainty_entry(shipped, 2, ["C", "D"], [fold])
    zero_alone, zero_joined = alone["conformal"]["zero_shot"], joined["conformal"]["zero_shot"]
    assert zero_joined["heat_ref_per_atom"] == zero_alone["heat_ref_per_atom"]
    assert zero_joined["n_gap"] == zero_alone["n_gap"] + int(np.isfinite(fold.zero["gap"]).sum())
    scores = np.concatenate([np.abs(p["gap"]) / p["sigma"] for p in (shipped.zero, fold.zero)])
    p_nonmetal = np.concatenate([shipped.zero["p_nonmetal"], fold.zero["p_nonmetal"]])
    called = p_nonmetal >= joined["nonmetal_threshold"]  # every model's calls at the one pooled cut
    expected = mondrian_quantiles(scores, called, 0.9)
    assert zero_joined["band_gap_scaled_called"] == pytest.approx(expected["true"])
    assert zero_joined["band_gap_scaled_uncalled"] == pytest.approx(expected["false"])
    for k in ("5", "10", "20"):  # the adapted gap widths pool every k and every model's episodes
        assert (
            joined["conformal"]["adapted"][k]["band_gap_scaled"]
            == joined["conformal"]["adapted"]["10"]["band_gap_scaled"]
        )
        assert (
            joined["conformal"]["adapted"][k]["heat_ref_per_atom"]
            == alone["conformal"]["adapted"][k]["heat_ref_per_atom"]
        )


def test_the_non_metal_cut_is_chosen_on_every_family_together(parts):
    from matmeta.conformal import balanced_threshold
    from matmeta.predict.calibrate import MIN_PRECISION, uncertainty_entry, with_cut

    shipped, fold = parts
    fold_zero = {**fold.zero, "p_nonmetal": fold.zero["p_nonmetal"] ** 3}  # another model: other scores
    other = with_cut(type(fold)(fold_zero, fold.adapted, fold.cut, fold.difficulty), fold.cut)
    joined = uncertainty_entry(shipped, 2, ["C", "D"], [other])
    p = np.concatenate([shipped.zero["p_nonmetal"], fold_zero["p_nonmetal"]])
    nonmetal = np.concatenate([shipped.zero["nonmetal"], fold.zero["nonmetal"]])
    assert joined["nonmetal_threshold"] == balanced_threshold(p, nonmetal, MIN_PRECISION)
    assert uncertainty_entry(shipped, 2, ["C", "D"])["nonmetal_threshold"] == shipped.cut  # alone: its own cut
    np.testing.assert_array_equal(other.zero["called"], fold_zero["p_nonmetal"] >= fold.cut)  # inputs unchanged


def test_saved_fold_residuals_reload_only_for_the_same_settings(parts, tmp_path):
    from matmeta.predict.calibrate import uncertainty_entry
    from matmeta.predict.cross_calibrate import load_parts, save_parts

    shipped, fold = parts
    path = tmp_path / "cross" / "fold0of5.npz"
    save_parts(path, fold, "abc")
    assert load_parts(path, "other") is None
    assert load_parts(tmp_path / "missing.npz", "abc") is None
    loaded = load_parts(path, "abc")
    np.testing.assert_array_equal(loaded.zero["family"], fold.zero["family"])
    assert loaded.cut == fold.cut
    direct = uncertainty_entry(shipped, 2, ["C", "D"], [fold])["conformal"]
    reloaded = uncertainty_entry(shipped, 2, ["C", "D"], [loaded])["conformal"]
    assert reloaded["zero_shot"]["band_gap_scaled"] == direct["zero_shot"]["band_gap_scaled"]
    assert reloaded["adapted"]["10"]["band_gap_scaled"] == direct["adapted"]["10"]["band_gap_scaled"]


def test_calibrate_refuses_a_recipe_that_does_not_train_the_predictor():
    import subprocess
    import sys
    from pathlib import Path

    command = [sys.executable, "-m", "matmeta.cli", "calibrate", "recipes/jmak.toml", "--fold", "0"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: recipes/jmak.toml: calibration needs a predictor recipe ([meta_train] app = 'predictor'), got 'jmak'"
    ]


def test_a_trained_fold_is_reused_only_for_the_same_training_settings(random_graph_table, tmp_path):
    import torch

    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.cross_calibrate import fold_key, load_trained, save_trained
    from matmeta.predict.data import TargetStats
    from matmeta.predict.train import untrained_predictor

    table, _ = random_graph_table(np.random.default_rng(1), [f for f in "AB" for _ in range(6)])
    fold_stats = TargetStats(0.5, 0.25, 2.0, 1.5)
    predictor = untrained_predictor(GNNConfig(hidden=8, layers=1, n_rbf=8), stats=fold_stats)
    recipe = {"model": {"hidden": 8}, "uncertainty": {"mc_samples": 2, "open_shell_metal_offset": 0.0}}
    key = fold_key(recipe, ["A"], residuals=False)
    offset_changed = {**recipe, "uncertainty": {"mc_samples": 2, "open_shell_metal_offset": 6.0}}
    assert fold_key(offset_changed, ["A"], residuals=False) == key  # the network does not depend on it ...
    assert fold_key(offset_changed, ["A"]) != fold_key(recipe, ["A"])  # ... its residuals do
    assert fold_key({**recipe, "model": {"hidden": 16}}, ["A"], residuals=False) != key
    path = tmp_path / "trained.ckpt"
    save_trained(path, predictor.maml, {**predictor.metadata, "fold_key": key})
    assert load_trained(path, "other", table, 6.0) is None
    assert load_trained(tmp_path / "missing.ckpt", key, table, 6.0) is None
    maml, stats = load_trained(path, key, table, 6.0)
    assert maml.model.config.open_shell_metal_offset == 6.0 and stats == fold_stats
    torch.testing.assert_close(table.y, fold_stats.encode(table.energy, table.band_gap, table.n_atoms), equal_nan=True)
    for name, value in predictor.maml.state_dict().items():
        torch.testing.assert_close(maml.state_dict()[name], value)


def test_the_new_family_gap_shift_is_the_median_offset_and_enters_only_zero_shot_gaps(parts):
    from matmeta.conformal import mondrian_quantiles
    from matmeta.predict.calibrate import uncertainty_entry

    shipped, fold = parts
    before = fold.zero["gap"].copy()
    plain = uncertainty_entry(shipped, 2, ["C", "D"], [fold])
    shifted = uncertainty_entry(shipped, 2, ["C", "D"], [fold], new_family_shift=True)
    residuals = np.concatenate([shipped.zero["gap"], fold.zero["gap"]])
    shift = -np.median(residuals[np.isfinite(residuals)])
    assert shifted["new_family_gap_shift"] == pytest.approx(shift) and "new_family_gap_shift" not in plain
    scores = np.abs(residuals + shift) / np.concatenate([shipped.zero["sigma"], fold.zero["sigma"]])
    p = np.concatenate([shipped.zero["p_nonmetal"], fold.zero["p_nonmetal"]])
    expected = mondrian_quantiles(scores, p >= shifted["nonmetal_threshold"], 0.9)
    assert shifted["conformal"]["zero_shot"]["band_gap_scaled_called"] == pytest.approx(expected["true"])
    assert shifted["conformal"]["adapted"] == plain["conformal"]["adapted"]  # adapted residuals untouched
    np.testing.assert_array_equal(fold.zero["gap"], before)  # the inputs are not changed


def test_the_new_family_platt_is_fitted_on_every_family_zero_shot(parts):
    from matmeta.conformal import fit_platt
    from matmeta.predict.calibrate import uncertainty_entry

    shipped, fold = parts
    plain = uncertainty_entry(shipped, 2, ["C", "D"], [fold])
    fitted = uncertainty_entry(shipped, 2, ["C", "D"], [fold], new_family_platt=True)
    p = np.concatenate([shipped.zero["p_nonmetal"], fold.zero["p_nonmetal"]])
    nonmetal = np.concatenate([shipped.zero["nonmetal"], fold.zero["nonmetal"]])
    a, b = fit_platt(p, nonmetal)
    assert fitted["new_family_platt"] == pytest.approx({"a": a, "b": b}) and "new_family_platt" not in plain
    assert "new_family_platt" not in uncertainty_entry(shipped, 2, ["C", "D"], new_family_platt=True)  # needs folds


def test_the_adapted_gap_shift_is_the_median_adapted_offset_and_moves_only_adapted_gaps(parts):
    from matmeta.predict.calibrate import _adapted_list, uncertainty_entry

    shipped, fold = parts
    zero_only = uncertainty_entry(shipped, 2, ["C", "D"], [fold], new_family_shift=True)
    both = uncertainty_entry(shipped, 2, ["C", "D"], [fold], new_family_shift=True, new_family_shift_adapted=True)
    residuals = np.concatenate([part["gap"] for each in (shipped, fold) for part in _adapted_list(each)])
    expected = -np.median(residuals[np.isfinite(residuals)])
    assert both["new_family_gap_shift_adapted"] == pytest.approx(expected) and expected != 0.0
    assert "new_family_gap_shift_adapted" not in zero_only
    assert both["new_family_gap_shift"] == zero_only["new_family_gap_shift"]
    assert both["conformal"]["zero_shot"] == zero_only["conformal"]["zero_shot"]  # zero-shot quantiles untouched
    moved, plain = both["conformal"]["adapted"]["10"], zero_only["conformal"]["adapted"]["10"]
    assert moved["band_gap_scaled"] != plain["band_gap_scaled"]  # the adapted quantiles see the offset
