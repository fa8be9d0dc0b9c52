"""Symmetry family keys: space group and structure prototype from one spglib search (see :mod:`matmeta.families`)."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

SYMPREC = 0.01
SYMPREC_STORE = 0.1


def structure_arrays(structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice, fractional coordinates and atomic numbers of an ordered structure.

    Raises:
        MatmetaInputError: partially occupied sites.
    """
    from matmeta.errors import MatmetaInputError

    if not structure.is_ordered:
        raise MatmetaInputError(f"{structure.composition.reduced_formula}: partially occupied sites have no family key")
    return structure.lattice.matrix, structure.frac_coords, np.array(structure.atomic_numbers, dtype=np.int64)


def format_amount(amount: float) -> str:
    """An amount in a formula: "" for 1, "2" for 2.0, three digits otherwise."""
    if abs(amount - 1) < 1e-6:
        return ""
    if abs(amount - round(amount)) < 1e-6:
        return str(int(round(amount)))
    return f"{amount:.3g}"


def anonymous_formula(numbers: np.ndarray) -> str:
    """Reduced amounts with letters for elements, smallest amount first: "ABC3" for SrTiO3, "AB2" for TiO2.

    Shapes:
        numbers: (N,)
    """
    amounts = sorted(Counter(np.asarray(numbers).tolist()).values())
    divisor = math.gcd(*amounts)
    letters = [chr(ord("A") + i) if i < 26 else f"X{i}" for i in range(len(amounts))]
    return "".join(f"{letter}{format_amount(n / divisor)}" for letter, n in zip(letters, amounts, strict=True))


def symmetry_keys_of(
    lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray, symprec: float = SYMPREC_STORE
) -> dict[str, str]:
    """``spacegroup``, ``prototype`` and ``prototype_signature`` from one spglib search (see the module docstring).

    Where spglib finds no symmetry at ``symprec`` it is asked at ``SYMPREC``; failing that the cell
    counts as P1 (every atom its own Wyckoff position "a").

    Shapes:
        lattice: (3, 3); frac_coords: (N, 3); numbers: (N,)
    """
    import spglib

    numbers = np.asarray(numbers)
    dataset = None
    for tolerance in (symprec, SYMPREC):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spglib 2.x: deprecation of its error-handling mode
            try:
                dataset = spglib.get_symmetry_dataset((lattice, frac_coords, numbers), symprec=tolerance)
            except spglib.SpglibError:
                dataset = None
        if dataset is not None:
            break
    anonymous = anonymous_formula(numbers)
    if dataset is None:
        return {
            "spacegroup": "P1",
            "prototype": f"{anonymous}_1_{'a' * len(numbers)}",
            "prototype_signature": f"{anonymous}_1_{';'.join(['1'] * len(numbers))}",
        }
    orbits = sorted(set(np.asarray(dataset.equivalent_atoms).tolist()))
    letters = "".join(sorted(dataset.wyckoffs[i] for i in orbits))
    sites = sorted(dataset.site_symmetry_symbols[i].strip() for i in orbits)  # independent of the cell chosen
    number = int(dataset.number)
    return {
        "spacegroup": str(dataset.international),
        "prototype": f"{anonymous}_{number}_{letters}",
        "prototype_signature": f"{anonymous}_{number}_{';'.join(sites)}",
    }


def prototype_of(lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray) -> str:
    """:func:`prototype` from arrays."""
    return symmetry_keys_of(lattice, frac_coords, numbers)["prototype"]


def prototype(structure: Structure) -> str:
    """Anonymous formula, space-group number and occupied Wyckoff letters, e.g. "ABC3_221_abc"."""
    return prototype_of(*structure_arrays(structure))


def prototype_signature(structure: Structure) -> str:
    """The prototype with each Wyckoff position's site symmetry instead of its letter (the same for every origin)."""
    return symmetry_keys_of(*structure_arrays(structure))["prototype_signature"]


def spacegroup_of(
    lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray, symprec: float = SYMPREC_STORE
) -> str:
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


def spacegroup(structure: Structure, symprec: float = SYMPREC_STORE) -> str:
    """International space-group symbol from spglib ("P1" when spglib finds no symmetry)."""
    return spacegroup_of(*structure_arrays(structure), symprec=symprec)
