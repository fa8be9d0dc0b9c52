"""Fill a request: draw candidates in rounds until ``n`` meet it or the stated budget is spent.

One job: the search loop of ``matmeta generate``. A proposer (the decoder, or random substitution
for the baseline) proposes a round of new compositions — never a training composition and never one
proposed before, a free set lookup — the valid ones are scored by the predictor and judged
(:func:`matmeta.design.judge.judge_for_request`), and the loop goes on until it holds ``n`` hits, or
``max_draws`` proposer draws or ``max_predictor_calls`` predictor calls are spent, or the proposer has
nothing new to offer for ``patience`` rounds in a row. The result says which of these stopped it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from matmeta.design.judge import Judgement, judge_for_request
from matmeta.design.stability import StabilityCriterion

#: (how many, round index, compositions to avoid, draws left in the budget) -> (structures, draws it took)
Proposer = Callable[[int, int, Collection[str], int], tuple[list[Any], int]]


@dataclass(frozen=True)
class FillBudget:
    """What one request may spend.

    Attributes:
        max_draws: proposer draws (decoder samples, or substitutions) at most; a round in flight
            finishes, so the count can pass the budget by at most one round's draws.
        max_predictor_calls: structures scored by the predictor at most (never passed).
        round_size: new candidates asked of the proposer per round.
        patience: rounds in a row without a new composition before the proposer counts as exhausted.
    """

    max_draws: int = 50_000
    max_predictor_calls: int = 10_000
    round_size: int = 256
    patience: int = 3


@dataclass
class FillResult:
    """What the loop found and what it spent.

    Attributes:
        judgement: every proposal that reached the judge, in order.
        draws: proposer draws made.
        calls: predictor calls made.
        rounds: rounds run.
        stop: why it stopped ("filled", "draw budget spent", "predictor-call budget spent",
            "proposer exhausted").
        seconds: wall time.
    """

    judgement: Judgement = field(default_factory=Judgement)
    draws: int = 0
    calls: int = 0
    rounds: int = 0
    stop: str = ""
    seconds: float = 0.0

    @property
    def hits(self) -> list[int]:
        """Indices (into ``judgement``) of the candidates that meet the request."""
        return self.judgement.hits

    def message(self, n: int, budget: FillBudget) -> str:
        """One line: how many were found for how much, and why the search stopped."""
        found = len(self.hits)
        head = f"{min(found, n)} of {n} requested candidates found in {self.draws} draws, {self.calls} predictor calls"
        if self.stop == "filled":
            return head + f" ({self.rounds} rounds)"
        spent = {
            "draw budget spent": f"the draw budget ({budget.max_draws}) is spent",
            "predictor-call budget spent": f"the predictor-call budget ({budget.max_predictor_calls}) is spent",
            "proposer exhausted": f"no new composition came in {budget.patience} rounds",
        }[self.stop]
        return head + f"; stopped: {spent}"


def fill(
    n: int,
    proposer: Proposer,
    predictor: Any,
    window: tuple[float, float],
    criterion: StabilityCriterion,
    budget: FillBudget | None = None,
    on_round: Callable[[FillResult], None] | None = None,
) -> FillResult:
    """Propose, judge and keep hits in rounds until ``n`` hits or the budget (module docstring).

    Args:
        n: hits wanted.
        proposer: proposes new structures avoiding the given compositions.
        predictor: ``predict_structures(structures) -> list[dict]`` and ``nonmetal_cut`` (its metal call).
        window: band-gap window (eV).
        criterion: the stability criterion.
        budget: draws / predictor calls / round size (default :class:`FillBudget`).
        on_round: called with the running result after every round (a progress bar).
    """
    budget = budget or FillBudget()
    start = time.perf_counter()
    result = FillResult()
    taken: set[str] = set()
    parts: list[Judgement] = []
    idle = 0
    while True:
        found = sum(len(p.hits) for p in parts)
        if found >= n:
            result.stop = "filled"
        elif result.draws >= budget.max_draws:
            result.stop = "draw budget spent"
        elif result.calls >= budget.max_predictor_calls:
            result.stop = "predictor-call budget spent"
        elif idle >= budget.patience:
            result.stop = "proposer exhausted"
        if result.stop:
            break
        ask = min(budget.round_size, budget.max_predictor_calls - result.calls)
        structures, draws = proposer(ask, result.rounds, taken, budget.max_draws - result.draws)
        result.draws += draws
        result.rounds += 1
        fresh = []
        for s in structures:
            formula = s.composition.reduced_formula
            if formula not in taken:
                taken.add(formula)
                fresh.append(s)
        idle = 0 if fresh else idle + 1
        if fresh:
            part = judge_for_request(fresh, predictor, window, criterion)
            parts.append(part)
            result.calls += part.calls
        result.judgement = Judgement.concat(parts)
        result.seconds = time.perf_counter() - start
        if on_round is not None:
            on_round(result)
    result.judgement = Judgement.concat(parts)
    result.seconds = time.perf_counter() - start
    return result


def decoder_proposer(
    generator: Any,
    window: tuple[float, float],
    known: Collection[str],
    seed: int,
    **sample_options: Any,
) -> Proposer:
    """The conditional decoder as a proposer: conditions uniform over the window, new compositions only.

    Every round draws with its own seed; :meth:`Generator.sample_distinct` redraws any composition in
    ``known`` (the training compositions) or already proposed, at most 50 draws per slot and no more
    slots x draws than the budget has left.
    """
    from matmeta.design.request import target_gaps

    known = frozenset(known)

    def propose(k: int, rnd: int, taken: Collection[str], draws_left: int) -> tuple[list[Any], int]:
        round_seed = seed + 104_729 * rnd
        gaps = target_gaps(k, window, generator.gap_range, round_seed)
        per_slot = max(1, min(50, draws_left // max(k, 1)))
        return generator.sample_distinct(
            k,
            gaps,
            seed=round_seed,
            exclude=known | set(taken),
            distinct=True,
            max_draws_per_candidate=per_slot,
            **sample_options,
        )

    return propose


def substitution_proposer(
    prototypes: list[Any], cations: tuple[list[str], list[str]], known: Collection[str], seed: int
) -> Proposer:
    """Random substitution into training prototypes as a proposer (the baseline of the benchmark)."""
    import numpy as np

    from matmeta.design.screen import substitution_candidates

    rng = np.random.default_rng(seed)
    known = frozenset(known)

    def propose(k: int, rnd: int, taken: Collection[str], draws_left: int) -> tuple[list[Any], int]:
        return substitution_candidates(prototypes, cations, k, rng, exclude=known | set(taken), distinct=True)

    return propose
