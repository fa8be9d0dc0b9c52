"""Relaxation of candidates (CHGNet through ASE) and how its outcome is judged and marked."""

import numpy as np
import pytest

from matmeta.design.relax import (
    describe_relaxation,
    displacement_rmsd,
    keeps_perovskite_connectivity,
    relax_status,
)


def test_relaxing_a_distorted_srtio3_returns_to_cubic_and_lowers_the_energy(srtio3):
    from pymatgen.core import Lattice, Structure

    from matmeta.design.relax import Relaxer, RelaxSettings

    strained = srtio3.copy()
    strained.apply_strain([0.05, -0.04, 0.02])
    distorted = Structure(
        Lattice.from_parameters(*strained.lattice.abc, 88.0, 91.0, 90.0), srtio3.species, srtio3.frac_coords
    )
    abc = np.array(distorted.lattice.abc)
    assert abc.max() / abc.min() - 1 > 0.09  # the start is far from cubic
    relaxed, row = Relaxer(RelaxSettings(max_steps=60)).relax(distorted)
    abc = np.array(relaxed.lattice.abc)
    assert abc.max() / abc.min() - 1 < 0.015
    assert np.allclose(relaxed.lattice.angles, 90.0, atol=0.5)
    assert abs(abc.mean() / 3.905 - 1) < 0.03  # CHGNet's SrTiO3 is within 3 % of experiment
    assert row["energy_after_ev_per_atom"] < row["energy_before_ev_per_atom"] - 0.01
    assert row["relax_converged"] and 0 < row["relax_steps"] < 60
    assert row["relaxed_valid"] and row["keeps_structure"] and row["keeps_structure_generated"]
    # from the seeded 0.02 A rattle back to the inversion centres (the rattle alone is ~0.035 A RMS)
    assert row["rmsd_ang"] < 0.06  # within the force tolerance of the centres, far from off-centring (~0.15 A)
    assert row["volume_change"] == pytest.approx(relaxed.volume / distorted.volume - 1)
    assert relax_status(row, in_window_after=True) == "ok"


def test_connectivity_of_perovskites_and_of_what_is_not_one(srtio3):
    from pymatgen.core import Lattice, Structure

    assert keeps_perovskite_connectivity(srtio3)
    tilted = srtio3.copy()
    tilted.translate_sites([2, 3, 4], [0.03, -0.02, 0.01])  # small distortion: still corner-sharing octahedra
    assert keeps_perovskite_connectivity(tilted)
    polar = srtio3.copy()
    polar.translate_sites([1], [0.0, 0.0, 0.08])  # PbTiO3-like off-centring (1.64 / 2.27 A): still a perovskite
    assert keeps_perovskite_connectivity(polar)
    # Ti pulled next to one face (1.09 / 2.82 A): the octahedron is torn apart
    pyramid = srtio3.copy()
    pyramid.translate_sites([1], [0.0, 0.0, 0.22])
    assert not keeps_perovskite_connectivity(pyramid)
    # a layered cell: the c axis so long that the apical O is far from Ti
    layered = Structure(
        Lattice.tetragonal(3.9, 7.0),
        srtio3.species,
        [[0, 0, 0], [0.5, 0.5, 0.25], [0.5, 0.5, 0.5], [0.5, 0, 0.25], [0, 0.5, 0.25]],
    )
    assert not keeps_perovskite_connectivity(layered)
    assert not keeps_perovskite_connectivity(Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]))


def test_rmsd_ignores_translation_and_wraps_images(srtio3):
    moved = srtio3.copy()
    moved.translate_sites(list(range(5)), [0.3, 0.0, 0.0])  # a rigid translation: no displacement
    assert displacement_rmsd(srtio3, moved) == pytest.approx(0.0, abs=1e-9)
    one = srtio3.copy()
    one.translate_sites([0], [-0.1, 0.0, 0.0])  # Sr from 0 to 0.9: 0.39 A across the boundary
    d = np.zeros((5, 3))
    d[0, 0] = -0.1 * 3.905
    d -= d.mean(0)
    assert displacement_rmsd(srtio3, one) == pytest.approx(np.sqrt((d**2).sum(1).mean()))


def test_a_candidate_that_collapses_is_marked(srtio3):
    """The marking path, with a relaxer that returns a collapsed cell (no CHGNet needed)."""
    from pymatgen.core import Lattice, Structure

    from matmeta.design.deliver import relax_and_recheck
    from matmeta.design.stability import StabilityCriterion

    collapsed = Structure(
        Lattice.cubic(2.2), srtio3.species, [[0, 0, 0], [0.1, 0.1, 0.1], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )
    broken = srtio3.copy()
    broken.translate_sites([1], [0.0, 0.0, 0.22])

    class FakeRelaxer:
        def relax_all(self, structures, on_done=None):
            after = [collapsed, broken, srtio3, None]
            rows = [
                describe_relaxation(b, a, np.array([-7.0, -7.5]), 100)
                for b, a in zip(structures[:3], after, strict=False)
            ]
            rows.append({**rows[2], "relax_error": "ValueError: no neighbours"})
            return after, rows

    class Scorer:
        nonmetal_cut = 0.5

        def predict_structures(self, structures):
            return [{"band_gap": 3.0, "p_metal": 0.1, "heat_ref": 0.0} for _ in structures]

    rows = [{"formula": "SrTiO3"} for _ in range(4)]
    relaxed = relax_and_recheck(rows, [srtio3] * 4, Scorer(), (1.5, 2.5), StabilityCriterion(), relaxer=FakeRelaxer())
    assert [r["relax_status"] for r in rows] == [
        "collapsed",
        "lost perovskite connectivity",
        "left window",
        "relax failed",
    ]
    assert not rows[0]["relaxed_valid"] and rows[1]["relaxed_valid"] and not rows[1]["keeps_structure"]
    assert rows[2]["band_gap_ev_relaxed"] == 3.0 and rows[2]["in_window_relaxed"] is False
    assert "band_gap_ev_relaxed" not in rows[0]  # a collapsed cell is not predicted again
    assert relaxed[3] is None
