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


@pytest.fixture(scope="module")
def no_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nostore") / "absent.lmdb"  # novelty not judged: keeps the tests fast


def test_generate_writes_parseable_cifs_and_is_repeatable(tmp_path, no_store):
    from pymatgen.core import Structure

    first = _run(
        "--band-gap",
        "2.0",
        "--tolerance",
        "0.3",
        "-n",
        "12",
        "--seed",
        "4",
        "--out",
        "c1",
        "--store",
        str(no_store),
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    assert "gap in window" in first.stdout and "sampled candidates" in first.stdout
    with (tmp_path / "c1" / "candidates.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and [int(r["rank"]) for r in rows] == list(range(1, 13))
    assert len({r["formula"] for r in rows}) == 12  # --distinct is the default: no composition twice
    written = [r for r in rows if r["cif"]]
    assert written, "no structurally valid candidate"
    for row in written:
        s = Structure.from_file(tmp_path / "c1" / row["cif"])
        assert len(s) == 5 and s.composition.reduced_formula == row["formula"]
        assert 0.0 <= float(row["p_metal"]) <= 1.0 and float(row["band_gap_ev"]) >= 0.0
    second = _run(
        "--band-gap", "1.7:2.3", "-n", "12", "--seed", "4", "--out", "c2", "--store", str(no_store), cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "c2" / "candidates.csv").read_text() == (tmp_path / "c1" / "candidates.csv").read_text()
    raw = _run("--band-gap", "2.0", "-n", "40", "--allow-repeats", "--store", str(no_store), "--top", "0", cwd=tmp_path)
    assert raw.returncode == 0, raw.stderr
    assert "decoder draws" not in raw.stdout  # every draw kept as it came


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


def test_element_constraints_and_family_examples(tmp_path, srtio3, no_store):
    from pymatgen.core import Structure

    examples = tmp_path / "examples"
    examples.mkdir()
    for i, a in enumerate((3.90, 3.95, 4.00)):
        s = srtio3.copy()
        s.scale_lattice(a**3)
        s.to(filename=str(examples / f"sto_{i}.cif"))
    (examples / "broken.cif").write_text("data_x\n_cell_length_a 4\n")
    result = _run(
        "--band-gap",
        "3.0",
        "-n",
        "10",
        "--family-examples",
        str(examples),
        "--elements",
        "Sr,Ba,Ca,Ti,Zr,Hf,O",
        "--out",
        "fam",
        "--store",
        str(no_store),
        cwd=tmp_path,
    )
    assert result.returncode == 1  # the broken example is reported, the good ones are used
    assert "broken.cif" in result.stderr
    with (tmp_path / "fam" / "candidates.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10
    for row in rows:
        if row["cif"]:
            s = Structure.from_file(tmp_path / "fam" / row["cif"])
            assert {e.symbol for e in s.composition} <= {"Sr", "Ba", "Ca", "Ti", "Zr", "Hf", "O"}
