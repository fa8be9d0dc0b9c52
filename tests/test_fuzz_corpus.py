"""Past crashers (``tests/fuzz_corpus/``) as regression cases, and the hardening promises end to end.

Each corpus file once crashed, hung or was silently misread; now it is read correctly or refused in
one line naming its path. A few CLI runs check what a user sees: errors on stderr, one line each,
no traceback, the good inputs of the batch still processed, nothing written for an unwritable output.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fuzzing import CORPUS, GOOD_CIF, check

from matmeta.errors import MatmetaError, MatmetaInputError, WorkLimitError
from matmeta.io import read_structure_file

REPO = Path(__file__).resolve().parents[1]

#: corpus file → the refusal it now gives (None: read correctly).
EXPECTED = {
    "POSCAR_unknown_species": "unknown element 'Xx'",
    "POSCAR_short_coordinate": "not a readable POSCAR",
    "POSCAR_far_coordinate": None,  # used to hang in the overlap search; -87588 is a periodic image of 0
    "POSCAR_needle_cell": "lattice vector shorter than 0.5",
    "negative_length.cif": "_cell_length_a -3.905 must be a positive length",
    "negative_angle.cif": "_cell_angle_alpha -90 must be an angle between 0 and 180 degrees",
    "loop_glued.cif": "not a readable CIF",
    "empty_loop.cif": "not a readable CIF",
    "item_before_data_block.cif": "not a readable CIF",  # the fast reader accepted it, pymatgen does not
    "loop_without_values.cif": "not a readable CIF",  # the fast reader accepted it, pymatgen does not
    "ragged_loop.cif": "not a readable CIF",  # the fast reader accepted it, pymatgen does not
    "tag_in_row.cif": "not a readable CIF",  # the fast reader accepted it, pymatgen does not
    "support_nul_path.csv": "not a usable file name (NUL byte); row skipped",  # ValueError from os.stat
}


def test_every_corpus_file_has_an_expectation() -> None:
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_past_crashers_are_read_or_refused_in_one_line(name: str) -> None:
    path = CORPUS / name
    if name.endswith(".csv"):
        from matmeta.predict.support import read_support

        names, _, _, bad = check(name, path.read_bytes(), lambda: read_support(path, "band_gap", None, "path", "cif"))
        assert names == [] and len(bad) == 1 and bad[0].startswith(f"{path} row 1: ") and EXPECTED[name] in bad[0]
        return
    outcome = check(name, path.read_bytes(), lambda: read_structure_file(path), names=str(path))
    if EXPECTED[name] is None:
        assert not isinstance(outcome, MatmetaError), outcome
        [(_, structure)] = outcome
        _assert_diamond_si(structure)
    else:
        assert isinstance(outcome, MatmetaInputError) and EXPECTED[name] in str(outcome)


def _assert_diamond_si(structure) -> None:
    """POSCAR_far_coordinate is diamond Si with one coordinate moved by -87588 lattice vectors: the same crystal.

    Either spelling of that site is a correct reading (-87588 kept, or wrapped to 0); any other value,
    a lost or an extra site is not.
    """
    assert structure.composition.reduced_formula == "Si" and len(structure) == 8
    np.testing.assert_allclose(structure.lattice.matrix, 5.431 * np.eye(3), atol=1e-9)
    expected = [[0.5, 0, 0.5], [0.25, 0.25, 0.25], [0, 0, 0], [0.25, 0.75, 0.75], [0.75, 0.25, 0.75],
                [0, 0, 0.5], [0.5, 0.5, 0], [0.75, 0.75, 0.25]]  # fmt: skip
    wrapped = np.mod(np.asarray(structure.frac_coords, dtype=float), 1.0)
    np.testing.assert_allclose(np.where(wrapped > 1 - 1e-9, 0.0, wrapped), expected, atol=1e-9)
    nearest = min(structure.get_distance(0, j) for j in range(1, 8))
    assert nearest == pytest.approx(5.431 * 3**0.5 / 4, abs=1e-6)  # the Si-Si bond, 2.3517 A


class _TwoLines(MatmetaError):
    def __str__(self) -> str:
        return "x.cif: first\nsecond"


def _raise(exc: Exception) -> None:
    raise exc


def test_the_oracle_flags_crashes_and_multi_line_messages() -> None:
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        check("t", "x", lambda: 1 / 0)
    with pytest.raises(AssertionError, match="spans lines"):
        check("t", "x", lambda: _raise(_TwoLines()))
    with pytest.raises(AssertionError, match="does not name 'y.cif'"):
        check("t", "x", lambda: _raise(MatmetaInputError("x.cif: bad")), names="y.cif")
    assert str(MatmetaInputError("a.vasp: not a readable POSCAR (Cannot parse:\n0 0)")) == (
        "a.vasp: not a readable POSCAR (Cannot parse: 0 0)"
    )


def test_recording_crashes_is_additive_a_recorded_crash_still_fails(tmp_path: Path, monkeypatch) -> None:
    import fuzzing

    monkeypatch.setattr(fuzzing, "RECORD", str(tmp_path / "crashes"))
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        check("points", "1,2,3", lambda: 1 / 0)
    with pytest.raises(AssertionError, match="spans lines"):
        check("cif", b"data_x", lambda: _raise(_TwoLines()))
    recorded = sorted(p.name.split("-")[0] + p.suffix for p in (tmp_path / "crashes").iterdir())
    assert recorded == ["cif.bin", "cif.txt", "points.bin", "points.txt"]
    assert [p.read_bytes() for p in sorted((tmp_path / "crashes").glob("*.bin"))] == [b"data_x", b"1,2,3"]


def test_generate_options_are_refused_before_any_work(tmp_path: Path) -> None:
    from matmeta.design.request import DesignRequest, check_options

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    cases = [
        (DesignRequest(guidance=float("nan")), "--guidance nan: must be a finite number"),
        (DesignRequest(elements=[]), "--elements: empty"),
        (DesignRequest(gap_half_width=float("inf")), "--gap-half-width inf: must be a finite number"),
        (DesignRequest(temperature=1e-30), "--temperature 1e-30: must be a finite number > 0"),
    ]
    for request, message in cases:
        with pytest.raises(MatmetaInputError, match=message.replace("(", r"\(")):
            check_options(request)
    with pytest.raises(
        WorkLimitError, match=r"-n 100000: 100000 exceeds the ceiling of 5000 \(up to 5,000,000 decoder"
    ):
        check_options(DesignRequest(n=100_000))
    check_options(DesignRequest(n=6000, yes=True))  # the override
    with pytest.raises(MatmetaInputError, match="cannot write"):
        check_options(DesignRequest(), out_dir=blocker)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "matmeta.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_predict_batch_keeps_the_good_files_and_names_each_bad_one(tmp_path: Path) -> None:
    (tmp_path / "good.cif").write_text(GOOD_CIF)
    for name in ("POSCAR_unknown_species", "negative_length.cif", "POSCAR_short_coordinate"):
        (tmp_path / name).write_bytes((CORPUS / name).read_bytes())
    os.mkfifo(tmp_path / "fifo.cif")
    files = ["good.cif", "POSCAR_unknown_species", "fifo.cif", "negative_length.cif", "POSCAR_short_coordinate"]
    run = _cli("predict", *files, "--out", "out.csv", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout
    errors = run.stderr.strip().splitlines()
    assert errors == [
        "error: POSCAR_unknown_species: unknown element 'Xx'",
        "error: fifo.cif: is a FIFO, not a regular file",
        "error: negative_length.cif: _cell_length_a -3.905 must be a positive length",
        "error: POSCAR_short_coordinate: not a readable POSCAR (Cannot parse coordinates on this line: 0 0)",
    ]
    with (tmp_path / "out.csv").open() as handle:
        assert [row["name"] for row in csv.DictReader(handle)] == ["good"]
    unwritable = _cli("predict", "good.cif", "--out", "/proc/matmeta.csv", cwd=tmp_path)
    assert unwritable.returncode == 1
    assert unwritable.stderr.strip() == "error: /proc/matmeta.csv: cannot write (folder /proc is not writable)"
    assert unwritable.stdout == ""  # refused before any prediction


def test_ingest_reports_bad_files_on_stderr_only(tmp_path: Path) -> None:
    (tmp_path / "good.cif").write_text(GOOD_CIF)
    (tmp_path / "POSCAR_x").write_bytes((CORPUS / "POSCAR_unknown_species").read_bytes())
    run = _cli("data", "ingest", "good.cif", "POSCAR_x", "--out", "store", "-j", "1", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == ["error: POSCAR_x: unknown element 'Xx'"]
    assert "unknown element" not in run.stdout and "│ 1 " in run.stdout
    (tmp_path / "blocker").write_text("x")
    blocked = _cli("data", "ingest", "good.cif", "--out", "blocker", cwd=tmp_path)
    assert blocked.returncode == 1
    assert blocked.stderr.strip() == "error: blocker: exists and is not a folder (a graph store is a folder)"


def test_the_repeat_warning_counts_each_candidate_once() -> None:
    from matmeta.design.validity import count_repeats

    formulas = ["BaTiO3", "BaTiO3", "SrTiO3", "BaTiO3", "CaTiO3"]
    assert count_repeats(formulas, {"SrTiO3", "BaTiO3"}) == 4  # it said 3 + 2 = 5 before (28 of 20 on the CLI)
    assert count_repeats(formulas, set()) == 2
    assert count_repeats(formulas, set(), distinct=False) == 0


def test_two_ingests_into_one_store_never_overwrite_or_double_count(tmp_path: Path) -> None:
    """A second ingest runs while the first is between batches: every id stored once, "added" is true."""
    from matmeta.io import structure_to_cif
    from matmeta.store.ingest import ingest
    from matmeta.store.reader import GraphStore

    paths = sorted((REPO / "data" / "structures").glob("*.cif"))
    cifs = [structure_to_cif(read_structure_file(p)[0][1]) for p in paths]
    for name, ids in (("a.csv", range(0, 8)), ("b.csv", range(4, 10))):
        with (tmp_path / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "cif"])
            writer.writerows([f"s{i}", cifs[i]] for i in ids)
    store = tmp_path / "store"
    second = "from matmeta.store.ingest import ingest; ingest(['b.csv'], 'store', id_column='id', workers=1)"
    runs: list[int] = []

    def run_the_second_ingest(count: int) -> None:
        if not runs:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
            subprocess.run([sys.executable, "-c", second], cwd=tmp_path, env=env, check=True, capture_output=True)
        runs.append(count)

    report = ingest([tmp_path / "a.csv"], store, id_column="id", workers=1, batch_size=4, chunk_size=4,
                    on_batch=run_the_second_ingest)  # fmt: skip
    ids = list(GraphStore(store).ids)
    assert sorted(ids, key=lambda s: int(s[1:])) == [f"s{i}" for i in range(10)]
    assert report.added == 4 and report.already_present == 4 and report.total == 10
