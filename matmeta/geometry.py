"""Periodic geometry, one primitive for io, graphs, families and validity: neighbours, wrapping, closest pairs."""

from __future__ import annotations

import numpy as np


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
    # the search already drops i == j at zero offset within its tolerance; guard against zero-length pairs
    keep = ~((centers == neighbors) & np.all(offsets == 0, axis=1))
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
