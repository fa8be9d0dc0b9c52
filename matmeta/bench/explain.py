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


@dataclass
class Episode:
    """Everything :func:`matmeta.explain.explain_adaptation` needs for one episode, plus a corrupted copy."""

    maml: Any
    items: list[Any]
    collate: Callable[[Sequence[Any]], Any]
    per_example_loss: Callable[[Any, Any], torch.Tensor]
    query_fn: Callable[[Any], torch.Tensor]
    corrupted_items: list[Any]
    corrupted_index: int
    batchable: bool = True  # an item's loss does not depend on the other items (vmapped LOO is exact)


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


class SineTask:
    """Sinusoid families and a MAML (MLP 1-40-40-1, 5 inner steps) meta-trained on them here."""

    name = "sine"

    def __init__(self, cfg: ExplainBenchConfig) -> None:
        from matmeta.bench.sinusoid import SinusoidTasks, mlp, mse_loss
        from matmeta.meta.maml import MAML

        torch.manual_seed(cfg.seed)
        self.maml = MAML(mlp(40, 2), inner_lr=0.01, inner_steps=5)
        source = SinusoidTasks(k_support=10, k_query=10)
        optimizer = torch.optim.Adam(self.maml.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.sine_meta_steps):
            loss = self.maml.meta_loss(source.sample(16, generator), mse_loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.cfg = cfg
        self.note = f"MLP 1-40-40-1, {cfg.sine_meta_steps} meta-steps here"

    def sizes(self) -> tuple[int, ...]:
        """Support sizes."""
        return self.cfg.sine_k

    def episode(self, k: int, generator: torch.Generator) -> Episode:
        """A fresh sinusoid (never seen in meta-training: drawn from another generator)."""
        from matmeta.bench.sinusoid import SinusoidTasks, per_example_loss

        (xs, ys), (xq, _) = SinusoidTasks(k_support=k, k_query=self.cfg.k_query).sample(1, generator)[0]
        items = [(xs[i], ys[i]) for i in range(k)]
        bad = int(torch.randint(k, (1,), generator=generator))
        corrupted = list(items)
        corrupted[bad] = (xs[bad], ys[bad] + self.cfg.sine_corrupt)

        def collate(batch_items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.stack([x for x, _ in batch_items]), torch.stack([y for _, y in batch_items])

        def query_fn(forward: Any) -> torch.Tensor:
            return forward(xq).reshape(-1)

        return Episode(self.maml, items, collate, per_example_loss, query_fn, corrupted, bad)


class JMAKTask:
    """The JMAK prior on fresh synthetic curves; the explained output is t50 (s)."""

    name = "jmak"

    def __init__(self, cfg: ExplainBenchConfig) -> None:
        from matmeta.errors import CheckpointError
        from matmeta.kinetics.prior import DEFAULT_PRIOR, PriorConfig, build_maml, load_prior

        path = Path(cfg.jmak_prior) if cfg.jmak_prior else DEFAULT_PRIOR
        try:
            self.maml, metadata = load_prior(path)
            self.noise = float(metadata.get("model_config", {}).get("noise", 0.02))
            self.note = f"prior {path.name}"
        except CheckpointError as exc:
            from matmeta.console import warn

            warn(f"{exc}; using the untrained default JMAK prior instead")
            config = PriorConfig()
            self.maml, self.noise = build_maml(config), config.noise
            self.maml.eval()
            self.note = "untrained default prior (no checkpoint)"
        self.cfg = cfg

    def sizes(self) -> tuple[int, ...]:
        """Points per curve."""
        return self.cfg.jmak_points

    def episode(self, k: int, generator: torch.Generator) -> Episode:
        """One synthetic curve with ``k`` noisy points; t_ref fixed to the geometric mean of its times."""
        import functools

        from matmeta.kinetics.fit import collate, per_example_loss
        from matmeta.kinetics.synthetic import SyntheticConfig, sample_families, sample_times, true_fraction
        from matmeta.models.jmak import log_time_at_fraction

        synthetic = SyntheticConfig()
        ln_k, n, ln_t50, _, _ = sample_families(1, 1, synthetic, generator)
        time_s, _ = sample_times(ln_t50, synthetic, generator, points=k)
        clean = true_fraction(ln_k, n, time_s)
        noisy = (clean + synthetic.noise * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)).clamp(0, 1)
        items = [(float(t), float(x)) for t, x in zip(time_s[0], noisy[0], strict=True)]
        bad = int(torch.randint(k, (1,), generator=generator))
        t_bad, x_bad = items[bad]
        corrupted = list(items)
        shifted = x_bad + self.cfg.jmak_corrupt if x_bad < 0.5 else x_bad - self.cfg.jmak_corrupt
        corrupted[bad] = (t_bad, min(1.0, max(0.0, shifted)))
        ln_t_ref = sum(math.log(t) for t, _ in items) / k
        fixed = functools.partial(collate, t_ref=math.exp(ln_t_ref), noise=self.noise)

        def t50(forward: Any) -> torch.Tensor:
            params = forward.params
            return torch.exp(log_time_at_fraction(params["ln_k"], params["n"], 0.5) + ln_t_ref).reshape(1)

        # the per-point loss shares the prior penalty among the points: only the looped LOO is exact
        return Episode(self.maml, items, fixed, per_example_loss, t50, corrupted, bad, batchable=False)


class PredictorTask:
    """The crystal GNN on its test families (never seen in meta-training), adapted on heat_ref."""

    name = "predictor"

    def __init__(self, cfg: ExplainBenchConfig) -> None:
        from matmeta.errors import CheckpointError
        from matmeta.predict.config import DataConfig
        from matmeta.predict.data import ensure_store, load_table
        from matmeta.predict.predictor import Predictor

        predictor = Predictor.load(cfg.predictor_checkpoint or None)
        families = predictor.metadata.get("families", {})
        if not families.get("test"):
            raise CheckpointError(f"{predictor.path}: no test-family split in its metadata")
        recipe_data = predictor.metadata.get("recipe", {}).get("data", {"family_by": families.get("by", "b_site")})
        data = config_from_dict(DataConfig, recipe_data, f"{predictor.path} recipe [data]")
        table, _ = load_table(ensure_store(data), data)
        test = set(families["test"])
        self.family_members: dict[str, list[int]] = {}
        for i, family in enumerate(table.families):
            if family in test and math.isfinite(table.heat_ref[i]):
                self.family_members.setdefault(family, []).append(i)
        self.families = sorted(self.family_members)
        known = torch.as_tensor(sorted(predictor.elements_seen), dtype=torch.long)
        self.graphs = {}  # elements never seen in training → the UNK embedding, as Predictor.graphs does
        for members in self.family_members.values():
            for i in members:
                z, edge_index, dist = table.graphs[i]
                self.graphs[i] = (torch.where(torch.isin(z, known), z, torch.zeros_like(z)), edge_index, dist)
        self.table = table
        self.predictor = predictor
        self.cfg = cfg
        n = sum(len(self.family_members[f]) for f in self.families)
        name = predictor.path.name if predictor.path else "checkpoint"
        self.note = f"{name}; {len(self.families)} test families, {n} structures"

    def sizes(self) -> tuple[int, ...]:
        """Support sizes."""
        return self.cfg.predictor_k

    def episode(self, k: int, generator: torch.Generator) -> Episode:
        """An episode: k labelled structures and ``k_query`` others of one test family."""
        from matmeta.errors import CheckpointError
        from matmeta.models.gnn import collate
        from matmeta.predict.data import per_example_loss

        eligible = [f for f in self.families if len(self.family_members[f]) >= k + self.cfg.k_query]
        if not eligible:
            raise CheckpointError(f"no test family has {k} + {self.cfg.k_query} structures")
        family = eligible[int(torch.randint(len(eligible), (1,), generator=generator))]
        members = self.family_members[family]
        order = torch.randperm(len(members), generator=generator).tolist()
        chosen = [members[j] for j in order[: k + self.cfg.k_query]]
        support, query = chosen[:k], chosen[k:]
        stats = self.predictor.stats

        def item(i: int, shift: float = 0.0) -> tuple[Any, ...]:
            graph = self.graphs[i]
            heat = np.array([self.table.heat_ref[i] + shift])
            y = stats.encode(heat, np.array([np.nan]), np.array([float(graph[0].shape[0])]))[0]
            return (*graph, y)

        items = [item(i) for i in support]
        bad = int(torch.randint(k, (1,), generator=generator))
        corrupted = list(items)
        corrupted[bad] = item(support[bad], self.cfg.predictor_corrupt_ev)
        nan_y = torch.full((3,), math.nan)
        query_batch = collate([(*self.graphs[i], nan_y) for i in query])

        def query_fn(forward: Any) -> torch.Tensor:
            return self.predictor.target_values(forward(*query_batch.inputs()), query_batch, "heat_ref")

        return Episode(self.predictor.maml, items, collate, per_example_loss, query_fn, corrupted, bad)


TASKS = {"predictor": PredictorTask, "jmak": JMAKTask, "sine": SineTask}


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
