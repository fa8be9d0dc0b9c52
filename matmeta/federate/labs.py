"""Non-IID labs for simulation: families grouped by chemistry, each lab a contiguous block.

B-site (or A-site) families named by an element are ordered by periodic-table group, then
period; other family keys (anion sets, chemical systems) by name. The ordered list is cut into
``n_labs`` contiguous blocks of nearly equal size, so each lab holds a chemically distinct
corner (alkali/alkaline-earth, early transition metals, late transition metals, p-block for the
perovskite B sites). Each lab keeps ``held_out`` of its families back for its own evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabSplit:
    """One simulated lab: the families it trains on and the ones it keeps back for evaluation."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]


def chemistry_key(family: str) -> tuple[int, int, str]:
    """(group, period, name) of an element-named family; (99, 99, name) otherwise."""
    from pymatgen.core.periodic_table import Element

    try:
        element = Element(family)
    except ValueError:
        return 99, 99, family
    return int(element.group), int(element.row), family


def split_labs(families: Sequence[str], n_labs: int, held_out: int = 1, seed: int = 0) -> list[LabSplit]:
    """Cut the families into ``n_labs`` chemically contiguous labs; ``held_out`` families of each kept back.

    Raises:
        ValueError: fewer than ``held_out + 1`` families per lab.
    """
    ordered = sorted(families, key=chemistry_key)
    if n_labs < 1 or len(ordered) < n_labs * (held_out + 1):
        raise ValueError(f"{len(ordered)} families cannot make {n_labs} labs with {held_out} held-out family(ies)")
    rng = np.random.default_rng(seed)
    labs = []
    for block in np.array_split(np.arange(len(ordered)), n_labs):
        names = [ordered[i] for i in block]
        kept = sorted(rng.choice(len(names), size=held_out, replace=False).tolist())
        labs.append(
            LabSplit(
                tuple(n for i, n in enumerate(names) if i not in kept),
                tuple(names[i] for i in kept),
            )
        )
    return labs
