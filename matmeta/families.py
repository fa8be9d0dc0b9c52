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
- ``spacegroup``: international symbol found by spglib at ``SYMPREC`` Å ("Pm-3m").
- ``column:<name>``: a column of the ingest CSV, kept in the store (see ``GraphStore.family_keys``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from matmeta.errors import MatmetaInputError

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from matmeta.geometry import Pairs

STRUCTURE_KINDS = ("anion_set", "b_site", "a_site", "chemsys", "spacegroup")
ANIONS = ("N", "O", "F", "S", "Cl", "Se", "Br", "Te", "I")
ANION_MIN_ELECTRONEGATIVITY = 2.5
SYMPREC = 0.01


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


def _arrays(structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not structure.is_ordered:
        raise MatmetaInputError(f"{structure.composition.reduced_formula}: partially occupied sites have no family key")
    return structure.lattice.matrix, structure.frac_coords, np.array(structure.atomic_numbers, dtype=np.int64)


def _format_amount(amount: float) -> str:
    if abs(amount - 1) < 1e-6:
        return ""
    if abs(amount - round(amount)) < 1e-6:
        return str(int(round(amount)))
    return f"{amount:.3g}"


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
    return "".join(f"{s}{_format_amount(counts[s] / divisor)}" for s in anions)


def anion_set(structure: Structure) -> str:
    """Anions per formula unit, oxygen first then alphabetical, e.g. "O3", "O2N", "OFN"; "none" without anions."""
    return anion_set_of(_arrays(structure)[2])


def chemsys_of(numbers: np.ndarray) -> str:
    """:func:`chemsys` from atomic numbers."""
    return "-".join(sorted(_counts(numbers)))


def chemsys(structure: Structure) -> str:
    """Elements joined by "-" in alphabetical order."""
    return chemsys_of(_arrays(structure)[2])


def spacegroup_of(lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray, symprec: float = SYMPREC) -> str:
    """:func:`spacegroup` from arrays.

    Shapes:
        lattice: (3, 3); frac_coords: (N, 3); numbers: (N,)
    """
    import spglib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib 2.x: about its error-handling mode
        try:
            symbol = spglib.get_spacegroup((lattice, frac_coords, numbers), symprec=symprec)
        except spglib.SpglibError:  # raised instead of returning None when OLD_ERROR_HANDLING is off
            symbol = None
    return symbol.split(" (")[0] if symbol else "P1"


def spacegroup(structure: Structure, symprec: float = SYMPREC) -> str:
    """International space-group symbol from spglib ("P1" when spglib finds no symmetry)."""
    return spacegroup_of(*_arrays(structure), symprec=symprec)


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
    return perovskite_sites_of(*_arrays(structure), name or structure.composition.reduced_formula)


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
    if by == "spacegroup":
        return spacegroup(structure)
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

    ``symmetry=False`` leaves out ``spacegroup``, the one key that needs a symmetry search (about
    70 % of the time of all keys); the store computes it on first use instead. ``found``: see
    :func:`perovskite_sites_of`.

    Returns:
        ``(keys, errors)``: kind → key, and kind → reason for kinds that do not apply
        (e.g. ``b_site`` of a non-perovskite).

    Shapes:
        lattice: (3, 3); frac_coords: (N, 3); numbers: (N,)
    """
    counts = _counts(numbers)
    keys: dict[str, str] = {"anion_set": _anion_set_of_counts(counts), "chemsys": "-".join(sorted(counts))}
    if symmetry:
        keys["spacegroup"] = spacegroup_of(lattice, frac_coords, numbers)
    errors: dict[str, str] = {}
    try:
        keys["a_site"], keys["b_site"] = perovskite_sites_of(lattice, frac_coords, numbers, name, found)
    except MatmetaInputError as exc:
        errors["a_site"] = errors["b_site"] = str(exc)
    return keys, errors


def all_family_keys(structure: Structure, name: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Every structural family key of ``structure``; see :func:`all_family_keys_of`."""
    return all_family_keys_of(*_arrays(structure), name or structure.composition.reduced_formula)


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
