"""``matmeta generate`` end to end, with the shipped decoder and predictor checkpoints."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "matmeta.cli", "generate", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def no_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nostore") / "absent.lmdb"  # novelty and screen not run: keeps the tests fast


def test_generate_returns_only_candidates_that_meet_the_request_and_is_repeatable(tmp_path, no_store):
    from pymatgen.core import Structure

    from matmeta.design.stability import StabilityCriterion

    common = ("-n", "4", "--seed", "4", "--max-draws", "4000", "--no-relax", "--store", str(no_store))
    first = _run("--band-gap", "2.5", "--gap-half-width", "1.5", *common, "--out", "c1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "requested candidates found in" in first.stdout and "gap in window" in first.stdout
    assert "exhaustive screen: not run (no training store" in first.stdout
    shape = StabilityCriterion().shape
    assert f"cubic by tolerance ({shape.describe()})" in first.stdout and shape.describe() in first.stdout
    rows = _rows(tmp_path / "c1" / "candidates.csv")
    assert 1 <= len(rows) <= 4 and [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert len({r["formula"] for r in rows}) == len(rows)
    for row in rows:
        assert row["source"] == "decoder" and row["cif"] == "" and row["relax_status"] == ""
        assert 1.0 <= float(row["band_gap_ev"]) <= 4.0 and row["nonmetal"] == "True"
        assert float(row["heat_ev_per_atom"]) <= 0.2 and row["stable"] == "True" and row["valid"] == "True"
        assert row["heat_stable"] == "True" and row["cubic_by_tolerance"] == "True"
        assert shape.t_min <= float(row["tolerance_factor"]) <= shape.t_max
        s = Structure.from_file(tmp_path / "c1" / row["cif_generated"])
        assert len(s) == 5 and s.composition.reduced_formula == row["formula"]
    second = _run("--band-gap", "1:4", *common, "--out", "c2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "c2" / "candidates.csv").read_text() == (tmp_path / "c1" / "candidates.csv").read_text()
    # the old spellings still work for a release: same candidates, one deprecation line each naming the new option
    shipped = REPO / "matmeta" / "checkpoints"
    old = _run(
        "--band-gap", "2.5", "--tolerance", "1.5", *common, "--out", "c3",
        "--checkpoint", str(shipped / "CrystalCVAE-Perovskites-2026-11-26-BandGap.ckpt"),
        "--predictor", str(shipped / "CrystalGNN-Perovskites-2026-11-29-GapDescriptors.ckpt"),
        cwd=tmp_path,
    )  # fmt: skip
    assert old.returncode == 0, old.stderr
    assert (tmp_path / "c3" / "candidates.csv").read_text() == (tmp_path / "c1" / "candidates.csv").read_text()
    deprecations = [line for line in old.stderr.splitlines() if "deprecated" in line]
    assert deprecations == [
        "warning: --tolerance is deprecated (removed in the next release): use --gap-half-width",
        "warning: --checkpoint is deprecated (removed in the next release): use --generator",
        "warning: --predictor is deprecated (removed in the next release): use --model",
    ]
    assert "deprecated" not in first.stderr


def test_no_cubic_window_falls_back_to_the_heat_criterion(tmp_path, no_store):
    from matmeta.design.stability import StabilityCriterion

    shape = StabilityCriterion().shape
    common = ("-n", "25", "--seed", "4", "--max-draws", "1500", "--no-relax", "--store", str(no_store))
    found = {}
    for flag in ("--cubic-window", "--no-cubic-window"):
        result = _run("--band-gap", "2.5", "--gap-half-width", "1.5", *common, flag, "--out", flag, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        found[flag] = _rows(tmp_path / flag / "candidates.csv")
    assert "cubic by tolerance (not required)" in result.stdout and shape.describe() not in result.stdout
    assert all(r["stable"] == "True" and r["heat_stable"] == "True" for r in found["--no-cubic-window"])
    # the decoder's proposals mostly fall outside the window: without it the same budget fills the request
    assert len(found["--no-cubic-window"]) == 25 > len(found["--cubic-window"])


def test_generate_stops_at_its_budget_and_says_so(tmp_path, no_store):
    result = _run(
        "--band-gap", "4.0", "-n", "50", "--max-draws", "300", "--no-relax", "--store", str(no_store), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "stopped: the draw budget (300) is spent" in result.stdout
    assert "no more candidates meeting the request were found" in result.stdout


def test_generate_relaxes_and_writes_relaxed_and_generated_cifs(tmp_path, no_store):
    from pymatgen.core import Structure

    result = _run(
        "--band-gap", "1:4", "-n", "1", "--seed", "4", "--max-draws", "4000", "--store", str(no_store), "--out", "r",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "relaxed 1 candidates with CHGNet" in result.stdout
    (row,) = _rows(tmp_path / "r" / "candidates.csv")
    generated = Structure.from_file(tmp_path / "r" / row["cif_generated"])
    relaxed = Structure.from_file(tmp_path / "r" / row["cif"])
    assert relaxed.composition == generated.composition and relaxed != generated
    assert float(row["energy_after_ev_per_atom"]) <= float(row["energy_before_ev_per_atom"])
    assert float(row["rmsd_ang"]) >= 0 and row["relax_status"] in {
        "ok", "not converged", "left window", "lost perovskite connectivity", "collapsed", "relax failed"
    }  # fmt: skip
    assert float(row["volume_change"]) == pytest.approx(relaxed.volume / generated.volume - 1, abs=1e-3)


def test_zero_candidates_and_impossible_gap_give_one_line(tmp_path):
    zero = _run("--band-gap", "2.0", "-n", "0", cwd=tmp_path)
    assert zero.returncode == 1
    assert zero.stderr.strip().count("\n") == 0 and "nothing to generate" in zero.stderr
    huge = _run("--band-gap", "50", "-n", "10", cwd=tmp_path)
    assert huge.returncode == 1
    assert huge.stderr.strip().count("\n") == 0 and "outside what the decoder was trained on" in huge.stderr
    bad = _run("--band-gap", "2.0", "--elements", "Sr,Xq", cwd=tmp_path)
    assert bad.returncode == 1 and "'Xq' is not an element symbol" in bad.stderr
    cold = _run("--band-gap", "2.0", "--temperature", "0", cwd=tmp_path)
    assert cold.returncode == 1
    assert cold.stderr.strip().count("\n") == 0 and "--temperature 0: must be a finite number > 0" in cold.stderr
    broke = _run("--band-gap", "2.0", "--max-draws", "0", cwd=tmp_path)
    assert broke.returncode == 1 and "--max-draws 0: must be >= 1" in broke.stderr
    twice = _run("--band-gap", "2.0", "--tolerance", "0.2", "--gap-half-width", "0.2", cwd=tmp_path)
    assert twice.returncode == 1 and twice.stderr.strip() == (
        "error: --tolerance and --gap-half-width: the same option twice (--tolerance is its old name); "
        "give --gap-half-width only"
    )
    repeats = _run("--band-gap", "2.0", "--allow-repeats", cwd=tmp_path)
    assert repeats.returncode == 1 and repeats.stderr.strip().count("\n") == 0
    assert "--allow-repeats: no longer supported" in repeats.stderr


def test_element_constraints_and_family_examples(tmp_path, srtio3, no_store):
    from pymatgen.core import Structure

    examples = tmp_path / "examples"
    examples.mkdir()
    for i, a in enumerate((3.90, 3.95, 4.00)):
        s = srtio3.copy()
        s.scale_lattice(a**3)
        s.to(filename=str(examples / f"sto_{i}.cif"))
    (examples / "broken.cif").write_text("data_x\n_cell_length_a 4\n")
    allowed = {"Sr", "Ba", "Ca", "Ti", "Zr", "Hf", "O"}
    result = _run(
        "--band-gap", "3.0", "--gap-half-width", "1.0", "-n", "3", "--max-draws", "1500", "--no-relax",
        "--family-examples", str(examples), "--elements", ",".join(sorted(allowed)),
        "--out", "fam", "--store", str(no_store),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1  # the broken example is reported, the good ones are used
    assert "broken.cif" in result.stderr and "requested candidates found in" in result.stdout
    rows = _rows(tmp_path / "fam" / "candidates.csv")
    assert len(rows) <= 3
    for row in rows:
        s = Structure.from_file(tmp_path / "fam" / row["cif_generated"])
        assert {e.symbol for e in s.composition} <= allowed
        assert 2.0 <= float(row["band_gap_ev"]) <= 4.0
