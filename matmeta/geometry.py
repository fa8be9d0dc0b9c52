"""Periodic geometry, one primitive for io, graphs, families and validity: neighbours, wrapping, closest pairs."""

from __future__ import annotations

import functools
import itertools

import numpy as np

#: The 27 image offsets n ∈ {-1, 0, 1}³; the zero offset is row 13.
_IMAGES = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))
_ZERO_IMAGE = 13
#: Atoms up to which :func:`dense_min_distance` searches all pairs (it is O(N²)).
DENSE_MAX_ATOMS = 64


def neighbor_list(
    lattice: np.ndarray, cart_coords: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All periodic neighbour pairs within ``cutoff`` (self-pairs at zero offset excluded).

    Uses pymatgen's cell-list search, which enumerates every periodic image that can lie within
    the cutoff, so it is correct for cutoffs larger than the cell and for triclinic cells.

    Args:
        lattice: Lattice vectors as rows, Å.
        cart_coords: Cartesian positions, Å.
        cutoff: Radius, Å.

    Returns:
        ``(centers, neighbors, offsets, distances)``.

    Shapes:
        lattice: (3, 3); cart_coords: (N, 3) → centers, neighbors: (P,) int64; offsets: (P, 3)
        float64 integer images; distances: (P,) float64.
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    coords = np.ascontiguousarray(cart_coords, dtype=np.float64)
    matrix = np.ascontiguousarray(lattice, dtype=np.float64)
    centers, neighbors, offsets, distances = find_points_in_spheres(
        coords, coords, float(cutoff), np.array([1, 1, 1], dtype=np.int64), matrix, 1e-8
    )
    centers = np.asarray(centers, dtype=np.int64)
    neighbors = np.asarray(neighbors, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
    distances = np.asarray(distances, dtype=np.float64)
    # the search returns each atom paired with itself at zero offset (distance 0): drop those
    drop = (centers == neighbors) & ~offsets.any(axis=1)
    if not drop.any():
        return centers, neighbors, offsets, distances
    keep = ~drop
    return centers[keep], neighbors[keep], offsets[keep], distances[keep]


Pairs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_BOUNDARY = 1e-6  # Å: a pair this close to a search radius is left to a fresh search


def neighbors_within(found: Pairs, radius: float, lattice: np.ndarray, cart_coords: np.ndarray, cutoff: float) -> Pairs:
    """``neighbor_list(lattice, cart_coords, cutoff)`` taken from ``found``, a search of the same atoms at ``radius``.

    The pairs and their distances are those of a fresh search (the distances are computed alike);
    only their order may differ. Searches afresh when ``cutoff`` is not clearly inside ``radius``
    or a distance lies within ``_BOUNDARY`` of ``cutoff`` (where the search's own tolerance decides).

    Shapes:
        found: as returned by :func:`neighbor_list`; lattice: (3, 3); cart_coords: (N, 3)
    """
    centers, neighbors, offsets, distances = found
    below = distances - cutoff
    if cutoff + 2 * _BOUNDARY > radius or bool((np.abs(below) <= _BOUNDARY).any()):
        return neighbor_list(lattice, cart_coords, cutoff)
    keep = np.flatnonzero(below < 0)
    return centers[keep], neighbors[keep], offsets[keep], distances[keep]


def wrap_fractional(frac_coords: np.ndarray) -> np.ndarray:
    """Fractional coordinates wrapped into [0, 1).

    Shapes:
        frac_coords: (N, 3) → (N, 3)
    """
    wrapped = np.mod(np.asarray(frac_coords, dtype=np.float64), 1.0)
    wrapped[wrapped >= 1.0] = 0.0  # np.mod(-1e-17, 1) == 1.0
    return wrapped


def closest_pair(lattice: np.ndarray, cart_coords: np.ndarray, within: float) -> tuple[int, int, float] | None:
    """The closest pair of atoms (any periodic images, an atom and its own images too) within ``within`` Å.

    Returns:
        ``(i, j, distance)`` or None when no pair is that close.

    Shapes:
        lattice: (3, 3); cart_coords: (N, 3)
    """
    centers, neighbors, _, distances = neighbor_list(lattice, cart_coords, within)
    if not len(distances):
        return None
    k = int(np.argmin(distances))
    return int(centers[k]), int(neighbors[k]), float(distances[k])


def min_distance(lattice: np.ndarray, cart_coords: np.ndarray) -> float:
    """Shortest interatomic distance (Å) including periodic images; NaN for a degenerate cell.

    The shortest lattice vector bounds the answer (an atom and its own image), so the search radius
    is that length.

    Shapes:
        lattice: (3, 3); cart_coords: (N, 3)
    """
    matrix = np.asarray(lattice, dtype=np.float64)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
        return float("nan")
    within = float(np.linalg.norm(matrix, axis=1).min()) + 1e-6
    pair = closest_pair(matrix, np.asarray(cart_coords, dtype=np.float64), within)
    return float("nan") if pair is None else pair[2]


def _thinnest_height_at_least(rows: list[list[float]], limit: float) -> bool:
    """True when every height of the cell (volume / area of the face of the other two vectors) is ≥ ``limit``."""
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = rows
    faces = (
        (b1 * c2 - b2 * c1, b2 * c0 - b0 * c2, b0 * c1 - b1 * c0),
        (c1 * a2 - c2 * a1, c2 * a0 - c0 * a2, c0 * a1 - c1 * a0),
        (a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0),
    )
    volume = abs(a0 * faces[0][0] + a1 * faces[0][1] + a2 * faces[0][2])
    widest = max(x * x + y * y + z * z for x, y, z in faces)
    return volume * volume >= limit * limit * widest


@functools.lru_cache(maxsize=DENSE_MAX_ATOMS)
def _pairs(n_atoms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i ≤ j of ``n_atoms`` atoms, and the positions of the pairs i == j."""
    i, j = np.triu_indices(n_atoms)
    return i, j, np.flatnonzero(i == j)


def dense_min_distance(lattice: np.ndarray, wrapped_frac: np.ndarray, limit: float) -> float | None:
    """Shortest interatomic distance (any periodic images, an atom and its own images too) when below ``limit``.

    Every pair is measured over the 27 neighbouring images, vectorised; no cell list, no lattice
    reduction. That covers every distance below ``limit`` when each height of the cell is at least
    ``limit``: with wrapped coordinates (|Δf| < 1) an image two or more cells away along an axis is
    farther than that axis's height.

    Returns:
        The shortest distance when it is below ``limit``, otherwise a distance ≥ ``limit`` (an
        upper bound: farther images are not measured); None when the cell is thinner than
        ``limit`` or has more than ``DENSE_MAX_ATOMS`` atoms (the caller searches another way).

    Shapes:
        lattice: (3, 3); wrapped_frac: (N, 3), every coordinate in [0, 1)
    """
    if len(wrapped_frac) > DENSE_MAX_ATOMS or not _thinnest_height_at_least(lattice.tolist(), limit):
        return None
    i, j, same = _pairs(len(wrapped_frac))
    vectors = ((wrapped_frac[j] - wrapped_frac[i]) @ lattice)[:, None, :] + _IMAGES @ lattice
    squared = np.einsum("pik,pik->pi", vectors, vectors)
    squared[same, _ZERO_IMAGE] = np.inf  # an atom and itself
    return float(np.sqrt(squared.min()))
