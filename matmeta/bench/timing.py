"""Side-by-side timing of meta-step implementations, interleaved so that load hits them alike.

Shared by the engine benchmark's MLP rows (``bench/engine.py``) and graph rows (``bench/engine_graph.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn


def parameter_grads(model: nn.Module) -> list[Tensor]:
    """A copy of every parameter's gradient (zeros where there is none)."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def time_steps(
    steps: dict[str, Callable[[], object]],
    model: nn.Module,
    warmup: int,
    repeats: int,
    progress: Callable[[], None] | None = None,
) -> tuple[dict[str, list[Tensor]], dict[str, list[float]], dict[str, list[float]]]:
    """Run each step once (keeping its gradients), warm up, then time ``repeats`` interleaved rounds.

    Returns:
        ``(grads, wall, cpu)``: per step, the gradients of its first call and its wall / CPU seconds per call.
    """
    grads = {}
    for name, step in steps.items():
        step()
        grads[name] = parameter_grads(model)
    for _ in range(warmup):
        for step in steps.values():
            step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
        if progress is not None:
            progress()
    return grads, wall, cpu


def timing_cells(row: dict, digits: int) -> tuple[str, ...]:
    """A timed row's table cells: median, IQR, speed-up, CPU median, CPU speed-up (ms to ``digits``), max |Δgrad|."""
    return (
        f"{row['median_ms']:.{digits}f}",
        f"{row['q1_ms']:.{digits}f}–{row['q3_ms']:.{digits}f}",
        f"{row['speedup_vs_higher']:.2f}x",
        f"{row['cpu_median_ms']:.{digits}f}",
        f"{row['cpu_speedup_vs_higher']:.2f}x",
        f"{row['max_grad_diff']:.1e}",
    )
