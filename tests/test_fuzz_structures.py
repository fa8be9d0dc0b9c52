"""Fuzz and property tests of the structure readers: hostile CIF/POSCAR/extxyz never crash a batch.

Each property holds for every input hypothesis draws (see ``tests/fuzzing.py`` for the oracle).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from fuzzing import CIF_TEXT, GOOD_CIF, POSCAR_TEXT, SYMBOLS, XYZ_TEXT, check, valid_arrays
from hypothesis import given
from hypothesis import strategies as st

from matmeta.cif import parse_cif_general, parse_p1_cif
from matmeta.errors import MatmetaError
from matmeta.io import parse_cif_arrays, read_structure_file, read_structures


@given(CIF_TEXT)
def test_cif_text_is_parsed_or_refused_in_one_line(text: str) -> None:
    result = check("cif", text, lambda: parse_cif_arrays(text, "fuzz.cif"), names="fuzz.cif")
    if not isinstance(result, MatmetaError):
        assert valid_arrays(*result)


@given(CIF_TEXT)
def test_fast_p1_reader_agrees_with_pymatgen(text: str) -> None:
    """Where the fast reader accepts a CIF (before the shared checks), pymatgen reads the same crystal."""
    fast = check("cif-fast", text, lambda: parse_p1_cif(text, "fuzz.cif"), names="fuzz.cif")
    if fast is None or isinstance(fast, MatmetaError):
        return
    try:
        parse_cif_arrays(text, "fuzz.cif")
    except MatmetaError:
        return  # refused by the shared checks (cell items, overlap, volume): both paths refuse alike
    slow = check("cif-pymatgen", text, lambda: parse_cif_general(text, "fuzz.cif"), names="fuzz.cif")
    assert not isinstance(slow, MatmetaError), f"fast reader accepts what pymatgen refuses: {slow}"
    cell, symbols, _ = fast
    assert sorted(symbols) == sorted(site.specie.symbol for site in slow)
    assert np.allclose(cell, [*slow.lattice.abc, *slow.lattice.angles], rtol=1e-5, atol=1e-6)


def _write(folder: Path, name: str, text: str, encoding: str) -> Path:
    path = folder / name
    path.write_bytes(
        text.encode(encoding, "surrogateescape") if encoding == "utf-8" else text.encode("latin-1", "replace")
    )
    return path


@given(st.sampled_from(["cif", "poscar", "extxyz"]).flatmap(
    lambda kind: st.tuples(st.just(kind), {"cif": CIF_TEXT, "poscar": POSCAR_TEXT, "extxyz": XYZ_TEXT}[kind])
), st.sampled_from(["utf-8", "latin-1"]))  # fmt: skip
def test_a_bad_file_never_costs_the_good_ones(kind_text: tuple[str, str], encoding: str) -> None:
    """A batch of good files with one hostile file: the good ones are read, the bad one is named by path."""
    kind, text = kind_text
    name = {"cif": "bad.cif", "poscar": "POSCAR_bad", "extxyz": "bad.extxyz"}[kind]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        good_a = _write(folder, "a.cif", GOOD_CIF, "utf-8")
        bad = _write(folder, name, text, encoding)
        good_b = _write(folder, "b.cif", GOOD_CIF, "utf-8")
        one = check(kind, text, lambda: read_structure_file(bad), names=str(bad))
        result = check(kind, text, lambda: read_structures([str(good_a), str(bad), str(good_b)]))
        if result is None:
            return  # recorded crash (make fuzz)
        assert not isinstance(result, MatmetaError), result
        good, messages = result
        names = [n for n, _ in good]
        assert names[0] == "a" and names[-1] == "b"
        assert len(messages) == (1 if isinstance(one, MatmetaError) else 0)
        for message in messages:
            assert message.startswith(str(bad)) and "\n" not in message
        for _, structure in good:
            assert valid_arrays(structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)


@given(CIF_TEXT)
def test_predicts_reader_gives_the_good_files_graphs_and_names_the_bad_one(text: str) -> None:
    """``matmeta predict``'s reader (files → Structures + graphs): one line per bad file or graph, good ones kept."""
    from matmeta.graph_reading import read_graphs
    from matmeta.graphs import GraphConfig

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        good = _write(folder, "a.cif", GOOD_CIF, "utf-8")
        bad = _write(folder, "bad.cif", text, "utf-8")
        result = check("cif", text, lambda: read_graphs([str(good), str(bad)], GraphConfig(), workers=1))
        if result is None:
            return  # recorded crash (make fuzz)
        read, messages = result
        assert read[0][0] == "a" and not isinstance(read[0][2], str)
        failed = messages + [graph for _, _, graph in read[1:] if isinstance(graph, str)]
        assert len(read) + len(messages) >= 2 and len(failed) <= 1
        for message in failed:
            assert "\n" not in message
        for message in messages:
            assert message.startswith(str(bad))
        for _, structure, graph in read:
            if not isinstance(graph, str):
                z, edge_index, edge_dist = graph
                assert len(z) == len(structure) and edge_index.shape == (2, len(edge_dist))
                assert np.isfinite(edge_dist).all() and (edge_dist > 0).all()


@given(st.lists(SYMBOLS | st.sampled_from(["Si", "O", "Na"]), min_size=1, max_size=3))
def test_any_poscar_species_line_gives_real_elements_or_one_line(symbols: list[str]) -> None:
    """The species line of a POSCAR (issue 13: ``Xx Xx Xx`` gave garbage atomic numbers)."""
    coords = ["0 0 0", "0.5 0.5 0", "0.5 0 0.5"][: len(symbols)]
    text = "fuzz\n1.0\n4 0 0\n0 4 0\n0 0 4\n{}\n{}\ndirect\n{}\n".format(
        " ".join(symbols), " ".join("1" for _ in symbols), "\n".join(coords)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "POSCAR"
        path.write_text(text)
        result = check("poscar-species", text, lambda: read_structure_file(path), names=str(path))
        if result is not None and not isinstance(result, MatmetaError):
            [(_, structure)] = result
            assert valid_arrays(structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)
