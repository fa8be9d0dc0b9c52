"""Snapping generated cells to the ideal cubic prototype, and the seeded rattle relaxations start from."""

import numpy as np
import pytest

from matmeta.design.relax import rattled
from matmeta.design.symmetry import IDEAL_FRAC, prototype_deviation, snap_to_prototype, unsnapped


def _noisy_cell():
    """A canonical SrTiO3 cell (A, B, X1..X3) with decoder-like noise in positions and lattice."""
    from pymatgen.core import Lattice, Structure

    noise = np.random.default_rng(3).normal(0.0, 0.02, size=(5, 3))
    lattice = Lattice.from_parameters(3.95, 3.86, 3.99, 89.0, 90.5, 88.7)
    return Structure(lattice, ["Sr", "Ti", "O", "O", "O"], IDEAL_FRAC + noise)


def test_snap_puts_the_species_on_the_ideal_positions_at_the_same_volume():
    cell = _noisy_cell()
    snapped = snap_to_prototype(cell)
    assert [s.specie.symbol for s in snapped] == ["Sr", "Ti", "O", "O", "O"]
    assert np.allclose(snapped.frac_coords, IDEAL_FRAC)
    assert np.allclose(snapped.lattice.angles, 90.0) and np.allclose(snapped.lattice.abc, snapped.lattice.a)
    assert snapped.volume == pytest.approx(cell.volume)
    assert prototype_deviation(snapped) == pytest.approx(0.0, abs=1e-12)
    assert prototype_deviation(cell) > 0.03  # the noise was there
    assert snap_to_prototype(cell, lattice_ang=4.1).lattice.a == pytest.approx(4.1)
    raw = unsnapped(snapped)  # the raw geometry travels with the snapped cell
    assert np.allclose(raw.frac_coords, cell.frac_coords) and np.allclose(raw.lattice.matrix, cell.lattice.matrix)
    assert unsnapped(cell) is cell
    with pytest.raises(ValueError, match="5-site"):
        snap_to_prototype(_four(cell))


def _four(cell):
    four = cell.copy()
    four.remove_sites([4])
    return four


def test_prototype_deviation_is_the_rms_displacement_without_the_rigid_shift(srtio3):
    from pymatgen.core import Structure

    ordered = Structure(srtio3.lattice, srtio3.species, IDEAL_FRAC)
    moved = ordered.copy()
    moved.translate_sites([1], [0.0, 0.0, 0.04])  # Ti off-centre by 0.1562 A
    d = np.zeros((5, 3))
    d[1, 2] = 0.04 * 3.905
    d -= d.mean(0)
    assert prototype_deviation(moved) == pytest.approx(np.sqrt((d**2).sum(1).mean()))
    shifted = ordered.copy()
    shifted.translate_sites(list(range(5)), [0.2, 0.1, 0.0])
    assert prototype_deviation(shifted) == pytest.approx(0.0, abs=1e-12)


def test_rattle_is_seeded_and_of_the_stated_size(srtio3):
    a, b, c = rattled(srtio3, 0.02, seed=1), rattled(srtio3, 0.02, seed=1), rattled(srtio3, 0.02, seed=2)
    assert np.allclose(a.cart_coords, b.cart_coords) and not np.allclose(a.cart_coords, c.cart_coords)
    shifts = np.concatenate([rattled(srtio3, 0.02, seed=s).cart_coords - srtio3.cart_coords for s in range(20)])
    assert 0.017 < shifts.std() < 0.023 and abs(shifts.mean()) < 0.005
    assert np.allclose(rattled(srtio3, 0.0, seed=1).cart_coords, srtio3.cart_coords)


def test_the_decoder_samples_snapped_cells_unless_asked_for_its_raw_geometry():
    import torch

    from matmeta.design.generator import Generator

    gen = Generator.load()
    gaps = torch.full((6,), 2.0)
    snapped = gen.sample(6, gaps, seed=5)
    raw = gen.sample(6, gaps, seed=5, snap=False)
    for s, r in zip(snapped, raw, strict=True):
        assert s.species == r.species
        assert np.allclose(s.frac_coords, IDEAL_FRAC)
        assert s.volume == pytest.approx(r.volume)
        assert np.allclose(unsnapped(s).frac_coords, r.frac_coords)
    assert np.median([prototype_deviation(r) for r in raw]) > 0.01  # the decoder's own positions are noisy
