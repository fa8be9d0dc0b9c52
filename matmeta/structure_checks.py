"""Is a parsed crystal one matmeta can use? One-line ``MatmetaInputError`` reasons when it is not.

Every structure read by :mod:`matmeta.io` passes :func:`check_structure`: partially occupied sites
are refused unless an ordered approximation is asked for; cells with more than ``max_atoms`` atoms,
unknown elements, absurd volumes per atom, non-finite or runaway coordinates and overlapping atoms
are refused with the reason. :func:`check_cell` is the array form used by the ingest hot path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from matmeta.cif import element_numbers
from matmeta.errors import MatmetaInputError

if TYPE_CHECKING:
    from pymatgen.core import Structure

DEFAULT_MAX_ATOMS = 500
MIN_VOLUME_PER_ATOM = 1.0  # Å^3
MAX_VOLUME_PER_ATOM = 1000.0  # Å^3
MIN_DISTANCE = 0.5  # Å
_MARGIN = 1e-6  # Å: distances this close to MIN_DISTANCE are left to the exact search
_MAX_QUICK_LENGTH = 1e5  # Å: larger cells go to the exact search (rounding there grows with the length)
MAX_FRACTIONAL = 1e6  # |fractional coordinate|; beyond it the position within the cell is lost to rounding


def ordered_approximation_of(structure: Structure) -> Structure:
    """Each partially occupied site becomes its majority species; a site mostly vacant is dropped.

    A crude but explicit approximation (the usual alternative, enumerating orderings in a
    supercell, multiplies the cell size): use it only when the disorder is minor.
    """
    from pymatgen.core import Structure

    species, coords = [], []
    for site in structure:
        items = sorted(site.species.items(), key=lambda kv: (-kv[1], str(kv[0])))
        top, occupancy = items[0]
        vacancy = 1.0 - sum(site.species.values())
        if vacancy > occupancy:
            continue
        species.append(getattr(top, "element", top))
        coords.append(site.frac_coords)
    return Structure(structure.lattice, species, coords)


def check_structure(
    structure: Structure,
    name: str,
    *,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    ordered_approximation: bool = False,
) -> Structure:
    """Refuse structures that would give a meaningless or unbounded graph.

    Checks, in order: at least one atom and at most ``max_atoms``; full site occupancy (or an
    ordered approximation when asked); a finite cell with ``MIN_VOLUME_PER_ATOM`` ≤ V/N ≤
    ``MAX_VOLUME_PER_ATOM`` Å³; no two atoms closer than ``MIN_DISTANCE`` Å (any periodic image).

    Returns:
        The structure (the ordered approximation when one was made).

    Raises:
        MatmetaInputError: ``"<name>: <reason>"`` for the first failed check.
    """
    n_atoms = len(structure)
    if n_atoms == 0:
        raise MatmetaInputError(f"{name}: structure has no atoms")
    check_species(structure, name)
    if n_atoms > max_atoms:
        raise MatmetaInputError(f"{name}: {n_atoms} atoms exceed max_atoms={max_atoms}")
    if not structure.is_ordered:
        if not ordered_approximation:
            raise MatmetaInputError(
                f"{name}: partially occupied sites (disorder); pass ordered_approximation=True "
                "(--ordered-approximation) to use the majority species"
            )
        structure = ordered_approximation_of(structure)
        n_atoms = len(structure)
        if n_atoms == 0:
            raise MatmetaInputError(f"{name}: no site left after the ordered approximation")
    check_cell(structure.lattice.matrix, structure.frac_coords, name)
    return structure


def check_species(structure: Structure, name: str) -> None:
    """Refuse any site whose species is not a real element (pymatgen's ``DummySpecies`` such as ``Xx``).

    POSCAR and CIF readers turn unknown symbols into dummy species whose atomic number is garbage;
    this is the one place that stops them before a graph is built.

    Raises:
        MatmetaInputError: ``"<name>: unknown element 'Xx'"``.
    """
    known = element_numbers()
    for site in structure:
        for species in site.species:
            symbol = getattr(species, "symbol", str(species))
            element = getattr(species, "element", species)
            if symbol not in known or getattr(element, "Z", None) != known[symbol]:
                raise MatmetaInputError(f"{name}: unknown element {symbol!r}")


def check_cell(lattice: np.ndarray, frac_coords: np.ndarray, name: str, overlaps: bool = True) -> None:
    """The geometric checks of :func:`check_structure`: finite cell, volume per atom, no overlapping atoms.

    ``overlaps=False`` leaves the overlap check to the caller (ingest: :func:`check_overlaps_from_pairs`
    with the graph's own neighbour search).

    Shapes:
        lattice: (3, 3); frac_coords: (N, 3)

    Raises:
        MatmetaInputError: ``"<name>: <reason>"``.
    """
    matrix = np.asarray(lattice, dtype=np.float64)
    frac = np.asarray(frac_coords, dtype=np.float64)
    if not np.isfinite(frac).all():
        raise MatmetaInputError(f"{name}: non-finite atom coordinates")
    if frac.size and float(np.abs(frac).max()) > MAX_FRACTIONAL:
        raise MatmetaInputError(f"{name}: fractional coordinate {float(np.abs(frac).max()):.3g} is absurd")
    with np.errstate(all="ignore"):  # an overflowing determinant is refused below, not warned about
        volume = float(abs(np.linalg.det(matrix))) if np.isfinite(matrix).all() else 0.0
    if not math.isfinite(volume) or volume <= 0:
        raise MatmetaInputError(f"{name}: degenerate or non-finite cell")
    per_atom = volume / len(frac)
    if per_atom < MIN_VOLUME_PER_ATOM or per_atom > MAX_VOLUME_PER_ATOM:
        raise MatmetaInputError(
            f"{name}: implausible volume per atom {per_atom:.3g} Å^3 "
            f"(allowed {MIN_VOLUME_PER_ATOM:g}–{MAX_VOLUME_PER_ATOM:g})"
        )
    if not overlaps or _clearly_apart(matrix, frac):
        return
    _check_overlaps_exact(matrix, frac, name)


def check_overlaps_from_pairs(
    lattice: np.ndarray, frac_coords: np.ndarray, distances: np.ndarray, name: str, radius: float
) -> None:
    """The overlap check of :func:`check_cell` from a neighbour search the caller already made within ``radius``.

    The pairs' shortest distance decides when it is clearly above ``MIN_DISTANCE`` (by more than the
    margin), the search reached past it and the cell is not huge; otherwise the exact search decides
    and words the message.

    Shapes:
        lattice: (3, 3); frac_coords: (N, 3); distances: (P,) every pair within the search radius
    """
    matrix = np.asarray(lattice, dtype=np.float64)
    if radius > MIN_DISTANCE + 2 * _MARGIN and float(np.abs(matrix).max()) <= _MAX_QUICK_LENGTH:
        if not len(distances) or float(np.min(distances)) >= MIN_DISTANCE + _MARGIN:
            return
    _check_overlaps_exact(matrix, np.asarray(frac_coords, dtype=np.float64), name)


def _clearly_apart(matrix: np.ndarray, frac: np.ndarray) -> bool:
    """True when no two atoms (or an atom and its image) come within ``MIN_DISTANCE`` + a margin: the quick path.

    :func:`~matmeta.geometry.dense_min_distance` decides small, not too thin cells without a lattice
    reduction. Anything it cannot decide by more than ``_MARGIN`` goes to :func:`_check_overlaps_exact`,
    so the decision and the message are those of the exact search (floating-point differences
    between the two searches, ~1e-10 Å for cells up to ``_MAX_QUICK_LENGTH``, are far below the margin).
    """
    from matmeta.geometry import dense_min_distance, wrap_fractional

    if float(np.abs(matrix).max()) > _MAX_QUICK_LENGTH:
        return False
    limit = MIN_DISTANCE + _MARGIN
    distance = dense_min_distance(matrix, wrap_fractional(frac), limit)
    return distance is not None and distance >= limit


def _check_overlaps_exact(matrix: np.ndarray, frac: np.ndarray, name: str) -> None:
    """The exact overlap search: shortest lattice vector, then the closest pair, in the LLL-reduced cell.

    Raises:
        MatmetaInputError: ``"<name>: atoms i and j overlap (...)"``.
    """
    from pymatgen.core import Lattice

    from matmeta.geometry import closest_pair, wrap_fractional

    # The search runs in the LLL-reduced cell with wrapped atoms: a coordinate such as -87588 or a
    # skewed/needle cell would otherwise make the cell-list search span millions of cells.
    reduced = np.asarray(Lattice(matrix).get_lll_reduced_lattice().matrix, dtype=np.float64)
    shortest = float(np.linalg.norm(reduced, axis=1).min())
    if shortest < MIN_DISTANCE:
        raise MatmetaInputError(
            f"{name}: atoms 0 and 0 overlap ({shortest:.3g} Å apart: a lattice vector shorter than {MIN_DISTANCE} Å)"
        )
    cart = wrap_fractional((wrap_fractional(frac) @ matrix) @ np.linalg.inv(reduced)) @ reduced
    pair = closest_pair(reduced, cart, MIN_DISTANCE)
    if pair is not None:
        i, j, distance = pair
        raise MatmetaInputError(f"{name}: atoms {i} and {j} overlap ({distance:.3f} Å apart, minimum {MIN_DISTANCE} Å)")
