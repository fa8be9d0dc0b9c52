"""``matmeta bench recipes/generate.toml``: does inverse design deliver? Fill n, screen, relax — one table.

For every target gap (default 1, 2, 3, 4 eV, window ± gap_half_width) and ``n`` candidates wanted, each
method searches for candidates that meet the request (valid, unique, novel, predicted non-metal,
predicted gap in the window, stable: :mod:`matmeta.design.stability`):

1. ``meta-decoder fill``: the conditional decoder in the fill loop of ``matmeta generate``
   (:mod:`matmeta.design.fill`) with the stated budget of draws and predictor calls;
2. ``exhaustive screen``: every novel charge-neutral ABX3 substitution into the training prototypes
   scored by the predictor (:mod:`matmeta.design.screen`); it says how many qualifying compounds exist;
3. ``generate (decoder+screen)``: what ``matmeta generate`` returns, the best ``n`` of both;
4. ``substitution fill``: random substitution (the same space, sampled without repeats) in the same
   fill loop, given as many predictor calls as the decoder used (and at most its draw budget).

Columns: candidates returned (of ``n``), qualifying compounds in the enumerable space, draws and
predictor calls spent, hits per draw and per call, the S.U.N. share of the method's proposals
(valid ∧ stable ∧ unique ∧ novel, the window not required), and for ``relax_n`` returned candidates
per row (seeded random pick; rows of ``relax_methods`` only, to keep the run short) relaxed with
CHGNet from a seeded rattle (``relax_rattle``) of the generated cell, which is snapped to the ideal
cubic prototype (:mod:`matmeta.design.symmetry`; the ``, unsnapped`` rows relax the same picks in their
geometry before snapping): mean / median RMSD generated → relaxed, share keeping the perovskite network, share still
predicted in the window, CPU seconds per relaxation (one thread); ``search s/cand.`` is the search time per returned
candidate. Choose settings on validation targets only; the default targets are the test targets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.bench.generate_report import COLUMNS, criterion_check, digest, goals
from matmeta.design.screen import substitution_candidates, substitution_space
from matmeta.design.symmetry import unsnapped

__all__ = ["GenerateBenchConfig", "run", "substitution_candidates", "substitution_space"]


@dataclass(frozen=True)
class GenerateBenchConfig:
    """The ``[bench]`` section of recipes/generate.toml.

    Attributes:
        name: "generate".
        generator: generator checkpoint ("" = the shipped one; old name ``checkpoint``).
        model: predictor checkpoint ("" = the shipped one; old name ``predictor``).
        store: the perovskite graph store.
        n: candidates wanted per method and target.
        targets: band-gap targets (eV).
        gap_half_width: half-width of each window (eV; old name ``tolerance``).
        temperature: the decoder's species temperature.
        guidance: classifier-free guidance weight.
        max_draws: the decoder fill loop's draw budget.
        max_predictor_calls: the decoder fill loop's predictor-call budget.
        relax_n: returned candidates relaxed per row (0: no relaxation columns).
        relax_methods: the methods whose rows get relaxation columns.
        relax_max_steps: optimiser steps per relaxation at most.
        relax_rattle: the seeded random displacement (Å) every relaxation starts from.
        relax_unsnapped: also relax the same picks in their geometry before snapping to the prototype
            (the raw decoder output / the training prototype's positions), one extra row each.
        double_calls: predictor calls each double-perovskite method gets per target (0: no such rows), and
        double_max_draws: proposer draws at most (only ~2 % of random A2BB'X6 pass the tolerance window, which
            needs no predictor call; the cap bounds the run).
        label_per_family: training compositions per family relaxed to check the structural criterion
            (:mod:`matmeta.design.cubic_labels`; cached in out/; 0: no check), and
        label_t_n: this many more drawn among the training compositions with t in ``label_t_range``.
        label_per_family_more, label_t_n_more: larger samples of both kinds (cubic_labels.label_samples).
        abx3: run the ABX3 rows (false: only the double-perovskite rows).
        seed: the one seed.
        out_dir: where results.csv goes.
    """

    name: str = "generate"
    generator: str = ""
    model: str = ""
    store: Path = Path("out/perov.lmdb")
    n: int = 100
    targets: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    gap_half_width: float = 0.5
    temperature: float = 1.0
    guidance: float = 0.0
    max_draws: int = 50_000
    max_predictor_calls: int = 10_000
    relax_n: int = 6
    relax_methods: tuple[str, ...] = ("meta-decoder fill", "exhaustive screen")
    relax_max_steps: int = 150
    relax_rattle: float = 0.02
    relax_unsnapped: bool = True
    double_calls: int = 1000
    double_max_draws: int = 10_000
    label_per_family: int = 6
    label_t_n: int = 150
    label_t_range: tuple[float, float] = (0.8, 1.15)
    label_per_family_more: int = 0
    label_t_n_more: int = 0
    abx3: bool = True
    seed: int = 0
    out_dir: Path = Path("out/bench/generate")


#: Old setting names of ``[bench]`` (one more release) → their names now, as on ``matmeta generate``.
RENAMED = {"checkpoint": "generator", "predictor": "model", "tolerance": "gap_half_width"}


class _Memo:
    """Predictions of the same structure objects once (the screen is judged for every target)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor, self.cache = predictor, {}
        self.nonmetal_cut = predictor.nonmetal_cut  # the predictor's own metal call (design.judge.MetalCall)
        self.new_family_cut = predictor.new_family_cut

    def predict_structures(self, structures: list[Any]) -> list[dict[str, Any]]:
        todo = [s for s in structures if id(s) not in self.cache]
        for s, p in zip(todo, self.predictor.predict_structures(todo) if todo else [], strict=True):
            self.cache[id(s)] = p
        return [self.cache[id(s)] for s in structures]


def _relax_stats(rows: list[dict[str, Any]], structures: list[Any], cfg: GenerateBenchConfig, ctx: dict) -> list[Any]:
    """Relax ``relax_n`` of the returned candidates; (count, RMSD mean, median, keeps, in window, s/relax)."""
    from matmeta.design.deliver import relax_and_recheck
    from matmeta.design.relax import RelaxSettings

    if not rows or cfg.relax_n <= 0:
        return [0, "-", "-", "-", "-", "-"]
    pick = np.random.default_rng(cfg.seed).permutation(len(rows))[: cfg.relax_n]
    sub = [dict(rows[i]) for i in pick]
    relax_and_recheck(
        sub,
        [structures[i] for i in pick],
        ctx["predictor"],
        ctx["window"],
        ctx["criterion"],
        RelaxSettings(max_steps=cfg.relax_max_steps, rattle_ang=cfg.relax_rattle, seed=cfg.seed),
        relaxer=ctx.get("relaxer"),
    )
    rmsd = np.array([r["rmsd_ang"] for r in sub], dtype=np.float64)
    done = np.isfinite(rmsd)
    return [
        len(sub),
        float(rmsd[done].mean()) if done.any() else float("nan"),
        float(np.median(rmsd[done])) if done.any() else float("nan"),
        float(np.mean([bool(r["keeps_structure"]) for r in sub])),
        float(np.mean([bool(r.get("in_window_relaxed", False)) for r in sub])),
        float(np.mean([r.get("relax_cpu_seconds", float("nan")) for r in sub])),
    ]


def _row(method: str, target: float, found: Any, returned: int, qualifying: int, seconds: float) -> list[Any]:
    """The search columns of one result row (``found``: a FillResult or the screen's Judgement)."""
    judged = found.judgement if hasattr(found, "judgement") else found
    draws = found.draws if hasattr(found, "draws") else len(judged.rows)
    proposals = max(len(judged.rows), 1)
    hits = len(judged.hits)
    sun = sum(bool(r["valid"] and r["stable"]) for r in judged.rows) / proposals
    rates = [hits / max(draws, 1), hits / max(judged.calls, 1), sun]
    return [method, target, returned, qualifying, draws, judged.calls, *rates, seconds / max(returned, 1)]


def _target_rows(target: float, cfg: GenerateBenchConfig, ctx: dict) -> list[list[Any]]:
    """All methods for one target."""
    from matmeta.design.deliver import select
    from matmeta.design.fill import FillBudget, decoder_proposer, fill, substitution_proposer
    from matmeta.design.screen import ScreenSummary, screen

    window = (max(target - cfg.gap_half_width, 0.0), target + cfg.gap_half_width)
    ctx["window"] = window
    crit, pred, gen = ctx["criterion"], ctx["predictor"], ctx["generator"]
    seed = cfg.seed + int(round(100 * target))
    budget = FillBudget(max_draws=cfg.max_draws, max_predictor_calls=cfg.max_predictor_calls)
    start = time.perf_counter()
    options = {"element_mask": ctx["mask"], "temperature": cfg.temperature, "guidance": cfg.guidance}
    dec = fill(cfg.n, decoder_proposer(gen, window, ctx["known"], seed, **options), pred, window, crit, budget)
    dec_s = time.perf_counter() - start
    start = time.perf_counter()
    judged = screen(ctx["space"], ctx["memo"], window, crit)
    summary = ScreenSummary(len(ctx["space"]), {judged.rows[i]["formula"] for i in judged.hits}, judged)
    scr_s = time.perf_counter() - start + ctx["space_seconds"]
    qualifying = len(summary.qualifying)
    start = time.perf_counter()
    equal = FillBudget(max_draws=cfg.max_draws, max_predictor_calls=max(dec.calls, 1))
    sub_proposer = substitution_proposer(ctx["prototypes"], ctx["cations"], ctx["known"], seed)
    sub = fill(cfg.n, sub_proposer, pred, window, crit, equal)
    sub_s = time.perf_counter() - start
    both_rows, both_structs = select(dec, summary, cfg.n, window)
    dec_rows, dec_structs = select(dec, None, cfg.n, window)
    scr_rows = [judged.rows[i] for i in judged.hits][: cfg.n]
    scr_structs = [judged.structures[i] for i in judged.hits][: cfg.n]
    out = []
    for method, found, rows, structs, secs in (
        ("meta-decoder fill", dec, dec_rows, dec_structs, dec_s),
        ("exhaustive screen", judged, scr_rows, scr_structs, scr_s),
        ("generate (decoder+screen)", dec, both_rows, both_structs, dec_s + scr_s),
        ("substitution fill (equal calls)", sub, *select(sub, None, cfg.n, window), sub_s),
    ):
        row = _row(method, target, found, len(rows), qualifying, secs)
        if method.startswith("generate"):
            row[4:9] = ["-", dec.calls + judged.calls, "-", "-", "-"]
        relax = _relax_stats(rows, structs, cfg, ctx) if method in cfg.relax_methods else [0, *["-"] * 5]
        out.append(row[:9] + relax + row[9:])
        if method in cfg.relax_methods and cfg.relax_unsnapped:
            raw = _relax_stats(rows, [unsnapped(s) for s in structs], cfg, ctx)
            out.append([f"{method}, unsnapped", target, *["-"] * 7, *raw, "-"])
    return out


def _double_rows(target: float, cfg: GenerateBenchConfig, ctx: dict) -> list[list[Any]]:
    """Decoder-paired vs random A2BB'X6 at equal predictor calls (no enumeration; relaxed when in relax_methods)."""
    from matmeta.design.double import decoder_double_proposer, random_double_proposer
    from matmeta.design.fill import FillBudget, fill

    window = (max(target - cfg.gap_half_width, 0.0), target + cfg.gap_half_width)
    seed = cfg.seed + int(round(100 * target))
    budget = FillBudget(max_draws=cfg.double_max_draws, max_predictor_calls=cfg.double_calls, patience=10)
    options = {"element_mask": ctx["mask"], "temperature": cfg.temperature, "guidance": cfg.guidance}
    anion_sets = sorted({tuple(site.specie.symbol for site in p[2:]) for p in ctx["prototypes"]})
    proposers = {
        "A2BB'X6: decoder pairs": decoder_double_proposer(ctx["generator"], window, seed, **options),
        "A2BB'X6: random": random_double_proposer(*ctx["cations"], anion_sets, seed),
    }
    out = []
    ctx["window"] = window
    for method, proposer in proposers.items():
        start = time.perf_counter()
        found = fill(10**9, proposer, ctx["predictor"], window, ctx["criterion"], budget)
        row = _row(method, target, found, len(found.hits), "-", time.perf_counter() - start)
        relax = [0, *["-"] * 5]
        if method in cfg.relax_methods:
            hits = [found.judgement.rows[i] for i in found.hits]
            relax = _relax_stats(hits, [found.judgement.structures[i] for i in found.hits], cfg, ctx)
        out.append(row[:9] + relax + row[9:])
    return out


def _setup(cfg: GenerateBenchConfig, root: Path, quick: bool) -> dict[str, Any]:
    """Load the decoder, predictor and store; build the training reference and the enumerable space."""
    from matmeta.design.generator import Generator
    from matmeta.design.request import check_temperature
    from matmeta.design.screen import canonical_structures
    from matmeta.design.stability import StabilityCriterion
    from matmeta.predict.predictor import Predictor
    from matmeta.store.datasets import ensure_store
    from matmeta.store.reader import GraphStore

    check_temperature(cfg.temperature)
    store_path = cfg.store if cfg.store.is_absolute() else root / cfg.store
    gen = Generator.load(cfg.generator or None)
    predictor = Predictor.load(cfg.model or "perovskites")
    graphs = GraphStore(ensure_store(store_path))
    families = graphs.family_keys(gen.metadata["family_by"])
    train = set(gen.metadata["families"]["train"])
    train_idx = [i for i, f in enumerate(families) if f in train]
    if quick:
        train_idx = train_idx[:400]
    prototypes = canonical_structures([graphs.structure(i) for i in train_idx], gen.elements, snap=True)
    known = {s.composition.reduced_formula for s in prototypes}
    sites = gen.metadata["site_elements"]
    start = time.perf_counter()
    space = substitution_space(prototypes, (sites[0], sites[1]), np.random.default_rng(cfg.seed), exclude=known)
    return {
        "generator": gen,
        "predictor": predictor,
        "memo": _Memo(predictor),
        "criterion": StabilityCriterion(),
        "prototypes": prototypes,
        "known": known,
        "cations": (sites[0], sites[1]),
        "mask": gen.element_mask(),
        "space": space,
        "space_seconds": time.perf_counter() - start,
    }


def run(recipe: dict, recipe_path: Path, quick: bool = False) -> None:
    """Run the benchmark and print its table (also ``results.csv`` in ``out_dir``)."""
    from matmeta.atomic import write_table
    from matmeta.console import print_table, progress
    from matmeta.recipes import config_from_dict, renamed_keys

    torch.set_num_threads(1)
    section = {k: v for k, v in recipe.get("bench", {}).items() if k != "quick"}
    if quick:
        section.update(recipe.get("bench", {}).get("quick", {}))
    section = renamed_keys(section, RENAMED, f"{recipe_path}[bench]")
    cfg = config_from_dict(GenerateBenchConfig, section, f"{recipe_path}[bench]")
    root = Path(recipe_path).resolve().parent.parent
    start = time.perf_counter()
    ctx = _setup(cfg, root, quick)
    criterion_check(cfg, root, ctx)
    rows: list[list[Any]] = []
    with progress() as bar:
        task = bar.add_task("generate bench", total=len(cfg.targets))
        for target in cfg.targets:
            if cfg.abx3:
                rows.extend(_target_rows(target, cfg, ctx))
            if cfg.double_calls > 0:
                rows.extend(_double_rows(target, cfg, ctx))
            bar.advance(task)
    gen, predictor = ctx["generator"], ctx["predictor"]
    print_table(
        f"inverse design delivers? n = {cfg.n} per request, window ±{cfg.gap_half_width:g} eV, "
        f"{ctx['criterion'].describe()}; decoder budget {cfg.max_draws} draws / {cfg.max_predictor_calls} calls; "
        f"{len(ctx['space'])} novel ABX3 substitutions; relaxed {cfg.relax_n} per row (CHGNet, <= "
        f"{cfg.relax_max_steps} steps) ({'quick' if quick else 'full'}; {time.perf_counter() - start:.0f} s; "
        f"decoder {digest(gen.path)}, predictor {digest(predictor.path)})",
        COLUMNS,
        rows,
        digits=3,
    )
    goals(rows, cfg)
    out_dir = cfg.out_dir if cfg.out_dir.is_absolute() else root / cfg.out_dir
    write_table(out_dir / "results.csv", [dict(zip(COLUMNS, r, strict=True)) for r in rows], COLUMNS)
