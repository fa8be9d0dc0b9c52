"""Real crystal families as substitution slots: which element sits on which site of each prototype.

A prototype family of the store (``matmeta.prototypes``: anonymous formula, space group, Wyckoff letters,
e.g. ``ABC3_62_bccd`` for GdFeO3-type perovskites) is a set of known crystals that differ only in the
elements on their sites. Each distinct species of a member is a *slot*: the set of Wyckoff orbits it
occupies. Slots are ordered by (formula amount, site symmetries, then electronegativity for ties), so
slot ``s`` means the same site role in every member; a member whose slot keys differ from the family's
(another origin choice) is left out and counted. A candidate of the family is a tuple of distinct
elements, one per slot, substituted into a member's cell (:mod:`matmeta.design.family_cells`).

One job: build and cache :class:`FamilyTable` (families with their slots, members and labels).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.errors import MatmetaInputError

FORMAT = 2


@dataclass(frozen=True)
class Member:
    """One known crystal of a family: its slot elements (atomic numbers, slot order) and labels."""

    material_id: str
    slots: tuple[int, ...]
    formation_energy: float
    gap_pbe: float
    gap_measured: float = math.nan
    store_index: int = -1


@dataclass
class Family:
    """A prototype family: slot amounts per formula unit, slot site symmetries (``letters``), the members."""

    name: str
    amounts: tuple[int, ...]
    letters: tuple[str, ...]
    members: list[Member] = field(default_factory=list)
    left_out: int = 0

    @property
    def n_slots(self) -> int:
        """Distinct species of the prototype."""
        return len(self.amounts)

    def slot_features(self) -> np.ndarray:
        """Per slot: formula fraction, Wyckoff orbits, rank by amount / slots, slots (what a slot *is*, no elements).

        Shapes:
            (n_slots, SLOT_FEATURES)
        """
        total = float(sum(self.amounts))
        n = self.n_slots
        rows = [
            [a / total, w.count(";") + 1, i / max(n - 1, 1), n / 4.0]
            for i, (a, w) in enumerate(zip(self.amounts, self.letters, strict=True))
        ]
        return np.asarray(rows, dtype=np.float32)


SLOT_FEATURES = 4


def slot_keys(frac_coords: np.ndarray, lattice: np.ndarray, numbers: np.ndarray) -> list[tuple[int, str, int]] | None:
    """(amount, site symmetries of its orbits, Z) of each species, in slot order; None when spglib finds none.

    Site symmetries, not Wyckoff letters: they do not depend on the origin spglib picks (Na on 4a or on 4b of
    rock salt is the same site role), so ties fall to electronegativity and slot 0 is the cation.

    Shapes:
        frac_coords: (N, 3); lattice: (3, 3); numbers: (N,)
    """
    import spglib
    from pymatgen.core import Element

    from matmeta.families import electronegativity
    from matmeta.prototypes import SYMPREC_STORE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = spglib.get_symmetry_dataset((lattice, frac_coords, numbers), symprec=SYMPREC_STORE)
        except spglib.SpglibError:
            data = None
    if data is None:
        return None
    counts = Counter(np.asarray(numbers).tolist())
    divisor = math.gcd(*counts.values())
    sites: dict[int, list[str]] = defaultdict(list)
    for orbit in sorted(set(np.asarray(data.equivalent_atoms).tolist())):
        sites[int(numbers[orbit])].append(data.site_symmetry_symbols[orbit].strip())
    keys = [(counts[z] // divisor, ";".join(sorted(sites[z])), z) for z in counts]
    return sorted(keys, key=lambda k: (k[0], k[1], electronegativity(Element.from_Z(k[2]).symbol)))


def build_families(
    records: Sequence[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, float, float]], min_members: int = 30
) -> dict[str, Family]:
    """Families from ``(id, prototype, frac_coords, lattice, numbers, formation energy, PBE gap)`` records.

    A family keeps the slot signature most of its members share; families under ``min_members`` are dropped.
    """
    by_family: dict[str, list[tuple[int, str, list[tuple[int, str, int]], float, float]]] = defaultdict(list)
    for index, (rid, proto, frac, lattice, numbers, energy, gap) in enumerate(records):
        if not proto:
            continue
        keys = slot_keys(frac, lattice, numbers)
        if keys is not None:
            by_family[proto].append((index, rid, keys, energy, gap))
    families: dict[str, Family] = {}
    for name, rows in by_family.items():
        signature = Counter(tuple((a, w) for a, w, _ in keys) for _, _, keys, _, _ in rows).most_common(1)[0][0]
        family = Family(name, tuple(a for a, _ in signature), tuple(w for _, w in signature))
        for index, rid, keys, energy, gap in rows:
            if tuple((a, w) for a, w, _ in keys) != signature:
                family.left_out += 1
                continue
            member = Member(rid, tuple(z for _, _, z in keys), float(energy), float(gap), store_index=index)
            family.members.append(member)
        if len(family.members) >= min_members:
            families[name] = family
    return families


@dataclass
class FamilyTable:
    """All families of a store (train / validation / test by the predictor's own split) and the element vocabulary."""

    families: dict[str, Family]
    split: dict[str, list[str]]
    source: str = ""

    def family(self, name: str) -> Family:
        """One family by name (a one-line error naming some others when unknown)."""
        if name not in self.families:
            near = ", ".join(sorted(self.families)[:8])
            raise MatmetaInputError(f"prototype {name!r}: not a family of the store with >= 30 members (e.g. {near})")
        return self.families[name]

    def elements(self) -> list[int]:
        """Atomic numbers seen on any slot of any family (the decoder's vocabulary)."""
        return sorted({z for f in self.families.values() for m in f.members for z in m.slots})

    def save(self, path: Path) -> None:
        """Write the table as JSON (temp file, then rename)."""
        from matmeta.atomic import write_text_atomic

        payload = {
            "format": FORMAT,
            "source": self.source,
            "split": self.split,
            "families": {
                name: {
                    "amounts": list(f.amounts),
                    "letters": list(f.letters),
                    "left_out": f.left_out,
                    "members": [
                        [m.material_id, list(m.slots), m.formation_energy, m.gap_pbe, m.gap_measured, m.store_index]
                        for m in f.members
                    ],
                }
                for name, f in self.families.items()
            },
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(payload))

    @classmethod
    def load(cls, path: Path) -> FamilyTable:
        """Read a table written by :meth:`save`."""
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != FORMAT:
            raise MatmetaInputError(f"{path}: family table format {payload.get('format')}, expected {FORMAT}")
        families = {}
        for name, f in payload["families"].items():
            members = [
                Member(m[0], tuple(m[1]), m[2], m[3], m[4] if m[4] is not None else math.nan, m[5])
                for m in f["members"]
            ]
            families[name] = Family(name, tuple(f["amounts"]), tuple(f["letters"]), members, f["left_out"])
        return cls(families, payload["split"], payload.get("source", ""))


def store_records(store: Any) -> list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, float, float]]:
    """The ``build_families`` records of a graph store with formation energy and PBE gap targets."""
    from matmeta.store.records import decode_record

    protos = store.family_keys("prototype", undefined="empty")
    targets = store.targets
    names = list(store.target_names)
    energy, gap = targets[:, names.index("formation_energy_per_atom")], targets[:, names.index("band_gap")]
    counts = Counter(protos)
    records = []
    for i, rid in enumerate(store.ids):
        if counts[protos[i]] < 30:
            records.append((rid, "", np.zeros((0, 3)), np.eye(3), np.zeros(0, dtype=int), math.nan, math.nan))
            continue
        arrays = decode_record(store._raw(i), ("frac_coords", "lattice", "atomic_numbers"), with_info=False)[0]
        records.append(
            (rid, protos[i], arrays["frac_coords"], arrays["lattice"], arrays["atomic_numbers"], energy[i], gap[i])
        )
    return records


def member_structure(store: Any, member: Member) -> Any:
    """The member's relaxed Materials Project cell, from the store's arrays (no CIF parsing)."""
    from pymatgen.core import Lattice, Structure

    from matmeta.store.records import decode_record

    arrays = decode_record(
        store._raw(member.store_index), ("frac_coords", "lattice", "atomic_numbers"), with_info=False
    )[0]
    return Structure(Lattice(arrays["lattice"]), arrays["atomic_numbers"].tolist(), arrays["frac_coords"])


def label_measured(table: FamilyTable, store: Any, predictor: Any, chunk: int = 512) -> None:
    """Each member's measured-level gap as the predictor calls it (``band_gap``; 0 when it calls a metal).

    The measured-level condition of the decoder: there are no measured gaps for most family members, so the
    members are labelled by the same predictor that judges the candidates (stated, not hidden).
    """
    members = [m for f in table.families.values() for m in f.members]
    values: dict[str, float] = {}
    for start in range(0, len(members), chunk):
        part = members[start : start + chunk]
        rows = predictor.predict_structures([member_structure(store, m) for m in part])
        for m, row in zip(part, rows, strict=True):
            values[m.material_id] = float(row["band_gap"])
    for f in table.families.values():
        f.members = [
            Member(m.material_id, m.slots, m.formation_energy, m.gap_pbe, values[m.material_id], m.store_index)
            for m in f.members
        ]


def load_family_table(
    store_path: Path, val: Sequence[str], test: Sequence[str], cache: Path, predictor: Any = None
) -> FamilyTable:
    """The store's family table, built once (about a minute for mp36k) and cached at ``cache``.

    ``val`` / ``test``: the predictor recipe's held-out families; every other family is a training family.
    """
    from matmeta.store.reader import GraphStore

    if cache.exists():
        table = FamilyTable.load(cache)
        if table.source == str(store_path):
            return table
    with GraphStore(store_path) as store:
        families = build_families(store_records(store))
        held = set(val) | set(test)
        split = {
            "train": sorted(n for n in families if n not in held),
            "val": sorted(n for n in families if n in set(val)),
            "test": sorted(n for n in families if n in set(test)),
        }
        table = FamilyTable(families, split, str(store_path))
        if predictor is not None:
            label_measured(table, store, predictor)
    table.save(cache)
    return table
