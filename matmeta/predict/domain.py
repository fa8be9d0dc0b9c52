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


def site_checks(
    structures: Sequence[Any], seen: dict[str, Sequence[str]] | None, families: dict[str, Any], corrections: bool
) -> list[tuple[bool, str | None]]:
    """Per structure: is its family new (with new-family ``corrections``), and why it is outside the ``seen`` sites.

    The reason is None inside, or without a site record.

    One call for a whole batch, so that a prediction comes here once (:mod:`matmeta.predict.calibration`).
    """
    by, train = families.get("by"), families.get("train", ())
    return [(corrections and family_unseen(s, by, train), domain_flags(s, seen) if seen else None) for s in structures]
