"""Which support points steered an adaptation, and which of them look wrong.

Works for any model the MAML engine adapts: it only needs the engine (:class:`~matmeta.meta.maml.MAML`),
the support items, ``collate(items) -> batch``, ``per_example_loss(forward, batch) -> (n,)`` (every app
defines its support loss as the mean of it) and ``query_fn(forward) -> (m,)``, the adapted predictions
to explain. ``forward(*inputs)`` runs the model at the adapted weights and ``forward.params`` holds those
weights by name, for queries that are functions of the parameters (a JMAK curve's t50).

Two estimates of the influence of support point i on a query prediction f:

* **exact leave-one-out** (LOO): re-adapt without point i (n adaptations),
  ``I_i = f(θ_T(all)) − f(θ_T(all but i))``;
* **differentiation through the inner loop**: weight each point's loss,
  ``L_w(θ) = (1/n) Σ_j w_j ℓ_j(θ)``, adapt with ``create_graph`` and take ``g_j = ∂f(θ_T(w))/∂w_j`` at
  w = 1 (one backward pass per query output). Leaving point i out is the weight change
  ``w_i: 1 → 0`` and ``w_j: 1 → n/(n−1)`` for j ≠ i (the LOO loss is a mean over n−1 points), so to first
  order ``f(without i) − f(all) ≈ Σ_j g_j Δw_j = (Σ_j g_j − n g_i)/(n−1)``, i.e.

      I_i ≈ (n g_i − Σ_j g_j) / (n − 1) = n/(n−1) · (g_i − mean_j g_j).

  This is the influence-function idea of Koh & Liang (ICML 2017) applied to the unrolled inner loop
  rather than to an optimum. A ``first_order`` variant drops the Hessian terms that carry a weight
  change of step t on to later steps (``θ_T ≈ θ_0 − Σ_t α ∇L_w(θ_t)``, as first-order MAML does); it
  is TracIn's sum of per-step gradient products (Pruthi et al., NeurIPS 2020) over the inner steps,
  with the query gradient taken at the adapted weights.

For one inner step of a model linear in its parameters under a squared loss, f is linear in w, so the
approximation equals exact LOO; with more steps or a non-linear model it is a Taylor estimate. If an
app's per-example loss spreads a shared term over the points (a prior penalty divided by n), the
weight path scales that term by (n−1)/n where true LOO keeps it whole: a small extra discrepancy.

Self-influence: the loss of point i under the model adapted without it (its LOO error). Its square
root ``|e_i|`` is the absolute LOO residual for a squared-error loss; points whose modified z-score
``0.6745 |e_i| / median_j |e_j|`` exceeds 3.5 (Iglewicz & Hoaglin, 1993) are flagged "check this
measurement".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import MatmetaError
from matmeta.explain.loo import (
    Collate,
    PerExampleLoss,
    QueryFn,
    detached_start,
    eval_mode,
    leave_one_out,
    query_at,
    weighted_loss,
)
from matmeta.explain.report import FLAG_Z, Explanation, robust_z, spearman
from matmeta.meta.maml import MAML, Forward, Params


def weight_gradients(
    maml: MAML,
    items: Sequence[Any],
    collate: Collate,
    per_example_loss: PerExampleLoss,
    query_fn: QueryFn,
    steps: int | None = None,
    first_order: bool = False,
) -> tuple[Tensor, Tensor]:
    """Derivative of the adapted predictions with respect to each support point's loss weight, at w = 1.

    The support loss is ``(1/n) Σ_i w_i ℓ_i``; the inner loop is unrolled with ``create_graph`` so that
    the fast weights, and the predictions, are differentiable functions of w. ``first_order`` drops the
    Hessian terms (each step's gradient is taken at the detached current weights), as FOMAML does.

    Returns:
        ``(predictions, grads)``.

    Shapes:
        predictions: (m,); grads: (n, m), ``grads[i, j] = ∂ prediction_j / ∂ w_i``.
    """
    n = len(items)
    batch = collate(items)
    with eval_mode(maml):
        like = next(iter(maml.meta_parameters().values()))
        weights = torch.ones(n, dtype=like.dtype, device=like.device, requires_grad=True)
        loss_fn = weighted_loss(per_example_loss, weights)
        steps = maml.inner_steps if steps is None else steps
        if not first_order:
            fast = maml.adapt(batch, loss_fn, steps=steps, create_graph=True, params=detached_start(maml))
        else:
            fast = _first_order_unroll(maml, batch, loss_fn, steps)
        predictions = query_at(query_fn, maml, fast)
        grads = _jacobian_wrt_weights(predictions, weights)
    return predictions.detach(), grads


def _jacobian_wrt_weights(predictions: Tensor, weights: Tensor) -> Tensor:
    """``∂predictions_j/∂w_i`` by reverse mode.

    All outputs in one vmapped backward pass where the model's ops allow it, one backward pass per
    output otherwise.

    Shapes:
        predictions: (m,); weights: (n,); returns (n, m).
    """
    n, m = weights.shape[0], predictions.shape[0]
    grads = torch.zeros(n, m, dtype=weights.dtype, device=weights.device)
    if m == 0 or not predictions.requires_grad:
        return grads
    try:
        (batched,) = torch.autograd.grad(
            predictions,
            weights,
            grad_outputs=torch.eye(m, dtype=predictions.dtype, device=predictions.device),
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        if batched is not None:
            grads = batched.T.to(weights.dtype).contiguous()
        return grads
    except (RuntimeError, NotImplementedError):  # an op without a batching rule: one pass per output
        pass
    for j in range(m):
        (grad,) = torch.autograd.grad(predictions[j], weights, retain_graph=True, allow_unused=True)
        if grad is not None:
            grads[:, j] = grad
    return grads


def _first_order_unroll(maml: MAML, batch: Any, loss_fn: Callable[[Forward, Any], Tensor], steps: int) -> Params:
    """``θ_T = θ_0 − Σ_t α ∇L_w(sg(θ_t))``: fast weights that depend on w only through each step's gradient."""
    fast = detached_start(maml)
    for _ in range(steps):
        point = {n: v.detach().requires_grad_(True) for n, v in fast.items()}
        with torch.enable_grad():
            loss = loss_fn(maml.functional(point), batch)
            grads = torch.autograd.grad(loss, list(point.values()), create_graph=True, allow_unused=True)
        fast = {
            name: value if grad is None else value - maml.lr(name) * grad
            for (name, value), grad in zip(fast.items(), grads, strict=True)
        }
    return fast


def approx_from_weight_gradients(grads: Tensor) -> Tensor:
    """First-order LOO influence from weight gradients: ``(n g_i − Σ_j g_j) / (n − 1)``.

    Leaving point i out sets ``w_i = 0`` and ``w_j = n/(n−1)`` (j ≠ i), so
    ``f(all) − f(without i) ≈ −Σ_j g_j Δw_j = (n g_i − Σ_j g_j)/(n − 1)``.

    Shapes:
        grads: (n, m); returns (n, m).
    """
    n = grads.shape[0]
    if n < 2:
        raise MatmetaError(f"leave-one-out needs at least 2 support points, got {n}")
    return (n * grads - grads.sum(dim=0, keepdim=True)) / (n - 1)


def approx_influence(
    maml: MAML,
    items: Sequence[Any],
    collate: Collate,
    per_example_loss: PerExampleLoss,
    query_fn: QueryFn,
    steps: int | None = None,
    first_order: bool = False,
) -> tuple[Tensor, Tensor]:
    """Fast estimate of the leave-one-out influence by differentiating through the inner loop.

    Returns:
        ``(predictions, influence)``.

    Shapes:
        predictions: (m,); influence: (n, m), estimate of :func:`leave_one_out`'s influence.
    """
    predictions, grads = weight_gradients(maml, items, collate, per_example_loss, query_fn, steps, first_order)
    return predictions, approx_from_weight_gradients(grads)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# One call
# --------------------------------------------------------------------------------------------------


def explain_adaptation(
    maml: MAML,
    items: Sequence[Any],
    collate: Collate,
    per_example_loss: PerExampleLoss,
    query_fn: QueryFn,
    support_names: Sequence[str] | None = None,
    query_names: Sequence[str] | None = None,
    steps: int | None = None,
    approx: bool = True,
    first_order: bool = False,
    flag_z: float = FLAG_Z,
    batched_loo: bool = False,
) -> Explanation:
    """Influence of each support item on each adapted query prediction, exact and approximate.

    Args:
        maml: the engine wrapping the (meta-trained) model; its training flag is restored afterwards.
        items: the n ≥ 2 support items.
        collate: ``collate(items) -> batch``.
        per_example_loss: ``per_example_loss(forward, batch) -> (n,)``; the support loss is its mean.
        query_fn: ``query_fn(forward) -> (m,)``, the adapted predictions to explain.
        support_names: n labels for the support items (default ``support_0`` …).
        query_names: m labels for the query outputs (default ``query_0`` …).
        steps: inner steps (default: the engine's).
        approx: also compute the through-the-inner-loop estimate.
        first_order: use the first-order (no Hessian) variant of the estimate.
        flag_z: robust z-score above which a support point is flagged.
        batched_loo: run the leave-one-out adaptations in one vmapped program (see :func:`leave_one_out`).

    Returns:
        An :class:`Explanation`; ``.influence`` and ``.self_influence`` are tables with ``to_csv``.
    """
    n = len(items)
    support_names = [f"support_{i}" for i in range(n)] if support_names is None else [str(s) for s in support_names]
    if len(support_names) != n:
        raise MatmetaError(f"{len(support_names)} support names for {n} support items")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    predictions, loo, loo_loss = leave_one_out(maml, items, collate, per_example_loss, query_fn, steps, batched_loo)
    seconds["loo"] = time.perf_counter() - start
    m = predictions.shape[0]
    query_names = [f"query_{j}" for j in range(m)] if query_names is None else [str(q) for q in query_names]
    if len(query_names) != m:
        raise MatmetaError(f"{len(query_names)} query names for {m} query outputs")
    approx_np = None
    if approx:
        start = time.perf_counter()
        _, estimate = approx_influence(maml, items, collate, per_example_loss, query_fn, steps, first_order)
        seconds["approx"] = time.perf_counter() - start
        approx_np = estimate.cpu().numpy().astype(float)
    loo_np = loo.cpu().numpy().astype(float)
    loss_np = loo_loss.cpu().numpy().astype(float)
    if not np.isfinite(loss_np).all() or not np.isfinite(loo_np).all():
        raise MatmetaError("an adaptation produced a non-finite loss or prediction; check the support labels")
    correlation = np.array(
        [spearman(loo_np[:, j], approx_np[:, j]) if approx_np is not None else math.nan for j in range(m)]
    )
    return Explanation(
        support_names=support_names,
        query_names=query_names,
        predictions=predictions.cpu().numpy().astype(float),
        loo=loo_np,
        approx=approx_np,
        loo_loss=loss_np,
        robust_z=robust_z(np.sqrt(np.clip(loss_np, 0.0, None))),
        spearman=correlation,
        flag_z=flag_z,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------
