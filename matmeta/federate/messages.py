"""What crosses the wire: weight-shaped float arrays in an agreed order, and scalar metrics.

Parameter *names* never travel: both sides derive the order from the model configuration they
share (``names``). A lab's reply is ``(arrays, n_examples, metrics)``; metrics are numbers under
the keys of ``METRIC_KEYS`` and nothing else (no strings, no family names, no identifiers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

METRIC_KEYS = ("loss", "update_norm", "local_steps", "time_s")
STATS_LAYOUT = ("n_heat", "sum_heat", "sumsq_heat", "n_gap", "sum_gap", "sumsq_gap")


def state_names(state: Mapping[str, Tensor]) -> list[str]:
    """The agreed order of the arrays: sorted parameter names."""
    return sorted(state)


def to_arrays(state: Mapping[str, Tensor], names: Sequence[str]) -> list[np.ndarray]:
    """Float32 arrays of ``state`` in the order ``names``."""
    return [state[n].detach().cpu().numpy().astype(np.float32, copy=True) for n in names]


def from_arrays(arrays: Sequence[np.ndarray], names: Sequence[str]) -> dict[str, Tensor]:
    """Tensors by name from arrays in the order ``names``."""
    if len(arrays) != len(names):
        raise ValueError(f"expected {len(names)} arrays, got {len(arrays)}")
    return {n: torch.as_tensor(np.asarray(a, dtype=np.float32).copy()) for n, a in zip(names, arrays, strict=True)}


def payload_bytes(arrays: Sequence[np.ndarray]) -> int:
    """Bytes of the array payload (what dominates a message)."""
    return int(sum(np.asarray(a).nbytes for a in arrays))


def clean_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """Only the allowed keys with finite numbers (anything else is dropped)."""
    out: dict[str, float] = {}
    for key in METRIC_KEYS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    """Euclidean norm of all arrays together (inf/NaN when any entry is)."""
    return float(math.sqrt(sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in arrays)))
