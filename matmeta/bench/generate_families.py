"""Benchmark of design in real prototype families: ``matmeta bench recipes/generate_families.toml``.

Per target gap (measured-level by default) and method — the adapted family decoder, random substitution and the
screen of the family's own site elements, all in the same fill loop and budget — the share of the request
filled, valid / unique / novel, the keep share after CHGNet relaxation (prototype and window), median RMSD,
S.U.N., hits per predictor call and CPU seconds per candidate. Then rediscovery on *validation* families:
adapt on 5 members, propose the top N distinct charge-neutral assignments, count held-out members among them.

One job: run the rows, print the tables, write ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FamilyBenchConfig:
    """``[bench]`` of ``recipes/generate_families.toml``."""

    name: str = "generate_families"
    families: tuple[str, ...] = ("ABC3_62_bccd",)
    targets: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    gap_half_width: float = 0.3
    fidelity: str = "measured"
    n: int = 20
    max_draws: int = 20_000
    max_predictor_calls: int = 2_000
    screen_limit: int = 200_000
    methods: tuple[str, ...] = ("decoder", "random substitution", "site-element screen")
    rediscovery_split: str = "val"
    rediscovery_n: int = 100
    rediscovery_k: int = 5
    rediscovery_repeats: int = 3
    rediscovery_draws: int = 3000
    relax: bool = True
    seed: int = 0
    out_dir: str = "out/bench/generate_families"


@dataclass
class MethodRow:
    """One (family, target, method) row of the table."""

    family: str
    target: float
    method: str
    counts: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def summary(self, n: int) -> dict[str, Any]:
        """The table's numbers for this row."""
        hits = len(self.rows)
        c = self.counts
        share = lambda k: float(np.mean([bool(r.get(k)) for r in self.rows])) if hits else math.nan  # noqa: E731
        rmsd = [r["rmsd_ang"] for r in self.rows if math.isfinite(r.get("rmsd_ang", math.nan))]
        return {
            "family": self.family,
            "target_ev": self.target,
            "method": self.method,
            "filled": f"{hits}/{n}",
            "drawn": c.get("drawn", 0),
            "valid_share": c.get("charge_neutral", 0) / max(c.get("novel", 0), 1),
            "unique_share": c.get("distinct", 0) / max(c.get("drawn", 0), 1),
            "novel_share": c.get("novel", 0) / max(c.get("distinct", 0), 1),
            "keep_share": share("kept"),
            "prototype_kept_share": share("prototype_kept"),
            "window_kept_share": share("in_window_relaxed"),
            "median_rmsd_ang": float(np.median(rmsd)) if rmsd else math.nan,
            "sun_share": share("sun"),
            "predictor_calls": c.get("scored", 0),
            "hits_per_call": hits / max(c.get("scored", 0), 1),
            "cpu_s_per_candidate": self.cpu_s / max(hits, 1),
            "wall_s": self.wall_s,
        }


def _proposer(
    method: str,
    context: Any,
    decoder: Any,
    fast: dict,
    request: Any,
    target: float,
    hull: Any,
    config: FamilyBenchConfig,
) -> Any:
    from matmeta.design.family_design import decoder_proposer, list_proposer, random_proposer, screen_space

    if method == "decoder":
        return decoder_proposer(decoder, context.family, fast, request, target, config.seed)
    if method == "random substitution":
        return random_proposer(decoder.vocab.elements, context.family, config.seed)
    space = screen_space(context.family, context.support, hull, config.screen_limit, config.seed)
    return list_proposer(space) if space is not None else None


def design_rows(config: FamilyBenchConfig, loaded: tuple, quick: bool, progress: Any) -> list[MethodRow]:
    """Every (family, target, method) row: fill, then relax and re-judge the hits."""
    from matmeta.design.family_design import FamilyRequest, fill, relax_and_rejudge
    from matmeta.design.family_run import store_family

    table, store, decoder, predictor, hull, reference = loaded
    out = []
    for name in config.families:
        context = store_family(table, store, name, config.seed)
        fast = decoder.adapt(context.family, context.support)
        for target in config.targets:
            window = (target - config.gap_half_width, target + config.gap_half_width)
            request = FamilyRequest(window, config.n, config.fidelity, max_draws=config.max_draws,
                                    max_predictor_calls=config.max_predictor_calls, relax=config.relax)  # fmt: skip
            for method in config.methods:
                wall = time.perf_counter()
                proposer = _proposer(method, context, decoder, fast, request, target, hull, config)
                row = MethodRow(name, target, method)
                if proposer is not None:
                    result = fill(context.family, proposer, context.cell_of, predictor, hull, request)
                    if request.relax:
                        relax_and_rejudge(result, predictor, hull, reference, request)
                    row.counts, row.rows, row.cpu_s = result.counts, result.rows, result.cpu_seconds
                row.wall_s = time.perf_counter() - wall
                out.append(row)
                if progress is not None:
                    progress.console.print(
                        f"{name} {target:g} eV {method}: {len(row.rows)}/{config.n} in {row.wall_s:.0f} s"
                    )
    return out


def rediscovery(config: FamilyBenchConfig, loaded: tuple, quick: bool) -> list[dict[str, Any]]:
    """Held-out members of each split family found in the top N proposals, per method (mean over repeats)."""
    from matmeta.design.family_design import formula_of
    from matmeta.design.validity import compositional_validity

    table, _, decoder, _, _, _ = loaded
    import torch

    rows = []
    names = table.split[config.rediscovery_split][: 3 if quick else None]
    for name in names:
        family = table.families[name]
        if family.n_slots < 2:
            continue
        for repeat in range(config.rediscovery_repeats):
            rng = np.random.default_rng(config.seed + repeat)
            order = rng.permutation(len(family.members))
            support = [family.members[i] for i in order[: config.rediscovery_k]]
            held = {family.members[i].slots for i in order[config.rediscovery_k :]} - {m.slots for m in support}
            seen = {m.slots for m in support}

            def top(candidates: list[tuple[int, ...]], scores: np.ndarray | None, family=family, seen=seen) -> list:
                order_ = np.argsort(-scores) if scores is not None else np.arange(len(candidates))
                picked: list[tuple[int, ...]] = []
                for i in order_:
                    c = candidates[i]
                    if c in seen or c in picked or len(set(c)) < len(c):
                        continue
                    if compositional_validity(formula_of(c, family)):
                        picked.append(c)
                    if len(picked) == config.rediscovery_n:
                        break
                return picked

            generator = torch.Generator().manual_seed(config.seed + repeat)
            methods: dict[str, list] = {}
            for label, fast in (("decoder adapted on 5", decoder.adapt(family, support)), ("decoder unadapted", {})):
                draws = list(
                    dict.fromkeys(decoder.sample(family, fast, None, False, config.rediscovery_draws, generator))
                )
                methods[label] = top(draws, decoder.log_likelihood(family, fast, draws))
            pool = np.asarray(decoder.vocab.elements)
            randoms = [
                tuple(int(z) for z in rng.choice(pool, family.n_slots, replace=False))
                for _ in range(config.rediscovery_draws * 10)
            ]
            methods["random substitution"] = top(randoms, None)
            per_slot = [sorted({m.slots[s] for m in support}) for s in range(family.n_slots)]
            sites = [tuple(int(rng.choice(p)) for p in per_slot) for _ in range(config.rediscovery_draws)]
            methods["support-site substitution"] = top(sites, None)
            for label, picked in methods.items():
                found = len(held & set(picked))
                rows.append(
                    {
                        "family": name,
                        "repeat": repeat,
                        "method": label,
                        "held_out": len(held),
                        "proposed": len(picked),
                        "found": found,
                    }
                )
    return rows


def rediscovery_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: found / held out pooled over families and repeats, and the ratio to random substitution."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        found, held = sum(r["found"] for r in mine), sum(r["held_out"] for r in mine)
        out.append(
            {
                "method": method,
                "found": found,
                "held_out": held,
                "rate": found / max(held, 1),
                "proposed_mean": float(np.mean([r["proposed"] for r in mine])),
            }
        )
    random_rate = next((r["rate"] for r in out if r["method"] == "random substitution"), math.nan)
    for r in out:
        r["x_random"] = r["rate"] / random_rate if random_rate > 0 else math.inf
    return out


def run(recipe: dict, recipe_path: Path, quick: bool = False) -> None:
    """``matmeta bench recipes/generate_families.toml`` (``--quick``: the ``[bench.quick]`` overrides)."""
    from matmeta.console import print_table, progress
    from matmeta.design.family_run import load_everything
    from matmeta.recipes import config_from_dict

    section = {k: v for k, v in recipe.get("bench", {}).items() if k != "quick"}
    if quick:
        section.update(recipe.get("bench", {}).get("quick", {}))
    config = config_from_dict(FamilyBenchConfig, section, f"{recipe_path}[bench]")
    loaded = load_everything(None, None)
    with progress() as bar:
        rows = design_rows(config, loaded, quick, bar)
    summaries = [r.summary(config.n) for r in rows]
    first = ["target_ev", "method", "filled", "valid_share", "unique_share", "novel_share", "hits_per_call"]
    second = ["target_ev", "method", "keep_share", "prototype_kept_share", "median_rmsd_ang", "sun_share"]
    second += ["cpu_s_per_candidate", "wall_s"]
    for family in config.families:
        mine = [s for s in summaries if s["family"] == family]
        title = f"{family}: design ({config.fidelity} gap, window +-{config.gap_half_width} eV)"
        print_table(title, first, [[s[c] for c in first] for s in mine], digits=3)
        print_table(f"{family}: after CHGNet relaxation", second, [[s[c] for c in second] for s in mine], digits=3)
    redis_rows = rediscovery(config, loaded, quick)
    redis = rediscovery_table(redis_rows)
    names = ["method", "found", "held_out", "rate", "x_random"]
    title = f"rediscovery on {config.rediscovery_split} families: held-out members in the top {config.rediscovery_n}"
    print_table(title, names, [[r[c] for c in names] for r in redis], digits=4)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"design": summaries, "rediscovery": redis, "rediscovery_rows": redis_rows, "candidates": [
        {**{k: v for k, v in c.items() if k != "slots"}, "method": r.method, "target_ev": r.target, "family": r.family}
        for r in rows for c in r.rows]}  # fmt: skip
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(out_dir / "summary.json")
