"""Family keys for any crystal: prototype, anion class, cation; the store's symmetry-key cache; grouped splits."""

from __future__ import annotations

import json

import pytest


def _perovskite(origin_on_a: bool = True):
    from pymatgen.core import Lattice, Structure

    if origin_on_a:
        sites = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    else:  # the same crystal with the origin on B: the anions sit on Wyckoff 3d instead of 3c
        sites = [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"], sites)


def test_prototypes_of_known_structure_types(nacl, cu):
    from pymatgen.core import Lattice, Structure

    from matmeta.families import family_key

    wurtzite = Structure.from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.25, 5.207), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
    )
    assert family_key(nacl, "prototype") == "AB_225_ab"  # rock salt: Na 4a, Cl 4b
    assert family_key(nacl.get_primitive_structure(), "prototype") == "AB_225_ab"  # any cell of the crystal
    assert family_key(cu, "prototype") == "A_225_a"
    assert family_key(wurtzite, "prototype") == "AB_186_bb"
    assert family_key(_perovskite(), "prototype") == "ABC3_221_abc"
    assert family_key(_perovskite(), "spacegroup") == "Pm-3m"


def test_two_origin_settings_differ_in_letters_but_share_the_signature():
    from matmeta.prototypes import structure_arrays, symmetry_keys_of

    first, second = (symmetry_keys_of(*structure_arrays(_perovskite(o))) for o in (True, False))
    assert (first["prototype"], second["prototype"]) == ("ABC3_221_abc", "ABC3_221_abd")
    assert first["prototype_signature"] == second["prototype_signature"] == "ABC3_221_4/mm.m;m-3m;m-3m"


def test_anion_class_and_cation(nacl, cu, srtio3):
    from pymatgen.core import Lattice, Structure

    from matmeta.families import anion_class, anion_class_of, cation

    gaas = Structure.from_spacegroup("F-43m", Lattice.cubic(5.653), ["Ga", "As"], [[0, 0, 0], [0.25] * 3])
    assert [anion_class(s) for s in (nacl, srtio3, gaas, cu)] == ["chloride", "oxide", "arsenide", "element"]
    assert [cation(s) for s in (nacl, srtio3, gaas, cu)] == ["Na", "Sr", "Ga", "Cu"]
    assert anion_class_of([29, 30]) == "intermetallic"  # CuZn: the most electronegative element is a metal
    assert anion_class_of([3, 9, 8, 8]) == "fluoride"  # an oxyfluoride counts as a fluoride (F is most electronegative)


def test_grouped_split_keeps_a_group_on_one_side():
    from matmeta.tasks import split_families

    families = [f"F{i}" for i in range(20) for _ in range(3)]
    groups = {f"F{i}": f"G{i // 2}" for i in range(20)}  # pairs of families are one structure type
    for seed in range(5):
        split = split_families(families, (0.6, 0.2, 0.2), seed, 1, groups=groups)
        assert sorted(split.train + split.val + split.test) == sorted(set(families))
        side = {f: name for name in ("train", "val", "test") for f in split.of(name)}
        assert all(side[f"F{2 * g}"] == side[f"F{2 * g + 1}"] for g in range(10))
        assert len(split.val) >= 2 and len(split.test) >= 2


def _store(tmp_path, structures, name="s.lmdb"):
    from matmeta.io import write_cif
    from matmeta.store.ingest import ingest

    folder = tmp_path / f"{name}.cifs"
    folder.mkdir(exist_ok=True)
    for i, structure in enumerate(structures):
        write_cif(structure, folder / f"x{i:03d}.cif")
    report = ingest([folder], tmp_path / name, workers=1, show_progress=False)
    assert report.ok, report.errors
    return tmp_path / name


def test_store_computes_symmetry_keys_once_and_extends_them_after_a_resumed_ingest(tmp_path, nacl, cu, monkeypatch):
    from matmeta.io import write_cif
    from matmeta.store import symmetry
    from matmeta.store.ingest import ingest
    from matmeta.store.reader import GraphStore

    path = _store(tmp_path, [nacl, cu, _perovskite()])
    assert GraphStore(path).family_keys("prototype") == ["AB_225_ab", "A_225_a", "ABC3_221_abc"]
    cache = json.loads((path / symmetry.CACHE_NAME).read_text())
    assert cache["n"] == 3 and cache["spacegroup"] == ["Fm-3m", "Fm-3m", "Pm-3m"]

    calls = []
    real = symmetry.compute_keys
    monkeypatch.setattr(symmetry, "compute_keys", lambda cells, workers=2: calls.append(len(cells)) or real(cells, 1))
    assert GraphStore(path).family_keys("spacegroup") == ["Fm-3m", "Fm-3m", "Pm-3m"]
    assert calls == []  # read from the cache
    write_cif(_perovskite(origin_on_a=False), tmp_path / "s.lmdb.cifs" / "x003.cif")
    ingest([tmp_path / "s.lmdb.cifs"], path, workers=1, show_progress=False)  # resumed: one record more
    assert GraphStore(path).family_keys("prototype")[-1] == "ABC3_221_abd"
    assert calls == [1]  # only the new record was searched
    assert GraphStore(path).family_keys("prototype_signature")[2:] == ["ABC3_221_4/mm.m;m-3m;m-3m"] * 2


def test_undefined_family_keys_can_be_empty_instead_of_an_error(tmp_path, nacl, srtio3):
    from matmeta.errors import MatmetaInputError
    from matmeta.store.reader import GraphStore

    store = GraphStore(_store(tmp_path, [nacl, srtio3]))
    with pytest.raises(MatmetaInputError, match="b_site is undefined for 1 record"):
        store.family_keys("b_site")
    assert store.family_keys("b_site", undefined="empty") == ["", "Ti"]
    assert store.family_keys("cation") == ["Na", "Sr"]


def test_data_split_prints_a_fixed_split_for_a_recipe(tmp_path):
    import tomllib

    from pymatgen.core import Lattice, Structure
    from typer.testing import CliRunner

    from matmeta.cli import app

    structures = []
    for i in range(6):  # six prototypes of three members each
        for j in range(3):
            a = 3.0 + 0.1 * j
            if i == 0:
                structures.append(Structure(Lattice.cubic(a * 1.9), ["Na", "Cl"], [[0, 0, 0], [0.5, 0, 0]]))
            elif i == 1:
                structures.append(Structure(Lattice.cubic(a), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
            elif i == 2:
                structures.append(_perovskite())
            elif i == 3:
                structures.append(Structure(Lattice.cubic(a + 1), ["Cu"], [[0, 0, 0]]))
            elif i == 4:
                structures.append(Structure(Lattice.tetragonal(a, 2 * a), ["Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.3]]))
            else:
                structures.append(Structure(Lattice.hexagonal(a, 1.6 * a), ["Mg"], [[0, 0, 0]]))
    path = _store(tmp_path, structures)
    result = CliRunner().invoke(app, ["data", "split", str(path), "--min-size", "3", "--fractions", "0.5", "0.25",
                                      "0.25", "--seed", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    fixed = tomllib.loads(result.output)
    assert fixed["family_by"] == "prototype" and fixed["min_family_size"] == 3
    assert fixed["val_families"] and fixed["test_families"]
    assert not set(fixed["val_families"]) & set(fixed["test_families"])
