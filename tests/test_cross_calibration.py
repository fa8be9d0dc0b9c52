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
    called = np.concatenate([shipped.zero["called"], fold.zero["called"]])
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
