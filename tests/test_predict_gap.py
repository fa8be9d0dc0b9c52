"""Band-gap trust (issue 12): descriptor features classify unseen chemistry, finetune's four-way choice,
split-conformal coverage, out-of-domain flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _perovskite(a: str, b: str, x: str = "O", lattice: float = 3.95):
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(lattice), [a, b, x, x, x],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )  # fmt: skip


def _cscl(a: str, b: str, lattice: float = 2.95):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _tiny(node_features: str = "descriptors", **settings):
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.config import MAMLSettings
    from matmeta.predict.train import untrained_predictor

    config = GNNConfig(hidden=16, layers=2, n_rbf=8, node_features=node_features, composition_features=True)
    return untrained_predictor(config, MAMLSettings(**settings))


# ---------------------------------------------------------------------- descriptors and oxidation states
def test_composition_features_know_closed_shell_charge_balance():
    from matmeta.elements import composition_features, descriptor_table

    table = descriptor_table()
    assert table.shape[0] == 119 and np.all(table[0] == 0) and np.isfinite(table).all()
    _, srtio3 = composition_features([38, 22, 8, 8, 8])  # Sr2+ Ti4+ (d0) O2-
    _, lafeo3 = composition_features([57, 26, 8, 8, 8])  # La3+ Fe3+ (d5)
    _, cuzn = composition_features([29, 30])  # intermetallic
    assert srtio3[:3].tolist() == [1.0, 1.0, 1.0]
    assert lafeo3[:3].tolist() == [1.0, 0.0, 0.0]
    assert cuzn[:3].tolist() == [0.0, 0.0, 0.0]


def test_descriptor_model_classifies_unseen_d0_oxide_and_intermetallic():
    """Trained on a small synthetic split, the model gets chemistry right for elements it never saw."""
    from matmeta.graphs import GraphConfig
    from matmeta.models.gnn import CrystalGNN, GNNConfig, collate
    from matmeta.predict.data import TargetStats, graph_from_structure

    train = [(_perovskite(a, b), 3.0) for a in ("Sr", "Ba", "Ca") for b in ("Ti", "Zr")]  # d0: insulators
    train += [(_perovskite(a, b), 0.0) for a in ("Sr", "Ba", "Ca") for b in ("V", "Cr", "Mn")]  # d1-d3: metals
    train += [(_cscl(a, b), 0.0) for a, b in (("Cu", "Zn"), ("Fe", "Al"), ("Co", "Ti"), ("Ag", "Mg"))]
    test = [_perovskite("Sr", "Hf"), _cscl("Ni", "Al")]  # Hf and Ni never seen in training
    graph_config = GraphConfig(cutoff_angstrom=5.0)
    stats = TargetStats(0.3, 0.2, 3.0, 1.0)

    def items(structures, gaps):
        y = stats.encode(np.zeros(len(gaps)), np.asarray(gaps, float), np.array([len(s) for s in structures], float))
        return [(*graph_from_structure(s, graph_config), y[i]) for i, s in enumerate(structures)]

    torch.manual_seed(0)
    config = GNNConfig(hidden=16, layers=1, n_rbf=8, cutoff_angstrom=5.0, node_features="descriptors",
                       composition_features=True)  # fmt: skip
    model = CrystalGNN(config)
    batch = collate(items([s for s, _ in train], [g for _, g in train]))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    from matmeta.predict.data import loss_fn

    for _ in range(150):
        loss = loss_fn(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        p_metal = torch.sigmoid(model(*collate(items(test, [np.nan, np.nan])).inputs())[:, 1])
    assert p_metal[0] < 0.5 < p_metal[1], p_metal


def test_open_shell_offset_raises_only_the_metal_logit_of_open_shell_compositions():
    import dataclasses

    from matmeta.graphs import GraphConfig
    from matmeta.models.gnn import CrystalGNN, GNNConfig, collate
    from matmeta.predict.data import graph_from_structure

    structures = [_perovskite("Sr", "Ti"), _perovskite("La", "Fe"), _perovskite("Ba", "Sn"), _cscl("Cu", "Zn")]
    closed = torch.tensor([1.0, 0.0, 1.0, 0.0])  # d0, d5, d10, intermetallic
    graphs = [
        (*graph_from_structure(s, GraphConfig(cutoff_angstrom=5.0)), torch.full((3,), np.nan)) for s in structures
    ]
    inputs = collate(graphs).inputs()
    for composition_features in (True, False):  # the hurdle needs no composition features in the pooled vector
        torch.manual_seed(0)
        config = GNNConfig(hidden=8, layers=1, n_rbf=8, cutoff_angstrom=5.0, node_features="descriptors",
                           composition_features=composition_features)  # fmt: skip
        model = CrystalGNN(config).eval()
        with torch.no_grad():
            plain, plain_mc = model(*inputs), model(*inputs, mc_samples=3)
            model.config = dataclasses.replace(config, open_shell_metal_offset=2.5)
            hurdled, hurdled_mc = model(*inputs), model(*inputs, mc_samples=3)
        torch.testing.assert_close(hurdled[:, 1] - plain[:, 1], 2.5 * (1 - closed))
        torch.testing.assert_close(hurdled[:, [0, 2]], plain[:, [0, 2]])
        torch.testing.assert_close(hurdled_mc[..., 1] - plain_mc[..., 1], (2.5 * (1 - closed)).expand(3, 4))
    with pytest.raises(ValueError, match="open_shell_metal_offset"):
        GNNConfig(open_shell_metal_offset=-1.0)


# ---------------------------------------------------------------------- finetune: four candidates
def _family():
    return [_perovskite(a, b) for a in ("Sr", "Ba", "Ca") for b in ("Ti", "Zr", "Sn", "Nb")]


def test_finetune_picks_support_mean_for_pure_noise():
    predictor = _tiny(inner_lr=0.05, inner_steps=10, learn_inner_lr=False)
    structures = _family()
    values = 20.0 + np.random.default_rng(0).normal(0.0, 1.0, len(structures))
    adapted, report = predictor.finetune(structures, values, "heat_ref")
    assert report.kept == "support_mean", report.message()
    rows = adapted.predict_structures(structures[:2], mc_samples=0)
    assert rows[0]["heat_ref"] == pytest.approx(float(np.mean(values)), abs=1e-6)
    assert adapted.metadata["adapted"]["choice"]["kind"] == "support_mean"


def test_finetune_picks_adapted_when_labels_follow_the_structure(tmp_path):
    from matmeta.predict.predictor import Predictor

    predictor = _tiny(inner_lr=0.05, inner_steps=30, learn_inner_lr=False)
    structures = _family()
    level = {"Ti": -0.6, "Zr": 0.6, "Sn": -0.6, "Nb": 0.6}  # set by the B element, unrelated to the random model
    values = np.array([level[s[1].specie.symbol] + 0.01 * (i % 3) for i, s in enumerate(structures)])
    before = [r["heat_ref"] for r in predictor.predict_structures(structures, mc_samples=0)]
    adapted, report = predictor.finetune(structures, values, "heat_ref")
    assert report.kept == "adapted", report.message()
    assert report.loo_mae["adapted"] < 0.6 * report.loo_mae["unadapted"]
    # the adaptation lives in fast weights: the shared network is not touched, the adapted one differs
    assert adapted.fast is not None and adapted.maml is predictor.maml
    assert [r["heat_ref"] for r in predictor.predict_structures(structures, mc_samples=0)] == pytest.approx(before)
    after = [r["heat_ref"] for r in adapted.predict_structures(structures, mc_samples=0)]
    assert np.mean(np.abs(np.array(after) - values)) < np.mean(np.abs(np.array(before) - values))
    reloaded = Predictor.load(adapted.save(tmp_path / "adapted.ckpt"))
    assert reloaded.fast is None
    assert [r["heat_ref"] for r in reloaded.predict_structures(structures, mc_samples=0)] == pytest.approx(
        after, abs=1e-5
    )


def test_recalibration_learns_a_systematic_gap_offset():
    from matmeta.predict.adaptation import fit_linear, fit_logit_shift

    scale, shift = fit_linear(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.5, 3.5, 4.5, 5.5]))
    assert scale == pytest.approx(1.0) and shift == pytest.approx(1.5)
    shrunk, _ = fit_linear(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 5.0, 7.0, 9.0]))
    assert shrunk == pytest.approx(1.5)  # least squares says 2, the prior says 1
    c = fit_logit_shift(np.array([3.0, 3.0, 3.0]), np.array([False, False, False]))
    assert 1 / (1 + np.exp(-(3.0 + c))) == pytest.approx(0.5 / 4, abs=1e-6)


# ---------------------------------------------------------------------- conformal
def test_split_conformal_reaches_coverage_on_synthetic_regression():
    from matmeta.conformal import conformal_quantile, coverage

    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, 6000)
    y = np.sin(x) + rng.standard_t(4, x.size) * 0.3
    prediction = np.sin(x) * 0.9  # a slightly wrong model
    q = conformal_quantile(np.abs(y[:1000] - prediction[:1000]), 0.9)
    inside = coverage(prediction[1000:], y[1000:], q)
    assert 0.88 <= inside <= 0.92
    assert conformal_quantile([0.1, 0.2], 0.9) == float("inf")  # too few points for a 90% rank


def test_threshold_maximises_balanced_accuracy_with_a_precision_floor():
    from matmeta.conformal import balanced_threshold, classification_metrics

    p = np.array([0.1] * 50 + [0.6] * 10 + [0.5] * 4 + [0.7])
    positive = np.array([False] * 60 + [True] * 5)
    cut = balanced_threshold(p, positive)  # all non-metals found, 10 metals wrongly called: precision 1/3
    assert cut == pytest.approx(0.3)
    assert classification_metrics(p, positive, cut)["recall"] == 1.0
    floored = balanced_threshold(p, positive, min_precision=0.5)  # only the top one is called
    assert floored == pytest.approx(0.65)
    assert classification_metrics(p, positive, floored)["precision"] == 1.0


# ---------------------------------------------------------------------- out of domain
def test_out_of_domain_flag_fires_for_element_never_seen_at_that_site():
    predictor = _tiny()
    predictor.sites_seen = {"A": ["Sr", "Ba"], "B": ["Ti"], "X": ["O"]}
    predictor.metadata["families"] = {"by": "b_site", "train": ["Ti"]}
    rows = predictor.predict_structures([_perovskite("Sr", "Ti"), _perovskite("Ba", "Zr"), _perovskite("Ti", "Sr")])
    assert rows[0]["out_of_domain"] is None
    assert "Zr never seen at the B site" in rows[1]["out_of_domain"]
    assert rows[2]["out_of_domain"] is not None
    (metal,) = predictor.predict_structures([_cscl("Cu", "Zn")])
    assert "structure type" in metal["out_of_domain"]


def test_new_family_gap_shift_moves_only_new_b_sites_and_keeps_the_interval_width():
    from matmeta.predict.calibration import new_family_corrections
    from matmeta.predict.domain import family_unseen

    families = {"by": "b_site", "train": ["Ti"]}  # the checkpoint's own family kind and training families
    structures = [_perovskite("Sr", "Ti"), _perovskite("Sr", "Hf"), _perovskite("Ba", "Hf"), _cscl("Cu", "Zn")]

    def new(structures, families):
        return [family_unseen(s, families.get("by"), families.get("train", ())) for s in structures]

    row = {"band_gap": 3.0, "gap_if_nonmetal": 3.0, "gap_lo": 0.2, "gap_hi": 4.5, "p_metal": 0.1}
    metal = {**row, "band_gap": 0.0, "p_metal": 0.9}
    rows = new_family_corrections([row, row, metal, row], new(structures, families), 0.5)
    assert [r["gap_shift"] for r in rows] == [0.0, 0.5, 0.5, 0.0]  # Ti seen; Hf new; CsCl is no perovskite
    assert rows[0] == {**row, "gap_shift": 0.0, "p_recalibrated": False} and rows[3]["gap_if_nonmetal"] == 3.0
    hf = rows[1]
    assert (hf["band_gap"], hf["gap_if_nonmetal"]) == (3.5, 3.5)
    assert hf["gap_hi"] - hf["gap_if_nonmetal"] == pytest.approx(1.5) and hf["gap_lo"] == pytest.approx(2.0)
    assert rows[2]["band_gap"] == 0.0 and rows[2]["gap_if_nonmetal"] == 3.5  # still called a metal
    assert new_family_corrections([row], new(structures[1:2], {"by": None}), 0.5)[0]["gap_shift"] == 0.0  # no record
    # keyed on the checkpoint's kind: with prototype families the Hf perovskite is the Ti one's prototype
    prototype = {"by": "prototype", "train": ["ABC3_221_abc"]}
    assert [r["gap_shift"] for r in new_family_corrections([row, row], new(structures[:2], prototype), 0.5)] == [
        0.0,
        0.0,
    ]


def test_composition_alone_does_not_make_a_perovskite():
    from pymatgen.core import Lattice, Structure

    from matmeta.predict.domain import domain_flags

    seen = {"A": ["Fe", "Sr"], "B": ["Ti"], "X": ["O"]}
    # ilmenite-like FeTiO3: the right composition, edge- and face-sharing octahedra (no corner-sharing network)
    ilmenite = Structure.from_spacegroup(
        "R-3", Lattice.hexagonal(5.09, 14.09), ["Fe", "Ti", "O"],
        [[0, 0, 0.3553], [0, 0, 0.1464], [0.3174, 0.0208, 0.2466]],
    )  # fmt: skip
    assert "structure type" in domain_flags(ilmenite, seen)
    assert domain_flags(_perovskite("Sr", "Ti"), seen) is None


def test_predict_adds_the_new_family_shift_zero_shot_only():
    predictor = _tiny()
    predictor.sites_seen = {"A": ["Sr"], "B": ["Ti"], "X": ["O"]}
    predictor.metadata["families"] = {"by": "b_site", "train": ["Ti"]}
    structures = [_perovskite("Sr", "Ti"), _perovskite("Sr", "Hf")]
    plain = predictor.predict_structures(structures, mc_samples=1)
    predictor.uncertainty["new_family_gap_shift"] = 0.7
    shifted = predictor.predict_structures(structures, mc_samples=1)
    assert [r["gap_shift"] for r in shifted] == [0.0, 0.7]
    assert shifted[1]["gap_if_nonmetal"] == pytest.approx(plain[1]["gap_if_nonmetal"] + 0.7)
    assert shifted[0]["gap_if_nonmetal"] == plain[0]["gap_if_nonmetal"]
    predictor.metadata["adapted"] = {"target": "band_gap", "kept": "adapted"}  # adapted: its own data sets the gap
    assert [r["gap_shift"] for r in predictor.predict_structures(structures, mc_samples=1)] == [0.0, 0.0]


def test_new_family_platt_recalibrates_p_only_for_new_b_sites_and_keeps_every_call():
    """P ← sigmoid(a·logit P + b) on new B sites only; the mapped cut gives the same calls as the raw one."""
    from matmeta.conformal import platt

    predictor = _tiny()
    predictor.sites_seen = {"A": ["Sr", "Ba"], "B": ["Ti"], "X": ["O"]}
    predictor.metadata["families"] = {"by": "b_site", "train": ["Ti"]}
    structures = [_perovskite(a, b) for a in ("Sr", "Ba") for b in ("Ti", "Hf", "Zr", "Sn")]
    raw = predictor.predict_structures(structures, mc_samples=1)
    predictor.uncertainty["new_family_platt"] = {"a": 0.33, "b": -0.75}
    calibrated = predictor.predict_structures(structures, mc_samples=1)
    for before, after, structure in zip(raw, calibrated, structures, strict=True):
        new = structure.composition.get("Ti", 0) == 0
        assert after["p_recalibrated"] is new
        expected = 1.0 - float(platt(1.0 - before["p_metal"], 0.33, -0.75)) if new else before["p_metal"]
        assert after["p_metal"] == pytest.approx(expected, abs=1e-9)
        assert after["band_gap"] == before["band_gap"]  # the call and the gap are untouched
        p_raw, p_new = 1.0 - before["p_metal"], 1.0 - after["p_metal"]
        if new:
            assert (p_raw >= predictor.nonmetal_cut) == (p_new >= predictor.new_family_cut)
    assert predictor.new_family_cut == pytest.approx(float(platt(predictor.nonmetal_cut, 0.33, -0.75)))
    predictor.metadata["adapted"] = {"target": "band_gap", "kept": "adapted"}  # adapted: no new-family correction
    assert not any(r["p_recalibrated"] for r in predictor.predict_structures(structures, mc_samples=1))


def test_the_adapted_offset_applies_only_after_an_adaptation_without_gap_labels():
    predictor = _tiny()
    predictor.sites_seen = {"A": ["Sr"], "B": ["Ti"], "X": ["O"]}
    predictor.metadata["families"] = {"by": "b_site", "train": ["Ti"]}
    predictor.uncertainty.update({"new_family_gap_shift": 0.7, "new_family_gap_shift_adapted": 0.2})
    structures = [_perovskite("Sr", "Ti"), _perovskite("Sr", "Hf")]
    predictor.metadata["adapted"] = {"target": "heat_ref", "kept": "adapted"}  # the gap head saw no labels
    assert [r["gap_shift"] for r in predictor.predict_structures(structures, mc_samples=1)] == [0.0, 0.2]
    for adapted in ({"target": "band_gap", "kept": "adapted"}, {"target": "heat_ref", "kept": "recalibrated"}):
        predictor.metadata["adapted"] = adapted  # gap labels, or a fit on the user's data: no offset
        assert [r["gap_shift"] for r in predictor.predict_structures(structures, mc_samples=1)] == [0.0, 0.0]


def test_an_energy_interval_that_cannot_widen_is_dropped_out_of_domain():
    predictor = _tiny()
    predictor.sites_seen = {"A": ["Sr"], "B": ["Ti"], "X": ["O"]}
    predictor.uncertainty["conformal"] = {"zero_shot": {"heat_ref_per_atom": 0.1, "band_gap_nonmetal": 1.0}}
    inside, outside = predictor.predict_structures([_perovskite("Sr", "Ti"), _perovskite("Sr", "Zr")])
    assert inside["out_of_domain"] is None and inside["heat_ref_lo"] is not None
    assert "Zr never seen at the B site" in outside["out_of_domain"]
    assert outside["heat_ref_lo"] is None and outside["heat_ref_hi"] is None
