"""Functional MAML: adapt any ``nn.Module`` to a task from a few examples, and meta-learn its start.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017; Meta-SGD (learned inner rates): Li et al., arXiv:1707.09835, 2017; ANIL (adapt the
head only): Raghu et al., ICLR 2020.

Inner loop, for the adapted parameters θ_a (the others stay at their meta-learned values)::

    θ_a ← θ_a − α ⊙ ∇_{θ_a} L_support(θ)          (``inner_steps`` times)

Outer objective, over a meta-batch of tasks: mean_task L_query(θ_adapted). Second-order MAML
differentiates through the inner gradients; first-order drops that Hessian term.

The engine is functional: fast weights are plain tensors in a dict, run through
``torch.func.functional_call``; the model itself is never copied or mutated. It never looks at
what the model is. Two rules it enforces or relies on:

* no BatchNorm: running statistics would mix tasks (use LayerNorm or GraphNorm);
* a task is ``(support, query)``; ``loss_fn(forward, batch) -> scalar`` knows how to feed a batch
  to ``forward(*inputs)``, the model evaluated with the given parameters.

Same-shaped tensor tasks (JMAK curves, padded decoders) are vectorised with ``torch.func.vmap``:
the adapted parameters carry a task dimension and one ``autograd.grad`` per inner step serves the
whole meta-batch. Tasks of other shapes (graphs) are vectorised when the engine has a ``stacker``
(``tasks -> (stacked support, stacked query) | None``, e.g. graphs padded to a common shape by
:mod:`matmeta.predict.batched`); otherwise, or when it returns None, they run in a loop. All paths
give the same meta-gradient (tested).

Training vs inference: in ``train()`` mode the adaptation keeps the graph to the meta-parameters
(second order unless ``first_order``); in ``eval()`` mode it is first order and detached, which is
what validation and few-shot fine-tuning at inference need (no outer gradient is possible then).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from matmeta.errors import MatmetaError

Params = dict[str, Tensor]
Forward = Callable[..., Any]
LossFn = Callable[[Forward, Any], Tensor]
Task = tuple[Any, Any]
AdaptSpec = str | Sequence[str] | Callable[[str], bool]


def _select(model: nn.Module, adapt: AdaptSpec) -> list[str]:
    """Names of the parameters the inner loop changes.

    ``"all"``; ``"head"`` (the model's ``head_prefixes`` attribute, for ANIL); ``"re:<regex>"``;
    a sequence of name prefixes; or a predicate on the name.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if callable(adapt):
        chosen = [n for n in names if adapt(n)]
    elif adapt == "all":
        chosen = names
    elif adapt == "head":
        prefixes = getattr(model, "head_prefixes", None)
        if not prefixes:
            raise MatmetaError(
                f"adapt='head' needs {type(model).__name__}.head_prefixes (names of its head parameters)"
            )
        chosen = [n for n in names if n.startswith(tuple(prefixes))]
    elif isinstance(adapt, str) and adapt.startswith("re:"):
        pattern = re.compile(adapt[3:])
        chosen = [n for n in names if pattern.search(n)]
    elif isinstance(adapt, str):
        raise MatmetaError(f"adapt={adapt!r}: use 'all', 'head', 're:<regex>', a list of prefixes or a predicate")
    else:
        chosen = [n for n in names if n.startswith(tuple(adapt))]
    if not chosen:
        raise MatmetaError(f"adapt={adapt!r} selects no parameter of {type(model).__name__}")
    return chosen


def _refuse_batchnorm(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise MatmetaError(
                f"{type(model).__name__}.{name} is BatchNorm: running statistics mix tasks; use LayerNorm/GraphNorm"
            )


def _is_stackable(tasks: Sequence[Task]) -> bool:
    """True when every task is a pytree of tensors with identical structure and shapes."""
    from torch.utils._pytree import tree_flatten

    first_leaves, first_spec = tree_flatten(tasks[0])
    if not first_leaves or not all(isinstance(x, Tensor) for x in first_leaves):
        return False
    for task in tasks[1:]:
        leaves, spec = tree_flatten(task)
        if spec != first_spec or any(
            not isinstance(x, Tensor) or x.shape != y.shape for x, y in zip(leaves, first_leaves, strict=True)
        ):
            return False
    return True


class MAML(nn.Module):
    """Meta-learn the initialisation (and optionally the inner rates) of ``model``.

    Args:
        model: any ``nn.Module`` without BatchNorm. Its parameters are the meta-parameters.
        inner_lr: step size α of the inner loop (the initial value when ``learn_inner_lr``).
        inner_steps: gradient steps on the support set per adaptation.
        first_order: drop second derivatives from the meta-gradient (FOMAML).
        learn_inner_lr: Meta-SGD; one learnable rate per parameter tensor, or per element when
            ``per_element_lr``. Rates are stored as their logarithm, so they stay positive.
        adapt: which parameters the inner loop changes (see ``_select``); "head" gives ANIL.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        learn_inner_lr: bool = False,
        per_element_lr: bool = False,
        adapt: AdaptSpec = "all",
    ) -> None:
        super().__init__()
        if inner_lr <= 0 or inner_steps < 0:
            raise MatmetaError(f"inner_lr must be > 0 and inner_steps >= 0, got {inner_lr}, {inner_steps}")
        _refuse_batchnorm(model)
        self.model = model
        self.inner_steps = int(inner_steps)
        self.first_order = bool(first_order)
        self.learn_inner_lr = bool(learn_inner_lr)
        self.adapt_names = _select(model, adapt)
        self.inner_lr = float(inner_lr)
        self.stacker: Callable[[Sequence[Task]], tuple[Any, Any] | None] | None = None
        self.log_lrs = nn.ParameterDict()
        if learn_inner_lr:
            params = dict(model.named_parameters())
            for name in self.adapt_names:
                like = params[name]
                shape = like.shape if per_element_lr else ()
                rate = torch.full(shape, float(inner_lr), dtype=like.dtype, device=like.device)
                self.log_lrs[self._key(name)] = nn.Parameter(rate.log())

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def meta_parameters(self) -> Params:
        """The model's parameters, by name (the start of every adaptation)."""
        return dict(self.model.named_parameters())

    def lr(self, name: str) -> Tensor | float:
        """Inner step size for parameter ``name``."""
        return self.log_lrs[self._key(name)].exp() if self.learn_inner_lr else self.inner_lr

    def _update(self, name: str, value: Tensor, grad: Tensor) -> Tensor:
        """One inner step ``value − α ⊙ grad`` (a single fused op for a fixed scalar α)."""
        if self.learn_inner_lr:
            return value - self.lr(name) * grad
        return torch.add(value, grad, alpha=-self.inner_lr)

    def functional(self, params: Params | None = None) -> Forward:
        """``forward(*args, **kwargs)`` of the model evaluated at ``params`` (missing names: meta values)."""
        if not params:
            return self.model
        return self._bind({**dict(self.model.named_buffers()), **self.meta_parameters()}, params)

    def _bind(self, base: Params, params: Params) -> Forward:
        """The model's forward at ``base`` (buffers and meta-parameters) overridden by ``params``."""
        full = {**base, **params}

        def forward(*args: Any, **kwargs: Any) -> Any:
            return functional_call(self.model, full, args, kwargs)

        return forward

    def forward(self, *args: Any, params: Params | None = None, **kwargs: Any) -> Any:
        """Run the model, with fast weights ``params`` when given."""
        return self.functional(params)(*args, **kwargs)

    def adapt(
        self,
        support: Any,
        loss_fn: LossFn,
        steps: int | None = None,
        create_graph: bool | None = None,
        params: Params | None = None,
    ) -> Params:
        """Fast weights after ``steps`` inner steps on ``support``.

        Args:
            support: a batch that ``loss_fn`` understands.
            loss_fn: ``loss_fn(forward, batch) -> scalar tensor``.
            steps: inner steps (default: ``self.inner_steps``).
            create_graph: keep the graph for meta-gradients; default: ``not first_order`` while
                training (``self.training``), False otherwise (inference-time fine-tuning).
            params: start from these fast weights instead of the meta-parameters.

        Returns:
            The adapted parameters, by name (only the adapted ones).
        """
        steps = self.inner_steps if steps is None else steps
        if create_graph is None:
            create_graph = self.training and not self.first_order
        track = self.training or create_graph  # keep a path to the meta-parameters for the outer loss
        meta = self.meta_parameters()
        base = {**dict(self.model.named_buffers()), **meta}
        fast = {n: (params[n] if params and n in params else meta[n]) for n in self.adapt_names}
        if not track:
            fast = {n: p.detach().requires_grad_(True) for n, p in fast.items()}
        for _ in range(steps):
            with torch.enable_grad():
                loss = loss_fn(self._bind(base, fast), support)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph, allow_unused=True)
            updated = {}
            for (name, value), grad in zip(fast.items(), grads, strict=True):
                if grad is None:
                    updated[name] = value
                    continue
                if not create_graph:
                    grad = grad.detach()
                updated[name] = self._update(name, value, grad)
            fast = updated if track else {n: v.detach().requires_grad_(True) for n, v in updated.items()}
        return fast if track else {n: v.detach() for n, v in fast.items()}

    def meta_loss(
        self,
        tasks: Sequence[Task],
        loss_fn: LossFn,
        vectorize: bool | None = None,
        query_loss_fn: LossFn | None = None,
    ) -> Tensor:
        """Mean query loss after adapting on each task's support set (differentiable).

        In training mode the graph reaches the meta-parameters (second order unless
        ``first_order``); after ``eval()`` the adaptation is first order and keeps no graph (wrap
        the call in ``torch.no_grad()`` for validation).

        Args:
            tasks: ``[(support, query), ...]``.
            loss_fn: ``loss_fn(forward, batch) -> scalar``, used for support (and query).
            vectorize: ``vmap`` over tasks; default: when all tasks are same-shaped tensors or
                ``self.stacker`` stacks them. False: the loop.
            query_loss_fn: loss on the query sets (default ``loss_fn``), e.g. a validation metric.

        Returns:
            Scalar: the mean over tasks of the query loss at the adapted parameters.
        """
        if not tasks:
            raise MatmetaError("meta_loss needs at least one task")
        query_loss_fn = query_loss_fn or loss_fn
        if vectorize is not False and self.stacker is not None and not _is_stackable(tasks):
            stacked = self.stacker(tasks)
            if stacked is not None:
                return self.meta_loss_stacked(*stacked, len(tasks), loss_fn, query_loss_fn)
        if vectorize is None:
            vectorize = _is_stackable(tasks)
        if not vectorize:
            losses = [query_loss_fn(self.functional(self.adapt(s, loss_fn)), q) for s, q in tasks]
            return torch.stack(losses).mean()
        from torch.utils._pytree import tree_map

        support, query = tree_map(lambda *xs: torch.stack(xs), *tasks)
        return self.meta_loss_stacked(support, query, len(tasks), loss_fn, query_loss_fn)

    def meta_loss_stacked(
        self, support: Any, query: Any, n_tasks: int, loss_fn: LossFn, query_loss_fn: LossFn | None = None
    ) -> Tensor:
        """``meta_loss`` for tasks already stacked along a leading task dimension, all tasks at once.

        The adapted parameters get a leading task dimension (an ``expand`` of the meta-parameters,
        so the outer gradient sums over tasks); the model runs under ``vmap`` over (task
        parameters, task data). Tasks are independent, so the gradient of the *sum* of the task
        support losses with respect to the task-batched parameters is every task's own gradient:
        one ``autograd.grad`` per inner step for the whole meta-batch, no nested functorch
        transforms. Outside training (``eval()``) the adaptation keeps no second-order graph.

        Shapes:
            every tensor leaf of ``support`` and ``query``: ``(n_tasks, *shape)``.
        """
        fast = self.adapt_stacked(support, n_tasks, loss_fn)
        return self.map_tasks(query_loss_fn or loss_fn, fast, support=query).mean()

    def _fixed(self) -> Params:
        """Buffers and the parameters the inner loop does not change."""
        fixed = {**dict(self.model.named_buffers()), **self.meta_parameters()}
        return {n: v for n, v in fixed.items() if n not in self.adapt_names}

    def map_tasks(self, fn: Callable[[Forward, Any], Tensor], fast: Params, support: Any) -> Tensor:
        """``fn(forward, batch)`` of every task at its own fast weights, under ``vmap`` (results stacked).

        Shapes:
            fast: ``(n_tasks, *shape)`` per name; every tensor leaf of ``support``: ``(n_tasks, ...)``.
        """
        fixed = self._fixed()

        def task_fn(task_params: Params, batch: Any) -> Tensor:
            return fn(lambda *a, **k: functional_call(self.model, {**fixed, **task_params}, a, k), batch)

        return torch.func.vmap(task_fn, randomness="different")(fast, support)

    def adapt_stacked(self, support: Any, n_tasks: int, loss_fn: LossFn, steps: int | None = None) -> Params:
        """:meth:`adapt` for ``n_tasks`` stacked support sets at once: fast weights with a task dimension.

        Same rules as :meth:`adapt` (second order while training unless ``first_order``; first
        order and detached after ``eval()``); one ``autograd.grad`` per inner step for all tasks.

        Shapes:
            every tensor leaf of ``support``: ``(n_tasks, ...)`` → each fast weight ``(n_tasks, *shape)``.
        """
        steps = self.inner_steps if steps is None else steps
        create_graph = self.training and not self.first_order
        meta = self.meta_parameters()
        fast = {n: meta[n].unsqueeze(0).expand(n_tasks, *shape) for n, shape in self._shapes()}
        if not self.training:
            fast = {n: v.detach().requires_grad_(True) for n, v in fast.items()}
        for _ in range(steps):
            with torch.enable_grad():
                losses = self.map_tasks(loss_fn, fast, support)
                grads = torch.autograd.grad(
                    losses.sum(), list(fast.values()), create_graph=create_graph, allow_unused=True
                )
            fast = {
                n: v if g is None else self._update(n, v, g if create_graph else g.detach())
                for (n, v), g in zip(fast.items(), grads, strict=True)
            }
            if not self.training:
                fast = {n: v.detach().requires_grad_(True) for n, v in fast.items()}
        return fast if self.training else {n: v.detach() for n, v in fast.items()}

    def _shapes(self) -> list[tuple[str, torch.Size]]:
        shapes = {n: p.shape for n, p in self.model.named_parameters()}
        return [(n, shapes[n]) for n in self.adapt_names]


class PredictorMAML(MAML):
    """The engine with Meta-SGD rates parameterised as ``α = exp(gain · θ)`` (``θ`` stored in ``log_lrs``).

    With one outer learning rate η for all meta-parameters (the trainer's Adam), ``log α`` moves
    at most ~η per outer step, so with η = 3e-4 the rates stay at their initial value for hundreds
    of steps (measured: 0.0100 → 0.0099 after 250 steps). A gain lets the rates move ``gain``
    times faster without touching the weights' step size. ``gain = 1`` is the engine's own MAML.
    """

    def __init__(self, model: torch.nn.Module, lr_gain: float = 1.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.lr_gain = float(lr_gain)
        if self.lr_gain <= 0:
            raise ValueError(f"lr_gain must be > 0, got {lr_gain}")
        with torch.no_grad():
            for value in self.log_lrs.values():
                value.div_(self.lr_gain)

    def lr(self, name: str) -> Tensor | float:
        """Inner step size for parameter ``name``."""
        if not self.learn_inner_lr:
            return self.inner_lr
        return (self.log_lrs[self._key(name)] * self.lr_gain).exp()
