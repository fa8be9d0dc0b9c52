"""The server's maths: check each lab's update, average the good ones, step, keep a resumable state.

A lab's update is a pseudo-gradient ``g_i`` (the direction the lab wants the shared weights to
move down). The server keeps updates that have the expected shapes, only finite entries and a
global norm ≤ ``max_update_norm``, and forms ``g = Σ_i n_i g_i / Σ_i n_i`` (``n_i``: the lab's
task count). Then ``avg``: ``θ ← θ − lr · g`` (lr 1 with local models = FedAvg), or ``adam``:
one Adam step on ``g`` (FedAdam, Reddi et al., ICLR 2021; with one local SGD step at lr 1 the
update is the plain meta-gradient and this is the centralised trainer's step). Rejected and
dropped labs are named in the round's report; a round without a good update keeps the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.federate.messages import global_norm

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass
class Update:
    """One lab's reply in a round: who (a transport id, never a lab name), arrays, task count, metrics."""

    client: str
    arrays: list[np.ndarray]
    n_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundReport:
    """What happened in a round: accepted labs, rejected labs with the reason, dropped labs."""

    round: int
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    update_norm: float = 0.0
    loss: float = math.nan
    bytes_up: int = 0

    def message(self) -> str:
        """One line for the server's log."""
        parts = [f"round {self.round}: {len(self.accepted)} update(s) averaged"]
        parts += [f"rejected {c} ({why})" for c, why in self.rejected.items()]
        parts += [f"dropped {c} (no answer)" for c in self.dropped]
        if math.isfinite(self.loss):
            parts.append(f"mean local loss {self.loss:.4g}")
        return "; ".join(parts)


def check_update(arrays: list[np.ndarray], shapes: list[tuple[int, ...]], max_norm: float) -> str | None:
    """Why an update must be rejected (None: it is fine)."""
    if len(arrays) != len(shapes):
        return f"{len(arrays)} arrays, expected {len(shapes)}"
    for a, shape in zip(arrays, shapes, strict=True):
        if tuple(np.shape(a)) != tuple(shape):
            return f"array of shape {tuple(np.shape(a))}, expected {tuple(shape)}"
    if not all(np.isfinite(a).all() for a in arrays):
        return "non-finite values (NaN/inf)"
    norm = global_norm(arrays)
    if norm > max_norm:
        return f"oversized update (norm {norm:.3g} > {max_norm:.3g})"
    return None


class ServerState:
    """Shared weights, the server optimiser's state and the round counter; saved after every round.

    Args:
        params: the shared weights by name.
        names: the agreed order of the arrays.
    """

    def __init__(self, params: dict[str, Tensor], names: list[str]) -> None:
        self.names = list(names)
        self.params = {n: params[n].detach().clone().float() for n in self.names}
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.momentum = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.adam_step = 0
        self.round = 0
        self.extra: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the arrays, in order."""
        return [tuple(self.params[n].shape) for n in self.names]

    def arrays(self) -> list[np.ndarray]:
        """The shared weights as arrays, in order."""
        return [self.params[n].numpy().astype(np.float32, copy=True) for n in self.names]

    def apply(
        self, update: dict[str, Tensor], optimizer: str, lr: float, rate_lr: float | None = None, momentum: float = 0.0
    ) -> None:
        """One server step with the averaged update.

        ``avg``: a plain step (heavy-ball ``momentum`` when > 0: FedAvgM); ``adam``: torch's Adam maths.
        """
        if optimizer == "avg":
            for n, g in update.items():
                if momentum > 0:
                    g = self.momentum[n].mul_(momentum).add_(g)
                step = rate_lr if (rate_lr is not None and n.startswith("log_lrs.")) else lr
                self.params[n] -= step * g
            return
        self.adam_step += 1
        t = self.adam_step
        for n, g in update.items():
            step = rate_lr if (rate_lr is not None and n.startswith("log_lrs.")) else lr
            m, v = self.exp_avg[n], self.exp_avg_sq[n]
            m.lerp_(g, 1 - BETAS[0])
            v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
            denom = (v.sqrt() / math.sqrt(1 - BETAS[1] ** t)).add_(EPS)
            self.params[n].addcdiv_(m, denom, value=-step / (1 - BETAS[0] ** t))

    def save(self, path: str | Path) -> Path:
        """Write the state (safetensors, atomically)."""
        from matmeta.checkpoint import save_checkpoint

        tensors = {f"param.{n}": p for n, p in self.params.items()}
        tensors |= {f"exp_avg.{n}": p for n, p in self.exp_avg.items()}
        tensors |= {f"exp_avg_sq.{n}": p for n, p in self.exp_avg_sq.items()}
        tensors |= {f"momentum.{n}": p for n, p in self.momentum.items()}
        meta = {
            "kind": "federate-server-state",
            "names": self.names,
            "round": self.round,
            "adam_step": self.adam_step,
            "extra": self.extra,
            "history": self.history,
        }
        return save_checkpoint(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, names: list[str]) -> ServerState:
        """Read a state written by :meth:`save`; the parameter names must be ``names``.

        Raises:
            CheckpointError: another kind of file, or a state of another model.
        """
        from matmeta.checkpoint import expect, load_checkpoint
        from matmeta.errors import CheckpointError

        tensors, meta = load_checkpoint(path)
        expect(meta, path, kind="federate-server-state")
        if list(meta["names"]) != list(names):
            raise CheckpointError(f"{path}: round checkpoint of another model (parameter names differ)")
        state = cls({n: tensors[f"param.{n}"] for n in names}, names)
        state.exp_avg = {n: tensors[f"exp_avg.{n}"].clone() for n in names}
        state.exp_avg_sq = {n: tensors[f"exp_avg_sq.{n}"].clone() for n in names}
        if all(f"momentum.{n}" in tensors for n in names):  # states written before FedAvgM have none (zeros)
            state.momentum = {n: tensors[f"momentum.{n}"].clone() for n in names}
        state.adam_step = int(meta["adam_step"])
        state.round = int(meta["round"])
        state.extra = dict(meta.get("extra") or {})
        state.history = list(meta.get("history") or [])
        return state


def average(
    updates: list[Update], state: ServerState, max_norm: float, report: RoundReport
) -> dict[str, Tensor] | None:
    """Weighted mean of the acceptable updates (None when there is none); rejections go into ``report``."""
    good: list[Update] = []
    for u in updates:
        why = check_update(u.arrays, state.shapes, max_norm)
        if why is None and not u.n_examples >= 1:
            why = f"bad example count {u.n_examples}"
        if why is None:
            good.append(u)
            report.accepted.append(u.client)
        else:
            report.rejected[u.client] = why
    if not good:
        return None
    total = float(sum(u.n_examples for u in good))
    mean = [
        sum(np.asarray(u.arrays[i], np.float64) * (u.n_examples / total) for u in good) for i in range(len(state.names))
    ]
    losses = [u.metrics["loss"] for u in good if "loss" in u.metrics]
    report.loss = float(np.mean(losses)) if losses else math.nan
    return {n: torch.as_tensor(np.asarray(m, dtype=np.float32)) for n, m in zip(state.names, mean, strict=True)}


def clip_(update: dict[str, Tensor], max_norm: float | None) -> float:
    """Scale ``update`` in place to global norm ≤ ``max_norm``; returns the norm before clipping."""
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in update.values())))
    if max_norm is not None and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in update.values():
            g.mul_(scale)
    return norm
