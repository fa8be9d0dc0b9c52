"""``matmeta bench recipes/generate.toml``: inverse design for a band gap, ours and baselines side by side.

For every target gap (default 1, 2, 3, 4 eV, window ± tolerance) each method proposes the same
number ``n`` of candidates:

1. ``meta-decoder (cond.)``: the meta-learned conditional decoder, conditioned on the window
   (classifier-free guidance on the species with weight ``guidance``, 0 = conditioning alone);
   ``(cond., w=...)`` is the ablation with guidance ``guidance_ablation`` (steers harder, less diverse);
   ``temperature`` (species softmax, default 1) trades success for uniqueness and novelty;
2. ``decoder uncond.+screen``: the same decoder with the null condition, screened by the predictor;
3. ``substitution+screen``: a random training prototype whose A and B cations are replaced by
   cations seen on those sites, redrawn until SMACT finds the composition charge-neutral, screened
   by the predictor (the practical baseline);
4. held-out (test) B-site families: the decoder adapted with the inner loop from 5 unlabelled
   examples of the family vs not adapted, both conditioned on the window; ``n`` split over the families.

Every method above gets the same free composition lookup (``novel_only``, ``distinct``): a draw whose
composition is a training one or repeats an earlier candidate is redrawn, without a predictor call;
``draws/cand.`` says how many draws that took. ``(raw draws)`` / ``(raw)`` rows go without it. The goal
table also scores the whole substitution space (:func:`substitution_space`).

Per method and target: structural / compositional validity, uniqueness (among the structurally
valid), novelty (vs the training families' structures), success = valid ∧ predicted non-metal ∧
predicted gap in the window (per generated candidate; screening cannot raise it, it only
discards), novel success (also unique and novel), and COV-R / COV-P (matmeta.validity) against
the held-out test structures (for method 4: against the family's structures outside the 5 examples);
``in fam.`` is the fraction of candidates whose B site is the held-out family's cation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SUCCESS = 8  # column of the success rate in a result row


@dataclass(frozen=True)
class GenerateBenchConfig:
    """The ``[bench]`` section of recipes/generate.toml.

    Attributes:
        name: "generate".
        checkpoint: generator checkpoint ("" = the shipped one).
        predictor: predictor checkpoint ("" = the shipped one).
        store: the perovskite graph store.
        n: candidates per method and target.
        targets: band-gap targets (eV).
        tolerance: half-width of each window (eV).
        guidance: classifier-free guidance weight of method 1 and 4 (0: plain conditioning).
        guidance_ablation: the weight of the ablation row ``meta-decoder (cond., w=...)``.
        temperature: species softmax temperature of methods 1 and 4 (1: the decoder's own distribution).
        novel_only: every method except the ``raw`` rows redraws training compositions (a free lookup).
        distinct: every method except the ``raw`` rows redraws repeated compositions.
        k_examples: examples method 4 adapts from.
        max_test_families: held-out families used by method 4 (0 = all).
        seed: the one seed.
        out_dir: where results.csv and the plot go.
    """

    name: str = "generate"
    checkpoint: str = ""
    predictor: str = ""
    store: Path = Path("out/perov.lmdb")
    n: int = 200
    targets: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    tolerance: float = 0.5
    guidance: float = 0.0
    guidance_ablation: float = 3.0
    temperature: float = 1.0
    novel_only: bool = True
    distinct: bool = True
    k_examples: int = 5
    max_test_families: int = 0
    seed: int = 0
    out_dir: Path = Path("out/bench/generate")


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


def _canonical(structures: list[Any], elements: tuple[str, ...]) -> list[Any]:
    """Re-order sites to A, B, X1..X3 (so site 0/1 are the A/B cations)."""
    from matmeta.design.data import canonical_cell, cell_to_structure

    cells = [canonical_cell(s, elements) for s in structures]
    return [cell_to_structure(i, f, lat, elements) for i, f, lat in cells]


def _score(
    structures: list[Any], window: tuple[float, float], predictor: Any, reference: Any, test: list[Any], scaler: Any
) -> dict[str, float]:
    from matmeta.design.validity import coverage, judge_candidates

    judged = judge_candidates(structures, reference)
    preds = predictor.predict_structures(structures)
    n = len(structures)
    sv = np.array([j["struct_valid"] for j in judged])
    valid = np.array([j["valid"] for j in judged])
    unique = np.array([j["unique"] for j in judged])
    novel = np.array([bool(j["novel"]) for j in judged])
    gap = np.array([p["band_gap"] for p in preds])
    metal = np.array([p["p_metal"] for p in preds])
    hit = valid & (metal < 0.5) & (gap >= window[0]) & (gap <= window[1])
    cov_r, cov_p = coverage([s for s, ok in zip(structures, sv, strict=True) if ok], test, scaler)
    return {
        "struct_valid": sv.mean(),
        "comp_valid": np.mean([j["comp_valid"] for j in judged]),
        "unique": unique.sum() / max(sv.sum(), 1),
        "novel": novel.sum() / max(sv.sum(), 1),
        "success": hit.sum() / n,
        "novel_success": (hit & unique & novel).sum() / n,
        "cov_r": cov_r,
        "cov_p": cov_p,
    }


def run(recipe: dict, recipe_path: Path, quick: bool = False) -> None:
    """Run the benchmark and print its table (also ``results.csv`` and ``success.png`` in ``out_dir``)."""
    from matmeta.console import print_table, progress
    from matmeta.design.generator import Generator
    from matmeta.design.request import check_temperature
    from matmeta.design.validity import FingerprintScaler, ReferenceSet, composition_fingerprint
    from matmeta.predict.predictor import Predictor
    from matmeta.recipes import config_from_dict
    from matmeta.store.datasets import ensure_store
    from matmeta.store.reader import GraphStore

    torch.set_num_threads(1)
    section = {k: v for k, v in recipe.get("bench", {}).items() if k != "quick"}
    if quick:
        section.update(recipe.get("bench", {}).get("quick", {}))
    cfg = config_from_dict(GenerateBenchConfig, section, f"{recipe_path}[bench]")
    check_temperature(cfg.temperature)
    root = Path(recipe_path).resolve().parent.parent
    store_path = cfg.store if cfg.store.is_absolute() else root / cfg.store
    gen = Generator.load(cfg.checkpoint or None)
    predictor = Predictor.load(cfg.predictor or None)
    meta = gen.metadata
    graphs = GraphStore(ensure_store(store_path))
    families = graphs.family_keys(meta["family_by"])
    split = meta["families"]
    train_idx = [i for i, f in enumerate(families) if f in set(split["train"])]
    test_idx = [i for i, f in enumerate(families) if f in set(split["test"])]
    rng = np.random.default_rng(cfg.seed)
    if quick:
        train_idx = sorted(rng.choice(train_idx, size=min(400, len(train_idx)), replace=False).tolist())
        test_idx = sorted(rng.choice(test_idx, size=min(150, len(test_idx)), replace=False).tolist())
    start = time.perf_counter()
    train_structs = _canonical([graphs.structure(i) for i in train_idx], gen.elements)
    test_structs = _canonical([graphs.structure(i) for i in test_idx], gen.elements)
    reference = ReferenceSet(train_structs)
    scaler = FingerprintScaler(np.stack([composition_fingerprint(s.composition) for s in train_structs]))
    sites = meta["site_elements"]
    mask = gen.element_mask()
    options = {"element_mask": mask, "temperature": cfg.temperature, "guidance": cfg.guidance}
    lookup = {"exclude": set(reference.by_formula) if cfg.novel_only else set(), "distinct": cfg.distinct}
    cations = (sites[0], sites[1])
    test_fams = sorted({families[i] for i in test_idx})
    if cfg.max_test_families:
        test_fams = test_fams[: cfg.max_test_families]
    by_family = {f: [s for s, i in zip(test_structs, test_idx, strict=True) if families[i] == f] for f in test_fams}
    by_family = {f: v for f, v in by_family.items() if len(v) > cfg.k_examples}
    space = substitution_space(train_structs, cations, np.random.default_rng(cfg.seed), exclude=lookup["exclude"])
    space_preds = predictor.predict_structures(space)
    space_gap = np.array([p["band_gap"] for p in space_preds])
    space_nonmetal = np.array([p["p_metal"] < 0.5 for p in space_preds])
    expected = {}
    for target in cfg.targets:
        lo = max(target - cfg.tolerance, 0.0)
        hits = int((space_nonmetal & (space_gap >= lo) & (space_gap <= target + cfg.tolerance)).sum())
        expected[target] = (hits, len(space))
    rows: list[list[Any]] = []
    with progress() as bar:
        task = bar.add_task("generate bench", total=len(cfg.targets) * 8)
        for t_i, target in enumerate(cfg.targets):
            window = (max(target - cfg.tolerance, 0.0), target + cfg.tolerance)
            seed = cfg.seed + 1000 * t_i
            gaps = window[0] + (window[1] - window[0]) * torch.rand(
                cfg.n, generator=torch.Generator().manual_seed(seed)
            )
            methods = {
                "meta-decoder (cond.)": lambda gaps=gaps, seed=seed: gen.sample_distinct(
                    cfg.n, gaps, seed, **lookup, **options
                ),
                "meta-decoder (cond., raw draws)": lambda gaps=gaps, seed=seed: (
                    gen.sample(cfg.n, gaps, seed=seed, **options),
                    cfg.n,
                ),
                f"meta-decoder (cond., w={cfg.guidance_ablation:g})": lambda gaps=gaps, seed=seed: gen.sample_distinct(
                    cfg.n, gaps, seed, **lookup, **{**options, "guidance": cfg.guidance_ablation}
                ),
                "decoder uncond.+screen": lambda seed=seed: gen.sample_distinct(
                    cfg.n, None, seed, **lookup, element_mask=mask
                ),
                "substitution+screen": lambda seed=seed: substitution_candidates(
                    train_structs, cations, cfg.n, np.random.default_rng(seed), **lookup
                ),
                "substitution+screen (raw)": lambda seed=seed: substitution_candidates(
                    train_structs, cations, cfg.n, np.random.default_rng(seed)
                ),
            }
            for name, make in methods.items():
                structures, draws = make()
                scores = _score(structures, window, predictor, reference, test_structs, scaler)
                rows.append([name, target, "-", draws / cfg.n, *scores.values()])
                bar.advance(task)
            for adapted in (True, False):
                per_fam = max(1, cfg.n // max(len(by_family), 1))
                structures, held, in_family, draws = [], [], 0, 0
                for f_i, (fam, members) in enumerate(by_family.items()):
                    pick = np.random.default_rng(seed + f_i).permutation(len(members))
                    examples = [members[j] for j in pick[: cfg.k_examples]]
                    held.extend(members[j] for j in pick[cfg.k_examples :])
                    if adapted:
                        gen.adapt(examples, seed=seed + f_i)
                    fam_gaps = gaps[:per_fam] if len(gaps) >= per_fam else gaps.repeat(per_fam)[:per_fam]
                    seen = set(lookup["exclude"]) | (
                        {s.composition.reduced_formula for s in structures} if cfg.distinct else set()
                    )
                    made, fam_draws = gen.sample_distinct(
                        per_fam, fam_gaps, seed + f_i, exclude=seen, distinct=cfg.distinct, **options
                    )
                    draws += fam_draws
                    gen.reset()
                    in_family += sum(s[1].specie.symbol == fam for s in made)
                    structures.extend(made)
                name = "held-out fam: adapted" if adapted else "held-out fam: not adapted"
                scores = _score(structures, window, predictor, reference, held, scaler)
                made_n = max(len(structures), 1)
                rows.append([name, target, in_family / made_n, draws / made_n, *scores.values()])
                bar.advance(task)
    columns = [
        "method",
        "target eV",
        "in fam.",
        "draws/cand.",
        "struct valid",
        "comp valid",
        "unique",
        "novel",
        "success",
        "novel success",
        "COV-R",
        "COV-P",
    ]
    print_table(
        f"inverse design, window ±{cfg.tolerance:g} eV, {cfg.n} candidates per method and target "
        + (f"(species temperature {cfg.temperature:g}) " if cfg.temperature != 1.0 else "")
        + f"({'quick' if quick else 'full'}; {time.perf_counter() - start:.0f} s; decoder {_digest(gen.path)}, "
        f"predictor {_digest(predictor.path)})",
        columns,
        rows,
        digits=3,
    )
    _summary(rows, cfg, expected)
    _write(rows, columns, root / cfg.out_dir if not cfg.out_dir.is_absolute() else cfg.out_dir)


def _digest(path: Path | None) -> str:
    """File name and the first 8 hex digits of its SHA-256 (which checkpoint gave the numbers)."""
    import hashlib

    if path is None:
        return "?"
    return f"{Path(path).name}#{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]}"


def _summary(rows: list[list[Any]], cfg: GenerateBenchConfig, expected: dict[float, tuple[int, int]]) -> None:
    """The goal table: the decoder's success against the substitution baseline's.

    ``expected`` holds, per target, (hits, size) of the whole substitution space
    (:func:`substitution_space`): the baseline's expected success per candidate, which the goal
    is judged against (the sampled row has only a few hits). ``best possible`` is the success of
    an oracle choosing ``n`` distinct candidates from that space, hits first: with so few novel
    compositions predicted in a window, it bounds what ``n`` distinct novel proposals can reach
    (approximately: a decoder's own geometries and A = B cells lie outside the space).
    """
    from matmeta.console import print_table

    def success(method: str, target: float) -> float:
        return next(r[SUCCESS] for r in rows if r[0] == method and r[1] == target)

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else (math.inf if a > 0 else float("nan"))

    out = []
    for target in cfg.targets:
        ours, base = success("meta-decoder (cond.)", target), success("substitution+screen", target)
        raw, base_raw = success("meta-decoder (cond., raw draws)", target), success("substitution+screen (raw)", target)
        hits, size = expected[target]
        rate = hits / max(size, 1)
        out.append(
            [
                target,
                ours,
                base,
                rate,
                f"{hits}/{size}",
                ratio(ours, rate),
                "yes" if ratio(ours, rate) >= 2 else "no",
                min(1.0, hits / cfg.n),
                ratio(ours, base),
                raw,
                base_raw,
                ratio(raw, base_raw),
            ]
        )
    print_table(
        "success per candidate: meta-decoder vs substitution (goal >= 2x); both with the same lookup "
        + ("(no training compositions, " if cfg.novel_only else "(")
        + ("no repeats)" if cfg.distinct else "repeats kept)")
        + ", and both on raw draws",
        [
            "target eV",
            "decoder",
            "subst. sampled",
            "subst. expected",
            "space hits",
            "ratio",
            "goal met",
            "best possible",
            "ratio sampled",
            "decoder raw",
            "subst. raw",
            "ratio raw",
        ],
        out,
        digits=3,
    )


def _write(rows: list[list[Any]], columns: list[str], out_dir: Path) -> None:
    import csv
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matmeta.atomic import atomic_path, write_text_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    write_text_atomic(out_dir / "results.csv", buffer.getvalue())
    methods = list(dict.fromkeys(r[0] for r in rows))
    targets = list(dict.fromkeys(r[1] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(methods)
    for m_i, method in enumerate(methods):
        vals = [next(r[SUCCESS] for r in rows if r[0] == method and r[1] == t) for t in targets]
        ax.bar(np.arange(len(targets)) + m_i * width, vals, width, label=method)
    ax.set_xticks(np.arange(len(targets)) + 0.4 - width / 2, [f"{t:g} eV" for t in targets])
    ax.set_ylabel("success per candidate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_dir / "success.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
