"""Candidate cells of a family: a slot assignment substituted into the nearest known member's cell.

The template is the member whose slot elements are closest in descriptor space (so a Ca/Ti/O candidate
starts from a similar known cell, not from a Ba/Hf one); the lattice is scaled isotropically by the ratio of
summed atomic-radius cubes (a first guess: CHGNet relaxes the cell afterwards). The generated cell keeps the
template's symmetry exactly, so it is a member of the prototype by construction.

One job: slot assignment -> pymatgen Structure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from matmeta.design.family_table import Family, member_structure


@functools.lru_cache(maxsize=256)
def atomic_radius(z: int) -> float:
    """Pymatgen's atomic radius (Å), 1.5 where it has none."""
    from pymatgen.core import Element

    radius = Element.from_Z(z).atomic_radius
    return float(radius) if radius else 1.5


def _descriptors(slots: Sequence[int]) -> np.ndarray:
    from matmeta.elements import descriptor_table

    return descriptor_table()[list(slots)].ravel()


def nearest_member(family: Family, slots: Sequence[int], members: Sequence[Any] | None = None) -> Any:
    """The member (of ``members``, default all) whose slot elements are nearest to ``slots``."""
    pool = list(members) if members else family.members
    target = _descriptors(slots)
    distances = [np.linalg.norm(_descriptors(m.slots) - target) for m in pool]
    return pool[int(np.argmin(distances))]


def substituted(template: Any, old: Sequence[int], new: Sequence[int]) -> Any:
    """``template`` with each element ``old[s]`` replaced by ``new[s]`` and its volume scaled by radius cubes."""
    from pymatgen.core import Element

    mapping = {Element.from_Z(o).symbol: Element.from_Z(n).symbol for o, n in zip(old, new, strict=True)}
    counts = template.composition.get_el_amt_dict()
    before = sum(counts[Element.from_Z(o).symbol] * atomic_radius(o) ** 3 for o in old)
    after = sum(counts[Element.from_Z(o).symbol] * atomic_radius(n) ** 3 for o, n in zip(old, new, strict=True))
    structure = template.copy()
    structure.replace_species(mapping)
    structure.scale_lattice(template.volume * after / before)
    return structure


def candidate_cell(
    cell_of: Callable[[Any], Any], family: Family, slots: Sequence[int], members: Sequence[Any] | None = None
) -> Any:
    """The generated cell of a slot assignment (atomic numbers in slot order).

    ``cell_of(member)``: the member's known cell (the store's, or a user's example structure).
    """
    template = nearest_member(family, slots, members)
    return substituted(cell_of(template), template.slots, slots)


def store_cells(store: Any) -> Callable[[Any], Any]:
    """``cell_of`` for members of a graph store."""
    return functools.partial(member_structure, store)
