"""Inverse design: a meta-learned conditional decoder proposes ABX3 cells for a target band gap.

``matmeta generate`` runs :func:`matmeta.design.deliver.run_design` (fill the request to ``n`` hits within
a budget, screen the enumerable space, relax with CHGNet); this module keeps the single-shot
sample-``n``-judge-rank call :func:`generate` (notebook 04, library users) and the shared helpers.

Pipeline of :func:`generate`::

    decoder (optionally adapted to a family from a few example CIFs with the MAML inner loop)
      → sample n cells conditioned on (non-metal, gap); optional classifier-free guidance on the species
                                                                    [steering 1: conditioning]
      → redraw a draw whose composition is a training one or repeats an earlier candidate
        (rejection sampling; a set lookup, no predictor call)       [steering 3: novelty]
      → structural / compositional validity, uniqueness, novelty     [matmeta.design.validity]
      → band gap, metal probability, formation energy by the predictor
      → rank: valid ∧ unique ∧ in the gap window first             [steering 2: predictor rejection]

No gradient steps in latent space are taken (the predictor is a graph network on the decoded
structure, not differentiable through the sampling of species).

One job: the inverse-design app — load the decoder (:class:`Generator`), read a request, sample,
judge, score and rank candidates, write them (``matmeta generate``, :func:`run_generate`).

The decoder is :class:`matmeta.models.decoder.CrystalCVAE` on a canonical five-site cell
(see :func:`matmeta.design.data.canonical_cell`; the cells, tensors and episodes live in
:mod:`matmeta.design.data`). It is meta-trained by the engine (:class:`matmeta.meta.trainer.MetaTrainer`,
driven by :mod:`matmeta.design.train`) with families (B-site cation by default) as tasks: the inner
loop adapts to a family from its *unlabelled* example structures (null condition), the outer loss is
the conditional ELBO on other structures of the same family. That is exactly the ``--family-examples`` use at inference.
Half of the training episodes are zero-shot (support weight 0), so the meta-initialisation is also a
good generator by itself. The judges of a candidate live in :mod:`matmeta.design.validity`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matmeta.design.generator import Generator
from matmeta.design.judge import MetalCall
from matmeta.design.request import DesignRequest, check_request, check_temperature, parse_gap_window, target_gaps
from matmeta.design.train import CHECKPOINT_DIR
from matmeta.design.validity import count_repeats, judge_candidates


@dataclass
class GenerationResult:
    """Candidates of one ``generate`` call.

    Attributes:
        structures: the decoded structures, in generation order.
        rows: one dict per candidate (the ``candidates.csv`` columns).
        counts: (filter name, count) in pipeline order.
        window: the band-gap window (eV).
        draws: decoder draws it took (more than the candidates when known compositions or repeats
            were redrawn).
        excluded: how many known compositions candidates were kept away from (0: none).
    """

    structures: list[Any]
    rows: list[dict[str, Any]]
    counts: list[tuple[str, int]]
    window: tuple[float, float]
    draws: int = 0
    excluded: int = 0


def generate(
    n: int,
    window: tuple[float, float],
    generator: Generator,
    predictor: Any,
    seed: int = 0,
    elements: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    family_examples: Sequence[Any] | None = None,
    reference: Any | None = None,
    conditional: bool = True,
    temperature: float = 1.0,
    guidance: float = 0.0,
    novel_only: bool = True,
    distinct: bool = True,
) -> GenerationResult:
    """Sample, judge, score and rank ``n`` candidates for a band-gap window.

    Args:
        n: candidates to sample.
        window: band-gap window (eV).
        generator: the decoder (``Generator.load()``).
        predictor: anything with ``predict_structures(structures) -> list[dict]`` and ``nonmetal_cut``
            (``matmeta.predict.Predictor``; the non-metal call is its own, :class:`~matmeta.design.judge.MetalCall`).
        seed: the one seed (same seed, same candidates).
        elements: allowed elements (None: all the decoder knows).
        exclude: forbidden elements.
        family_examples: example structures of a family to adapt to first (inner loop).
        reference: a :class:`~matmeta.design.validity.ReferenceSet` for novelty (None: novelty not judged),
            or a function returning one, called once the request has been checked.
        conditional: condition on the window (False: the unconditioned decoder).
        temperature: species softmax temperature (1: the decoder's own distribution; higher trades
            success for uniqueness and novelty, measured in recipes/generate.toml).
        guidance: classifier-free guidance weight on the species (0: plain conditioning).
        novel_only: redraw any draw whose composition is in ``reference`` (the training compositions),
            so every candidate is new chemistry (needs ``reference``; steering 3 below).
        distinct: redraw any draw whose composition an earlier candidate already has.

    Steering 3, a free composition lookup (no predictor call): with ``novel_only``/``distinct`` the
    decoder is sampled without replacement outside the known compositions (rejection sampling, see
    :meth:`Generator.sample_distinct`); ``draws`` in the result says how many draws that took.
    """
    check_request(n, window, generator.gap_range)
    check_temperature(temperature)
    mask = generator.element_mask(elements, exclude)
    if callable(reference):
        reference = reference()
    if family_examples:
        generator.adapt(family_examples, seed=seed)
    gaps = target_gaps(n, window, generator.gap_range, seed) if conditional else None
    options = {"element_mask": mask, "temperature": temperature, "guidance": guidance}
    known = set(reference.by_formula) if (novel_only and reference is not None) else set()
    structures, draws = _draw(generator, n, gaps, seed, known, distinct, options)
    rows = candidate_rows(structures, judge_candidates(structures, reference), predictor, window)
    rank_candidates(rows, window)
    counts = filter_counts(rows)
    if family_examples:
        generator.reset()
    return GenerationResult(structures, rows, counts, window, draws=draws, excluded=len(known))


def _draw(
    generator: Generator, n: int, gaps: Any, seed: int, known: set[str], distinct: bool, options: dict[str, Any]
) -> tuple[list[Any], int]:
    """``n`` decoded structures and the draws they took (without replacement when ``known``/``distinct``)."""
    if not (known or distinct):
        return generator.sample(n, gaps, seed=seed, **options), n
    structures, draws = generator.sample_distinct(n, gaps, seed=seed, exclude=known, distinct=distinct, **options)
    formulas = [s.composition.reduced_formula for s in structures]
    left = count_repeats(formulas, known, distinct)  # each candidate once (it said "28 of 20")
    if left:
        from matmeta.console import warn

        warn(
            f"{left} of {n} candidates repeat an earlier candidate or a training composition: the decoder "
            f"proposed nothing else in {draws} draws (ask for fewer, or widen --elements)"
        )
    return structures, draws


def candidate_rows(
    structures: Sequence[Any], judged: Sequence[dict[str, Any]], predictor: Any, window: tuple[float, float]
) -> list[dict[str, Any]]:
    """One row per candidate: id, formula, the predictor's numbers, the judge's verdicts, in the window or not."""
    call = MetalCall.of(predictor)
    rows = []
    preds = predictor.predict_structures(list(structures))
    for i, (s, j, p) in enumerate(zip(structures, judged, preds, strict=True)):
        gap = float(p["band_gap"])
        nonmetal = call.nonmetal(p)
        in_window = bool(j["valid"] and nonmetal and window[0] <= gap <= window[1])
        rows.append(
            {
                "id": f"cand-{i:05d}",
                "formula": s.composition.reduced_formula,
                "band_gap_ev": gap,
                "band_gap_std_ev": float(p.get("band_gap_std", float("nan"))),
                "p_metal": float(p["p_metal"]),
                "nonmetal": nonmetal,
                "heat_ref_ev_per_cell": float(p["heat_ref"]),
                "heat_ref_std_ev": float(p.get("heat_ref_std", float("nan"))),
                **j,
                "in_window": in_window,
                "warning": p.get("warning") or "",
            }
        )
    return rows


def rank_candidates(rows: list[dict[str, Any]], window: tuple[float, float]) -> None:
    """Set each row's ``rank``: unique hits first, then valid, unique, novel; then gap distance, then heat."""
    centre = 0.5 * (window[0] + window[1])
    order = sorted(
        range(len(rows)),
        key=lambda i: (
            not (rows[i]["in_window"] and rows[i]["unique"]),
            not rows[i]["valid"],
            not rows[i]["unique"],
            rows[i].get("novel") is False,
            abs(rows[i]["band_gap_ev"] - centre) + 10.0 * rows[i]["p_metal"],
            rows[i]["heat_ref_ev_per_cell"],
        ),
    )
    for rank, i in enumerate(order, start=1):
        rows[i]["rank"] = rank


def filter_counts(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """How many candidates survive each filter, applied in sequence."""
    stages = [
        ("generated", lambda r: True),
        ("structurally valid", lambda r: r["struct_valid"]),
        ("compositionally valid", lambda r: r["comp_valid"]),
        ("unique", lambda r: r["unique"]),
        ("novel", lambda r: r.get("novel") is not False),
        ("predicted non-metal", lambda r: r["nonmetal"]),
        ("gap in window", lambda r: r["in_window"]),
    ]
    if rows and all(r.get("novel") is None for r in rows):
        stages = [(name + " (not judged: no store)" if name == "novel" else name, keep) for name, keep in stages]
    alive = list(rows)
    counts = []
    for name, keep in stages:
        alive = [r for r in alive if keep(r)]
        counts.append((name, len(alive)))
    return counts


def training_reference(generator: Generator, store: str | Path | None = None) -> Any:
    """The decoder's training structures (training families of its store) as a novelty reference.

    Returns None (novelty not judged, with a warning) when the store is not available.
    """
    from matmeta.console import warn
    from matmeta.design.validity import ReferenceSet

    meta = generator.metadata
    if store is None:
        stored = meta.get("train_config", {}).get("store")
        store = stored if stored and Path(stored).exists() else None
        if store is None and stored:
            root = CHECKPOINT_DIR.parent.parent
            store = root / stored if (root / stored).exists() else None
    if store is None or not Path(store).exists():
        warn("training store not found: novelty is not judged (pass --store out/perov.lmdb)")
        return None
    from matmeta.store.reader import GraphStore

    graphs = GraphStore(store)
    train = set(meta.get("families", {}).get("train", []))
    families = graphs.family_keys(meta.get("family_by", "b_site"))
    return ReferenceSet([graphs.structure(i) for i, f in enumerate(families) if not train or f in train])


def run_generate(
    request: DesignRequest,
    family_examples: Sequence[tuple[str, Any]] | None = None,
    generator: str | Path | None = None,
    model: str | Path | None = None,
    store: str | Path | None = None,
    out_dir: str | Path | None = None,
) -> GenerationResult:
    """``matmeta generate`` as a library call: load the decoder and predictor, generate, judge, rank.

    Options and output folder are checked before any work (:func:`~matmeta.design.request.check_options`).

    Args:
        request: the target and options.
        family_examples: ``(name, structure)`` examples to adapt to first.
        generator: generator checkpoint (None: shipped).
        model: predictor checkpoint (None: shipped).
        store: training store for novelty (None: the checkpoint's when present).
        out_dir: the folder :func:`write_candidates` will write to, checked up front (None: not written).
    """
    from matmeta.design.request import check_options
    from matmeta.predict.predictor import Predictor

    check_options(request, out_dir)
    window = parse_gap_window(request.band_gap, request.gap_half_width)
    gen = Generator.load(generator)
    check_request(request.n, window, gen.gap_range)  # the rest of the request is checked once, in generate
    examples = [s for _, s in family_examples] if family_examples else None
    scorer = Predictor.load(model or "perovskites")  # the decoder designs ABX3 perovskites
    reference = functools.partial(training_reference, gen, store)  # read once the request is checked
    return generate(
        request.n,
        window,
        gen,
        scorer,
        seed=request.seed,
        elements=request.elements,
        exclude=request.exclude,
        family_examples=examples,
        reference=reference,
        temperature=request.temperature,
        guidance=request.guidance,
        novel_only=request.novel_only,
        distinct=request.distinct,
    )


CSV_COLUMNS = (
    "rank",
    "id",
    "formula",
    "band_gap_ev",
    "band_gap_std_ev",
    "p_metal",
    "nonmetal",
    "heat_ref_ev_per_cell",
    "heat_ref_std_ev",
    "in_window",
    "struct_valid",
    "comp_valid",
    "valid",
    "unique",
    "novel",
    "min_distance_ang",
    "volume_per_atom_ang3",
    "cif",
    "warning",
)


def write_candidate_files(
    out_dir: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str], cifs: Sequence[tuple[str, Any]]
) -> Path:
    """The one writer of a candidates folder: each ``(file name, Structure)`` as CIF, then ``candidates.csv``.

    Every file is written atomically; floats in the table keep 6 significant digits.

    Returns:
        The path of ``candidates.csv``.
    """
    from pymatgen.io.cif import CifWriter

    from matmeta.atomic import writable_dir, write_table, write_text_atomic

    out_dir = writable_dir(out_dir)
    for name, structure in cifs:
        write_text_atomic(out_dir / name, str(CifWriter(structure)))
    rounded = [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows]
    return write_table(out_dir / "candidates.csv", rounded, columns)


def write_candidates(result: GenerationResult, out_dir: str | Path) -> Path:
    """Write one CIF per structurally valid candidate and ``candidates.csv`` (rank order), atomically.

    Returns:
        The path of ``candidates.csv``.
    """
    rows = sorted(result.rows, key=lambda r: r["rank"])
    files = []
    for row in rows:
        row["cif"] = ""
        if row["struct_valid"]:
            row["cif"] = f"{row['rank']:04d}_{row['formula']}.cif"
            files.append((row["cif"], result.structures[int(row["id"].split("-")[1])]))
    return write_candidate_files(out_dir, rows, CSV_COLUMNS, files)
