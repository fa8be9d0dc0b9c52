"""Benchmark: does differentiating through the inner loop rank support points as exact leave-one-out does.

For many episodes (a support set and a few queries drawn from one family never used in training),
four ways to measure the influence of each support point on each adapted query prediction run
side by side on the same adaptation:

* ``exact LOO``: re-adapt n times, once without each point (the reference);
* ``exact LOO (vmap)``: the same n adaptations as one ``torch.func.vmap`` program (where exact);
* ``through loop``: one adaptation unrolled with ``create_graph``, ∂prediction/∂(loss weight) turned
  into a leave-one-out estimate (:func:`matmeta.explain.approx_influence`);
* ``first-order``: the same without the Hessian terms (TracIn-style sum of per-step gradients).

Per task and support size k it reports the Spearman rank correlation with exact LOO (mean over
episodes of the mean over queries, ± 95% CI), how often the most influential point agrees, and the
time per episode. A second table checks self-influence: one support label per episode is corrupted
by a large error; how often is it ranked first and flagged "check this measurement", and how many
clean points are flagged in the uncorrupted episodes.

Tasks (recipe ``[explain] tasks``):

* ``predictor``: the crystal GNN checkpoint on its *test* families (b-site split stored in the
  checkpoint), adapted on ``heat_ref`` (eV/cell) as ``matmeta finetune`` does;
* ``jmak``: the JMAK prior on fresh synthetic curves; the query is t50 (s);
* ``sine``: a small MAML meta-trained here on sinusoid families (Finn et al. 2017).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.bench.explain_tasks import TASKS, Episode
from matmeta.recipes import config_from_dict


@dataclass(frozen=True)
class ExplainBenchConfig:
    """Settings of the explain benchmark (recipe section ``[explain]``).

    Attributes:
        tasks: which tasks to run (``predictor``, ``jmak``, ``sine``).
        episodes: episodes per task and support size.
        k_query: query outputs per episode (predictor and sine; JMAK has one, t50).
        seed: seed of every episode draw.
        threads: torch threads.
        out_dir: per-episode CSV and plot.
        predictor_checkpoint: predictor checkpoint ("" = the shipped one).
        predictor_k: support sizes for the predictor.
        predictor_corrupt_ev: error added to one heat_ref label (eV/cell) in the corruption test.
        jmak_prior: JMAK prior checkpoint ("" = the shipped one).
        jmak_points: points per curve.
        jmak_corrupt: error added to one measured fraction (clipped to [0, 1]) in the corruption test.
        sine_k: support sizes for the sinusoid task.
        sine_meta_steps: outer steps of the sinusoid MAML trained here.
        sine_corrupt: error added to one sinusoid label.
    """

    tasks: tuple[str, ...] = ("predictor", "jmak", "sine")
    episodes: int = 40
    k_query: int = 5
    seed: int = 0
    threads: int = 1
    out_dir: Path = Path("out/bench/explain")
    predictor_checkpoint: str = ""
    predictor_k: tuple[int, ...] = (5, 10, 20)
    predictor_corrupt_ev: float = 2.0
    jmak_prior: str = ""
    jmak_points: tuple[int, ...] = (3, 5, 10)
    jmak_corrupt: float = 0.4
    sine_k: tuple[int, ...] = (5, 10, 20)
    sine_meta_steps: int = 2000
    sine_corrupt: float = 4.0


QUICK = {"episodes": 2, "k_query": 2, "predictor_k": (5,), "jmak_points": (3,), "sine_k": (5,), "sine_meta_steps": 20}
METHODS = ("exact LOO", "exact LOO (vmap)", "through loop", "first-order")


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(episode: Episode) -> dict[str, Any]:
    """Run every method and the corruption check on one episode."""
    from matmeta.explain.influence import approx_influence, leave_one_out
    from matmeta.explain.report import FLAG_Z, robust_z, spearman

    args = (episode.maml, episode.items, episode.collate, episode.per_example_loss, episode.query_fn)
    (_, loo, loo_loss), t_loo = _timed(lambda: leave_one_out(*args))
    (_, approx), t_approx = _timed(lambda: approx_influence(*args))
    (_, first), t_first = _timed(lambda: approx_influence(*args, first_order=True))
    loo, approx, first = loo.numpy().astype(float), approx.numpy().astype(float), first.numpy().astype(float)
    row: dict[str, Any] = {"n": len(episode.items), "seconds": {"exact LOO": t_loo}}
    estimates = [("through loop", approx, t_approx), ("first-order", first, t_first)]
    if episode.batchable:
        (_, vmapped, _), t_vmap = _timed(lambda: leave_one_out(*args, batched=True))
        estimates.insert(0, ("exact LOO (vmap)", vmapped.numpy().astype(float), t_vmap))
    for method, estimate, seconds in estimates:
        rhos = [spearman(loo[:, j], estimate[:, j]) for j in range(loo.shape[1])]
        rhos = [r for r in rhos if not math.isnan(r)]
        top = [
            float(np.argmax(np.abs(loo[:, j])) == np.argmax(np.abs(estimate[:, j])))
            for j in range(loo.shape[1])
            if np.abs(loo[:, j]).max() > 0
        ]
        row[method] = {
            "spearman": float(np.mean(rhos)) if rhos else math.nan,
            "top1": np.mean(top) if top else math.nan,
        }
        row["seconds"][method] = seconds
    z_clean = robust_z(np.sqrt(np.clip(loo_loss.numpy().astype(float), 0, None)))
    corrupted_args = (episode.maml, episode.corrupted_items, *args[2:])
    _, _, bad_loss = leave_one_out(*corrupted_args)
    z_bad = robust_z(np.sqrt(np.clip(bad_loss.numpy().astype(float), 0, None)))
    row["false_flags"] = int((z_clean > FLAG_Z).sum())
    row["bad_first"] = bool(np.argmax(z_bad) == episode.corrupted_index)
    row["bad_flagged"] = bool(z_bad[episode.corrupted_index] > FLAG_Z)
    row["others_flagged"] = int((z_bad > FLAG_Z).sum() - row["bad_flagged"])
    return row


def _mean_ci(values: Sequence[float]) -> str:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return "n/a"
    half = 1.96 * arr.std(ddof=1) / math.sqrt(arr.size) if arr.size > 1 else math.nan
    return f"{arr.mean():.3f} ± {half:.3f}"


def run(recipe: dict, recipe_path: Path, quick: bool = False) -> None:
    """Run the benchmark described by ``recipe`` (``[explain]``) and print its tables."""
    from matmeta.console import print_table, progress, warn
    from matmeta.errors import MatmetaError, RecipeError

    cfg = config_from_dict(ExplainBenchConfig, recipe.get("explain"), where=f"{recipe_path}[explain]")
    if quick:
        cfg = replace(cfg, **QUICK)
    unknown = sorted(set(cfg.tasks) - set(TASKS))
    if unknown:
        raise RecipeError(f"{recipe_path}[explain].tasks: unknown {', '.join(unknown)}; known: {', '.join(TASKS)}")
    torch.set_num_threads(cfg.threads)
    results: list[tuple[str, int, dict[str, Any]]] = []
    notes = []
    for name in cfg.tasks:
        try:
            task = TASKS[name](cfg)
        except (MatmetaError, FileNotFoundError) as exc:
            warn(f"{name}: skipped ({exc})")
            notes.append(f"{name}: skipped ({exc})")
            continue
        notes.append(f"{name}: {task.note}")
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        with progress() as bar:
            job = bar.add_task(f"explain {name}", total=len(task.sizes()) * cfg.episodes)
            for k in task.sizes():
                for _ in range(cfg.episodes):
                    results.append((name, k, measure(task.episode(k, generator))))
                    bar.advance(job)
    _report(results, notes, cfg, print_table)


def _report(
    results: list[tuple[str, int, dict[str, Any]]], notes: list[str], cfg: ExplainBenchConfig, print_table: Any
) -> None:
    from matmeta.atomic import atomic_path
    from matmeta.console import console

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for name, k, row in results:
        groups.setdefault((name, k), []).append(row)
    rows = []
    for (name, k), group in groups.items():
        loo_ms = 1e3 * float(np.median([r["seconds"]["exact LOO"] for r in group]))
        rows.append([name, k, "exact LOO", "1 (reference)", "1", f"{loo_ms:.1f}", "1.0x"])
        for method in METHODS[1:]:
            if method not in group[0]:
                continue
            ms = 1e3 * float(np.median([r["seconds"][method] for r in group]))
            rows.append(
                [
                    name,
                    k,
                    method,
                    _mean_ci([r[method]["spearman"] for r in group]),
                    _mean_ci([r[method]["top1"] for r in group]),
                    f"{ms:.1f}",
                    f"{loo_ms / ms:.1f}x",
                ]
            )
    print_table(
        f"influence estimates vs exact leave-one-out ({cfg.episodes} episodes per row, mean ± 95% CI; goal ρ ≥ 0.8)",
        ["task", "k", "method", "Spearman ρ", "top-1 agree", "ms/episode (median)", "speed-up"],
        rows,
    )
    flag_rows = []
    for (name, k), group in groups.items():
        flag_rows.append(
            [
                name,
                k,
                f"{np.mean([r['bad_first'] for r in group]):.2f}",
                f"{np.mean([r['bad_flagged'] for r in group]):.2f}",
                f"{np.sum([r['others_flagged'] for r in group]) / np.sum([r['n'] - 1 for r in group]):.3f}",
                f"{np.sum([r['false_flags'] for r in group]) / np.sum([r['n'] for r in group]):.3f}",
            ]
        )
    print_table(
        "self-influence: one corrupted support label per episode",
        ["task", "k", "corrupted ranked 1st", "corrupted flagged", "other flags/point", "clean flags/point"],
        flag_rows,
    )
    for note in notes:
        console.print(note, style="dim")
    out = Path(cfg.out_dir) / "episodes.csv"
    with atomic_path(out) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["task", "k", "method", "spearman", "top1", "seconds", "bad_first", "bad_flagged", "false_flags"]
        )
        for name, k, row in results:
            for method in METHODS:
                if method not in row["seconds"]:
                    continue
                stats = row.get(method, {"spearman": 1.0, "top1": 1.0})
                writer.writerow(
                    [name, k, method, stats["spearman"], stats["top1"], row["seconds"][method], row["bad_first"],
                     row["bad_flagged"], row["false_flags"]]
                )  # fmt: skip
    console.print(f"per-episode results: {out}", style="dim")
