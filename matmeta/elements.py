"""Physical element descriptors and formal-oxidation-state features for the crystal GNN.

Two kinds of input that, unlike an element-identity embedding, carry over to elements a model
has never seen at a given site:

* :func:`descriptor_table` — one row per atomic number (0 = unknown) of standardised physical
  properties from pymatgen: Pauling electronegativity, row, group, block, atomic and ionic radii,
  valence electrons, Mendeleev number, common oxidation states, ionisation energy.
* :func:`composition_features` — what formal oxidation states say about a composition: whether it
  can be charge-balanced at all, with closed-shell ions only (d0 / d10 / s2 / f0 / f14 cations) or
  with even d counts (d0, d6, d8, d10: low-spin closed sub-shells). Closed-shell charge balance is
  what decides metal vs insulator in most oxide / nitride / fluoride perovskites. Per atom: its
  formal oxidation state and d-electron count in the chosen assignment.

Both are pure functions of atomic numbers (cached per composition), computed once per element or
composition; nothing happens at import time.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

N_ELEMENTS = 119
ANION_STATES = {7: -3, 8: -2, 9: -1, 16: -2, 17: -1, 34: -2, 35: -1, 53: -1, 15: -3}
DESCRIPTOR_NAMES = (
    "electronegativity", "row", "group", "block_s", "block_p", "block_d", "block_f", "atomic_radius",
    "ionic_radius", "valence_electrons", "mendeleev_no", "max_oxidation", "min_oxidation",
    "n_common_oxidation", "ionization_energy", "is_anion",
)  # fmt: skip
ATOM_FEATURES = ("formal_oxidation", "d_electrons", "closed_shell_ion", "balanced")
GRAPH_FEATURES = ("balanced_any", "balanced_closed_shell", "balanced_even_d", "odd_electron_count")


@functools.lru_cache(maxsize=256)
def _valence_electrons(z: int) -> int:
    """Electrons outside the noble-gas core (s + d for transition metals, s + p for main group)."""
    from pymatgen.core.periodic_table import Element

    element = Element.from_Z(z)
    group = int(element.group)
    if element.is_lanthanoid or element.is_actinoid:
        return z - (54 if z <= 71 else 86)
    return group if group <= 12 else group - 10


def _raw_descriptors(z: int) -> list[float]:
    from pymatgen.core.periodic_table import Element

    element = Element.from_Z(z)
    block = element.block
    common = [q for q in element.common_oxidation_states] or [0]
    radii = [float(r) for r in element.ionic_radii.values()] if element.ionic_radii else []

    def num(value: object) -> float:
        try:
            out = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return math.nan
        return out if math.isfinite(out) else math.nan

    return [
        num(element.X),
        float(element.row),
        float(element.group),
        float(block == "s"),
        float(block == "p"),
        float(block == "d"),
        float(block == "f"),
        num(element.atomic_radius),
        float(np.mean(radii)) if radii else math.nan,
        float(_valence_electrons(z)),
        num(element.mendeleev_no),
        float(max(common)),
        float(min(common)),
        float(len(common)),
        num(element.ionization_energy),
        float(z in ANION_STATES),
    ]


@functools.lru_cache(maxsize=1)
def descriptor_table() -> np.ndarray:
    """Standardised descriptors of every element; row 0 (unknown) is all zeros.

    Missing values become the column mean (0 after standardisation).

    Shapes:
        → (119, len(DESCRIPTOR_NAMES)) float32.
    """
    import warnings

    with warnings.catch_warnings():  # pymatgen warns about elements without some data
        warnings.simplefilter("ignore")
        raw = np.array([_raw_descriptors(z) for z in range(1, 104)], dtype=np.float64)
    mean = np.nanmean(raw, axis=0)
    std = np.nanstd(raw, axis=0)
    std[std < 1e-8] = 1.0
    table = np.zeros((N_ELEMENTS, raw.shape[1]), dtype=np.float32)
    table[1:104] = np.nan_to_num((raw - mean) / std, nan=0.0)
    return table


@functools.lru_cache(maxsize=4096)  # pure in (z, oxidation); pymatgen's Element lookups cost µs each
def d_electrons(z: int, oxidation: int) -> int:
    """D electrons of a transition-metal cation in ``oxidation`` (-1 for other elements)."""
    from pymatgen.core.periodic_table import Element

    element = Element.from_Z(z)
    if element.is_transition_metal and not (element.is_lanthanoid or element.is_actinoid) and 3 <= element.group <= 12:
        return int(element.group) - oxidation
    return -1


@functools.lru_cache(maxsize=4096)  # pure in (z, oxidation); pymatgen's Element lookups cost µs each
def closed_shell(z: int, oxidation: int) -> bool:
    """True for a cation with no partly filled shell: d0, d10, s2 lone pair, f0 or f14."""
    from pymatgen.core.periodic_table import Element

    if oxidation <= 0:
        return False
    element = Element.from_Z(z)
    if element.is_lanthanoid or element.is_actinoid:
        core = 54 if z <= 71 else 86
        left = z - core - oxidation  # f (+ d) electrons left
        return left in (0, 14)
    d = d_electrons(z, oxidation)
    if d >= 0:
        return d in (0, 10)
    valence = _valence_electrons(z)
    return oxidation in (valence, valence - 2)


@functools.lru_cache(maxsize=256)
def _cation_states(z: int) -> tuple[int, ...]:
    from pymatgen.core.periodic_table import Element

    states = sorted({q for q in Element.from_Z(z).oxidation_states if q > 0})
    return tuple(states) or (0,)


@functools.lru_cache(maxsize=65536)
def _features(composition: tuple[tuple[int, int], ...]) -> tuple[dict[int, tuple[float, ...]], tuple[float, ...]]:
    counts = dict(composition)
    anions = [z for z in counts if z in ANION_STATES]
    cations = [z for z in counts if z not in ANION_STATES]
    if not anions:  # intermetallic: everything at oxidation state 0
        electrons = sum(_valence_electrons(z) * n for z, n in counts.items())
        atom = {z: (0.0, float(min(max(d_electrons(z, 0), 0), 10)), 0.0, 0.0) for z in counts}
        return atom, (0.0, 0.0, 0.0, float(electrons % 2))
    charge = sum(ANION_STATES[z] * counts[z] for z in anions)
    best: tuple[int, ...] | None = None
    best_rank = (-1, -1)
    flags = [0.0, 0.0, 0.0]
    for combo in itertools.product(*(_cation_states(z) for z in cations)):
        if sum(q * counts[z] for q, z in zip(combo, cations, strict=True)) + charge != 0:
            continue
        closed = all(closed_shell(z, q) for z, q in zip(cations, combo, strict=True))
        even = all(closed_shell(z, q) or d_electrons(z, q) in (6, 8) for z, q in zip(cations, combo, strict=True))
        flags = [1.0, max(flags[1], float(closed)), max(flags[2], float(even))]
        rank = (int(closed), int(even))
        if rank > best_rank:
            best, best_rank = combo, rank
    electrons = sum(_valence_electrons(z) * n for z, n in counts.items())
    atom: dict[int, tuple[float, ...]] = {}
    for z in anions:
        atom[z] = (float(ANION_STATES[z]), 0.0, 1.0, flags[0])
    for i, z in enumerate(cations):
        q = best[i] if best is not None else 0
        atom[z] = (float(q), float(max(d_electrons(z, q), 0)), float(closed_shell(z, q)), flags[0])
    return atom, (*flags, float(electrons % 2))


def formal_oxidation_states(atomic_numbers: Sequence[int]) -> dict[int, int]:
    """The formal oxidation state of every element of a composition, as :func:`composition_features` assigns them.

    Anions take their fixed state; cations the charge-neutral combination of their pymatgen states that
    is closed-shell where possible (0 for all cations when none is charge-neutral, and in intermetallics).
    """
    counts = Counter(int(z) for z in atomic_numbers)
    atom, _ = _features(tuple(sorted(counts.items())))
    return {z: int(round(values[0])) for z, values in atom.items()}


def composition_features(atomic_numbers: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Formal-oxidation-state features of one structure.

    Args:
        atomic_numbers: the element of every atom (a site list; only the composition matters).

    Returns:
        ``(per_atom, per_graph)``: per atom ``ATOM_FEATURES`` (oxidation state / 4, d electrons / 10,
        closed-shell ion, composition balanced), per structure ``GRAPH_FEATURES``.

    Shapes:
        atomic_numbers: (n,) → (n, 4) float32, (4,) float32.
    """
    counts = Counter(int(z) for z in atomic_numbers)
    atom, graph = _features(tuple(sorted(counts.items())))
    scale = np.array([0.25, 0.1, 1.0, 1.0], dtype=np.float32)
    rows = np.array([atom[int(z)] for z in atomic_numbers], dtype=np.float32) * scale
    return rows.reshape(len(atomic_numbers), len(ATOM_FEATURES)), np.asarray(graph, dtype=np.float32)
