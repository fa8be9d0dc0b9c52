"""``matmeta generate`` as one library call: fill the request, screen the enumerable space, relax, rank.

One job: orchestrate a request end to end (:func:`run_design`) —

1. the decoder proposes new compositions in rounds until ``n`` candidates are valid, unique, novel,
   predicted non-metal, predicted in the gap window and stable (:mod:`matmeta.design.stability`), or
   the stated budget is spent (:mod:`matmeta.design.fill`);
2. where the composition space is enumerable (ABX3 substitutions into the training prototypes, with
   the training store at hand) every member is screened by the predictor too
   (:mod:`matmeta.design.screen`): the answer says how many qualifying compounds exist at all, and each
   returned candidate says whether the decoder, the screen or both found it;
3. every returned candidate is relaxed with CHGNet (:mod:`matmeta.design.relax`) and predicted again
   on its relaxed structure; candidates that collapse, lose the perovskite network or leave the window
   are marked and ranked after the others, never silently kept.

The rows and files are written by :mod:`matmeta.design.output`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matmeta.design.fill import FillBudget, FillResult, decoder_proposer, fill
from matmeta.design.generator import Generator
from matmeta.design.judge import MetalCall, prediction_verdict
from matmeta.design.relax import Relaxer, RelaxSettings, relax_status
from matmeta.design.request import DesignRequest, check_options, check_request, parse_gap_window
from matmeta.design.screen import ScreenSummary, canonical_structures, screen_request
from matmeta.design.stability import StabilityCriterion
from matmeta.errors import MatmetaInputError
from matmeta.guards import renamed_argument


@dataclass
class DesignResult:
    """What ``matmeta generate`` returns.

    Attributes:
        window: the band-gap window (eV).
        n: candidates asked for.
        rows: the returned candidates (``candidates.csv`` rows), rank order.
        generated: their structures as proposed, rank order.
        relaxed: their relaxed structures (None: not relaxed or relaxation failed), rank order.
        fill: the decoder's search.
        budget: the budget it was given.
        screen: the exhaustive screen (None: not run).
        criterion: the stability criterion.
        novelty_judged: whether training compositions were known (the store was found).
    """

    window: tuple[float, float]
    n: int
    rows: list[dict[str, Any]]
    generated: list[Any]
    relaxed: list[Any | None]
    fill: FillResult
    budget: FillBudget
    screen: ScreenSummary | None
    criterion: StabilityCriterion
    novelty_judged: bool = True
    notes: list[str] = field(default_factory=list)


#: The verdicts predicted again on the relaxed structure (each as ``<name>_relaxed``).
RECHECKED = ("band_gap_ev", "p_metal", "nonmetal", "heat_ev_per_atom", "stable")


def rank_key(row: dict[str, Any], window: tuple[float, float]) -> tuple[float, float]:
    """Candidates closest to the window centre and least likely metallic first, then most stable."""
    centre = 0.5 * (window[0] + window[1])
    return abs(row["band_gap_ev"] - centre) + 10.0 * row["p_metal"], row["heat_ev_per_atom"]


def select(
    found: FillResult, screened: ScreenSummary | None, n: int, window: tuple[float, float]
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The best ``n`` hits of the decoder and the screen together, each labelled with who found it."""
    decoder = {found.judgement.rows[i]["formula"]: i for i in found.hits}
    pool: list[tuple[dict[str, Any], Any]] = []
    for formula, i in decoder.items():
        row = {**found.judgement.rows[i], "source": "decoder"}
        if screened is not None and formula in screened.qualifying:
            row["source"] = "decoder+screen"
        pool.append((row, found.judgement.structures[i]))
    if screened is not None:
        for i in screened.judgement.hits:
            row = screened.judgement.rows[i]
            if row["formula"] not in decoder:
                pool.append(({**row, "source": "screen"}, screened.judgement.structures[i]))
    pool.sort(key=lambda item: rank_key(item[0], window))
    pool = pool[:n]
    return [r for r, _ in pool], [s for _, s in pool]


def relax_and_recheck(
    rows: list[dict[str, Any]],
    structures: Sequence[Any],
    predictor: Any,
    window: tuple[float, float],
    criterion: StabilityCriterion,
    settings: RelaxSettings | None = None,
    on_done: Callable[[], None] | None = None,
    relaxer: Any | None = None,
) -> list[Any | None]:
    """Relax every candidate, predict again on the relaxed structure and mark what changed (rows in place).

    ``relaxer`` (default: a CHGNet :class:`~matmeta.design.relax.Relaxer` with ``settings``) needs
    ``relax_all(structures, on_done) -> (relaxed structures or None, rows)``.
    """
    call = MetalCall.of(predictor)
    relaxed, outcomes = (relaxer or Relaxer(settings)).relax_all(structures, on_done)
    again = [i for i, r in enumerate(relaxed) if r is not None and outcomes[i]["relaxed_valid"]]
    predictions = predictor.predict_structures([relaxed[i] for i in again]) if again else []
    by_index = dict(zip(again, predictions, strict=True))
    for i, (row, outcome) in enumerate(zip(rows, outcomes, strict=True)):
        row.update(outcome)
        after = None
        if i in by_index:
            cubic = bool(row.get("cubic_by_tolerance", True))
            verdict = prediction_verdict(by_index[i], len(structures[i]), window, criterion, call, cubic)
            row.update({f"{k}_relaxed": verdict[k] for k in RECHECKED})
            after = verdict["in_window"]
            row["in_window_relaxed"] = after
        row["relax_status"] = relax_status(outcome, after)
    return relaxed


def run_design(
    request: DesignRequest,
    family_examples: Sequence[tuple[str, Any]] | None = None,
    generator: str | Path | None = None,
    model: str | Path | None = None,
    store: str | Path | None = None,
    relax_settings: RelaxSettings | None = None,
    progress: Any | None = None,
    out_dir: str | Path | None = None,
    *,
    checkpoint: str | Path | None = None,
    predictor: str | Path | None = None,
) -> DesignResult:
    """Fill, screen, relax and rank one request (module docstring).

    Args:
        request: the target, ``n``, the budget and options.
        family_examples: ``(name, structure)`` examples to adapt the decoder to first.
        generator: generator checkpoint (None: shipped).
        model: predictor checkpoint (None: shipped).
        store: training store for novelty and the screen (None: the checkpoint's when present).
        relax_settings: the bounds of every relaxation.
        progress: a rich Progress to report on (None: silent).
        out_dir: the folder the result will be written to, checked before any work (None: not written).
        checkpoint: deprecated spelling of ``generator`` (one more release).
        predictor: deprecated spelling of ``model`` (one more release).
    """
    from matmeta.design.pipeline import training_reference
    from matmeta.predict.predictor import Predictor

    generator = renamed_argument("checkpoint", "generator", checkpoint, generator)
    model = renamed_argument("predictor", "model", predictor, model)
    check_options(request, out_dir)
    if not request.distinct:
        raise MatmetaInputError(
            "--allow-repeats: no longer supported; the fill loop returns each composition once "
            "(a repeat is never a new hit), drop the option"
        )
    window = parse_gap_window(request.band_gap, request.gap_half_width)
    gen = Generator.load(generator)
    check_request(request.n, window, gen.gap_range)
    budget = FillBudget(max_draws=request.max_draws, max_predictor_calls=request.max_predictor_calls)
    budget_check(budget)
    mask = gen.element_mask(request.elements, request.exclude)
    scorer = Predictor.load(model or "perovskites")  # the decoder designs ABX3 perovskites (issue 31: any family)
    criterion = StabilityCriterion() if request.cubic_window else StabilityCriterion(shape=None)
    reference = training_reference(gen, store)
    known = set(reference.by_formula) if (reference is not None and request.novel_only) else set()
    if family_examples:
        gen.adapt([s for _, s in family_examples], seed=request.seed)
    options = {"element_mask": mask, "temperature": request.temperature, "guidance": request.guidance}
    proposer = decoder_proposer(gen, window, known, request.seed, **options)
    found = fill(
        request.n, proposer, scorer, window, criterion, budget, on_round=_fill_bar(progress, request.n, budget)
    )
    gen.reset()
    screened = None
    if request.screen and reference is not None:
        prototypes = canonical_structures(
            [s for group in reference.by_formula.values() for s in group], gen.elements, snap=True
        )
        screened = screen_request(prototypes, gen, mask, known, scorer, window, criterion, request.seed)
    rows, generated = select(found, screened, request.n, window)
    relaxed: list[Any | None] = [None] * len(rows)
    if request.relax and rows:
        task = progress.add_task("relaxing (CHGNet)", total=len(rows)) if progress is not None else None
        advance = (lambda: progress.advance(task)) if task is not None else None
        relaxed = relax_and_recheck(rows, generated, scorer, window, criterion, relax_settings, advance)
    order = sorted(range(len(rows)), key=lambda i: rows[i].get("relax_status", "ok") not in ("ok", "not converged"))
    rows, generated, relaxed = [rows[i] for i in order], [generated[i] for i in order], [relaxed[i] for i in order]
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return DesignResult(
        window, request.n, rows, generated, relaxed, found, budget, screened, criterion, reference is not None
    )


def budget_check(budget: FillBudget) -> None:
    """Refuse a budget that allows nothing, with one line."""
    if budget.max_draws < 1:
        raise MatmetaInputError(f"--max-draws {budget.max_draws}: must be >= 1")
    if budget.max_predictor_calls < 1:
        raise MatmetaInputError(f"--max-predictor-calls {budget.max_predictor_calls}: must be >= 1")


def search_fraction(result: FillResult, n: int, budget: FillBudget) -> float:
    """How much of the search is done: hits of ``n`` or the budget spent, whichever is further (0 to 1).

    The search ends at ``n`` hits or when a budget is spent, so the bar (and its time-left estimate) follows
    whichever of the three ends it first, not the hits alone (rare hits made it promise hours).
    """
    done = max(len(result.hits) / max(n, 1), result.draws / budget.max_draws, result.calls / budget.max_predictor_calls)
    return min(done, 1.0)


def _fill_bar(progress: Any | None, n: int, budget: FillBudget) -> Callable[[FillResult], None] | None:
    """A progress-bar callback for the fill loop: per cent of the search (:func:`search_fraction`), hits, draws."""
    if progress is None:
        return None
    task = progress.add_task(f"filling: 0/{n} hits, 0 draws, 0 calls; % of search", total=100)

    def update(result: FillResult) -> None:
        progress.update(
            task,
            completed=100.0 * search_fraction(result, n, budget),
            description=f"filling: {min(len(result.hits), n)}/{n} hits, {result.draws} draws, {result.calls} calls; "
            "% of search",
        )

    return update
