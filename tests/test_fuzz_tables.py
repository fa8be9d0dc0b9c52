"""Fuzz and property tests of the table and checkpoint readers and of the atomic writers.

Support CSVs (finetune), points CSVs (jmak fit) and checkpoint bytes are mutated; every reader
either returns usable rows or refuses in one line naming the file; writers never leave a partial file.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from fuzzing import GOOD_CIF, GOOD_POINTS, GOOD_SUPPORT, NUMBERS, REPO, check, mutated_text
from hypothesis import given
from hypothesis import strategies as st

from matmeta.atomic import write_table
from matmeta.checkpoint import load_checkpoint
from matmeta.errors import MatmetaError, MatmetaInputError, WorkLimitError
from matmeta.kinetics.data import DENSE_FRACTION, MAX_TIME_S, read_curves
from matmeta.predict.support import (
    MAX_BAND_GAP_EV,
    MAX_FORMATION_ENERGY_PER_ATOM_EV,
    MAX_HEAT_PER_ATOM_EV,
    read_support,
)

GOOD_SUPPORT_ABS = GOOD_SUPPORT.replace("structures/", str(REPO / "data" / "structures") + "/")


@st.composite
def support_text(draw: st.DrawFn) -> str:
    """The good support CSV with hostile values in some rows (NUMBERS: huge, negative, NaN, text), then perhaps
    mutated further: the value checks must see impossible values, which text mutations alone rarely make."""
    header, *rows = GOOD_SUPPORT_ABS.split("\n")
    for i, row in enumerate(rows):
        if row and draw(st.booleans()):
            name, path, _, rest = row.split(",", 3)
            rows[i] = ",".join([name, path, draw(NUMBERS), rest])
    text = "\n".join([header, *rows])
    return draw(mutated_text(text)) if draw(st.booleans()) else text


SUPPORT_TEXT = support_text()
POINTS_TEXT = mutated_text(GOOD_POINTS)
CHECKPOINT = REPO / "matmeta" / "checkpoints" / "JMAK-SynthArrhenius-2026-12-07-MetaSGDPrior.ckpt"


@given(SUPPORT_TEXT, st.sampled_from(["band_gap", "band_gap_pbe", "heat_ref", "formation_energy_per_atom"]))
def test_support_rows_are_used_or_skipped_by_row(text: str, target: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "support.csv"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        result = check("support", text, lambda: read_support(path, target, "band_gap", "path", "cif"), names=str(path))
        if result is None or isinstance(result, MatmetaError):
            return
        names, structures, values, bad = result
        assert len(names) == len(structures) == len(values)
        assert all(math.isfinite(v) for v in values)
        if target in ("band_gap", "band_gap_pbe"):
            assert all(0 <= v <= MAX_BAND_GAP_EV for v in values)
        elif target == "formation_energy_per_atom":  # eV/atom: whatever the structure's size
            assert all(abs(v) <= MAX_FORMATION_ENERGY_PER_ATOM_EV for v in values)
        else:  # heat_ref is eV/cell: a few eV per atom of the row's own structure
            assert all(abs(v) <= MAX_HEAT_PER_ATOM_EV * len(s) for v, s in zip(values, structures, strict=True))
        assert len({id(s) for s in structures}) == len(structures)
        for message in bad:
            assert message.startswith(f"{path} row ") and "\n" not in message


@given(POINTS_TEXT)
def test_points_rows_are_fitted_or_named(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "points.csv"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        errors: list[str] = []
        curves = check("points", text, lambda: read_curves(path, errors.append, errors.append), names=str(path))
        if curves is None or isinstance(curves, MatmetaError):
            return
        for curve in curves:
            assert len(set(curve.time_s.tolist())) >= 2
            if curve.dense:  # a measured trace: t = 0 and noise about 0 and its plateau are kept
                lo, hi = DENSE_FRACTION
                assert all(0 <= t <= MAX_TIME_S for t in curve.time_s) and all(lo <= x <= hi for x in curve.fraction)
            else:
                assert all(0 < t <= MAX_TIME_S for t in curve.time_s) and all(0 <= x <= 1 for x in curve.fraction)
            pairs = list(zip(curve.time_s.tolist(), curve.fraction.tolist(), strict=True))
            assert len(set(pairs)) == len(pairs), "a duplicated row was accepted"
        for message in errors:
            assert message.startswith(str(path)) and "\n" not in message


@given(st.binary(max_size=64), st.integers(0, 4000), st.sampled_from(["flip", "truncate", "prefix", "raw"]))
def test_checkpoint_bytes_are_loaded_or_refused(noise: bytes, at: int, how: str) -> None:
    raw = CHECKPOINT.read_bytes()
    at = min(at, len(raw))
    forged = {
        "flip": raw[:at] + noise + raw[at + len(noise) :],
        "truncate": raw[:at],
        "prefix": noise + raw,
        "raw": noise,
    }[how]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.ckpt"
        path.write_bytes(forged)
        check("checkpoint", forged, lambda: load_checkpoint(path), names=str(path))


class _Explodes:
    def __str__(self) -> str:
        raise RuntimeError("cannot render")


@given(st.lists(st.dictionaries(st.sampled_from("abc"), st.floats() | st.text(max_size=5)), max_size=5),
       st.integers(0, 5), st.sampled_from([".csv", ".json"]))  # fmt: skip
def test_a_failed_write_leaves_no_file(rows: list[dict], explode_at: int, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / f"out{suffix}"
        rows = [dict(r) for r in rows]
        fails = explode_at < len(rows)
        if fails:
            rows[explode_at]["a"] = _Explodes()
        try:
            write_table(target, rows, ["a", "b", "c"])
        except (RuntimeError, TypeError):
            assert fails
        assert sorted(p.name for p in Path(tmp).iterdir()) == ([] if fails else [target.name])


@pytest.mark.parametrize("where", ["/proc/matmeta-out.csv", "/sys/out.csv", "{file}/out.csv", "{dir}"])
def test_unwritable_targets_are_one_line_input_errors(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    target = Path(where.format(file=blocker, dir=tmp_path))
    with pytest.raises(MatmetaInputError) as info:
        write_table(target, [{"a": 1.0}])
    assert str(info.value).startswith(f"{target}: cannot write") and "\n" not in str(info.value)
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]


def test_support_above_the_ceiling_is_refused_before_reading_structures(tmp_path: Path) -> None:
    rows = "".join(f'"{GOOD_CIF}",{1.0 + i / 1000}\n' for i in range(101))
    path = tmp_path / "big.csv"
    path.write_text("cif,band_gap\n" + rows)
    with pytest.raises(WorkLimitError, match=r"big.csv: support: 101 exceeds the ceiling of 100 .* --yes"):
        read_support(path, "band_gap", None, "path", "cif", max_rows=100)


def test_duplicate_and_impossible_support_rows_are_named_and_skipped(tmp_path: Path) -> None:
    structures = REPO / "data" / "structures"
    path = tmp_path / "lab.csv"
    path.write_text(
        "name,path,band_gap\n"
        f"a,{structures}/SrTiO3.cif,3.25\nb,{structures}/BaTiO3.cif,-5\nc,{structures}/CaTiO3.cif,1e300\n"
        f"d,{structures}/KTaO3.cif,3.6\ne,{structures}/SrTiO3.cif,3.3\n"
    )
    names, _, values, bad = read_support(path, "band_gap", None, "path", "cif")
    assert names == ["a", "d"] and values == [3.25, 3.6]
    assert bad == [
        f"{path} row 2: band_gap -5 eV is negative; row skipped",
        f"{path} row 3: band_gap 1e+300 eV is above 25 eV; row skipped",
        f"{path} row 5: same structure as row 1 (a duplicate); row skipped",
    ]
