"""The predictor on general crystals: per-atom targets, training on a non-perovskite store, intervals, the domain."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from conftest import require_shared

MP_NAMES = ("formation_energy_per_atom", "band_gap_pbe")


def _mp_like(**settings):
    """A tiny untrained predictor with the Materials Project model's target names (energy per atom)."""
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.config import MAMLSettings
    from matmeta.predict.train import untrained_predictor

    config = GNNConfig(hidden=16, layers=2, n_rbf=8, node_features="both", composition_features=True)
    predictor = untrained_predictor(config, MAMLSettings(**settings))
    predictor.metadata["targets"]["names"] = list(MP_NAMES)
    predictor.metadata["targets"]["units"] = {"formation_energy_per_atom": "eV/atom", "band_gap_pbe": "eV"}
    from matmeta.predict.predictor import Predictor

    return Predictor(predictor.maml, predictor.metadata, None)


def test_target_names_convert_between_public_units_and_eV_per_cell():
    from matmeta.predict.data import ENERGY, GAP, TargetNames

    mp, perovskite = TargetNames(*MP_NAMES), TargetNames()
    assert mp.energy_per_atom and not perovskite.energy_per_atom
    assert mp.unit("formation_energy_per_atom") == "eV/atom" and perovskite.unit("heat_ref") == "eV/cell"
    assert mp.role("band_gap_pbe") == GAP and mp.role("formation_energy_per_atom") == ENERGY
    assert mp.role("heat_ref") is None and mp.role("band_gap") is None  # not this model's names
    per_atom, atoms = np.array([-1.5, 0.2]), np.array([5.0, 2.0])
    assert np.allclose(mp.to_cell(per_atom, atoms), [-7.5, 0.4])
    assert np.allclose(mp.to_public(mp.to_cell(per_atom, atoms), atoms), per_atom)
    assert np.allclose(perovskite.to_cell(per_atom, atoms), per_atom)
    with pytest.raises(ValueError, match="energy must be one of"):
        TargetNames("energy_per_cell", "band_gap")


def test_rows_carry_the_checkpoints_names_and_a_supercell_keeps_the_energy_per_atom(nacl):
    predictor = _mp_like()
    (row,) = predictor.predict_structures([nacl])
    (bigger,) = predictor.predict_structures([nacl * (2, 1, 1)])
    for key in ("formation_energy_per_atom", "band_gap_pbe", "p_metal", "band_gap", "feature_distance"):
        assert key in row
    assert "heat_ref" not in row
    assert row["band_gap"] == row["band_gap_pbe"]  # until a measured-level gap exists
    assert bigger["formation_energy_per_atom"] == pytest.approx(row["formation_energy_per_atom"], abs=1e-5)


def test_finetune_on_a_per_atom_target_reports_eV_per_atom_and_refuses_other_names(nacl, cu, srtio3):
    from matmeta.errors import CheckpointError

    predictor = _mp_like(inner_steps=3)
    structures = [nacl, cu, srtio3, nacl * (2, 1, 1)]
    values = [-2.0, 0.0, -3.4, -2.0]
    adapted, report = predictor.finetune(structures, values, "formation_energy_per_atom")
    assert report.unit == "eV/atom" and report.target == "formation_energy_per_atom"
    assert adapted.metadata["adapted"]["target"] == "formation_energy_per_atom"
    assert adapted.metadata["adapted"]["role"] == "energy"
    # the support mean's leave-one-out MAE, in eV/atom, by hand
    loo_mean = [np.mean([v for j, v in enumerate(values) if j != i]) for i in range(4)]
    assert report.loo_mae["support_mean"] == pytest.approx(np.mean(np.abs(np.array(loo_mean) - values)), rel=1e-6)
    with pytest.raises(CheckpointError, match="predicts formation_energy_per_atom and band_gap_pbe"):
        predictor.finetune(structures, values, "heat_ref")


def test_a_per_cell_number_in_a_per_atom_column_is_refused():
    from matmeta.errors import MatmetaInputError
    from matmeta.predict.support import check_value

    check_value(-4.2, "formation_energy_per_atom", 5, "lab.csv row 1", "formation_energy_per_atom")
    with pytest.raises(MatmetaInputError, match="per-cell value in a per-atom column"):
        check_value(-21.0, "formation_energy_per_atom", 5, "lab.csv row 2", "formation_energy_per_atom")
    check_value(-21.0, "heat_ref", 5, "lab.csv row 3", "heat_ref")  # the same number per cell is fine


def test_the_target_is_checked_before_any_support_row_is_read(tmp_path):
    from matmeta.errors import CheckpointError
    from matmeta.predict.api import adapt

    checkpoint = _mp_like().save(tmp_path / "mp_like.ckpt")
    support = tmp_path / "support.csv"
    support.write_text("path,band_gap\n" + "".join(f"missing{i}.cif,1.0\n" for i in range(5)))
    with pytest.raises(CheckpointError, match="no target 'band_gap'"):
        adapt(support, "band_gap", checkpoint)


def test_energy_and_gap_intervals_widen_with_the_distance_to_the_training_data():
    from matmeta.predict.difficulty import encode_features
    from matmeta.predict.intervals import energy_half_widths, reported_gap_half_widths

    reference = np.zeros((4, 2))
    difficulty = {"kind": "nearest_training_head_features", "neighbours": 1, "offset": 1.0, "scale": 1.0,
                  "reference": encode_features(reference)}  # fmt: skip
    table = {"heat_ref_per_atom": 0.1, "band_gap_nonmetal": 1.0, "heat_ref_per_atom_scaled": 0.05,
             "band_gap_reported_called": 0.8, "band_gap_reported_uncalled": 0.3,
             "band_gap_reported_scaled_called": 0.4, "band_gap_reported_scaled_uncalled": 0.1}  # fmt: skip
    uncertainty = {"conformal": {"zero_shot": table, "adapted": {}}, "difficulty": difficulty}
    features = np.array([[0.0, 0.0], [3.0, 4.0]])  # distance 0 and 5: σ = 1 and 6
    assert np.allclose(energy_half_widths(uncertainty, {}, features), [0.05, 0.30])
    assert np.allclose(reported_gap_half_widths(uncertainty, {}, np.array([False, True]), features), [0.4, 0.6])
    plain = {"conformal": {"zero_shot": {"heat_ref_per_atom": 0.1, "band_gap_nonmetal": 1.0}}}
    assert np.allclose(energy_half_widths(plain, {}, features), [0.1, 0.1])  # older calibration: one width
    assert np.isnan(reported_gap_half_widths(plain, {}, np.array([False, True]), features)).all()


def test_a_structure_beyond_the_calibrated_feature_distance_is_out_of_domain(nacl):
    predictor = _mp_like()
    predictor.elements_seen = {11, 17}
    (row,) = predictor.predict_structures([nacl])
    assert row["out_of_domain"] is None
    predictor.uncertainty["difficulty"] = {"domain_limit": -1.0}  # everything is farther than that
    assert "feature distance" in predictor.out_of_domain(nacl, {"feature_distance": 0.5})
    assert predictor.out_of_domain(nacl, {"feature_distance": -2.0}) is None
    predictor.elements_seen = {11}
    assert "Cl never seen in training" in predictor.out_of_domain(nacl)


def test_episode_sources_give_a_small_family_only_the_support_sizes_it_can_hold(random_graph_table):
    import torch

    from matmeta.tasks import FamilyEpisodes

    families = ["big"] * 50 + ["small"] * 20
    table, _ = random_graph_table(np.random.default_rng(0), families)
    source = FamilyEpisodes(table, ["big", "small"], (5, 20), 10, seed=0)
    assert [s.family_names for s in source.samplers] == [("big", "small"), ("big",)]
    tasks = source.sample(20, torch.Generator().manual_seed(0))
    assert all(support.num_graphs in (5, 20) and query.num_graphs == 10 for support, query in tasks)


# ---------------------------------------------------------------------- a whole (tiny) run on general crystals
def _mp_slice(tmp_path, rows: int = 240):
    source = require_shared("mp/mp36k.csv")
    csv.field_size_limit(1 << 30)
    with source.open() as handle:
        reader = csv.DictReader(handle)
        kept = [row for row, _ in zip(reader, range(rows), strict=False)]
    path = tmp_path / "mp_slice.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    return path


def test_meta_training_on_a_store_of_general_crystals_saves_a_usable_checkpoint(tmp_path, one_torch_thread):
    """The old trap: site labels were asked for after all the work, and a non-perovskite store raised there."""
    from matmeta.predict.predictor import Predictor
    from matmeta.predict.train import meta_train_from_recipe
    from matmeta.store.ingest import ingest

    csv_path = _mp_slice(tmp_path)
    store = tmp_path / "mp.lmdb"
    ingest([csv_path], store, targets=("formation_energy_per_atom", "band_gap"), id_column="material_id",
           workers=1, show_progress=False)  # fmt: skip
    recipe = {
        "meta_train": {"app": "predictor", "out": str(tmp_path / "mp.ckpt"), "work_dir": str(tmp_path / "work")},
        "data": {"store": str(store), "store_targets": ["formation_energy_per_atom", "band_gap"],
                 "energy_column": "formation_energy_per_atom", "gap_column": "band_gap",
                 "targets": list(MP_NAMES), "family_by": "anion_class", "min_family_size": 12,
                 "split_fractions": [0.5, 0.25, 0.25], "pretrain_pool": "all_but_held_out"},
        "model": {"hidden": 8, "layers": 1, "n_rbf": 8, "node_features": "both", "composition_features": True},
        "pretrain": {"epochs": 1, "batch_size": 32},
        "maml": {"inner_steps": 1, "adapt_steps": 2},
        "episodes": {"k_support": [2], "k_query": 3},
        "trainer": {"outer_steps": 2, "meta_batch_size": 2, "val_every": 1, "val_batches": 1},
        "uncertainty": {"mc_samples": 2, "calibration_episodes": 1},
    }  # fmt: skip
    out = meta_train_from_recipe(recipe, tmp_path / "recipe.toml")
    predictor = Predictor.load(out)
    assert predictor.names.names == MP_NAMES
    assert predictor.metadata["families"]["by"] == "anion_class" and "sites_seen" not in predictor.metadata
    assert predictor.metadata["training"]["phase_seconds"]["meta-training"] >= 0
    difficulty = predictor.uncertainty["difficulty"]
    assert math.isfinite(difficulty["domain_limit"])
    from matmeta.store.reader import GraphStore

    structure = GraphStore(store).structure(0)
    (row,) = predictor.predict_structures([structure])
    assert math.isfinite(row["formation_energy_per_atom"]) and row["formation_energy_per_atom_lo"] is not None


def test_predict_refuses_a_too_large_and_a_disordered_cell_in_one_line_and_predicts_the_rest(tmp_path, nacl):
    from pymatgen.core import Lattice, Structure
    from typer.testing import CliRunner

    from matmeta.cli import app
    from matmeta.io import write_cif

    checkpoint = _mp_like().save(tmp_path / "mp_like.ckpt")
    folder = tmp_path / "in"
    folder.mkdir()
    write_cif(nacl, folder / "good.cif")
    write_cif(nacl * (6, 6, 4), folder / "huge.cif")  # 1,152 atoms, above the 500-site limit
    alloy = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    (folder / "alloy.cif").write_text(alloy.to(fmt="cif"))
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(app, ["predict", str(folder), "--model", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "huge.cif: 1152 atoms exceed max_atoms=500" in text
    assert "alloy.cif" in text and "partial" in text
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["good"] and rows[0]["path"].endswith("good.cif")
    assert {"formation_energy_per_atom", "formation_energy_per_atom_lo", "band_gap_pbe_hi", "p_metal"} <= set(rows[0])


def test_sensitivity_bounds_what_random_displacements_of_the_same_size_do(nacl, srtio3):
    import torch

    from matmeta.predict.sensitivity import fixed_edge_outputs, worst_changes

    predictor = _mp_like()
    for structure in (nacl, srtio3):
        worst = worst_changes(predictor, structure, epsilon=0.05)
        outputs, pos = fixed_edge_outputs(predictor, structure)
        with torch.no_grad():
            base = outputs(torch.zeros_like(pos))
            for seed in range(5):  # random moves of exactly 0.05 Å per atom
                move = torch.randn(pos.shape, generator=torch.Generator().manual_seed(seed))
                move = 0.05 * move / move.norm(dim=1, keepdim=True)
                change = (outputs(move) - base).abs()
                assert change[0] <= worst["energy"] * 1.02 + 1e-7 and change[1] <= worst["gap"] * 1.02 + 1e-7
        assert 0 < worst["energy"] < 1.0  # eV/atom
        assert worst_changes(predictor, structure, epsilon=1e-9)["energy"] < 1e-5


def test_explain_works_on_a_per_atom_target(tmp_path, nacl, cu, srtio3):
    from typer.testing import CliRunner

    from matmeta.cli import app
    from matmeta.io import write_cif

    checkpoint = _mp_like(inner_steps=2).save(tmp_path / "mp_like.ckpt")
    rows = ["name,path,formation_energy_per_atom"]
    for name, structure, value in (("NaCl", nacl, -2.1), ("Cu", cu, 0.0), ("SrTiO3", srtio3, -3.5)):
        write_cif(structure, tmp_path / f"{name}.cif")
        rows.append(f"{name},{name}.cif,{value}")
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(app, ["explain", "--model", str(checkpoint), "--support", str(tmp_path / "s.csv"),
                                      "--target", "formation_energy_per_atom", "--query", str(tmp_path / "NaCl.cif"),
                                      "--out", str(tmp_path / "i.csv")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "eV/atom" in result.output and len((tmp_path / "i.csv").read_text().splitlines()) == 4


def test_reading_in_two_worker_processes_gives_the_rows_and_messages_of_one(tmp_path, nacl, cu, srtio3):
    from pymatgen.core import Lattice, Structure

    from matmeta.io import write_cif
    from matmeta.predict.api import predict_files

    checkpoint = _mp_like().save(tmp_path / "mp_like.ckpt")
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(12):
        structure = (nacl, cu, srtio3)[index % 3].copy()
        structure.perturb(0.05, min_distance=0.01)  # a different graph in every file
        write_cif(structure, folder / f"s{index:02d}.cif")
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    write_cif(Structure(Lattice.cubic(12.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), folder / "lonely.cif")
    _, serial, serial_bad = predict_files([str(folder)], checkpoint, workers=1)
    _, parallel, parallel_bad = predict_files([str(folder)], checkpoint, workers=2)
    assert len(serial) == 12 and [r["name"] for r in serial] == [f"s{i:02d}" for i in range(12)]
    assert parallel == serial
    assert parallel_bad == serial_bad and len(serial_bad) == 2
    assert any("broken.cif" in m for m in serial_bad)
    assert any("lonely.cif" in m and "neighbour" in m for m in serial_bad), serial_bad  # no graph: a graph error
