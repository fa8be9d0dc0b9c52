"""Benchmark rows for crystal graphs: one second-order meta-step of the shipped GNN, ``higher`` vs loop vs padded vmap.

Setting (recipe section ``[graph]`` of ``recipes/engine.toml``): the shipped predictor's
``CrystalGNN`` (architecture and weights from its checkpoint, dropout set to 0 so that every
implementation computes the same function), ``families`` perovskite families of its training split,
one task per family with ``k_support`` support and ``k_query`` query structures, ``inner_steps``
plain SGD steps at ``inner_lr`` on all weights (no Meta-SGD rates, which ``higher`` cannot learn
the same way), the predictor's loss. One timed step = zero the gradients, meta-loss, backward.

* ``higher``: ``higher.innerloop_ctx`` with ``torch.optim.SGD``, one task after another;
* ``matmeta loop``: ``MAML.meta_loss(vectorize=False)``;
* ``matmeta padded vmap``: ``MAML.meta_loss`` with the graph stacker (:mod:`matmeta.predict.batched`).

Timings are interleaved (one step of each per round), medians over ``repeats`` rounds, wall clock
and CPU time of this process. Then ``memory_steps`` more steps of the padded vmap path report the
process's peak resident memory (``ru_maxrss``) along the way: flat means no growth per step.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from matmeta.bench.timing import time_steps, timing_cells

IMPLS = ("higher", "matmeta loop", "matmeta padded vmap")
QUICK = {"families": 3, "k_support": 3, "k_query": 4, "inner_steps": 2, "repeats": 3, "warmup": 1, "memory_steps": 4}


@dataclasses.dataclass(frozen=True)
class GraphBenchConfig:
    """Settings of the graph rows (recipe section ``[graph]``)."""

    checkpoint: Path | None = None  # None: the shipped predictor
    store: Path = Path("out/perov.lmdb")
    families: int = 16
    k_support: int = 10
    k_query: int = 30
    inner_steps: int = 5
    inner_lr: float = 0.01
    repeats: int = 21
    warmup: int = 2
    memory_steps: int = 200
    threads: int = 1
    seed: int = 0


def family_tasks(table: Any, families: Sequence[str], cfg: GraphBenchConfig) -> list[tuple[Any, Any]]:
    """One (support, query) task per family: the first ``families`` with enough structures, seeded draw."""
    generator = torch.Generator().manual_seed(cfg.seed)
    tasks = []
    for family in families:
        members = [i for i, f in enumerate(table.families) if f == family]
        if len(members) < cfg.k_support + cfg.k_query:
            continue
        order = torch.randperm(len(members), generator=generator).tolist()
        chosen = [members[i] for i in order[: cfg.k_support + cfg.k_query]]
        tasks.append((table.batch(chosen[: cfg.k_support]), table.batch(chosen[cfg.k_support :])))
        if len(tasks) == cfg.families:
            break
    return tasks


def _higher_step(model: nn.Module, tasks: list, cfg: GraphBenchConfig, loss_fn: Callable) -> Callable[[], None]:
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        for support, query in tasks:
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(cfg.inner_steps):
                    diffopt.step(loss_fn(fmodel, support))
                (loss_fn(fmodel, query) / len(tasks)).backward()

    return step


def _matmeta_step(maml: Any, tasks: list, vectorize: bool | None, loss_fn: Callable) -> Callable[[], None]:
    def step() -> None:
        maml.zero_grad(set_to_none=True)
        maml.meta_loss(tasks, loss_fn, vectorize=vectorize).backward()

    return step


def measure_graph(
    model: nn.Module, tasks: list, cfg: GraphBenchConfig, progress: Callable[[], None] | None = None
) -> tuple[list[dict[str, Any]], list[tuple[int, float]]]:
    """Step times of every implementation and the peak memory of the padded vmap path.

    Args:
        model: a ``CrystalGNN`` (its dropout should be 0 for the gradient comparison).
        tasks: ``[(support, query), ...]`` of ``GraphBatch``.
        cfg: the settings.
        progress: called after each timing round and each memory step.

    Returns:
        ``(rows, memory)``: one row per implementation (``impl``, ``median_ms``, ``q1_ms``, ``q3_ms``,
        ``speedup_vs_higher``, ``cpu_median_ms``, ``cpu_speedup_vs_higher``, ``max_grad_diff``) and
        ``(step, peak RSS MiB)`` pairs.
    """
    from matmeta.meta.maml import MAML
    from matmeta.predict.batched import GraphStacker
    from matmeta.predict.data import loss_fn

    maml = MAML(model, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps)
    maml.stacker = GraphStacker(model.config)  # type: ignore[arg-type]
    maml.train()
    steps = {
        "higher": _higher_step(model, tasks, cfg, loss_fn),
        "matmeta loop": _matmeta_step(maml, tasks, False, loss_fn),
        "matmeta padded vmap": _matmeta_step(maml, tasks, None, loss_fn),
    }
    grads, wall, cpu = time_steps(steps, model, cfg.warmup, cfg.repeats, progress)
    rows = []
    ref, cpu_ref = statistics.median(wall["higher"]), statistics.median(cpu["higher"])
    for name in steps:
        q1, _, q3 = statistics.quantiles(wall[name], n=4) if len(wall[name]) > 1 else (wall[name][0],) * 3
        median, cpu_median = statistics.median(wall[name]), statistics.median(cpu[name])
        diff = max(float((a - b).abs().max()) for a, b in zip(grads[name], grads["higher"], strict=True))
        rows.append(
            {
                "impl": name,
                "median_ms": 1000 * median,
                "q1_ms": 1000 * q1,
                "q3_ms": 1000 * q3,
                "speedup_vs_higher": ref / median,
                "cpu_median_ms": 1000 * cpu_median,
                "cpu_speedup_vs_higher": cpu_ref / cpu_median,
                "max_grad_diff": diff,
            }
        )
    memory = []
    checkpoints = {1, 10, 50, 100, 150, cfg.memory_steps}
    for i in range(1, cfg.memory_steps + 1):
        steps["matmeta padded vmap"]()
        if i in checkpoints:
            memory.append((i, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        if progress is not None:
            progress()
    return rows, memory


def load_bench_model(cfg: GraphBenchConfig) -> tuple[nn.Module, list]:
    """The predictor's network (dropout 0, its weights) and the benchmark tasks from its training families."""
    from matmeta.predict.config import DataConfig
    from matmeta.predict.data import ensure_store, load_table
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load(cfg.checkpoint or "perovskites")
    model = predictor.model
    model.head[2].p = 0.0  # dropout off: every implementation computes the same function
    store = ensure_store(dataclasses.replace(DataConfig(), store=Path(cfg.store)))
    table, _ = load_table(store, DataConfig(store=Path(cfg.store)), predictor.stats)
    return model, family_tasks(table, predictor.metadata["families"]["train"], cfg)


def run_graph(values: dict[str, Any], where: str, quick: bool) -> list[dict[str, Any]]:
    """Measure and print the graph rows (and the memory trace); returns the rows (with the memory trace)."""
    from matmeta.console import print_table, progress
    from matmeta.recipes import config_from_dict

    values = {**values, **(QUICK if quick else {})}
    cfg = config_from_dict(GraphBenchConfig, values, where=where)
    torch.set_num_threads(cfg.threads)
    model, tasks = load_bench_model(cfg)
    with progress() as bar:
        task = bar.add_task("graph engine bench", total=cfg.repeats + cfg.memory_steps)
        rows, memory = measure_graph(model, tasks, cfg, progress=lambda: bar.advance(task))
    return render(rows, memory, cfg, len(tasks), quick, print_table)


def render(rows: list, memory: list, cfg: GraphBenchConfig, n_tasks: int, quick: bool, print_table: Any) -> list:
    """Print the graph rows, the memory trace and the goal verdict; returns the rows for the CSV."""
    title = (
        f"one second-order meta-step of the shipped CrystalGNN: {n_tasks} perovskite families x "
        f"k={cfg.k_support} support + {cfg.k_query} query, {cfg.inner_steps} inner steps, "
        f"{cfg.threads} thread(s), median of {cfg.repeats}"
    )
    columns = ["implementation", "median ms", "IQR ms", "speed-up vs higher", "CPU ms", "CPU speed-up", "max |Δgrad|"]
    table = [(r["impl"], *timing_cells(r, 1)) for r in rows]
    print_table(title, columns, table)
    print_table(
        "peak resident memory of the process during padded-vmap meta-steps",
        ["after step", "peak RSS MiB"],
        [(str(step), f"{mib:.1f}") for step, mib in memory],
    )
    new = next(r for r in rows if r["impl"] == "matmeta padded vmap")
    verdict = "quick run: no verdict" if quick else ("met" if new["cpu_speedup_vs_higher"] >= 3.0 else "NOT met")
    print_table(
        "goal",
        ["claim", "measured (wall / CPU)", "verdict"],
        [
            (
                "graph meta-step >= 3x faster than higher",
                f"{new['speedup_vs_higher']:.2f}x / {new['cpu_speedup_vs_higher']:.2f}x",
                verdict,
            )
        ],
    )
    return [{"mode": "graph second-order", **r} for r in rows]
