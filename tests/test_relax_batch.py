"""Batched CHGNet relaxation (matmeta/design/batch_relax.py) against the one-at-a-time path."""

from pathlib import Path

import numpy as np
import pytest

STRUCTURES = Path(__file__).resolve().parents[1] / "data" / "structures"


@pytest.fixture(scope="module")
def relaxer():
    from matmeta.design.relax import Relaxer, RelaxSettings

    return Relaxer(RelaxSettings(max_steps=60))


def _distorted(srtio3):
    from pymatgen.core import Lattice, Structure

    strained = srtio3.copy()
    strained.apply_strain([0.05, -0.04, 0.02])
    lattice = Lattice.from_parameters(*strained.lattice.abc, 88.0, 91.0, 90.0)
    return Structure(lattice, srtio3.species, srtio3.frac_coords)


def test_one_backward_pass_gives_chgnets_energy_forces_and_stress(relaxer, srtio3):
    """The batched evaluation equals CHGNet's own calculator (eV, eV/Å, eV/Å³) on a strained, rattled cell."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from matmeta.design.batch_relax import chgnet_efsm
    from matmeta.design.relax import rattled

    cells = [rattled(_distorted(srtio3), 0.05, 1), rattled(srtio3, 0.05, 2)]
    mine = chgnet_efsm(relaxer._model(), cells)
    for cell, got in zip(cells, mine, strict=True):
        atoms = AseAtomsAdaptor().get_atoms(cell)
        atoms.calc = relaxer._load().calculator
        assert got["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
        assert np.abs(got["forces"] - atoms.get_forces()).max() < 1e-4
        assert np.abs(got["stress"] - atoms.get_stress(voigt=False)).max() < 1e-5
    assert np.abs(mine[0]["forces"]).max() > 0.1 and np.abs(mine[0]["stress"]).max() > 1e-3  # nothing trivially zero


def test_batched_and_single_relaxations_agree(relaxer, srtio3):
    """Distorted SrTiO3 and three shipped cells relaxed together land where one-at-a-time relaxations land."""
    from pymatgen.core import Structure

    from matmeta.design.relax import relax_status

    shipped = [Structure.from_file(STRUCTURES / f"{name}.cif") for name in ("KTaO3", "LaAlO3", "SrSnO3")]
    cells = [_distorted(srtio3), *shipped]
    single, single_rows = relaxer.relax_each(cells)
    batched, rows = relaxer.relax_all(cells)
    for one, many, a, b in zip(single, batched, single_rows, rows, strict=True):
        assert set(b) == set(a) and b["relax_error"] == ""
        assert b["energy_after_ev_per_atom"] == pytest.approx(a["energy_after_ev_per_atom"], abs=2e-3)
        assert b["energy_before_ev_per_atom"] == pytest.approx(a["energy_before_ev_per_atom"], abs=1e-4)
        assert b["rmsd_ang"] == pytest.approx(a["rmsd_ang"], abs=0.01)
        assert abs(b["relax_steps"] - a["relax_steps"]) <= 2 and b["relax_converged"]
        assert np.abs(many.lattice.matrix - one.lattice.matrix).max() < 0.01
        assert b["relax_cpu_seconds"] > 0 and relax_status(b, True) == "ok"
    abc = np.array(batched[0].lattice.abc)
    assert abc.max() / abc.min() - 1 < 0.015 and np.allclose(batched[0].lattice.angles, 90.0, atol=0.5)
    assert rows[0]["energy_after_ev_per_atom"] < rows[0]["energy_before_ev_per_atom"] - 0.01
    assert list(batched[0].site_properties) == ["magmom"]


def test_a_structure_chgnet_cannot_handle_is_marked_and_the_others_relax(relaxer, srtio3):
    """Americium is outside CHGNet's 94 elements: its row says so; the batch around it relaxes as without it."""
    from pymatgen.core import Structure

    bad = srtio3.copy()
    bad.replace(0, "Am")
    ktao3 = Structure.from_file(STRUCTURES / "KTaO3.cif")
    relaxed, rows = relaxer.relax_all([srtio3, bad, ktao3])
    alone, alone_rows = relaxer.relax_all([srtio3])
    assert relaxed[1] is None and "index out of range" in rows[1]["relax_error"]
    assert np.isnan(rows[1]["energy_after_ev_per_atom"]) and not rows[1]["relax_converged"]
    assert rows[0]["relax_error"] == "" and rows[2]["relax_error"] == "" and relaxed[2] is not None
    assert rows[0]["relax_converged"] and rows[2]["relax_converged"]
    assert rows[0]["energy_after_ev_per_atom"] == pytest.approx(alone_rows[0]["energy_after_ev_per_atom"], abs=1e-4)
    assert rows[0]["relax_steps"] == alone_rows[0]["relax_steps"]
