"""Family keys: the chemical family a structure belongs to, for leave-family-out meta-learning.

Kinds (``by``):

- ``anion_set``: the anions and their amounts per formula unit, oxygen first, then alphabetical
  ("O3", "O2N", "ON2", "N3", "OFN", "Cl"); "none" for a structure without anions.
  An element is an anion when it is one of N, O, F, S, Cl, Se, Br, Te, I and either its Pauling
  electronegativity is at least 2.5 or it is the most electronegative element of the structure
  (so Te is the anion of CdTe but a cation in SrTeO3).
- ``b_site`` / ``a_site``: the B (octahedral) and A cations of an ABX3 perovskite. The B cation
  is the one whose six nearest anions are closest (mean distance): in the ideal cubic cell B has
  six X at a/2 and A twelve at a/√2. A strict "exactly six anions within a bond cutoff" rule fails
  on about 40% of the relaxed cells of the Castelli set, whose octahedra are strongly distorted;
  this rule agrees with the set's own A/B labels for about 97% of them (the rest are cells whose
  relaxation moved the nominal A cation into the tighter shell). Structures that are not
  A B X3 raise a ``MatmetaInputError`` saying so.
- ``chemsys``: elements joined by "-" in alphabetical order ("O-Sr-Ti").
- ``anion_class``: what the most electronegative element makes of the compound ("oxide", "sulfide",
  "fluoride", "nitride", "arsenide", ... for the elements of :data:`ANION_CLASSES`), "intermetallic"
  when that element is a metal. One word per structure: an oxyfluoride counts as a fluoride, a sulfate as
  an oxide (composition alone cannot tell sulfate S(VI) from sulfide S(-II)).
- ``cation``: the least electronegative element ("Ba" for BaTiO3, "Li" for LiFePO4, "Ga" for GaAs).
- ``spacegroup``: international symbol found by spglib at ``SYMPREC_STORE`` Å ("Pm-3m").
- ``prototype``: anonymous formula, space-group number and the occupied Wyckoff letters (one per
  symmetry-inequivalent site, sorted), e.g. "ABC3_221_abc" for a cubic perovskite, "AB_225_ab" for
  rock salt: spglib at ``SYMPREC_STORE`` = 0.1 Å (the Materials Project's tolerance for its relaxed
  cells). Wyckoff letters depend on the origin choice, so one structure type can appear under two
  keys (cubic perovskites as "ABC3_221_abc" and "ABC3_221_abd"); the prototype signature (site
  symmetries instead of letters, :func:`matmeta.prototypes.symmetry_keys_of`) is the same for both,
  and family splits keep such keys on one side.
- ``column:<name>``: a column of the ingest CSV, kept in the store (see ``GraphStore.family_keys``).

The two symmetry kinds need a spglib search (~2 ms per 20-atom cell): the store computes them on
first use and keeps them beside the records (:mod:`matmeta.store.symmetry`).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from matmeta.errors import MatmetaInputError
from matmeta.prototypes import (  # noqa: F401 - spacegroup_of, SYMPREC: re-exported
    SYMPREC,
    SYMPREC_STORE,
    format_amount,
    prototype,
    spacegroup,
    spacegroup_of,
    structure_arrays,
    symmetry_keys_of,
)

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from matmeta.geometry import Pairs

STRUCTURE_KINDS = ("anion_set", "anion_class", "cation", "b_site", "a_site", "chemsys", "spacegroup", "prototype")
SYMMETRY_KINDS = ("spacegroup", "prototype")
ANIONS = ("N", "O", "F", "S", "Cl", "Se", "Br", "Te", "I")
ANION_MIN_ELECTRONEGATIVITY = 2.5
#: Elements that act as the anion of a compound when they are its most electronegative element.
ANION_CLASSES = {
    "O": "oxide", "N": "nitride", "F": "fluoride", "Cl": "chloride", "Br": "bromide", "I": "iodide",
    "S": "sulfide", "Se": "selenide", "Te": "telluride", "H": "hydride", "C": "carbide", "B": "boride",
    "Si": "silicide", "P": "phosphide", "As": "arsenide", "Sb": "antimonide",
}  # fmt: skip


@functools.cache
def electronegativity(symbol: str) -> float:
    """Pauling electronegativity of an element (0 where pymatgen has none, e.g. noble gases)."""
    from pymatgen.core.periodic_table import Element

    value = Element(symbol).X
    return float(value) if np.isfinite(value) else 0.0


@functools.cache
def _symbol_of(number: int) -> str:
    from pymatgen.core.periodic_table import Element

    return Element.from_Z(int(number)).symbol


def anion_elements(elements: Iterable[str]) -> set[str]:
    """Which of ``elements`` act as anions (see the module docstring)."""
    return set(_anions_among(frozenset(elements)))


@functools.lru_cache(maxsize=4096)
def _anions_among(elements: frozenset[str]) -> frozenset[str]:
    chi = {s: electronegativity(s) for s in elements}
    most = max(chi.values(), default=0.0)
    return frozenset(s for s, x in chi.items() if s in ANIONS and (x >= ANION_MIN_ELECTRONEGATIVITY or x == most))


def _counts(numbers: np.ndarray) -> dict[str, int]:
    return {_symbol_of(z): c for z, c in Counter(np.asarray(numbers).tolist()).items()}


def anion_set_of(numbers: np.ndarray) -> str:
    """:func:`anion_set` from atomic numbers.

    Shapes:
        numbers: (N,)
    """
    return _anion_set_of_counts(_counts(numbers))


def _anion_set_of_counts(counts: dict[str, int]) -> str:
    divisor = math.gcd(*counts.values())
    anions = sorted(anion_elements(counts), key=lambda s: (s != "O", s))
    if not anions:
        return "none"
    return "".join(f"{s}{format_amount(counts[s] / divisor)}" for s in anions)


def anion_set(structure: Structure) -> str:
    """Anions per formula unit, oxygen first then alphabetical, e.g. "O3", "O2N", "OFN"; "none" without anions."""
    return anion_set_of(structure_arrays(structure)[2])


def anion_class_of(numbers: np.ndarray) -> str:
    """:func:`anion_class` from atomic numbers (see the module docstring).

    Shapes:
        numbers: (N,)
    """
    return _anion_class(frozenset(_counts(numbers)))


@functools.lru_cache(maxsize=8192)
def _anion_class(elements: frozenset[str]) -> str:
    most = max(sorted(elements), key=electronegativity)
    return ANION_CLASSES.get(most, "intermetallic") if len(elements) > 1 else "element"


def cation_of(numbers: np.ndarray) -> str:
    """:func:`cation` from atomic numbers: the least electronegative element (noble gases, χ unknown, last).

    Shapes:
        numbers: (N,)
    """
    return _cation(frozenset(_counts(numbers)))


@functools.lru_cache(maxsize=8192)
def _cation(elements: frozenset[str]) -> str:
    return min(sorted(elements), key=lambda s: (electronegativity(s) == 0.0, electronegativity(s)))


def anion_class(structure: Structure) -> str:
    """The anion class: oxide, sulfide, intermetallic, … (see the module docstring); element for an elemental solid."""
    return anion_class_of(structure_arrays(structure)[2])


def cation(structure: Structure) -> str:
    """The least electronegative element of ``structure``."""
    return cation_of(structure_arrays(structure)[2])


def chemsys_of(numbers: np.ndarray) -> str:
    """:func:`chemsys` from atomic numbers."""
    return "-".join(sorted(_counts(numbers)))


def chemsys(structure: Structure) -> str:
    """Elements joined by "-" in alphabetical order."""
    return chemsys_of(structure_arrays(structure)[2])


def perovskite_sites_of(
    lattice: np.ndarray,
    frac_coords: np.ndarray,
    numbers: np.ndarray,
    name: str,
    found: tuple[Pairs, float] | None = None,
) -> tuple[str, str]:
    """:func:`perovskite_sites` from arrays.

    ``found`` is ``(neighbor_list(lattice, frac_coords @ lattice, radius), radius)`` when the caller
    has it (ingest: the graph's search): searches within ``radius`` are then taken from it.

    Shapes:
        lattice: (3, 3); frac_coords: (N, 3); numbers: (N,)
    """
    from matmeta.geometry import neighbor_list, neighbors_within

    symbols = [_symbol_of(z) for z in np.asarray(numbers).tolist()]
    anions = anion_elements(symbols)
    is_anion = np.array([s in anions for s in symbols])
    n_anion = int(is_anion.sum())
    n_cation = len(symbols) - n_anion
    if n_cation == 0 or n_cation % 2 or 2 * n_anion != 3 * n_cation:
        raise MatmetaInputError(
            f"{name}: not an ABX3 perovskite ({n_cation} cations, {n_anion} anions; b_site/a_site need A B X3)"
        )
    lattice = np.asarray(lattice, dtype=np.float64)
    cart = np.asarray(frac_coords, dtype=np.float64) @ lattice
    cations = np.flatnonzero(~is_anion)
    cutoff = 2.0 * (abs(np.linalg.det(lattice)) / len(symbols)) ** (1 / 3)
    for _ in range(8):
        if found is None:
            centers, neighbors, _, dist = neighbor_list(lattice, cart, cutoff)
        else:
            centers, neighbors, _, dist = neighbors_within(found[0], found[1], lattice, cart, cutoff)
        mask = (~is_anion[centers]) & is_anion[neighbors]
        counts = np.bincount(centers[mask], minlength=len(symbols))[cations]
        if counts.min() >= 6:
            break
        cutoff *= 1.5
    else:  # pragma: no cover - six anion images always fit within a few cell lengths
        raise MatmetaInputError(f"{name}: could not find six anion neighbours of every cation")
    centers, dist = centers[mask], dist[mask]
    order = np.lexsort((dist, centers))
    centers, dist = centers[order], dist[order]
    nearest_six = np.searchsorted(centers, cations)[:, None] + np.arange(6)
    score = dist[nearest_six].sum(axis=1) / 6  # the mean of each row, summed in the same order
    rank = np.argsort(score, kind="stable")
    half = n_cation // 2
    b_sites = {symbols[cations[i]] for i in rank[:half]}
    a_sites = {symbols[cations[i]] for i in rank[half:]}
    if len(b_sites) != 1 or len(a_sites) != 1:
        raise MatmetaInputError(
            f"{name}: cations do not split into one A and one B element (B-like: {', '.join(sorted(b_sites))}; "
            f"A-like: {', '.join(sorted(a_sites))})"
        )
    if abs(score[rank[half - 1]] - score[rank[half]]) < 1e-3:
        raise MatmetaInputError(f"{name}: A and B sites are not distinguishable by their anion shells")
    return a_sites.pop(), b_sites.pop()


def perovskite_sites(structure: Structure, name: str | None = None) -> tuple[str, str]:
    """The (A, B) cations of an ABX3 perovskite.

    Raises:
        MatmetaInputError: not A B X3 by composition, or A and B not separable by their anion shells.
    """
    return perovskite_sites_of(*structure_arrays(structure), name or structure.composition.reduced_formula)


def family_key(structure: Structure, by: str, name: str | None = None) -> str:
    """The family of ``structure`` by one kind (see the module docstring).

    Raises:
        MatmetaInputError: ``by`` is unknown or ``column:<name>`` (those live in the store), or
            the structure has no such family (e.g. ``b_site`` of a non-perovskite).
    """
    if by == "anion_set":
        return anion_set(structure)
    if by == "chemsys":
        return chemsys(structure)
    if by in SYMMETRY_KINDS:
        return spacegroup(structure) if by == "spacegroup" else prototype(structure)
    if by == "anion_class":
        return anion_class(structure)
    if by == "cation":
        return cation(structure)
    if by in ("a_site", "b_site"):
        a_site, b_site = perovskite_sites(structure, name)
        return b_site if by == "b_site" else a_site
    if by.startswith("column:"):
        raise MatmetaInputError(
            f"{by}: column families come from the ingest CSV; ask the store (GraphStore.family_keys)"
        )
    raise MatmetaInputError(f"{by}: unknown family kind (use {', '.join(STRUCTURE_KINDS)} or column:<name>)")


def all_family_keys_of(
    lattice: np.ndarray,
    frac_coords: np.ndarray,
    numbers: np.ndarray,
    name: str,
    symmetry: bool = True,
    found: tuple[Pairs, float] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Every structural family key from arrays (as stored per record at ingest).

    ``symmetry=False`` leaves out ``spacegroup`` and ``prototype``, the keys that need a symmetry search
    (about 70 % of the time of all keys); the store computes them on first use instead. ``found``: see
    :func:`perovskite_sites_of`.

    Returns:
        ``(keys, errors)``: kind → key, and kind → reason for kinds that do not apply
        (e.g. ``b_site`` of a non-perovskite).

    Shapes:
        lattice: (3, 3); frac_coords: (N, 3); numbers: (N,)
    """
    counts = _counts(numbers)
    elements = frozenset(counts)
    keys: dict[str, str] = {
        "anion_set": _anion_set_of_counts(counts),
        "anion_class": _anion_class(elements),
        "cation": _cation(elements),
        "chemsys": "-".join(sorted(counts)),
    }
    if symmetry:
        found_keys = symmetry_keys_of(lattice, frac_coords, numbers)
        keys["spacegroup"], keys["prototype"] = found_keys["spacegroup"], found_keys["prototype"]
    errors: dict[str, str] = {}
    try:
        keys["a_site"], keys["b_site"] = perovskite_sites_of(lattice, frac_coords, numbers, name, found)
    except MatmetaInputError as exc:
        errors["a_site"] = errors["b_site"] = str(exc)
    return keys, errors


def all_family_keys(structure: Structure, name: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Every structural family key of ``structure``; see :func:`all_family_keys_of`."""
    return all_family_keys_of(*structure_arrays(structure), name or structure.composition.reduced_formula)


def family_statistics(
    keys: Sequence[str], targets: np.ndarray, target_names: Sequence[str]
) -> list[dict[str, float | int | str]]:
    """Size and per-target mean, std, min and max of every family (NaN targets ignored).

    Shapes:
        keys: (N,); targets: (N, T)

    Returns:
        One dict per family, sorted by family name: ``family``, ``size`` and
        ``<target>_mean``, ``<target>_std``, ``<target>_min``, ``<target>_max``.
    """
    keys_array = np.asarray(list(keys), dtype=object)
    targets = np.asarray(targets, dtype=np.float64).reshape(len(keys_array), -1)
    rows: list[dict[str, float | int | str]] = []
    for family in sorted(set(keys_array.tolist())):
        mask = keys_array == family
        row: dict[str, float | int | str] = {"family": family, "size": int(mask.sum())}
        for column, name in enumerate(target_names):
            values = targets[mask, column]
            values = values[np.isfinite(values)]
            empty = len(values) == 0
            row[f"{name}_mean"] = float("nan") if empty else float(values.mean())
            row[f"{name}_std"] = float("nan") if empty else float(values.std())
            row[f"{name}_min"] = float("nan") if empty else float(values.min())
            row[f"{name}_max"] = float("nan") if empty else float(values.max())
        rows.append(row)
    return rows
