"""The hull of known phases (matmeta.design.hull) and the CHGNet references (matmeta.design.chgnet_reference)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import require_shared
from pymatgen.core import Composition

from matmeta.design.chgnet_reference import DEFAULT_PATH, ChgnetReference, ridge_mu, write_references
from matmeta.design.hull import KnownHull
from matmeta.errors import MatmetaInputError

# Cu-Au toy: CuAu at -1 eV/atom is the only compound on the hull; CuAu2 (x_Au = 2/3) at -0.5 lies above the
# CuAu-Au tie line (-2/3 there) by 1/6; Cu's own row at +0.05 is above its 0.0 reference.
TOY = {"Cu": 0.05, "Au": 0.0, "CuAu": -1.0, "CuAu2": -0.5, "Ag": 0.0}


@pytest.fixture
def toy() -> KnownHull:
    return KnownHull.from_entries(TOY.keys(), TOY.values())


@pytest.mark.parametrize(
    ("formula", "e_form", "expected"),
    [
        ("CuAu3", -0.3, 0.2),  # hull at x_Au = 3/4: halfway from CuAu (-1) to Au (0) = -0.5
        ("CuAu3", -0.5, 0.0),
        ("CuAu3", -0.7, -0.2),  # below the hull: negative
        ("Cu3Au", -0.5, 0.0),
        ("CuAu", -1.0, 0.0),
        ("CuAu", -1.25, -0.25),
        ("CuAu2", -0.5, 1 / 6),
        ("Cu", 0.05, 0.05),  # the element reference at 0, not its +0.05 row
        ("AgAuCu", 0.0, 2 / 3),  # ternary: 2/3 CuAu + 1/3 Ag = -2/3
        ("Ag", -0.1, -0.1),
    ],
)
def test_toy_e_above_hull(toy, formula, e_form, expected):
    assert toy.e_above_hull(formula, e_form) == pytest.approx(expected, abs=1e-9)


def test_toy_hull_energy_and_composition_input(toy):
    assert toy.hull_energy_per_atom("CuAu2") == pytest.approx(-2 / 3, abs=1e-9)
    assert toy.hull_energy_per_atom(Composition("Cu2Au6")) == pytest.approx(-0.5, abs=1e-9)
    assert toy.e_above_hull(Composition("CuAu3"), -0.3) == pytest.approx(toy.e_above_hull("CuAu3", -0.3))


def test_diagram_per_chemical_system_is_cached_and_small(toy):
    pd = toy.phase_diagram("CuAu")
    assert toy.phase_diagram(Composition("Cu3Au")) is pd
    assert toy.phase_diagram("Cu") is not pd
    assert {e.composition.reduced_formula for e in toy.phase_diagram("Cu").all_entries} == {"Cu"}
    assert "Ag" not in {str(el) for el in pd.elements}


def test_unknown_element_named(toy):
    with pytest.raises(MatmetaInputError, match="O"):
        toy.e_above_hull("CuO", -1.0)
    with pytest.raises(MatmetaInputError, match="Qq: not a chemical element"):
        toy.e_above_hull("Qq2", -1.0)
    with pytest.raises(MatmetaInputError, match="not a chemical formula"):
        toy.e_above_hull("Cu(", -1.0)


def test_toy_formulas_and_ids(toy):
    assert toy.known_formulas() == set(TOY)
    assert toy.ids_with_formula("AuCu") == ["toy-2"]
    assert toy.ids_with_formula("CuAu4") == []


@pytest.fixture(scope="module")
def mp_hull() -> KnownHull:
    return KnownHull.from_csv(require_shared("mp/mp36k.csv"))


def _lowest(hull: KnownHull, formula: str) -> float:
    return min(p.e_form_per_atom for p in hull.phases if p.material_id in hull.ids_with_formula(formula))


@pytest.mark.parametrize("formula", ["NaCl", "MgO", "Fe2O3", "BaTiO3"])
def test_mp_stable_compounds_on_hull(mp_hull, formula):
    assert mp_hull.e_above_hull(formula, _lowest(mp_hull, formula)) == pytest.approx(0.0, abs=1e-6)


def test_mp_offsets_from_mgo(mp_hull):
    mgo = _lowest(mp_hull, "MgO")
    assert mgo == pytest.approx(-3.0624300, abs=1e-6)
    assert mp_hull.e_above_hull("MgO", mgo + 0.5) == pytest.approx(0.5, abs=1e-6)
    assert mp_hull.e_above_hull(Composition("Mg2O2"), mgo - 0.1) == pytest.approx(-0.1, abs=1e-6)


def test_mp_lookup_and_structures(mp_hull):
    assert len(mp_hull.elements) == 87
    assert "NaCl" in mp_hull.known_formulas()
    assert "mp-22862" in mp_hull.ids_with_formula("ClNa")
    structures = mp_hull.structures_with_formula("NaCl")
    assert len(structures) == len(mp_hull.ids_with_formula("NaCl"))
    assert structures[0].composition.reduced_formula == "NaCl"
    with pytest.raises(MatmetaInputError, match="Og"):
        mp_hull.e_above_hull("NaOg", 0.0)


def test_reference_arithmetic(tmp_path):
    path = write_references({"mu": {"Na": -1.3, "Cl": -1.8, "O": -4.9}, "n_fit": 3}, tmp_path / "ref.json")
    ref = ChgnetReference.load(path)
    assert ref.meta["n_fit"] == 3
    # NaCl: -3.7 - (0.5 * -1.3 + 0.5 * -1.8) = -2.15
    assert ref.formation_energy_per_atom("NaCl", -3.7) == pytest.approx(-2.15, abs=1e-12)
    # Na2O: -4.0 - (2/3 * -1.3 + 1/3 * -4.9) = -4.0 + 0.8667 + 1.6333 = -1.5
    assert ref.formation_energy_per_atom(Composition("Na2O"), -4.0) == pytest.approx(-1.5, abs=1e-12)
    with pytest.raises(MatmetaInputError, match="Mg"):
        ref.formation_energy_per_atom("MgO", -5.0)


def test_reference_unreadable_json(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"nomu": 1}))
    with pytest.raises(MatmetaInputError, match="not a CHGNet reference JSON"):
        ChgnetReference.load(tmp_path / "bad.json")


def test_ridge_recovers_and_falls_back():
    x = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    mu_true, mu0 = np.array([-2.0, -3.0, 0.0]), np.array([-1.0, -1.0, -7.0])
    mu = ridge_mu(x, x @ mu_true, mu0, 1e-9)
    assert mu[:2] == pytest.approx(mu_true[:2], abs=1e-6)
    assert mu[2] == pytest.approx(-7.0)  # never seen: stays at its prior


def test_shipped_references():
    ref = ChgnetReference.load(DEFAULT_PATH)
    assert len(ref.mu) == 87
    assert all(math.isfinite(v) for v in ref.mu.values())
    assert ref.meta["n_fit"] > 1000 and ref.meta["n_holdout"] > 100
    assert ref.meta["holdout_mae_ev_per_atom"] < ref.meta["holdout_mae_elemental_only"]
