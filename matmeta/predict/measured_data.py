"""Measured band gaps joined to crystal structures: the data of the measured-level gap (``expt_gaps.csv``).

Each row of the shared CSV is a measured gap (eV, 0 for metals) of a formula, with the Materials Project id
of a structure where one is known (``match = mp_id``: the source's own id; ``match = formula``: the lowest-
energy polymorph of the formula, an approximation). Rows are joined to a graph store of those structures
by id; several measurements of one structure are averaged (their spread is kept). The family of a row is
the store's key of its structure, or for a formula without a structure the same key computed from the
formula where the kind allows it (``cation``, ``anion_class``, ``chemsys``): the composition peer of the
benchmark trains on those too.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.errors import MatmetaInputError

COMPOSITION_KINDS = ("cation", "anion_class", "chemsys")


@dataclasses.dataclass
class MeasuredRows:
    """Measured gaps, one row per structure (or per formula when there is no structure).

    Attributes:
        formula: reduced formula of each row.
        gap: measured gap, eV (0 = metal; repeated measurements: metal when most say so, else the mean of
            the non-zero ones).
        spread: max − min of the repeated measurements (0 for one).
        store_index: the row's record in the store, or -1 (formula only).
        family: family key of the row ("" where the kind needs a structure and there is none).
        source: ``zhuo2018`` / ``bandgapdatabase1`` (the first, where repeated).
    """

    formula: list[str]
    gap: np.ndarray
    spread: np.ndarray
    store_index: np.ndarray
    family: list[str]
    source: list[str]

    def __len__(self) -> int:
        return len(self.formula)

    @property
    def with_structure(self) -> np.ndarray:
        """Indices of the rows that have a structure."""
        return np.flatnonzero(self.store_index >= 0)


def read_measured(csv_path: Path, store: Any, family_by: str = "cation") -> MeasuredRows:
    """Measured gaps of ``csv_path`` joined to ``store`` (a :class:`matmeta.store.reader.GraphStore`).

    Raises:
        MatmetaInputError: a missing column or a gap that is not a finite, non-negative number.
    """
    from matmeta.io import read_csv

    _, rows = read_csv(csv_path, required=("formula", "band_gap_expt", "material_id", "source"))
    index = {rid: i for i, rid in enumerate(store.ids)}
    keys = store.family_keys(family_by, undefined="empty")
    grouped: dict[tuple[str, int], list[tuple[float, str]]] = defaultdict(list)
    for number, row in enumerate(rows, start=1):
        try:
            gap = float(row["band_gap_expt"])
        except ValueError:
            raise MatmetaInputError(f"{csv_path} row {number}: band_gap_expt {row['band_gap_expt']!r}") from None
        if not math.isfinite(gap) or gap < 0:
            raise MatmetaInputError(f"{csv_path} row {number}: band_gap_expt {gap} is not a measured gap")
        where = index.get(row["material_id"].strip(), -1)
        formula = _reduced(row["formula"]) if where < 0 else store_formula(store, where)
        grouped[(formula, where)].append((gap, row["source"]))
    formulas, gaps, spreads, where_list, families, sources = [], [], [], [], [], []
    for (formula, where), values in grouped.items():
        measured = np.array([v for v, _ in values])
        metal = np.mean(measured == 0) > 0.5  # repeated measurements: metal by majority, else the mean gap
        formulas.append(formula)
        gaps.append(0.0 if metal else float(measured[measured > 0].mean()))
        spreads.append(float(measured.max() - measured.min()))
        where_list.append(where)
        sources.append(values[0][1])
        families.append(keys[where] if where >= 0 else composition_key(formula, family_by))
    return MeasuredRows(formulas, np.array(gaps), np.array(spreads), np.array(where_list, dtype=np.int64),
                        families, sources)  # fmt: skip


def store_formula(store: Any, i: int) -> str:
    """The reduced formula of record ``i``."""
    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    numbers = store.record(i)[0]["atomic_numbers"].tolist()
    return Composition({Element.from_Z(z).symbol: numbers.count(z) for z in set(numbers)}).reduced_formula


def _reduced(formula: str) -> str:
    from pymatgen.core import Composition

    try:
        return Composition(formula).reduced_formula
    except Exception:  # noqa: BLE001 - a formula pymatgen cannot read stays as written
        return formula


def composition_key(formula: str, by: str) -> str:
    """The family of a formula without a structure, for the kinds a composition decides; "" otherwise."""
    from pymatgen.core import Composition

    if by not in COMPOSITION_KINDS:
        return ""
    try:
        composition = Composition(formula)
    except Exception:  # noqa: BLE001
        return ""
    numbers = [el.Z for el in composition.elements]
    from matmeta.families import anion_class_of, cation_of, chemsys_of

    return {"cation": cation_of, "anion_class": anion_class_of, "chemsys": chemsys_of}[by](np.array(numbers))
