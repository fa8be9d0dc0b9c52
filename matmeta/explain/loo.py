"""Exact leave-one-out re-adaptation (looped or vmapped) and the shared pieces of the influence estimates.

See :mod:`matmeta.explain.influence` for the mathematics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from matmeta.errors import MatmetaError
from matmeta.meta.maml import MAML, Forward, Params

Collate = Callable[[Sequence[Any]], Any]


PerExampleLoss = Callable[[Forward, Any], Tensor]


QueryFn = Callable[[Forward], Tensor]


@contextlib.contextmanager
def eval_mode(maml: MAML) -> Iterator[None]:
    """Evaluate with dropout off and no meta-graph kept; restore the training flag afterwards."""
    was_training = maml.training
    maml.eval()
    try:
        yield
    finally:
        maml.train(was_training)


def checked_losses(per_example_loss: PerExampleLoss, forward: Forward, batch: Any, n: int) -> Tensor:
    """The (n,) per-example losses of ``batch``, or a one-line error naming the wrong shape."""
    losses = per_example_loss(forward, batch)
    if not isinstance(losses, Tensor) or losses.shape != (n,):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise MatmetaError(f"per_example_loss must return a tensor of shape ({n},) for {n} support items, got {shape}")
    return losses


def mean_loss(per_example_loss: PerExampleLoss, n: int) -> Callable[[Forward, Any], Tensor]:
    """The support loss every app adapts with: the mean of the per-example losses."""

    def loss_fn(forward: Forward, batch: Any) -> Tensor:
        return checked_losses(per_example_loss, forward, batch, n).mean()

    return loss_fn


def weighted_loss(per_example_loss: PerExampleLoss, weights: Tensor) -> Callable[[Forward, Any], Tensor]:
    """``(1/n) Σ_i w_i ℓ_i`` — the app's mean loss when every weight is 1."""
    n = weights.shape[0]

    def loss_fn(forward: Forward, batch: Any) -> Tensor:
        return (weights * checked_losses(per_example_loss, forward, batch, n)).mean()

    return loss_fn


class AdaptedForward:
    """``forward(*args, **kwargs)``: the model at adapted weights; ``params``: those weights by name."""

    def __init__(self, maml: MAML, params: Params) -> None:
        self.params = params
        self._forward = maml.functional(params)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model at the adapted weights."""
        return self._forward(*args, **kwargs)


def query_at(query_fn: QueryFn, maml: MAML, params: Params) -> Tensor:
    """The query outputs, shape (m,), of the model at ``params``."""
    out = query_fn(AdaptedForward(maml, params))
    if not isinstance(out, Tensor):
        raise MatmetaError(f"query_fn must return a tensor, got {type(out).__name__}")
    return out.reshape(-1)


def detached_start(maml: MAML) -> Params:
    """The meta-parameters that adapt, cut from the meta-graph (we differentiate w.r.t. weights only)."""
    return {n: p.detach().requires_grad_(True) for n, p in maml.meta_parameters().items() if n in maml.adapt_names}


def leave_one_out(
    maml: MAML,
    items: Sequence[Any],
    collate: Collate,
    per_example_loss: PerExampleLoss,
    query_fn: QueryFn,
    steps: int | None = None,
    batched: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact leave-one-out: adapt on all n items, then n times without one of them.

    Args:
        maml: the engine wrapping the (meta-trained) model.
        items: the support items (whatever ``collate`` accepts), n ≥ 2.
        collate: ``collate(items) -> batch``.
        per_example_loss: ``per_example_loss(forward, batch) -> (len(items),)``.
        query_fn: ``query_fn(forward) -> (m,)`` predictions to explain.
        steps: inner steps (default: the engine's).
        batched: run the n leave-one-out adaptations at once (``torch.func.vmap`` over n copies of
            the adapted weights, point i weighted 0 and the others n/(n−1) in copy i). Exact only when
            an item's loss does not depend on which other items are in the batch (true for the
            crystal predictor, not for a loss that spreads a prior penalty over the points), and the
            model's ops must support ``vmap``.

    Returns:
        ``(predictions, influence, loo_loss)``.

    Shapes:
        predictions: (m,); influence: (n, m) = predictions − predictions without item i;
        loo_loss: (n,) loss of item i under the model adapted without it.
    """
    n = len(items)
    if n < 2:
        raise MatmetaError(f"leave-one-out needs at least 2 support points, got {n}")
    with eval_mode(maml):
        full = maml.adapt(collate(items), mean_loss(per_example_loss, n), steps=steps, create_graph=False)
        with torch.no_grad():
            predictions = query_at(query_fn, maml, full).detach()
        if batched:
            without, loo_loss = _leave_one_out_vmap(maml, collate(items), n, per_example_loss, query_fn, steps)
            return predictions, predictions[None, :] - without, loo_loss
        influence = torch.empty(n, predictions.shape[0], dtype=predictions.dtype, device=predictions.device)
        loo_loss = torch.empty(n, dtype=predictions.dtype, device=predictions.device)
        for i in range(n):
            rest = [item for j, item in enumerate(items) if j != i]
            fast = maml.adapt(collate(rest), mean_loss(per_example_loss, n - 1), steps=steps, create_graph=False)
            with torch.no_grad():
                influence[i] = predictions - query_at(query_fn, maml, fast)
                loo_loss[i] = checked_losses(per_example_loss, maml.functional(fast), collate([items[i]]), 1)[0]
    return predictions, influence, loo_loss


def _leave_one_out_vmap(
    maml: MAML, batch: Any, n: int, per_example_loss: PerExampleLoss, query_fn: QueryFn, steps: int | None
) -> tuple[Tensor, Tensor]:
    """The n leave-one-out adaptations as one vmapped program (see :func:`leave_one_out`).

    Shapes:
        returns predictions without item i (n, m) and the loss of item i in copy i (n,).
    """
    from torch.func import functional_call, vmap

    steps = maml.inner_steps if steps is None else steps
    model = maml.model
    adapted = set(maml.adapt_names)
    fixed = {name: t.detach() for name, t in model.named_buffers()}
    fixed.update({name: p.detach() for name, p in model.named_parameters() if name not in adapted})
    fast = {
        name: p.detach().unsqueeze(0).expand(n, *p.shape).clone().requires_grad_(True)
        for name, p in model.named_parameters()
        if name in adapted
    }
    like = next(iter(fast.values()))
    weights = torch.full((n, n), n / (n - 1), dtype=like.dtype, device=like.device)
    weights.fill_diagonal_(0.0)

    def forward_at(params: Params) -> Forward:
        return lambda *args, **kwargs: functional_call(model, {**fixed, **params}, args, kwargs)

    def copy_loss(params: Params, w: Tensor) -> Tensor:
        return (w * checked_losses(per_example_loss, forward_at(params), batch, n)).mean()

    losses_of = vmap(copy_loss)
    lrs = {name: maml.lr(name) for name in fast}
    lrs = {name: lr.detach() if isinstance(lr, Tensor) else lr for name, lr in lrs.items()}
    for _ in range(steps):
        with torch.enable_grad():
            grads = torch.autograd.grad(losses_of(fast, weights).sum(), list(fast.values()), allow_unused=True)
        fast = {
            name: (value if grad is None else value - lrs[name] * grad).detach().requires_grad_(True)
            for (name, value), grad in zip(fast.items(), grads, strict=True)
        }
    fast = {name: value.detach() for name, value in fast.items()}

    class _Forward:
        def __init__(self, params: Params) -> None:
            self.params = params
            self._forward = forward_at(params)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self._forward(*args, **kwargs)

    with torch.no_grad():
        without = vmap(lambda params: query_fn(_Forward(params)).reshape(-1))(fast)
        own = vmap(lambda params: checked_losses(per_example_loss, forward_at(params), batch, n))(fast)
    return without, own.diagonal()
