"""``matmeta predict`` / ``matmeta finetune`` end to end on the shipped examples."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
STRUCTURES = REPO / "data" / "structures"
LAB = REPO / "data" / "lab_perovskites.csv"


def _invoke(*args: str):
    from matmeta.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _main(*args: str):
    """Run through ``main()`` so MatmetaError becomes one line + exit 1."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "matmeta.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_predict_directory_writes_csv(tmp_path):
    out = tmp_path / "preds.csv"
    result = _invoke("predict", str(STRUCTURES), "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(list(STRUCTURES.glob("*.cif")))
    assert {r["formula"] for r in rows} >= {"SrTiO3", "LaAlO3", "GaAs", "LiFePO4"}
    for row in rows:
        energy = float(row["formation_energy_per_atom"])
        assert math.isfinite(energy) and float(row["formation_energy_per_atom_lo"]) < energy
        assert 0 <= float(row["p_metal"]) <= 1 and float(row["band_gap"]) >= 0
        assert row["path"].endswith(".cif")  # the CSV can be edited into a finetune support file
    assert "SrTiO3" in result.output


def test_predict_reports_bad_files_and_keeps_good_ones(tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\n_cell_length_a 4\n")
    missing = tmp_path / "nope.cif"
    out = tmp_path / "preds.json"
    result = _main("predict", str(STRUCTURES / "SrTiO3.cif"), str(bad), str(missing), "--out", str(out))
    assert result.returncode == 1
    assert "broken.cif" in result.stderr and "nope.cif" in result.stderr
    assert "Traceback" not in result.stderr
    rows = json.loads(out.read_text())
    assert [r["formula"] for r in rows] == ["SrTiO3"]


def test_predict_warns_on_unseen_element(tmp_path):
    from pymatgen.core import Lattice, Structure

    from matmeta.predict.predictor import Predictor

    seen = Predictor.load().elements_seen
    symbol = next(s for s, z in (("Pu", 94), ("Ra", 88), ("Po", 84), ("Rn", 86), ("Xe", 54)) if z not in seen)
    structure = Structure(
        Lattice.cubic(4.2), ["Sr", symbol, "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )  # fmt: skip
    path = tmp_path / f"Sr{symbol}O3.cif"
    structure.to(filename=str(path))
    result = _main("predict", str(path), "--out", str(tmp_path / "p.csv"))
    assert result.returncode == 0, result.stderr
    assert "never seen" in result.stderr and symbol in result.stderr
    (row,) = csv.DictReader((tmp_path / "p.csv").open())
    assert row["out_of_domain"] == f"element(s) {symbol} never seen in training"


def test_finetune_then_predict_with_adapted_model_moves_toward_the_support(tmp_path):
    from matmeta.predict.predictor import Predictor

    names = [row["name"] for row in csv.DictReader(LAB.open())]
    paths = [STRUCTURES / f"{name}.cif" for name in names]
    from matmeta.io import read_structure_file

    base = Predictor.load().predict_structures([read_structure_file(p)[0][1] for p in paths], mc_samples=0)
    support = tmp_path / "support.csv"  # the family sits 0.4 eV/atom above the model: a lab offset
    with support.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "path", "formation_energy_per_atom"])
        for name, path, row in zip(names, paths, base, strict=True):
            writer.writerow([name, str(path), row["formation_energy_per_atom"] + 0.4])
    ckpt = tmp_path / "family.ckpt"
    result = _invoke("finetune", "--support", str(support), "--target", "formation_energy_per_atom", "--out", str(ckpt))
    assert result.exit_code == 0, result.output
    assert "leave-one-out" in result.output and "unadapted" in result.output
    out = tmp_path / "after.csv"
    result = _invoke("predict", str(STRUCTURES / "SrTiO3.cif"), "--model", str(ckpt), "--out", str(out))
    assert result.exit_code == 0, result.output
    (row,) = list(csv.DictReader(out.open()))
    before = next(r for n, r in zip(names, base, strict=True) if n == "SrTiO3")["formation_energy_per_atom"]
    target = before + 0.4
    assert abs(float(row["formation_energy_per_atom"]) - target) < 0.1 < abs(before - target)  # moved toward it


def test_finetune_cif_column_and_bad_rows(tmp_path):
    from matmeta.io import read_structure_file, structure_to_cif

    support = tmp_path / "support.csv"
    with support.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "cif", "gap_ev"])
        for name in ("SrTiO3", "BaTiO3", "CaTiO3"):
            structure = read_structure_file(STRUCTURES / f"{name}.cif")[0][1]
            writer.writerow([name, structure_to_cif(structure), 3.3])
        writer.writerow(["bad", "not a cif", 1.0])
        writer.writerow(["nan", structure_to_cif(structure), "abc"])
    result = _main(
        "finetune", "--support", str(support), "--target", "band_gap", "--value-column", "gap_ev",
        "--out", str(tmp_path / "t.ckpt"),
    )  # fmt: skip
    assert result.returncode == 1  # bad rows reported, good ones used
    assert "row 4" in result.stderr and "row 5" in result.stderr
    assert (tmp_path / "t.ckpt").exists()


def test_finetune_refuses_wrong_model_and_target(tmp_path):
    (tmp_path / "fake.ckpt").write_bytes(b"\x80\x04garbage")
    result = _main("finetune", "--support", str(LAB), "--target", "band_gap", "--out", str(tmp_path / "x.ckpt"),
                   "--model", str(tmp_path / "fake.ckpt"))  # fmt: skip
    assert result.returncode == 1 and "refused" in result.stderr and "Traceback" not in result.stderr
    result = _main("finetune", "--support", str(LAB), "--target", "band_gap", "--value-column", "nope",
                   "--out", str(tmp_path / "x.ckpt"))  # fmt: skip
    assert result.returncode == 1 and "nope" in result.stderr
    result = _main("finetune", "--support", str(LAB), "--target", "bulk_modulus", "--value-column", "band_gap",
                   "--out", str(tmp_path / "x.ckpt"))  # fmt: skip
    assert result.returncode == 1 and "bulk_modulus" in result.stderr
