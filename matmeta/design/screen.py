"""The enumerable ABX3 space: element substitution into training prototypes, sampled or screened whole.

One job: build candidates by substitution (the practical baseline of inverse design) and, where the
space is small enough, list it completely so that the predictor can screen every member
(:func:`substitution_space`, :func:`screen`). The decoder is judged against both: the screen says how
many qualifying compounds exist at all, so a short answer of ``generate`` is a fact about the space,
not a failure to search.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from matmeta.design.judge import Judgement, judge_for_request
from matmeta.design.stability import StabilityCriterion


@dataclass
class ScreenSummary:
    """The exhaustive screen of an enumerable space.

    Attributes:
        size: compositions in the space (novel, charge-neutral).
        qualifying: formulas in the space that meet the request.
        judgement: the verdict on every member.
    """

    size: int
    qualifying: set[str]
    judgement: Judgement


def substitution_candidates(
    prototypes: list[Any],
    cations: tuple[list[str], list[str]],
    n: int,
    rng: np.random.Generator,
    max_tries: int = 200,
    exclude: Collection[str] = (),
    distinct: bool = False,
) -> tuple[list[Any], int]:
    """``n`` structures: random prototypes with charge-neutral (SMACT) random A/B cations.

    Args:
        prototypes: training structures (canonical ABX3 order: A, B, then anions).
        cations: elements seen on the A and on the B site.
        n: how many.
        rng: the randomness.
        max_tries: redraws per candidate before keeping the last (then likely invalid) draw.
        exclude: reduced formulas to redraw (the same free lookup the decoder gets).
        distinct: redraw a composition an earlier candidate already has.

    Returns:
        ``(structures, draws)``: draws counts the charge-neutral substitutions made.
    """
    from matmeta.design.validity import compositional_validity

    excluded, taken = set(exclude), set()
    out, draws = [], 0
    for _ in range(n):
        proto = prototypes[int(rng.integers(len(prototypes)))]
        for _ in range(max_tries):
            a = cations[0][int(rng.integers(len(cations[0])))]
            b = cations[1][int(rng.integers(len(cations[1])))]
            cand = proto.copy()
            cand.replace(0, a)
            cand.replace(1, b)
            if a == b or not compositional_validity(cand.composition):
                continue
            draws += 1
            formula = cand.composition.reduced_formula
            if formula not in excluded and not (distinct and formula in taken):
                break
        taken.add(cand.composition.reduced_formula)
        out.append(cand)
    return out, draws


def substitution_space(
    prototypes: list[Any], cations: tuple[list[str], list[str]], rng: np.random.Generator, exclude: Collection[str] = ()
) -> list[Any]:
    """Every charge-neutral (A, B, anion set) once, on a random training prototype of that anion set.

    The whole space that :func:`substitution_candidates` samples from (A ≠ B, SMACT-valid, formula
    not in ``exclude``), so the fraction of it in a window is the substitution baseline's expected
    success per candidate, without the sampling noise of a few hits in a few hundred draws.

    Args:
        prototypes: training structures in canonical order (A, B, then the three anions).
        cations: elements seen on the A and on the B site.
        rng: picks the prototype of each combination.
        exclude: reduced formulas left out (the training compositions).
    """
    from matmeta.design.validity import compositional_validity

    by_anions: dict[tuple[str, ...], list[Any]] = {}
    for proto in prototypes:
        by_anions.setdefault(tuple(sorted(site.specie.symbol for site in proto[2:])), []).append(proto)
    seen, out = set(exclude), []
    for anions in sorted(by_anions):
        group = by_anions[anions]
        for a in cations[0]:
            for b in cations[1]:
                if a == b:
                    continue
                cand = group[int(rng.integers(len(group)))].copy()
                cand.replace(0, a)
                cand.replace(1, b)
                formula = cand.composition.reduced_formula
                if formula in seen or not compositional_validity(cand.composition):
                    continue
                seen.add(formula)
                out.append(cand)
    return out


def screen(
    space: Sequence[Any],
    predictor: Any,
    window: tuple[float, float],
    criterion: StabilityCriterion,
    batch: int = 512,
) -> Judgement:
    """Judge every member of an enumerated space against the request (one predictor call each).

    Members are distinct, novel compositions by construction (:func:`substitution_space`), so
    uniqueness and novelty hold; validity, metal, window and stability are judged here.
    """
    parts = [judge_for_request(space[i : i + batch], predictor, window, criterion) for i in range(0, len(space), batch)]
    return Judgement.concat(parts)


def canonical_structures(structures: Sequence[Any], elements: Sequence[str], snap: bool = False) -> list[Any]:
    """Structures with their sites in the decoder's canonical order (A, B, X1..X3), for prototypes.

    ``snap``: on the ideal cubic positions at each structure's volume
    (:func:`matmeta.design.symmetry.snap_to_prototype`), so substitutions start at a stationary point.
    """
    from matmeta.design.data import canonical_cell, cell_to_structure
    from matmeta.design.symmetry import snap_to_prototype

    out = []
    for s in structures:
        index, frac, lattice = canonical_cell(s, elements)
        cell = cell_to_structure(index, frac, lattice, elements)
        out.append(snap_to_prototype(cell) if snap else cell)
    return out


def allowed_space(
    prototypes: Sequence[Any],
    site_elements: Sequence[Sequence[str]],
    allowed: Collection[str],
    known: Collection[str],
    seed: int = 0,
) -> list[Any]:
    """The substitution space within the allowed elements (A/B roles from the decoder's sites).

    Args:
        prototypes: training structures in canonical order.
        site_elements: the decoder's elements per canonical site (A, B, X1..X3).
        allowed: elements a request allows.
        known: training formulas (left out).
        seed: picks each member's prototype.
    """
    allowed = set(allowed)
    kept = [p for p in prototypes if {site.specie.symbol for site in p[2:]} <= allowed]
    cations = ([e for e in site_elements[0] if e in allowed], [e for e in site_elements[1] if e in allowed])
    if not kept or not cations[0] or not cations[1]:
        return []
    return substitution_space(list(kept), cations, np.random.default_rng(seed), exclude=known)


def screen_request(
    prototypes: Sequence[Any],
    generator: Any,
    mask: Any,
    known: Collection[str],
    predictor: Any,
    window: tuple[float, float],
    criterion: StabilityCriterion,
    seed: int = 0,
) -> ScreenSummary:
    """Screen the whole substitution space a request allows (``seed`` picks each member's prototype)."""
    allowed = {e for v, e in enumerate(generator.elements) if bool(mask[:, v].any())}
    sites = generator.metadata.get("site_elements") or [list(generator.elements)] * 5
    space = allowed_space(prototypes, sites, allowed, known, seed)
    judged = screen(space, predictor, window, criterion)
    return ScreenSummary(len(space), {judged.rows[i]["formula"] for i in judged.hits}, judged)
