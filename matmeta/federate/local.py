"""One lab's round: start from the shared weights, take local steps on its own tasks, return the update.

Per local step the lab computes a gradient-like direction ``d`` on a meta-batch drawn from its
own families and steps its local optimiser (SGD or a fresh Adam):

* ``fomaml`` / ``metasgd``: the first-order MAML meta-gradient of the mean query loss after
  adapting on each support set (Meta-SGD: the inner rates are meta-parameters too);
* ``reptile``: ``θ − mean_task θ̃_task``, θ̃ after the inner SGD steps on support ∪ query
  (Nichol, Achiam & Schulman 2018);
* ``fedavg``: the plain supervised gradient on a minibatch of the lab's structures.

The update sent is the pseudo-gradient ``θ_start − θ_local`` (with one SGD step at lr 1 it is
``d`` itself). Everything the lab computes stays in the lab; only that array list leaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.federate.messages import from_arrays, global_norm, to_arrays
from matmeta.meta.maml import MAML, LossFn


@dataclass
class LocalResult:
    """A lab's reply: the update arrays, the number of tasks (or structures) behind them, metrics."""

    arrays: list[np.ndarray]
    n_examples: int
    metrics: dict[str, float]


class LocalLearner:
    """Computes a lab's update from the shared weights.

    Args:
        maml: the engine around the model (its state is overwritten with the shared weights).
        loss_fn: ``loss_fn(forward, batch) -> scalar``.
        source: draws ``(support, query)`` tasks from the lab's families (``sample(n, generator)``).
        algorithm: ``fomaml``, ``metasgd``, ``reptile`` or ``fedavg``.
        names: the agreed array order (sorted state names).
        pooled_batch: for ``fedavg``: ``pooled_batch(n, generator) -> batch`` of the lab's structures.
        seed: the lab's own sampling seed (combined with the round number).
    """

    def __init__(
        self,
        maml: MAML,
        loss_fn: LossFn,
        source: Any,
        algorithm: str,
        names: Sequence[str],
        pooled_batch: Callable[[int, torch.Generator], Any] | None = None,
        seed: int = 0,
    ) -> None:
        if algorithm == "fedavg" and pooled_batch is None:
            raise ValueError("fedavg needs pooled_batch")
        self.maml = maml
        self.loss_fn = loss_fn
        self.source = source
        self.algorithm = algorithm
        self.names = list(names)
        self.pooled_batch = pooled_batch
        self.seed = int(seed)

    def _direction(self, generator: torch.Generator, n_tasks: int, batch_size: int) -> tuple[float, int]:
        """Fill ``.grad`` of the meta-parameters with this step's direction; returns (loss, examples)."""
        maml = self.maml
        maml.train()
        if self.algorithm == "fedavg":
            batch = self.pooled_batch(batch_size, generator)  # type: ignore[misc]
            loss = self.loss_fn(maml.model, batch)
            loss.backward()
            return float(loss.detach()), 1
        tasks = self.source.sample(n_tasks, generator)
        if self.algorithm in ("fomaml", "metasgd"):
            loss = maml.meta_loss(tasks, self.loss_fn, vectorize=False)
            loss.backward()
            return float(loss.detach()), len(tasks)
        meta = maml.meta_parameters()
        total = {n: torch.zeros_like(p) for n, p in meta.items()}
        losses = []
        for support, query in tasks:
            fast = maml.adapt(support, self.loss_fn, create_graph=False)
            fast = maml.adapt(query, self.loss_fn, create_graph=False, params=fast)
            with torch.no_grad():
                losses.append(float(self.loss_fn(maml.functional(fast), query)))
                for n in fast:
                    total[n] += (meta[n] - fast[n]).detach() / len(tasks)
        for n, p in meta.items():
            p.grad = total[n]
        return float(np.mean(losses)), len(tasks)

    def update(
        self,
        arrays: Sequence[np.ndarray],
        round_index: int,
        local_steps: int,
        optimizer: str,
        lr: float,
        meta_batch_size: int,
        batch_size: int = 32,
        proximal_mu: float = 0.0,
    ) -> LocalResult:
        """The pseudo-gradient after ``local_steps`` local steps from the shared ``arrays``.

        ``proximal_mu`` > 0 adds the FedProx term μ/2 ‖θ − θ_start‖² to every local step's objective.
        """
        start_time = time.perf_counter()
        start = from_arrays(arrays, self.names)
        self.maml.load_state_dict(start, strict=True)
        named = [(n, p) for n, p in self.maml.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        opt: torch.optim.Optimizer = (
            torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
        )
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + round_index)
        losses, examples = [], 0
        for _ in range(local_steps):
            opt.zero_grad(set_to_none=True)
            loss, n = self._direction(generator, meta_batch_size, batch_size)
            if proximal_mu > 0:
                add_proximal_gradient(named, start, proximal_mu)
            losses.append(loss)
            examples += n
            opt.step()
        end = self.maml.state_dict()
        delta: dict[str, Tensor] = {n: (start[n] - end[n].detach()) for n in self.names}
        out = to_arrays(delta, self.names)
        metrics = {
            "loss": float(np.mean(losses)),
            "update_norm": global_norm(out),
            "local_steps": float(local_steps),
            "time_s": time.perf_counter() - start_time,
        }
        return LocalResult(out, max(examples, 1), metrics)


def add_proximal_gradient(named: Sequence[tuple[str, Tensor]], start: dict[str, Tensor], mu: float) -> None:
    """Add ∇ of μ/2 ‖θ − θ_start‖², i.e. μ (θ − θ_start), to each parameter's ``.grad`` (FedProx)."""
    with torch.no_grad():
        for name, param in named:
            pull = mu * (param - start[name].to(param))
            param.grad = pull if param.grad is None else param.grad + pull
