"""Benchmark: time of one MAML meta-gradient step, matmeta's engine against ``higher``.

Setting (recipe ``[engine]``): a meta-batch of ``tasks`` sinusoid tasks, ``inner_steps`` SGD
steps on ``k_support`` points, query loss on ``k_query`` points, an MLP ``1 → width → width → 1``
(three linear layers). One timed step = zero the gradients, compute the meta-loss, backpropagate
the meta-gradient into the meta-parameters (the outer optimiser's update is the same for every
engine and left out). Modes: second-order MAML, first-order MAML, ANIL (second-order, last layer
adapted). Implementations, on the same model, tasks and thread count, in one run:

* ``matmeta vmap``: ``MAML.meta_loss`` with all tasks batched (``torch.func.vmap``);
* ``matmeta loop``: ``MAML.meta_loss(vectorize=False)``, one task after another (the graph path);
* ``torch.func vmap(grad)``: the textbook functorch step (``vmap`` over tasks of an inner loop of
  ``torch.func.grad``), the style of the issue's reference measurement (3.8x over ``higher``);
* ``higher``: ``higher.innerloop_ctx`` with ``torch.optim.SGD`` as the differentiable inner
  optimiser, ``copy_initial_weights=False``; first order: ``track_higher_grads=False`` and the
  gradient of the query loss at the (detached) fast weights accumulated into the meta-parameters,
  which is the first-order MAML meta-gradient; ANIL: the inner optimiser over the head only.
  ``higher`` 0.2.1 runs unmodified on torch 2.13 (no shim needed).

The timings are interleaved (one step of each implementation per round) and the median over
``repeats`` rounds is reported, with the ratio ``higher / implementation``, both in wall-clock time
and in CPU time of this process (on a shared machine the CPU time is not inflated by other
processes taking the core; cache contention still shows in both). With ``tune_allocator`` (the
default) the process first calls ``matmeta.meta.perf.tune_cpu_allocator``, as ``MetaTrainer``
does: it applies to every implementation alike, since all run in the same process. Each row also
reports the largest difference of its meta-gradient from ``higher``'s, so the engines are
checked to compute the same thing.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from matmeta.bench.timing import time_steps, timing_cells
from matmeta.recipes import config_from_dict


@dataclass(frozen=True)
class EngineBenchConfig:
    """Settings of the engine benchmark (recipe section ``[engine]``)."""

    tasks: int = 16
    inner_steps: int = 5
    inner_lr: float = 0.01
    width: int = 128
    k_support: int = 10
    k_query: int = 10
    repeats: int = 21
    warmup: int = 3
    threads: int = 1
    seed: int = 0
    tune_allocator: bool = True
    out_dir: Path = Path("out/bench/engine")


QUICK = {"tasks": 4, "inner_steps": 2, "width": 16, "repeats": 3, "warmup": 1}
MODES = ("second-order", "first-order", "ANIL")
GOAL = 3.0  # the target: at least 3x faster than higher for the second-order step


def _matmeta_step(model: nn.Module, tasks: list, mode: str, cfg: EngineBenchConfig, vectorize: bool) -> Callable:
    from matmeta.bench.sinusoid import mse_loss
    from matmeta.meta import MAML

    maml = MAML(
        model,
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        first_order=mode == "first-order",
        adapt="head" if mode == "ANIL" else "all",
    )

    def step() -> None:
        model.zero_grad(set_to_none=True)
        maml.meta_loss(tasks, mse_loss, vectorize=vectorize).backward()

    return step


def _torch_func_step(model: nn.Module, tasks: list, mode: str, cfg: EngineBenchConfig) -> Callable:
    """The textbook ``torch.func`` MAML step: ``vmap`` over tasks of an inner loop of ``torch.func.grad``.

    This is the style of the reference measurement in the issue (a "vmapped torch.func step") and
    the engine's first version; kept here to show what the engine's own vmap path gains over it.
    """
    from torch.func import functional_call, grad, vmap
    from torch.utils._pytree import tree_map

    from matmeta.bench.sinusoid import mse_loss

    head = {n for n, _ in model.named_parameters() if n.startswith(model.head_prefixes)}
    stacked = tree_map(lambda *xs: torch.stack(xs), *tasks)

    def task_loss(meta: dict[str, Tensor], task: Any) -> Tensor:
        support, query = task
        frozen = {n: p for n, p in meta.items() if mode == "ANIL" and n not in head}
        fast = {n: p for n, p in meta.items() if n not in frozen}

        def support_loss(params: dict[str, Tensor]) -> Tensor:
            return mse_loss(lambda x: functional_call(model, {**frozen, **params}, (x,)), support)

        for _ in range(cfg.inner_steps):
            grads = grad(support_loss)(fast)
            if mode == "first-order":
                grads = {n: g.detach() for n, g in grads.items()}
            fast = {n: p - cfg.inner_lr * grads[n] for n, p in fast.items()}
        return mse_loss(lambda x: functional_call(model, {**frozen, **fast}, (x,)), query)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        meta = dict(model.named_parameters())
        vmap(task_loss, in_dims=(None, 0))(meta, stacked).mean().backward()

    return step


def _higher_step(model: nn.Module, tasks: list, mode: str, cfg: EngineBenchConfig) -> Callable:
    import higher

    adapted = model[-1].parameters() if mode == "ANIL" else model.parameters()
    inner_opt = torch.optim.SGD(adapted, lr=cfg.inner_lr)
    track = mode != "first-order"
    n_tasks = len(tasks)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        for (xs, ys), (xq, yq) in tasks:
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False, track_higher_grads=track) as (
                fmodel,
                diffopt,
            ):
                for _ in range(cfg.inner_steps):
                    diffopt.step((fmodel(xs) - ys).pow(2).mean())
                query_loss = (fmodel(xq) - yq).pow(2).mean() / n_tasks
                if track:
                    query_loss.backward()
                else:  # first order: higher detaches the fast weights; their gradient is the meta-gradient
                    fast = list(fmodel.parameters())
                    for p, g in zip(model.parameters(), torch.autograd.grad(query_loss, fast), strict=True):
                        p.grad = g if p.grad is None else p.grad + g

    return step


def measure(cfg: EngineBenchConfig, progress: Any = None) -> list[dict[str, Any]]:
    """Median step times (ms) of every implementation in every mode, with ratios to ``higher``.

    Returns:
        One dict per (mode, implementation): ``mode``, ``impl``, ``median_ms``, ``q1_ms``,
        ``q3_ms``, ``speedup_vs_higher`` (wall clock), ``cpu_median_ms``, ``cpu_speedup_vs_higher``
        (CPU time of this process: robust to other processes on a shared machine), ``max_grad_diff``.
    """
    from matmeta.bench.sinusoid import SinusoidTasks, mlp

    torch.set_num_threads(cfg.threads)
    if cfg.tune_allocator:
        from matmeta.meta.perf import tune_cpu_allocator

        tune_cpu_allocator()
    source = SinusoidTasks(k_support=cfg.k_support, k_query=cfg.k_query)
    tasks = source.sample(cfg.tasks, torch.Generator().manual_seed(cfg.seed))
    rows: list[dict[str, Any]] = []
    for mode in MODES:
        torch.manual_seed(cfg.seed)
        model = mlp(width=cfg.width, depth=2)
        steps = {
            "higher": _higher_step(model, tasks, mode, cfg),
            "matmeta vmap": _matmeta_step(model, tasks, mode, cfg, vectorize=True),
            "matmeta loop": _matmeta_step(model, tasks, mode, cfg, vectorize=False),
            "torch.func vmap(grad)": _torch_func_step(model, tasks, mode, cfg),
        }
        grads, times, cpu = time_steps(steps, model, cfg.warmup, cfg.repeats, progress)
        ref, cpu_ref = statistics.median(times["higher"]), statistics.median(cpu["higher"])
        for name, values in times.items():
            q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
            median = statistics.median(values)
            diff = max(float((a - b).abs().max()) for a, b in zip(grads[name], grads["higher"], strict=True))
            rows.append(
                {
                    "mode": mode,
                    "impl": name,
                    "median_ms": 1000 * median,
                    "q1_ms": 1000 * q1,
                    "q3_ms": 1000 * q3,
                    "speedup_vs_higher": ref / median,
                    "cpu_median_ms": 1000 * statistics.median(cpu[name]),
                    "cpu_speedup_vs_higher": cpu_ref / statistics.median(cpu[name]),
                    "max_grad_diff": diff,
                }
            )
    return rows


def run(recipe: dict[str, Any], recipe_path: Path, quick: bool = False) -> None:
    """``matmeta bench recipes/engine.toml``: measure, print the table, write CSV/JSON."""
    from matmeta.atomic import write_text_atomic
    from matmeta.console import print_table, progress

    values = dict(recipe.get("engine", {}))
    if quick:
        values.update(QUICK)
    cfg = config_from_dict(EngineBenchConfig, values, where=f"{recipe_path}[engine]")
    load_before = os.getloadavg()[0]
    with progress() as bar:
        task = bar.add_task("engine bench", total=cfg.repeats * len(MODES))
        rows = measure(cfg, progress=lambda: bar.advance(task))
    load_after = os.getloadavg()[0]
    title = (
        f"one meta-step: {cfg.tasks} tasks, {cfg.inner_steps} inner steps, MLP width {cfg.width}, "
        f"{cfg.threads} thread(s), median of {cfg.repeats}; torch {torch.__version__}, "
        f"load average {load_before:.1f} → {load_after:.1f} on {os.cpu_count()} cores, "
        f"malloc tuned: {'yes' if cfg.tune_allocator else 'no'}"
    )
    columns = [
        "mode",
        "implementation",
        "median ms",
        "IQR ms",
        "speed-up vs higher",
        "CPU ms",
        "CPU speed-up",
        "max |Δgrad| vs higher",
    ]
    table = [(r["mode"], r["impl"], *timing_cells(r, 2)) for r in rows]
    print_table(title, columns, table)
    second = next(r for r in rows if r["mode"] == "second-order" and r["impl"] == "matmeta vmap")
    goal_rows = []
    for clock, key in (("wall clock", "speedup_vs_higher"), ("CPU time", "cpu_speedup_vs_higher")):
        verdict = "met" if second[key] >= GOAL else "NOT met"
        if quick:
            verdict = "quick run (small setting): no verdict"
        claim = f"second-order vmap step >= {GOAL:g}x faster than higher ({clock})"
        goal_rows.append([claim, f"{second[key]:.2f}x", verdict])
    print_table("goal", ["claim", "measured", "verdict"], goal_rows)
    if "graph" in recipe:  # the crystal-graph rows (matmeta.bench.engine_graph)
        from matmeta.bench.engine_graph import run_graph

        graph_rows = run_graph(dict(recipe["graph"]), f"{recipe_path}[graph]", quick)
        rows = rows + [{key: row.get(key, "") for key in rows[0]} for row in graph_rows]
    out = Path(cfg.out_dir)
    header = list(rows[0])
    csv = ",".join(header) + "\n" + "".join(",".join(str(r[k]) for k in header) + "\n" for r in rows)
    write_text_atomic(out / "engine.csv", csv)
    write_text_atomic(
        out / "engine.json",
        json.dumps(
            {"config": {**values, "quick": quick}, "load_average": [load_before, load_after], "rows": rows},
            indent=1,
            default=str,
        ),
    )
