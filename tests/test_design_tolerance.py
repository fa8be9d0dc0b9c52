"""The structural stability criterion: Goldschmidt tolerance factor from Shannon radii, its window, its filter."""

import math

import numpy as np
import pytest

from matmeta.design.stability import StabilityCriterion
from matmeta.design.tolerance import ToleranceWindow, choose_window, factors, shannon_radius, site_roles

FRAC = [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def _abx3(a, b, x=("O", "O", "O"), lattice=4.0, order=(0, 1, 2, 3, 4)):
    from pymatgen.core import Lattice, Structure

    species, frac = [a, b, *x], FRAC
    return Structure(Lattice.cubic(lattice), [species[i] for i in order], [frac[i] for i in order])


def test_srtio3_tolerance_factor_from_shannon_radii():
    # Sr2+ XII 1.44, Ti4+ VI 0.605, O2- VI 1.40 (Shannon 1976)
    assert shannon_radius("Sr", 2, 12) == 1.44 and shannon_radius("Ti", 4, 6) == 0.605
    f = factors(("Sr",), ("Ti",), ("O", "O", "O"))
    assert f["tolerance_factor"] == pytest.approx((1.44 + 1.40) / (math.sqrt(2) * (0.605 + 1.40)), abs=1e-9)
    assert f["tolerance_factor"] == pytest.approx(1.0016, abs=1e-4)
    assert f["octahedral_factor"] == pytest.approx(0.605 / 1.40)


def test_small_a_cation_uses_its_largest_listed_coordination_and_mixed_anions_average():
    # Mg2+ has no XII radius: the largest listed, VIII 0.89 A -> t = (0.89 + 1.40) / (sqrt2 (0.605 + 1.40)) = 0.808
    f = factors(("Mg",), ("Ti",), ("O", "O", "O"))
    assert f["r_a"] == 0.89 and f["tolerance_factor"] == pytest.approx(0.8076, abs=1e-4)
    # BaTaO2N: Ba2+ XII 1.61, Ta5+ VI 0.64, r_X = (2 x 1.40 + N3- IV 1.46) / 3 = 1.42 -> t = 3.03 / (sqrt2 x 2.06)
    f = factors(("Ba",), ("Ta",), ("O", "O", "N"))
    assert f["r_x"] == pytest.approx(1.42) and f["tolerance_factor"] == pytest.approx(1.0401, abs=1e-4)
    # no charge-neutral formal assignment (Cs+ Ti4+ O3 = -1): no t, never inside a window
    assert math.isnan(factors(("Cs",), ("Ti",), ("O", "O", "O"))["tolerance_factor"])
    assert not ToleranceWindow(0.0, 10.0).inside(math.nan, 0.5)


def test_site_roles_read_the_cell_not_the_site_order():
    from matmeta.design.double import double_perovskite

    shuffled = _abx3("Sr", "Ti", order=(2, 1, 4, 0, 3))
    assert site_roles(shuffled) == (["Sr"], ["Ti"], ["O", "O", "O"])
    a, b, x = site_roles(double_perovskite("Ba", "Fe", "Mo", ("O", "O", "O")))
    assert a == ["Ba", "Ba"] and sorted(b) == ["Fe", "Mo"] and x == ["O"] * 6


def test_filter_rejects_a_composition_outside_the_window_before_the_predictor():
    from matmeta.design.judge import judge_for_request

    class AlwaysGood:
        calls = 0
        nonmetal_cut = 0.5

        def predict_structures(self, structures):
            self.calls += len(structures)
            return [{"band_gap": 2.0, "p_metal": 0.1, "heat_ref": -5.0} for _ in structures]

    scorer = AlwaysGood()
    criterion = StabilityCriterion(shape=ToleranceWindow(0.9, 1.05))
    judged = judge_for_request([_abx3("Sr", "Ti"), _abx3("Mg", "Ti")], scorer, (1.5, 2.5), criterion)
    good, small = judged.rows
    assert good["cubic_by_tolerance"] and good["heat_stable"] and good["stable"] and good["hit"]
    assert small["tolerance_factor"] == pytest.approx(0.8076, abs=1e-4)
    assert not small["cubic_by_tolerance"] and not small["stable"] and not small["hit"]
    assert judged.calls == 1 and scorer.calls == 1 and math.isnan(small["band_gap_ev"])
    heat_only = judge_for_request([_abx3("Mg", "Ti")], scorer, (1.5, 2.5), StabilityCriterion(shape=None))
    assert heat_only.rows[0]["hit"] and "tolerance" not in StabilityCriterion(shape=None).describe()
    assert "0.9 <= t <= 1.05" in criterion.describe()


def test_choose_window_maximises_precision_at_the_recall_floor():
    rng = np.random.default_rng(0)
    t = rng.uniform(0.7, 1.2, 400)
    kept = (t > 0.9) & (t < 1.05) & (rng.random(400) < 0.9)  # kept mostly inside 0.90-1.05
    t[:20] = np.nan  # no t: never inside, not counted in the recall floor
    window, precision, recall = choose_window(t, np.full(400, 0.5), kept, min_recall=0.9)
    assert 0.88 <= window.t_min <= 0.92 and 1.03 <= window.t_max <= 1.07 and window.mu_min is None
    inside = np.isfinite(t) & (t >= window.t_min) & (t <= window.t_max)
    assert precision == pytest.approx(kept[inside].mean()) and recall >= 0.9 and precision > 0.8


def test_label_report_counts_precision_and_recall_of_each_criterion():
    from matmeta.design.cubic_labels import LabelSample, label_report

    def row(a, b, x, kept):
        return {"a_site": a, "b_site": b, "anions": x, "kept": kept}

    # t: SrTiO3 1.002, BaZrO3 1.004 (Ba2+ XII 1.61, Zr4+ VI 0.72), CaTiO3 0.966, MgTiO3 0.808; CsTiO3: no t
    rows = [
        row("Sr", "Ti", "O O O", True),
        row("Ba", "Zr", "O O O", True),
        row("Ca", "Ti", "O O O", False),
        row("Mg", "Ti", "O O O", False),
        row("Cs", "Ti", "O O O", True),
    ]
    table = {r[0].split(":")[0]: r[1:] for r in label_report(rows, ToleranceWindow(0.95, 1.05))}
    inside, kept_inside, precision, recall_t, recall_all, _ = table["shipped"]
    assert (inside, kept_inside) == (3, 2) and precision == pytest.approx(2 / 3)
    assert recall_t == pytest.approx(1.0) and recall_all == pytest.approx(2 / 3)
    assert table["no t (rejected"][:2] == [1, 1]  # CsTiO3, kept, but rejected for want of a t
    assert table["none (every composition)"][:3] == [5, 3, pytest.approx(0.6)]
    assert LabelSample(t_range=(0.8, 1.15), n=150, seed=1).file_name == "cubic_labels_t0.8-1.15_n150_s1.csv"


def test_merged_labels_count_a_formula_of_an_earlier_sample_once(tmp_path, monkeypatch):
    from matmeta.design import cubic_labels as cl

    samples = cl.label_samples((2, 3, 0, 4), (0.8, 1.15), seed=5)
    assert [s.key for s in samples] == [
        "2 per family, seed 5", "3 with 0.8 <= t <= 1.15, seed 6", "4 with 0.8 <= t <= 1.15, seed 7",
    ]  # fmt: skip
    per_sample = {samples[0].key: ["SrTiO3", "BaTiO3"], samples[1].key: ["BaTiO3", "KTaO3", "KTaO3"],
                  samples[2].key: ["SrTiO3", "NaTaO3"]}  # fmt: skip

    def fake(generator, store, sample, cache_dir, on_done=None):
        return [{"formula": f, "sample": sample.key} for f in per_sample[sample.key]]

    monkeypatch.setattr(cl, "cubic_labels", fake)
    rows = cl.merged_labels(None, tmp_path, samples, tmp_path, lambda: None)
    # an earlier sample's formula is dropped later; two structures of one formula in the same sample both stay
    assert [r["formula"] for r in rows] == ["SrTiO3", "BaTiO3", "KTaO3", "KTaO3", "NaTaO3"]
