"""An ensemble of meta-learned JMAK priors whose adapted curves are averaged, trained jointly.

Each member is a :class:`~matmeta.meta.maml.MAML`-wrapped :class:`~matmeta.models.jmak.JMAK` prior
(its own start, Gaussian prior, window and inner rates). A curve's points adapt every member; the
prediction is the mean of the members' fractions X(t). The outer loss is the query error of that
mean, so the members are trained *together*: they specialise (different starts and priors) and
their average approaches the posterior-mean prediction, which no single JMAK curve can be (the
Bayes prediction of X(t) under squared error is a mixture of JMAK curves).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def member_offsets(count: int, spread: float) -> list[float]:
    """Start offsets of n for ``count`` members: evenly from −spread to +spread (one member: 0)."""
    if count <= 1:
        return [0.0]
    return [spread * (2.0 * i / (count - 1) - 1.0) for i in range(count)]


def warm_start(ensemble: nn.Module, single: nn.Module, spread: float) -> None:
    """Load a trained single prior into every member, then move member i's start and prior mean of n by its offset."""
    members = getattr(ensemble, "members", [ensemble])
    for member, offset in zip(members, member_offsets(len(members), spread), strict=True):
        member.load_state_dict(single.state_dict())
        with torch.no_grad():
            member.model.n.add_(offset)
            member.model.prior_mean[1].add_(offset)


def _predict(forward: Any, batch: dict[str, Tensor]) -> Tensor:
    return forward(batch["log_t"])[0]


class EnsembleMAML(nn.Module):
    """K :class:`MAML` members adapted independently, predictions averaged (the trainer's ``maml``).

    Args:
        members: the members (same model class; any starts).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        first = self.members[0]
        self.inner_lr, self.inner_steps = first.inner_lr, first.inner_steps
        self.first_order, self.learn_inner_lr = first.first_order, first.learn_inner_lr
        self.adapt_names = first.adapt_names
        self.log_lrs = nn.ParameterDict()  # the members hold the rates (the trainer's optional rate group)

    def meta_loss(
        self, tasks: Sequence[tuple[dict, dict]], loss_fn: Any, vectorize: bool | None = None, query_loss_fn: Any = None
    ) -> Tensor:
        """Mean over tasks of the masked mean squared error of the members' averaged query prediction.

        Same call as :meth:`MAML.meta_loss` (the trainer's); the tasks are always stacked (``vectorize``
        is ignored) and the query loss is always that error (``query_loss_fn`` is ignored).
        """
        from torch.utils._pytree import tree_map

        support, query = tree_map(lambda *xs: torch.stack(xs), *tasks)
        n_tasks = len(tasks)
        preds = [m.map_tasks(_predict, m.adapt_stacked(support, n_tasks, loss_fn), query) for m in self.members]
        pred = torch.stack(preds).mean(0)
        mask = query["mask"]
        per_task = ((pred - query["x"]) ** 2 * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_task.mean()


@dataclasses.dataclass
class EnsembleFits:
    """The members' fits of B curves; the curve is the mean of their fractions.

    Shapes:
        ``members``: K :class:`~matmeta.kinetics.fit.Fits` of B curves; ``ok``, ``ln_t_ref``: ``(B,)``.
    """

    members: list[Any]

    @property
    def ok(self) -> Tensor:
        """A curve's fit succeeded when every member's did."""
        return torch.stack([f.ok for f in self.members]).all(0)

    @property
    def ln_t_ref(self) -> Tensor:
        """The curves' reference ln time (the same for every member)."""
        return self.members[0].ln_t_ref

    def predict(self, time_s: Tensor) -> Tensor:
        """Mean X of the members at ``time_s`` (s). Shapes: ``(B, Q)`` → ``(B, Q)``."""
        return torch.stack([f.predict(time_s) for f in self.members]).mean(0)

    def ln_time_at(self, fraction: float, iterations: int = 60) -> Tensor:
        """Ln t (s) at which the mean curve reaches ``fraction`` (bisection between the members' times)."""
        times = torch.stack([f.ln_time_at(fraction) for f in self.members])
        lo, hi = times.min(0).values - 1e-9, times.max(0).values + 1e-9
        for _ in range(iterations):  # the mean of increasing curves is increasing: bisection converges
            mid = 0.5 * (lo + hi)
            below = self.predict(mid.exp()[:, None])[:, 0] < fraction
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def physical_ln_k(self) -> Tensor:
        """Ln k of the members' mean parameters (s⁻ⁿ), for tables; the curve itself is the mixture."""
        return torch.stack([f.physical_ln_k() for f in self.members]).mean(0)

    @property
    def n(self) -> Tensor:
        """Mean n of the members (for tables)."""
        return torch.stack([f.n for f in self.members]).mean(0)
