"""A support CSV for ``matmeta finetune`` / ``explain``: labelled structures of one family, checked row by row.

Each row names a structure (a ``path`` column, relative to the CSV, or CIF text in a ``cif``
column) and its measured value. A row with only a ``formula`` is refused with a line saying so, unless a
graph store is given to match it (``--match-store``): the store's lowest-formation-energy structure of that
reduced formula is used and a warning names it (the measured sample may be another polymorph).
A row that cannot be used is skipped with one line naming the
file and row (``lab.csv row 3: band_gap -5 is negative; row skipped``): a non-number, a
non-finite or physically impossible value, an unreadable structure, or the same structure as an
earlier row (a duplicate would leak into the leave-one-out check). The good rows are returned.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.errors import MatmetaInputError
from matmeta.guards import within_ceiling
from matmeta.io import parse_cif, read_csv, read_structure_file

#: The widest band gaps measured are about 14 eV (LiF); anything above this is a unit or typing error.
MAX_BAND_GAP_EV = 25.0
#: Formation enthalpies are a few eV/atom; above this per atom a heat_ref value is a unit or typing error.
MAX_HEAT_PER_ATOM_EV = 20.0
#: Formation energies lie within about ±6 eV/atom (the Materials Project's span: −5.8 to +4.3); a value
#: beyond this in a per-atom column is almost surely a per-cell number.
MAX_FORMATION_ENERGY_PER_ATOM_EV = 10.0
#: The unit of every target name a predictor may carry (the unit is part of the name).
UNIT_OF = {"heat_ref": "eV/cell", "formation_energy_per_atom": "eV/atom", "band_gap": "eV", "band_gap_pbe": "eV"}
#: Support rows read without ``--yes`` (finetune is meant for 1-50 structures; its check grows as rows²).
MAX_SUPPORT_ROWS = 100


def check_value(value: float, target: str, n_atoms: int, where: str, column: str) -> None:
    """Refuse a measured value that is not finite or not physically possible for ``target``.

    Raises:
        MatmetaInputError: ``"<where>: <column> <value> ...; row skipped"``.
    """
    unit = UNIT_OF.get(target, "eV")
    if not math.isfinite(value):
        raise MatmetaInputError(f"{where}: {column} is {value}; row skipped")
    if unit == "eV" and value < 0:
        raise MatmetaInputError(f"{where}: {column} {value:g} eV is negative; row skipped")
    if unit == "eV" and value > MAX_BAND_GAP_EV:
        raise MatmetaInputError(f"{where}: {column} {value:g} eV is above {MAX_BAND_GAP_EV:g} eV; row skipped")
    if unit == "eV/atom" and abs(value) > MAX_FORMATION_ENERGY_PER_ATOM_EV:
        raise MatmetaInputError(
            f"{where}: {column} {value:g} eV/atom is beyond ±{MAX_FORMATION_ENERGY_PER_ATOM_EV:g} eV/atom "
            "(a per-cell value in a per-atom column?); row skipped"
        )
    if unit == "eV/cell" and abs(value) > MAX_HEAT_PER_ATOM_EV * n_atoms:
        raise MatmetaInputError(
            f"{where}: {column} {value:g} eV/cell is beyond ±{MAX_HEAT_PER_ATOM_EV:g} eV/atom for "
            f"{n_atoms} atoms; row skipped"
        )


def fingerprint(structure: Any) -> tuple[Any, ...]:
    """An exact identity of a structure (species, lattice and wrapped coordinates to 1e-4), for duplicate rows."""
    frac = np.round(np.mod(np.asarray(structure.frac_coords, dtype=float), 1.0), 4) % 1.0
    sites = sorted(zip(structure.atomic_numbers, map(tuple, frac.tolist()), strict=True))
    lattice = tuple(np.round(np.asarray(structure.lattice.matrix, dtype=float), 4).ravel().tolist())
    return lattice, tuple(sites)


def _structure_of(row: dict[str, str], columns: list[str], csv_path: Path, where: str, path_column: str,
                  cif_column: str, number: int, match: Any = None) -> tuple[str, Any]:  # fmt: skip
    """``(name, structure)`` of one row, from its path, its CIF text, or its formula matched in a store."""
    if path_column in columns and row[path_column].strip():
        path = Path(row[path_column].strip())
        path = path if path.is_absolute() else csv_path.parent / path
        try:
            structure = read_structure_file(path)[0][1]
        except MatmetaInputError as exc:
            raise MatmetaInputError(f"{where}: {exc}; row skipped") from None
        return row.get("name") or path.stem, structure
    if cif_column in columns and row[cif_column].strip():
        return row.get("name") or f"row {number}", parse_cif(row[cif_column], where)
    formula = (row.get("formula") or "").strip()
    if formula and match is None:
        raise MatmetaInputError(
            f"{where}: formula {formula} without a structure; give a path or cif, or --match-store STORE to take "
            "a known structure of that formula; row skipped"
        )
    if formula:
        return row.get("name") or formula, match.structure_of(formula, where)
    raise MatmetaInputError(f"{where}: empty {path_column!r} and {cif_column!r}; row skipped")


class FormulaMatch:
    """A graph store's structures by reduced formula: the lowest formation energy per atom of each (or the first)."""

    def __init__(self, store_path: Path) -> None:
        from pymatgen.core import Composition
        from pymatgen.core.periodic_table import Element

        from matmeta.store.reader import GraphStore

        self.store = GraphStore(store_path)
        names = list(self.store.target_names)
        energy = names.index("formation_energy_per_atom") if "formation_energy_per_atom" in names else None
        targets, ids = self.store.targets, self.store.ids
        self.best: dict[str, tuple[float, int]] = {}
        for i in range(len(self.store)):
            numbers = self.store.record(i)[0]["atomic_numbers"].tolist()
            formula = Composition({Element.from_Z(z).symbol: numbers.count(z) for z in set(numbers)}).reduced_formula
            value = float(targets[i, energy]) if energy is not None else 0.0
            if formula not in self.best or value < self.best[formula][0]:
                self.best[formula] = (value, i)
        self.ids = ids

    def structure_of(self, formula: str, where: str) -> Any:
        """The matched structure of ``formula`` (a warning names it).

        Raises:
            MatmetaInputError: no structure of that formula in the store.
        """
        from pymatgen.core import Composition

        from matmeta.console import warn

        try:
            reduced = Composition(formula).reduced_formula
        except Exception:  # noqa: BLE001
            raise MatmetaInputError(f"{where}: formula {formula!r} is not a formula; row skipped") from None
        if reduced not in self.best:
            raise MatmetaInputError(f"{where}: no structure of {reduced} in {self.store.path}; row skipped")
        i = self.best[reduced][1]
        warn(f"{where}: formula {reduced} matched to {self.ids[i]} of {self.store.path} (lowest formation energy)")
        return self.store.structure(i)


def read_support(
    csv_path: Path,
    target: str,
    value_column: str | None,
    path_column: str,
    cif_column: str,
    max_rows: int | None = None,
    match_store: Path | None = None,
) -> tuple[list[str], list[Any], list[float], list[str]]:
    """Names, structures and values of the usable rows of a support CSV, and one message per skipped row.

    Args:
        csv_path: the CSV.
        target: the target's name (:data:`UNIT_OF`: its unit decides which values are possible).
        value_column: column with the values (default: ``target``).
        path_column: column with structure file paths (relative to the CSV).
        cif_column: column with CIF text.
        max_rows: refuse a CSV with more rows (None: no ceiling); checked before any structure is read.
        match_store: a graph store in which rows with only a ``formula`` find their structure.

    Raises:
        MatmetaInputError: unreadable CSV, missing columns.
        WorkLimitError: more than ``max_rows`` rows.
    """
    csv_path = Path(csv_path)
    value_column = value_column or target
    columns, rows = read_csv(csv_path, required=(value_column,))
    if path_column not in columns and cif_column not in columns and "formula" not in columns:
        raise MatmetaInputError(
            f"{csv_path}: needs a {path_column!r}, {cif_column!r} or 'formula' column (has {', '.join(columns)}); "
            "see --path-column / --cif-column"
        )
    if max_rows is not None:
        within_ceiling(
            f"{csv_path}: support", len(rows), max_rows, "--yes",
            f"leave-one-out adapts {len(rows)} times on {len(rows) - 1} structures each",
        )  # fmt: skip
    names, structures, values, bad = [], [], [], []
    seen: dict[tuple[Any, ...], int] = {}
    match = FormulaMatch(match_store) if match_store is not None else None
    for number, row in enumerate(rows, start=1):
        where = f"{csv_path} row {number}"
        try:
            try:
                value = float(row[value_column])
            except ValueError:
                raise MatmetaInputError(
                    f"{where}: {value_column} {row[value_column]!r} is not a number; row skipped"
                ) from None
            if not math.isfinite(value):
                raise MatmetaInputError(f"{where}: {value_column} is {value}; row skipped")
            name, structure = _structure_of(row, columns, csv_path, where, path_column, cif_column, number, match)
            check_value(value, target, len(structure), where, value_column)
            key = fingerprint(structure)
            if key in seen:
                raise MatmetaInputError(f"{where}: same structure as row {seen[key]} (a duplicate); row skipped")
        except MatmetaInputError as exc:
            bad.append(str(exc))
            continue
        seen[key] = number
        names.append(name)
        structures.append(structure)
        values.append(value)
    return names, structures, values, bad
