"""Is a structure inside what the predictor was trained on? Per-structure out-of-domain flags.

The shipped predictor is trained on ABX3 perovskites of its training B-site families. A prediction
is flagged (not refused) when

* an element sits at a site (A, B or anion X) where no training structure had it — the model then
  extrapolates from element descriptors alone;
* the structure is not an ABX3 perovskite (the only structure type in the training data).

:func:`sites_seen` records the elements per site at training time (stored in the checkpoint as
``sites_seen``); :func:`domain_flags` checks a structure against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SITES = ("A", "B", "X")


def sites_seen(store_path: Path, train_families: Sequence[str], by: str = "b_site") -> dict[str, list[str]]:
    """Elements seen at the A, B and anion sites in the structures of the training families."""
    from pymatgen.core.periodic_table import Element

    from matmeta.families import anion_elements
    from matmeta.store.reader import GraphStore

    store = GraphStore(store_path)
    family = store.family_keys(by)
    a_site, b_site = store.family_keys("a_site"), store.family_keys("b_site")
    wanted = set(train_families)
    seen: dict[str, set[str]] = {site: set() for site in SITES}
    for i, key in enumerate(family):
        if key not in wanted:
            continue
        seen["A"].add(a_site[i])
        seen["B"].add(b_site[i])
        symbols = {Element.from_Z(int(z)).symbol for z in store[i].atomic_numbers.tolist()}
        seen["X"].update(anion_elements(symbols))
    return {site: sorted(values) for site, values in seen.items()}


def _symbols(numbers: Sequence[int]) -> str:
    from pymatgen.core.periodic_table import Element

    return ", ".join(Element.from_Z(int(z)).symbol for z in numbers)


def unseen_elements(structure: Any, seen: set[int]) -> str | None:
    """Which elements of ``structure`` are outside ``seen``, as a one-line reason, or None."""
    new = sorted({int(z) for z in structure.atomic_numbers} - set(seen))
    return f"element(s) {_symbols(new)} never seen in training" if new else None


def unseen_warning(unseen: Sequence[int], identity: bool = True) -> str | None:
    """The predict row's warning for elements never seen in training (None when there are none)."""
    if not unseen:
        return None
    how = "a generic element embedding" if identity else "its element descriptors only"
    return f"element(s) never seen in training: {_symbols(unseen)}; prediction uses {how}"


def perovskite_sites_checked(structure: Any) -> tuple[str, str]:
    """The (A, B) cations of a structure that is an ABX3 perovskite by composition AND by geometry.

    Composition alone calls ilmenite FeTiO3 a perovskite and a Ga2O3 cell one with A = B = Ga; here A and B
    must differ and the BX6 octahedra must share corners
    (:func:`matmeta.perovskite_network.keeps_perovskite_connectivity`).

    Raises:
        MatmetaInputError: the reason it is not one.
    """
    from matmeta.errors import MatmetaInputError
    from matmeta.families import perovskite_sites
    from matmeta.perovskite_network import keeps_perovskite_connectivity

    a_site, b_site = perovskite_sites(structure)
    if a_site == b_site:
        raise MatmetaInputError(f"{structure.composition.reduced_formula}: A and B are both {a_site}, not ABX3")
    if not keeps_perovskite_connectivity(structure):
        raise MatmetaInputError(f"{structure.composition.reduced_formula}: no corner-sharing BX6 network")
    return a_site, b_site


def domain_flags(structure: Any, seen: dict[str, Sequence[str]] | None) -> str | None:
    """A one-line reason why ``structure`` is outside the training domain, or None when it is inside.

    Args:
        structure: a pymatgen ``Structure``.
        seen: the checkpoint's ``sites_seen`` (None: an older checkpoint; nothing is checked).
    """
    from matmeta.errors import MatmetaInputError
    from matmeta.families import anion_elements

    if not seen:
        return None
    try:
        a_site, b_site = perovskite_sites_checked(structure)
    except MatmetaInputError as exc:
        return f"structure type: {str(exc).split(': ', 1)[-1]} (trained on ABX3 perovskites only)"
    anions = anion_elements({site.specie.symbol for site in structure})
    reasons = []
    for site, elements in (("A", [a_site]), ("B", [b_site]), ("X", sorted(anions))):
        new = [e for e in elements if e not in set(seen.get(site, ()))]
        if new:
            reasons.append(f"{', '.join(new)} never seen at the {site} site in training")
    return "; ".join(reasons) or None


def family_unseen(structure: Any, by: str | None, train_families: Sequence[str]) -> bool:
    """True when ``structure``'s family of the checkpoint's kind ``by`` is none of its training families.

    For ``b_site`` / ``a_site`` the structure must be a perovskite (:func:`perovskite_sites_checked`);
    a structure whose family is undefined (no perovskite, no kind) is not called new.
    """
    from matmeta.errors import MatmetaInputError
    from matmeta.families import family_key

    if not by or not train_families:
        return False
    try:
        if by in ("a_site", "b_site"):
            a_site, b_site = perovskite_sites_checked(structure)
            key = b_site if by == "b_site" else a_site
        else:
            key = family_key(structure, by)
    except MatmetaInputError:
        return False
    return key not in set(train_families)


def new_family_corrections(
    rows: Sequence[dict[str, Any]],
    structures: Sequence[Any],
    families: dict[str, Any],
    shift: float,
    platt: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Prediction rows corrected where the structure's family is new: gap + ``shift`` eV, P(non-metal) recalibrated.

    ``families``: the checkpoint's ``families`` entry (``by``: the kind the corrections were fitted for,
    ``train``: its training families); the shipped perovskite checkpoint's kind is the B site.

    Why: on families the network never saw (held out, out of fold) zero-shot gaps come out low by
    about half an eV and P(non-metal) is over-confident (of the calls with P ≥ 0.8, 56 % are
    non-metals), while on its training families neither holds. The checkpoint's
    ``new_family_gap_shift`` and ``new_family_platt`` (``a``, ``b``: P ← sigmoid(a·logit P + b)) are fitted
    on those families by :func:`matmeta.predict.calibrate.uncertainty_entry`. The call (metal or
    non-metal) does not change: the recalibration is monotone, and the cut on the recalibrated P is the
    checkpoint's cut mapped the same way (:attr:`matmeta.predict.predictor.Predictor.new_family_cut`).
    Each row gets ``gap_shift`` (the eV added: 0 or ``shift``) and ``p_recalibrated``; the interval
    keeps its half-width.
    """
    from matmeta.conformal import platt as recalibrated

    out = []
    for row, structure in zip(rows, structures, strict=True):
        new = bool((shift or platt) and family_unseen(structure, families.get("by"), families.get("train", ())))
        applied = float(shift) if new and shift else 0.0
        row = {**row, "gap_shift": applied, "p_recalibrated": bool(new and platt)}
        if applied:
            gap = row["gap_if_nonmetal"] + applied
            if row["gap_hi"] is not None:
                half = row["gap_hi"] - row["gap_if_nonmetal"]
                row["gap_lo"], row["gap_hi"] = max(gap - half, 0.0), gap + half
            row["gap_if_nonmetal"] = gap
            if row["band_gap"] != 0.0:  # called non-metal (a metal's band gap is exactly 0)
                row["band_gap"] = gap
        if new and platt:
            row["p_metal"] = 1.0 - float(recalibrated(1.0 - row["p_metal"], platt["a"], platt["b"]))
        out.append(row)
    return out


def corrected_rows(predictor: Any, rows: list[dict[str, Any]], structures: Sequence[Any]) -> list[dict[str, Any]]:
    """``rows`` of ``predictor`` with its new-family corrections (zero-shot only: none once adapted).

    Only a checkpoint calibrated with them (the perovskite one) has any; others get their rows back.
    """
    from matmeta.predict.intervals import adapted_role

    adapted = predictor.metadata.get("adapted") or {}
    keys = ("new_family_gap_shift", "new_family_gap_shift_adapted", "new_family_platt")
    if not any(predictor.uncertainty.get(key) for key in keys):  # a checkpoint without new-family corrections
        return rows
    if predictor.fast is not None or adapted:  # the inner loop without gap labels keeps the offset
        blind = adapted.get("kept") == "adapted" and adapted_role(adapted) != "band_gap"
        shift = float(predictor.uncertainty.get("new_family_gap_shift_adapted", 0.0)) if blind else 0.0
        return new_family_corrections(rows, structures, predictor.metadata["families"], shift)
    shift = float(predictor.uncertainty.get("new_family_gap_shift", 0.0))
    return new_family_corrections(rows, structures, predictor.metadata["families"], shift, predictor.new_family_platt)
