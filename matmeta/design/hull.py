"""The convex hull of the known phases of mp36k: how far a candidate lies above (or below) what is known.

One job: given a composition and a formation energy per atom (eV/atom, on mp36k's reference), say how far
it lies from the lower convex hull of the known phases of its chemical system.

References: mp36k's ``formation_energy_per_atom`` is Materials Project's, with its (MP2020) corrections,
relative to the elements; every element gets an explicit reference entry at 0.0 eV/atom besides its
mp36k elemental rows (the lowest of which is at or within a few meV of 0), so the hull always spans the
whole chemical system and an element is never above its own reference.

Why per chemical system: the hull energy at a composition depends only on the phases whose elements are a
subset of its elements, so one :class:`~pymatgen.analysis.phase_diagram.PhaseDiagram` is built for each
candidate's system (from those phases, the lowest entry of each composition) and cached under the
frozenset of its elements. A diagram over all 87 elements would be an 86-dimensional hull: never built.

Sign convention: ``e_above_hull = e_form_per_atom - hull_energy_per_atom(composition)``; positive above the
hull (metastable or unstable), 0 on it, negative below it (the candidate would be a new stable phase).

Rows are read with the ``csv`` module (no CIF is parsed at load; the CIF texts are kept as strings and
parsed only for :meth:`KnownHull.structures_with_formula`).
"""

from __future__ import annotations

import csv
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matmeta.errors import MatmetaInputError
from matmeta.store.datasets import shared_data_dir

MP36K_CSV = "mp/mp36k.csv"


@dataclass(frozen=True)
class KnownPhase:
    """One known phase (a row of mp36k).

    Attributes:
        material_id: its Materials Project id.
        formula: reduced formula.
        e_form_per_atom: formation energy (eV/atom, MP-corrected, elements at 0).
        nsites: sites in its cell.
        cif: its CIF text ("" when not kept).
    """

    material_id: str
    formula: str
    e_form_per_atom: float
    nsites: int
    cif: str = ""


def default_csv() -> Path:
    """The shared mp36k CSV (``$MATMETA_SHARED_DATA/mp/mp36k.csv``)."""
    return shared_data_dir() / MP36K_CSV


def read_phases(path: str | Path | None = None, keep_cif: bool = True) -> list[KnownPhase]:
    """The rows of mp36k as :class:`KnownPhase` (CIF texts kept unparsed when ``keep_cif``)."""
    path = Path(path) if path is not None else default_csv()
    if not path.exists():
        raise MatmetaInputError(f"{path}: mp36k CSV not found (set MATMETA_SHARED_DATA)")
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="") as handle:
        return [
            KnownPhase(
                material_id=row["material_id"],
                formula=row["formula"],
                e_form_per_atom=float(row["formation_energy_per_atom"]),
                nsites=int(row["nsites"]),
                cif=row["cif"] if keep_cif else "",
            )
            for row in csv.DictReader(handle)
        ]


def as_composition(composition: Any) -> Any:
    """A pymatgen ``Composition`` from a Composition or a formula string (MatmetaInputError if unreadable)."""
    from pymatgen.core import Composition, Element

    if not isinstance(composition, Composition):
        try:
            composition = Composition(composition)
        except Exception as exc:  # noqa: BLE001 - pymatgen raises several types for a bad formula
            raise MatmetaInputError(f"{composition!r}: not a chemical formula ({exc})") from exc
    dummies = sorted(el.symbol for el in composition.elements if not Element.is_valid_symbol(el.symbol))
    if dummies:
        raise MatmetaInputError(f"{', '.join(dummies)}: not a chemical element")
    return composition


def element_symbols(composition: Any) -> frozenset[str]:
    """The element symbols of a composition (its chemical system)."""
    return frozenset(el.symbol for el in as_composition(composition).elements)


class KnownHull:
    """The hull of known phases, one cached phase diagram per chemical system (module docstring).

    Args:
        phases: the known phases (any order; several per formula allowed).
    """

    def __init__(self, phases: Sequence[KnownPhase]) -> None:
        self.phases = list(phases)
        self._by_formula: dict[str, list[int]] = {}
        self._lowest: dict[str, float] = {}
        self._systems: dict[frozenset[str], list[str]] = {}
        self._diagrams: dict[frozenset[str], Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen: "No Pauling electronegativity for He" when sorting
            for i, phase in enumerate(self.phases):
                self._index(i, phase)
        self.elements = frozenset().union(*self._systems) if self._systems else frozenset()

    def _index(self, i: int, phase: KnownPhase) -> None:
        comp = as_composition(phase.formula)
        formula = comp.reduced_formula
        self._by_formula.setdefault(formula, []).append(i)
        if formula not in self._lowest:
            self._systems.setdefault(element_symbols(comp), []).append(formula)
        self._lowest[formula] = min(phase.e_form_per_atom, self._lowest.get(formula, float("inf")))

    @classmethod
    def from_csv(cls, path: str | Path | None = None) -> KnownHull:
        """The hull of mp36k (``path`` or the shared CSV)."""
        return cls(read_phases(path))

    @classmethod
    def from_entries(
        cls, formulas: Iterable[str], e_form_per_atom: Iterable[float], material_ids: Iterable[str] | None = None
    ) -> KnownHull:
        """A hull of explicit phases (tests, toy systems); ids default to ``toy-<i>``."""
        formulas, energies = list(formulas), [float(e) for e in e_form_per_atom]
        if len(formulas) != len(energies):
            raise MatmetaInputError(f"{len(formulas)} formulas but {len(energies)} energies")
        ids = list(material_ids) if material_ids is not None else [f"toy-{i}" for i in range(len(formulas))]
        return cls([KnownPhase(m, f, e, 0) for m, f, e in zip(ids, formulas, energies, strict=True)])

    def _check_elements(self, system: frozenset[str]) -> None:
        unknown = sorted(system - self.elements)
        if unknown:
            raise MatmetaInputError(f"{', '.join(unknown)}: element not among the known phases")

    def phase_diagram(self, composition: Any) -> Any:
        """The (cached) PhaseDiagram of the chemical system of ``composition``."""
        system = element_symbols(composition)
        self._check_elements(system)
        if system not in self._diagrams:
            self._diagrams[system] = self._build(system)
        return self._diagrams[system]

    def _build(self, system: frozenset[str]) -> Any:
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition

        entries = [PDEntry(Composition(el), 0.0) for el in sorted(system)]
        for sub, formulas in self._systems.items():
            if sub <= system:
                for formula in formulas:
                    comp = Composition(formula)
                    entries.append(PDEntry(comp, self._lowest[formula] * comp.num_atoms, name=formula))
        return PhaseDiagram(entries)

    def hull_energy_per_atom(self, composition: Any) -> float:
        """Formation energy (eV/atom) of the hull of the known phases at ``composition``."""
        comp = as_composition(composition)
        return float(self.phase_diagram(comp).get_hull_energy_per_atom(comp))

    def e_above_hull(self, composition: Any, e_form_per_atom: float) -> float:
        """Energy above the hull (eV/atom) of a phase at ``composition``; negative below it."""
        return float(e_form_per_atom) - self.hull_energy_per_atom(composition)

    def known_formulas(self) -> set[str]:
        """Reduced formulas of all known phases."""
        return set(self._by_formula)

    def _rows(self, formula: str) -> list[KnownPhase]:
        key = as_composition(formula).reduced_formula
        return [self.phases[i] for i in self._by_formula.get(key, [])]

    def ids_with_formula(self, formula: str) -> list[str]:
        """Material ids of the known phases with this (reduced) formula, in file order."""
        return [p.material_id for p in self._rows(formula)]

    def structures_with_formula(self, formula: str) -> list[Any]:
        """The structures (pymatgen, parsed now from their CIFs) of the known phases with this formula."""
        return [parse_cif(p) for p in self._rows(formula)]


def parse_cif(phase: KnownPhase) -> Any:
    """The pymatgen Structure of a phase's CIF text (MatmetaInputError when it has none or it is unreadable)."""
    from pymatgen.core import Structure

    if not phase.cif:
        raise MatmetaInputError(f"{phase.material_id}: no CIF kept for this phase")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(phase.cif, fmt="cif")
    except Exception as exc:  # noqa: BLE001 - pymatgen's CIF parser raises several types
        raise MatmetaInputError(f"{phase.material_id}: unreadable CIF ({exc})") from exc
