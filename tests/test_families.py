import re

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matmeta.errors import MatmetaInputError
from matmeta.families import all_family_keys, anion_set, family_key, family_statistics, perovskite_sites
from matmeta.io import parse_cif, read_csv

CUBIC_SITES = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def perovskite(a_site, b_site, anions=("O", "O", "O"), a=3.9, b_shift=(0, 0, 0)):
    sites = [list(p) for p in CUBIC_SITES]
    sites[1] = [0.5 + b_shift[0], 0.5 + b_shift[1], 0.5 + b_shift[2]]
    return Structure(Lattice.cubic(a), [a_site, b_site, *anions], sites)


def test_srtio3_keys(srtio3):
    keys, errors = all_family_keys(srtio3)
    assert errors == {}
    assert keys == {
        "anion_set": "O3", "anion_class": "oxide", "cation": "Sr", "chemsys": "O-Sr-Ti", "spacegroup": "Pm-3m",
        "prototype": "ABC3_221_abc", "a_site": "Sr", "b_site": "Ti",
    }  # fmt: skip


def test_b_site_is_geometric_not_chemical():
    # the same elements with Sr on the octahedral (body-centre) site: B is now Sr
    swapped = perovskite("Ti", "Sr")
    assert perovskite_sites(swapped) == ("Ti", "Sr")
    # a strongly off-centred B cation keeps its octahedral shell
    distorted = perovskite("Ba", "Ti", a=4.0, b_shift=(0.06, 0.0, 0.03))
    assert family_key(distorted, "b_site") == "Ti" and family_key(distorted, "a_site") == "Ba"
    assert family_key(distorted, "spacegroup") != "Pm-3m"


def test_mixed_anions_and_tellurium():
    assert anion_set(perovskite("La", "Ti", ("O", "O", "N"))) == "O2N"
    assert anion_set(perovskite("La", "Ti", ("N", "O", "N"))) == "ON2"
    assert anion_set(perovskite("Sr", "Ta", ("F", "O", "N"))) == "OFN"
    srteo3 = perovskite("Sr", "Te")
    assert anion_set(srteo3) == "O3" and family_key(srteo3, "b_site") == "Te"  # Te is a cation here
    cdte = Structure.from_spacegroup("F-43m", Lattice.cubic(6.48), ["Cd", "Te"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    assert anion_set(cdte) == "Te"  # …and the anion of CdTe


def test_non_perovskites(nacl, cu):
    assert anion_set(nacl) == "Cl" and anion_set(cu) == "none"
    assert family_key(cu, "chemsys") == "Cu" and family_key(nacl, "spacegroup") == "Fm-3m"
    with pytest.raises(MatmetaInputError, match="NaCl: not an ABX3 perovskite"):
        family_key(nacl, "b_site")
    keys, errors = all_family_keys(cu, "Cu.cif")
    assert "b_site" not in keys and errors["b_site"].startswith("Cu.cif: not an ABX3 perovskite")
    with pytest.raises(MatmetaInputError, match="unknown family kind"):
        family_key(cu, "colour")


def test_b_site_agrees_with_the_castelli_labels(perovskites_csv):
    """The dataset's formulas list A first and B second; geometry must agree for nearly all rows."""
    _, rows = read_csv(perovskites_csv, ["cif", "formula"])
    rows = rows[:300]
    agree = 0
    for number, row in enumerate(rows):
        structure = parse_cif(row["cif"], f"row {number}")
        a_label, b_label = re.findall(r"[A-Z][a-z]?", row["formula"])[:2]
        agree += perovskite_sites(structure) == (a_label, b_label)
        anions = re.sub(r"^[A-Z][a-z]?[A-Z][a-z]?", "", row["formula"])  # e.g. O2N, OFN, N3
        assert family_key(structure, "anion_set") == anions
    assert agree >= 0.95 * len(rows)


def test_family_statistics():
    keys = ["Ti", "Zr", "Ti", "Ti"]
    targets = np.array([[1.0, 0.0], [5.0, 2.0], [3.0, np.nan], [2.0, 4.0]])
    rows = family_statistics(keys, targets, ["heat", "gap"])
    assert [r["family"] for r in rows] == ["Ti", "Zr"]
    ti = rows[0]
    assert ti["size"] == 3
    assert ti["heat_mean"] == pytest.approx(2.0) and ti["heat_std"] == pytest.approx(np.std([1, 3, 2]))
    assert ti["gap_mean"] == pytest.approx(2.0) and ti["gap_max"] == 4.0  # NaN ignored
    assert rows[1]["heat_min"] == 5.0 and rows[1]["size"] == 1
