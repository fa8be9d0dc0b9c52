"""Snap a 5-atom ABX3 cell to its prototype: the ideal cubic perovskite the decoder approximates.

One job: put a decoded (or substituted) cell in canonical order — A, B, then the anions X1..X3 on the
a, b and c axes from B (:func:`matmeta.design.data.canonical_cell`) — onto the ideal positions of the
cubic perovskite, A (0,0,0), B (½,½,½), X1 (0,½,½), X2 (½,0,½), X3 (½,½,0), in a cubic cell.

Why: the decoder emits every coordinate with some noise (median 0.1–0.3 Å from those positions), and a
relaxation from a noisy start mostly measures that noise. In the ideal cell every atom sits on an
inversion centre whatever the species, so the forces vanish by symmetry and the cell is a stationary
point of any potential: what a relaxation does from there is the potential's verdict on the
candidate. Whether that point is a minimum is tested by relaxing from a small seeded random rattle
(:class:`matmeta.design.relax.RelaxSettings`), which lets an unstable cell leave it.

The lattice constant is the decoder's (cube root of the decoded cell volume) unless one is given. The
cell as it was before snapping stays in ``properties["unsnapped"]`` (JSON-ready: species, fractional
coordinates, lattice matrix; :func:`unsnapped`), so the raw geometry can be relaxed beside the snapped one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IDEAL_FRAC = np.array(
    [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]], dtype=np.float64
)


def prototype_deviation(structure: Any) -> float:
    """RMS distance (Å) of a canonical 5-site cell's atoms from the ideal positions (rigid shift removed)."""
    diff = np.asarray(structure.frac_coords, dtype=np.float64) - IDEAL_FRAC
    diff -= np.round(diff)
    cart = diff @ np.asarray(structure.lattice.matrix, dtype=np.float64)
    cart -= cart.mean(axis=0)
    return float(np.sqrt((cart**2).sum(axis=1).mean()))


def snap_to_prototype(structure: Any, lattice_ang: float | None = None) -> Any:
    """The ideal cubic perovskite with the species of a canonical 5-site cell (module docstring).

    Args:
        structure: a 5-site cell in canonical order (A, B, X1, X2, X3), e.g. a decoder draw.
        lattice_ang: the cubic lattice constant (Å); None keeps the cell's volume.

    Raises:
        ValueError: the cell does not have 5 sites (callers pass canonical cells only).
    """
    from pymatgen.core import Lattice, Structure

    if len(structure) != len(IDEAL_FRAC):
        raise ValueError(f"snap_to_prototype: {len(structure)} sites, expected a canonical 5-site ABX3 cell")
    a = float(lattice_ang) if lattice_ang is not None else float(abs(structure.volume)) ** (1.0 / 3.0)
    species = [site.specie for site in structure]
    raw = {
        "species": [str(x) for x in species],
        "frac": np.asarray(structure.frac_coords, dtype=np.float64).tolist(),
        "lattice": np.asarray(structure.lattice.matrix, dtype=np.float64).tolist(),
    }
    return Structure(Lattice.cubic(a), species, IDEAL_FRAC.copy(), properties={"unsnapped": raw})


def unsnapped(structure: Any) -> Any:
    """The cell before :func:`snap_to_prototype` (the structure itself when it was not snapped)."""
    from pymatgen.core import Lattice, Structure

    raw = structure.properties.get("unsnapped") if hasattr(structure, "properties") else None
    if raw is None:
        return structure
    return Structure(Lattice(raw["lattice"]), raw["species"], raw["frac"])
