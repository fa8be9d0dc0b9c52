"""Sinusoid regression, the classic MAML sanity task (Finn et al. 2017, section 5.1).

Each task is ``y = A sin(x − φ)`` with amplitude ``A ~ U[0.1, 5]`` and phase ``φ ~ U[0, π]``;
inputs ``x ~ U[−5, 5]``. A meta-learned start adapts to a new sinusoid from ``k_support``
points; a model trained on all tasks pooled can only predict their mean (≈ 0).
Used by the engine's tests and benchmark, never by the apps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class SinusoidTasks:
    """An ``EpisodeSource`` of sinusoid tasks.

    Args:
        k_support: support points per task.
        k_query: query points per task.
        amplitude: range of ``A``.
        phase: range of ``φ``.
        x_range: range of ``x``.
        dtype: dtype of the tensors.

    Shapes:
        Each task is ``((x_s, y_s), (x_q, y_q))`` with ``x_s, y_s: (k_support, 1)`` and
        ``x_q, y_q: (k_query, 1)``.
    """

    k_support: int = 10
    k_query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    dtype: torch.dtype = torch.float32

    def sample(self, n_tasks: int, generator: torch.Generator) -> list[tuple[Batch, Batch]]:
        """``n_tasks`` tasks drawn with ``generator`` only."""
        tasks = []
        for _ in range(n_tasks):
            params = torch.rand(2, generator=generator, dtype=torch.float64)
            amp = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * params[0]
            phase = self.phase[0] + (self.phase[1] - self.phase[0]) * params[1]
            lo, hi = self.x_range
            x = lo + (hi - lo) * torch.rand(self.k_support + self.k_query, 1, generator=generator, dtype=torch.float64)
            y = amp * torch.sin(x - phase)
            x, y = x.to(self.dtype), y.to(self.dtype)
            k = self.k_support
            tasks.append(((x[:k], y[:k]), (x[k:], y[k:])))
        return tasks


def mlp(width: int = 40, depth: int = 2, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The MLP of the MAML paper: ``1 → width (ReLU) → … → 1`` with ``depth`` hidden layers.

    Its last layer is its ``head_prefixes`` (for ANIL).
    """
    layers: list[nn.Module] = []
    size = 1
    for _ in range(depth):
        layers += [nn.Linear(size, width, dtype=dtype), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, 1, dtype=dtype))
    model = nn.Sequential(*layers)
    model.head_prefixes = (f"{len(layers) - 1}.",)  # type: ignore[attr-defined]
    return model


def per_example_loss(forward: Callable[[Tensor], Tensor], batch: Batch) -> Tensor:
    """Squared error per point.

    Shapes:
        batch: ``(x: (n, 1), y: (n, 1))`` → ``(n,)``.
    """
    x, y = batch
    return (forward(x) - y).pow(2).squeeze(-1)


def mse_loss(forward: Callable[[Tensor], Tensor], batch: Batch) -> Tensor:
    """Mean squared error of ``forward`` on ``batch`` (the task loss)."""
    return per_example_loss(forward, batch).mean()
