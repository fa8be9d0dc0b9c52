"""Is a crystal a corner-sharing BX6 perovskite network? A geometric test, for relaxations and the domain flag."""

from __future__ import annotations

from typing import Any

import numpy as np

from matmeta import geometry
from matmeta.families import anion_elements

OCTAHEDRON_STRETCH = 1.5  # longest / shortest of the six B-X bonds at most (PbTiO3: 2.4 / 1.78 = 1.35)
SHELL_GAP = 1.2  # the seventh anion at least this much farther than the sixth
MIN_BRIDGE_ANGLE = 120.0  # degrees, B-X-B at every anion: corner sharing (perovskites 140-180), not edges (~95)


def keeps_perovskite_connectivity(structure: Any) -> bool:
    """True when the cell is still a corner-sharing BX6 perovskite network (ABX3 or A2BB'X6 cells).

    A cell with 3k anions and 2k cations (by the anion rule of :mod:`matmeta.families`) has k B sites:
    the k cations with the shortest mean distance to their six nearest anions (periodic images
    included). The network holds when, over the k octahedra, every anion site is a corner of exactly
    two (corner sharing: in ABX3 the anion bridges B and its image, in A2BB'X6 B and B'), no
    octahedron is torn apart (its sixth bond at most ``OCTAHEDRON_STRETCH`` x its first, which admits
    polar off-centring like PbTiO3's), the next anion is clearly farther (at least ``SHELL_GAP`` x
    the sixth bond: six-fold, not more) and every anion bridges its two B sites at an angle of at least
    ``MIN_BRIDGE_ANGLE`` (corners, as in tilted perovskites; ilmenite's edge-sharing octahedra meet at ~95°,
    although each of its anions is also a corner of two). Any other composition fails.
    """
    symbols = [site.specie.symbol for site in structure]
    anions = anion_elements(symbols)
    is_anion = np.array([s in anions for s in symbols])
    n_b = int(is_anion.sum()) // 3
    if n_b < 1 or int(is_anion.sum()) != 3 * n_b or len(symbols) != 5 * n_b:
        return False
    lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)
    if not np.all(np.isfinite(lattice)) or abs(np.linalg.det(lattice)) < 1e-6:
        return False
    cutoff = 3.0 * (abs(np.linalg.det(lattice)) / len(symbols)) ** (1 / 3)
    cart = np.asarray(structure.cart_coords, dtype=np.float64)
    centers, neighbors, offsets, dist = geometry.neighbor_list(lattice, cart, cutoff)
    vectors = cart[neighbors] + offsets @ lattice - cart[centers]
    shells = {}
    for c in np.flatnonzero(~is_anion):
        mine = np.flatnonzero((centers == c) & is_anion[neighbors])
        order = mine[np.argsort(dist[mine], kind="stable")]
        shells[int(c)] = (dist[order], neighbors[order], vectors[order])
    if any(len(d) < 7 for d, _, _ in shells.values()):
        return False
    b_sites = sorted(shells, key=lambda c: shells[c][0][:6].mean())[:n_b]
    corners = np.concatenate([shells[b][1][:6] for b in b_sites])
    twice = np.all(np.bincount(corners, minlength=len(symbols))[is_anion] == 2)
    octahedra = all(
        shells[b][0][5] <= OCTAHEDRON_STRETCH * shells[b][0][0] and shells[b][0][6] >= SHELL_GAP * shells[b][0][5]
        for b in b_sites
    )
    return bool(twice and octahedra and _bridges_are_corners(shells, b_sites))


def _bridges_are_corners(shells: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], b_sites: list[int]) -> bool:
    """True when at every anion its two B-X bonds (of the B octahedra) meet at ≥ ``MIN_BRIDGE_ANGLE``."""
    bonds: dict[int, list[np.ndarray]] = {}
    for b in b_sites:
        for anion, vector in zip(shells[b][1][:6].tolist(), shells[b][2][:6], strict=True):
            bonds.setdefault(anion, []).append(vector)
    limit = np.cos(np.radians(MIN_BRIDGE_ANGLE))
    for first, second in bonds.values():  # exactly two per anion (checked by the caller)
        cosine = float(first @ second) / float(np.linalg.norm(first) * np.linalg.norm(second))
        if cosine > limit:
            return False
    return True
