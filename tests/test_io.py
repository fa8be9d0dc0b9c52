import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from matmeta.cif import parse_cif_general, parse_p1_cif
from matmeta.errors import MatmetaInputError
from matmeta.io import (
    expand_sources,
    parse_cif,
    read_csv,
    read_structure_file,
    write_cif,
)


def canonical(structure):
    """Species and wrapped fractional coordinates in a site-order-independent form."""
    frac = np.mod(structure.frac_coords, 1.0)
    frac[frac > 1 - 1e-9] = 0.0
    numbers = np.array(structure.atomic_numbers)
    order = np.lexsort((frac[:, 2], frac[:, 1], frac[:, 0], numbers))
    return numbers[order], frac[order]


def test_cif_round_trip_keeps_species_and_positions(tmp_path, srtio3):
    path = write_cif(srtio3, tmp_path / "SrTiO3.cif")
    back = read_structure_file(path)
    assert [name for name, _ in back] == ["SrTiO3"]
    structure = back[0][1]
    a_numbers, a_frac = canonical(srtio3)
    b_numbers, b_frac = canonical(structure)
    assert a_numbers.tolist() == b_numbers.tolist()
    assert np.allclose(a_frac, b_frac, atol=1e-7)
    assert np.allclose(structure.lattice.matrix, srtio3.lattice.matrix, atol=1e-6)


def test_fast_parser_matches_pymatgen(perovskites_csv):
    _, rows = read_csv(perovskites_csv, ["cif"])
    for row in rows[:200]:
        assert parse_p1_cif(row["cif"], "row") is not None  # these P1 CIFs take the fast path
        fast = parse_cif(row["cif"], "row")
        slow = parse_cif_general(row["cif"], "row")
        f_numbers, f_frac = canonical(fast)
        s_numbers, s_frac = canonical(slow)
        assert f_numbers.tolist() == s_numbers.tolist()
        assert np.allclose(f_frac, s_frac, atol=1e-9)
        assert np.allclose(fast.lattice.matrix, slow.lattice.matrix, atol=1e-9)


def test_symmetrized_cif_uses_the_general_parser(nacl):
    text = str(CifWriter(nacl, symprec=0.1))  # Fm-3m with 2 symmetry-distinct sites
    assert "_symmetry_equiv_pos_as_xyz" in text and parse_p1_cif(text, "x") is None
    structure = parse_cif(text, "nacl.cif")
    assert len(structure) == 8 and structure.composition.reduced_formula == "NaCl"


def test_trailing_comment_in_a_row(srtio3):
    text = str(CifWriter(srtio3)).replace("  0.50000000  1\n", "  0.50000000  1  # body centre\n", 1)
    assert "# body centre" in text and parse_p1_cif(text, "x") is None
    assert canonical(parse_cif(text, "x"))[0].tolist() == canonical(srtio3)[0].tolist()


def test_uncertainties_and_oxidation_states(srtio3):
    text = str(CifWriter(srtio3)).replace("3.90500000", "3.905(2)")
    assert "3.905(2)" in text
    assert parse_cif(text, "x").lattice.a == pytest.approx(3.905)
    oxidised = srtio3.copy()
    oxidised.add_oxidation_state_by_element({"Sr": 2, "Ti": 4, "O": -2})
    structure = parse_cif(str(CifWriter(oxidised)), "ox.cif")
    assert structure.composition.reduced_formula == "SrTiO3"


def test_truncated_cif(tmp_path, srtio3):
    text = str(CifWriter(srtio3))
    half = tmp_path / "half.cif"
    half.write_text(text[: len(text) // 2])
    with pytest.raises(MatmetaInputError, match="half.cif"):
        read_structure_file(half)
    last_atom = text.rindex("  O  O")
    cut = tmp_path / "cut.cif"
    cut.write_text(text[:last_atom])  # ends cleanly after a whole atom row: one O missing
    with pytest.raises(MatmetaInputError, match="cut.cif: atom counts do not match _chemical_formula_sum"):
        read_structure_file(cut)
    partial_row = tmp_path / "row.cif"
    partial_row.write_text(text[: last_atom + 12])
    with pytest.raises(MatmetaInputError, match="row.cif: truncated or malformed CIF"):
        read_structure_file(partial_row)


def test_binary_garbage(tmp_path):
    path = tmp_path / "garbage.cif"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(MatmetaInputError, match="garbage.cif: binary data"):
        read_structure_file(path)
    with pytest.raises(MatmetaInputError, match="not a CIF"):
        parse_cif("hello world\n", "text")


def test_unknown_element_names_the_file(tmp_path, srtio3):
    text = str(CifWriter(srtio3)).replace("  Sr  Sr0", "  Xx  Xx0")
    path = tmp_path / "alien.cif"
    path.write_text(text)
    with pytest.raises(MatmetaInputError, match=r"alien.cif: unknown element 'Xx'"):
        read_structure_file(path)
    general = str(CifWriter(srtio3, symprec=0.1)).replace(" Sr ", " Xx ").replace("Sr0", "Xx0")
    with pytest.raises(MatmetaInputError, match="unknown element"):
        parse_cif(general, "alien2.cif")


def test_partial_occupancy_refused_unless_approximated():
    disordered = Structure(
        Lattice.cubic(3.9),
        [{"Sr": 0.7, "Ba": 0.3}, "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    text = str(CifWriter(disordered))
    with pytest.raises(MatmetaInputError, match="sbto.cif: partially occupied sites"):
        parse_cif(text, "sbto.cif")
    ordered = parse_cif(text, "sbto.cif", ordered_approximation=True)
    assert ordered.is_ordered and ordered.composition.reduced_formula == "SrTiO3"


def test_cell_limits(nacl):
    big = nacl * (2, 2, 2)  # 64 atoms
    with pytest.raises(MatmetaInputError, match="big.cif: 64 atoms exceed max_atoms=10"):
        parse_cif(str(CifWriter(big)), "big.cif", max_atoms=10)
    assert len(parse_cif(str(CifWriter(big)), "big.cif", max_atoms=64)) == 64
    squeezed = Structure(Lattice.cubic(0.9), ["H"], [[0, 0, 0]])
    with pytest.raises(MatmetaInputError, match="implausible volume per atom"):
        parse_cif(str(CifWriter(squeezed)), "tiny.cif")
    empty = Structure(Lattice.cubic(11.0), ["H"], [[0, 0, 0]])
    with pytest.raises(MatmetaInputError, match="implausible volume per atom 1.33e\\+03"):
        parse_cif(str(CifWriter(empty)), "void.cif")
    clash = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    with pytest.raises(MatmetaInputError, match=r"clash.cif: atoms 0 and 1 overlap \(0.200 Å apart"):
        parse_cif(str(CifWriter(clash)), "clash.cif")


def test_poscar_and_extxyz(tmp_path, nacl, cu):
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.vasp import Poscar

    (tmp_path / "POSCAR").write_text(str(Poscar(nacl)))
    [(name, structure)] = read_structure_file(tmp_path / "POSCAR")
    assert name == "POSCAR" and structure.composition.reduced_formula == "NaCl" and len(structure) == 8
    frames = [AseAtomsAdaptor.get_atoms(s) for s in (nacl, cu)]
    ase.io.write(tmp_path / "two.extxyz", frames, format="extxyz")
    read = read_structure_file(tmp_path / "two.extxyz")
    assert [name for name, _ in read] == ["two:0", "two:1"]
    assert [s.composition.reduced_formula for _, s in read] == ["NaCl", "Cu"]
    molecule = frames[1].copy()
    molecule.pbc = False
    molecule.cell = None
    ase.io.write(tmp_path / "mol.extxyz", molecule, format="extxyz")
    with pytest.raises(MatmetaInputError, match="no periodic cell"):
        read_structure_file(tmp_path / "mol.extxyz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MatmetaInputError, match="unknown structure format"):
        read_structure_file(tmp_path / "notes.txt")


def test_expand_sources(tmp_path, nacl, cu):
    write_cif(nacl, tmp_path / "a" / "NaCl.cif")
    write_cif(cu, tmp_path / "a" / "b" / "Cu.cif")
    (tmp_path / "a" / "readme.md").write_text("not a structure")
    assert [p.name for p in expand_sources(tmp_path / "a")] == ["NaCl.cif", "Cu.cif"]
    assert [p.name for p in expand_sources(str(tmp_path / "a" / "*.cif"))] == ["NaCl.cif"]
    with pytest.raises(MatmetaInputError, match="matches no file"):
        expand_sources(str(tmp_path / "*.vasp"))
    with pytest.raises(MatmetaInputError, match="file not found"):
        expand_sources(tmp_path / "missing.cif")


def test_read_csv_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,formula\n1,NaCl\n")
    with pytest.raises(MatmetaInputError, match=r"t.csv: missing column\(s\) cif \(columns: id, formula\)"):
        read_csv(path, ["cif"])
    path.write_text("id,formula\n1,NaCl,extra\n")
    with pytest.raises(MatmetaInputError, match="row 1 has 3 fields"):
        read_csv(path)
    with pytest.raises(MatmetaInputError, match="file not found"):
        read_csv(tmp_path / "none.csv")
