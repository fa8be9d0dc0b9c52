"""Inverse design in a real prototype family: propose, judge, fill the request, relax, judge again.

Pipeline of :func:`design_family` (``matmeta generate --prototype NAME`` / ``--family-examples DIR``)::

    proposer (the meta-learned decoder adapted to the family's examples, random substitution, or the
    enumerated screen) -> slot assignments
      -> cell: substituted into the nearest known member, volume scaled        [family_cells]
      -> valid: no two atoms closer than 0.5 Å, charge-neutral by SMACT
      -> novel: reduced formula absent from mp36k; unique: never proposed before in this request
      -> predictor: gap at the requested fidelity in the window, a non-metal, and within ``hull_cut`` eV/atom
         of the hull of mp36k's known phases (its formation energy against :class:`KnownHull`)
      ... until ``n`` hits or the budget; then every hit is relaxed (batched CHGNet) and judged again:
      prototype kept (the same site-symmetry signature by spglib at 0.1 Å), gap still in the window (the
      predictor on the relaxed cell), and the energy above the hull from CHGNet's relaxed energy on mp36k's
      reference (:class:`ChgnetReference`).

S.U.N. (MatterGen's definition, on this hull): stable (CHGNet, relaxed, <= 0.1 eV/atom above the hull),
unique and novel. Novel here is stricter than MatterGen's structure match: no mp36k entry with the formula.

One job: the judging and the fill loop shared by ``generate`` and the benchmark.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from matmeta.design.family_cells import candidate_cell
from matmeta.design.family_table import Family

Proposer = Callable[[int], list[tuple[int, ...]]]


@dataclass(frozen=True)
class FamilyRequest:
    """What a family design run asks for."""

    window: tuple[float, float]
    n: int = 20
    fidelity: str = "measured"
    hull_cut: float = 0.1
    max_draws: int = 20_000
    max_predictor_calls: int = 2_000
    batch: int = 64
    relax: bool = True
    relax_max_steps: int = 150

    @property
    def gap_key(self) -> str:
        """The predictor's output the window is on."""
        return "band_gap_pbe" if self.fidelity == "pbe" else "band_gap"


@dataclass
class FamilyResult:
    """Hits (rows in the order found) and the counts of the funnel."""

    family: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    structures: list[Any] = field(default_factory=list)
    relaxed: list[Any] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0


def formula_of(slots: Sequence[int], family: Family) -> str:
    """Reduced formula of a slot assignment."""
    from pymatgen.core import Composition, Element

    return Composition({Element.from_Z(z): a for z, a in zip(slots, family.amounts, strict=True)}).reduced_formula


def _valid(structure: Any) -> tuple[bool, bool, float]:
    """(no atoms closer than 0.5 Å, SMACT charge-neutral, shortest distance)."""
    from matmeta.design.validity import compositional_validity, min_distance

    shortest = min_distance(structure)
    return bool(math.isfinite(shortest) and shortest >= 0.5), compositional_validity(structure.composition), shortest


def judge_rows(structures: Sequence[Any], predictor: Any, hull: Any, request: FamilyRequest) -> list[dict[str, Any]]:
    """The predictor's verdict on valid, novel candidates: gap, non-metal, hull distance, hit."""
    lo, hi = request.window
    rows = []
    for structure, prediction in zip(structures, predictor.predict_structures(structures), strict=True):
        gap = float(prediction[request.gap_key])
        energy = float(prediction["formation_energy_per_atom"])
        e_hull = hull.e_above_hull(structure.composition, energy)
        in_window = bool(gap > 0 and lo <= gap <= hi)
        rows.append(
            {
                "band_gap_ev": gap,
                "formation_energy_ev_per_atom": energy,
                "e_above_hull_pred": e_hull,
                "in_window": in_window,
                "hit": bool(in_window and e_hull <= request.hull_cut),
            }
        )
    return rows


def fill(
    family: Family,
    proposer: Proposer,
    cell_of: Callable[[Any], Any],
    predictor: Any,
    hull: Any,
    request: FamilyRequest,
    templates: Sequence[Any] | None = None,
    on_hit: Callable[[], None] | None = None,
) -> FamilyResult:
    """Draw from ``proposer`` until ``request.n`` hits or the budget (draws, predictor calls) is spent."""
    cpu = time.process_time()
    result = FamilyResult(family.name)
    counts = dict.fromkeys(["drawn", "distinct", "novel", "valid", "charge_neutral", "scored", "in_window", "hits"], 0)
    seen: set[tuple[int, ...]] = set()
    known = hull.known_formulas()
    while (
        len(result.rows) < request.n
        and counts["drawn"] < request.max_draws
        and counts["scored"] < request.max_predictor_calls
    ):
        draws = proposer(request.batch)
        if not draws:
            break
        counts["drawn"] += len(draws)
        fresh = [d for d in dict.fromkeys(draws) if d not in seen and len(set(d)) == len(d)]
        seen.update(fresh)
        counts["distinct"] += len(fresh)
        novel = [d for d in fresh if formula_of(d, family) not in known]
        counts["novel"] += len(novel)
        cells, picks, checks = [], [], []
        for slots in novel:
            cell = candidate_cell(cell_of, family, slots, templates)
            spaced, neutral, shortest = _valid(cell)
            counts["valid"] += spaced
            counts["charge_neutral"] += spaced and neutral
            if spaced and neutral:
                cells.append(cell)
                picks.append(slots)
                checks.append(shortest)
        room = request.max_predictor_calls - counts["scored"]
        cells, picks = cells[:room], picks[:room]
        counts["scored"] += len(cells)
        for cell, slots, shortest, row in zip(
            cells, picks, checks, judge_rows(cells, predictor, hull, request), strict=False
        ):
            counts["in_window"] += row["in_window"]
            if row["hit"] and len(result.rows) < request.n:
                row.update(
                    formula=formula_of(slots, family), slots=slots, min_distance_ang=shortest, charge_neutral=True
                )
                result.rows.append(row)
                result.structures.append(cell)
                if on_hit is not None:
                    on_hit()
    counts["hits"] = len(result.rows)
    result.counts = counts
    result.cpu_seconds = time.process_time() - cpu
    return result


def relax_and_rejudge(result: FamilyResult, predictor: Any, hull: Any, reference: Any, request: FamilyRequest) -> None:
    """Relax every hit with batched CHGNet and judge the relaxed cell: prototype, window, hull (adds row fields)."""
    from matmeta.design.relax import Relaxer, RelaxSettings
    from matmeta.prototypes import prototype, prototype_signature

    if not result.structures:
        return
    cpu = time.process_time()
    relaxed, relax_rows = Relaxer(RelaxSettings(max_steps=request.relax_max_steps)).relax_all(result.structures)
    ok = [r for r in relaxed if r is not None]
    after = iter(judge_rows(ok, predictor, hull, request)) if ok else iter(())
    lo, hi = request.window
    for row, start, cell, relax_row in zip(result.rows, result.structures, relaxed, relax_rows, strict=True):
        row.update(rmsd_ang=relax_row.get("rmsd_ang", math.nan), relax_converged=bool(relax_row.get("relax_converged")))
        if cell is None:
            row.update(
                prototype_kept=False,
                in_window_relaxed=False,
                e_above_hull_chgnet=math.nan,
                relax_error=relax_row.get("relax_error", ""),
            )
            continue
        judged = next(after)
        energy = reference.formation_energy_per_atom(cell.composition, float(relax_row["energy_after_ev_per_atom"]))
        row.update(
            prototype_relaxed=prototype(cell),
            band_gap_ev_relaxed=judged["band_gap_ev"],
            in_window_relaxed=bool(judged["band_gap_ev"] > 0 and lo <= judged["band_gap_ev"] <= hi),
            e_above_hull_chgnet=hull.e_above_hull(cell.composition, energy),
            e_above_hull_pred_relaxed=judged["e_above_hull_pred"],
        )
        # the site-symmetry signature: the same prototype whatever origin spglib picks (4a vs 4b in Pnma)
        row["prototype_kept"] = prototype_signature(cell) == prototype_signature(start)
    result.relaxed = relaxed
    result.cpu_seconds += time.process_time() - cpu
    for row in result.rows:
        row["kept"] = bool(row.get("prototype_kept") and row.get("in_window_relaxed"))
        row["sun"] = bool(row.get("e_above_hull_chgnet", math.inf) <= request.hull_cut)  # unique and novel by the fill


def decoder_proposer(
    decoder: Any, family: Family, fast: dict, request: FamilyRequest, target: float, seed: int, temperature: float = 1.0
) -> Proposer:
    """Draws of the adapted decoder conditioned on the target gap at the request's fidelity."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return lambda n: decoder.sample(family, fast, target, request.fidelity == "pbe", n, generator, temperature)


def random_proposer(elements: Sequence[int], family: Family, seed: int) -> Proposer:
    """Uniformly random distinct elements on the slots (the random-substitution baseline)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pool = np.asarray(elements)
    return lambda n: [tuple(int(z) for z in rng.choice(pool, size=family.n_slots, replace=False)) for _ in range(n)]


def screen_space(
    family: Family, members: Sequence[Any], hull: Any, limit: int, seed: int
) -> list[tuple[int, ...]] | None:
    """Every novel, SMACT charge-neutral assignment of the elements seen on each slot among ``members``.

    The chemist's screen: substitute within the site elements the family already shows. Shuffled (seeded),
    so a screen cut short by the predictor budget is a random part of the space. None when the space holds
    more than ``limit`` assignments (not enumerable).
    """
    import itertools

    import numpy as np

    from matmeta.design.validity import compositional_validity

    per_slot = [sorted({m.slots[s] for m in members}) for s in range(family.n_slots)]
    if math.prod(len(p) for p in per_slot) > limit:
        return None
    known = hull.known_formulas()
    found = []
    for slots in itertools.product(*per_slot):
        if len(set(slots)) == len(slots) and formula_of(slots, family) not in known:
            if compositional_validity(formula_of(slots, family)):
                found.append(tuple(int(z) for z in slots))
    order = np.random.default_rng(seed).permutation(len(found))
    return [found[i] for i in order]


def list_proposer(items: Sequence[tuple[int, ...]]) -> Proposer:
    """Proposals in a fixed order (the exhaustive screen: every enumerated assignment once)."""
    it: Iterator[tuple[int, ...]] = iter(items)
    return lambda n: [x for _, x in zip(range(n), it, strict=False)]
