"""What a meta-learned initialisation learned, layer by layer (``matmeta inspect``).

For every parameter tensor of an engine-wrapped model:

* its scale (standard deviation) against the Xavier (Glorot) scale √(2 / (fan_in + fan_out)) and the Kaiming
  scale √(2 / fan_in) of its shape;
* the learned inner rate (Meta-SGD: mean and range over the tensor's elements; the fixed rate otherwise);

and, given tasks (support batches) and the loss:

* the curvature of the support loss along the gradient of that tensor, κ = gᵀHg / ‖g‖² (a Rayleigh quotient of
  the tensor's Hessian block, by double back-propagation);
* the effective size of the first inner step, ‖α ⊙ g‖ / ‖θ‖, and its product with the curvature, α·κ
  (above 2 a plain gradient step on a quadratic overshoots: the inner loop would diverge along that direction);
* the share of pre-activations in the flat (saturated) part of every SiLU (x < −4) and sigmoid (|x| > 4).

The founding claim of learned initialisations (larger-than-Xavier weights that damp the inner steps where the loss
is more curved) is then a correlation across tensors between scale / Xavier and κ, which :func:`curvature_link`
computes; it does not assume the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

SILU_FLAT = -4.0  # SiLU(x) < 0.075 |x| and its slope < 0.06 below this
SIGMOID_FLAT = 4.0  # σ'(x) < 0.018 beyond ±4


def scales(maml: Any) -> list[dict[str, Any]]:
    """One row per parameter tensor: shape, scale, Xavier and Kaiming scales, the learned inner rate."""
    rows = []
    for name, value in maml.model.named_parameters():
        data = value.detach().float()
        row: dict[str, Any] = {"tensor": name, "shape": "x".join(map(str, data.shape)), "std": float(data.std())
                               if data.numel() > 1 else float(data.abs().mean())}  # fmt: skip
        if data.dim() >= 2:
            fan_out, fan_in = data.shape[0], int(np.prod(data.shape[1:]))
            row["xavier"] = math.sqrt(2.0 / (fan_in + fan_out))
            row["kaiming"] = math.sqrt(2.0 / fan_in)
            row["std/xavier"] = row["std"] / row["xavier"]
        if name in maml.adapt_names:
            rate = maml.lr(name)
            rate = rate.detach() if isinstance(rate, Tensor) else torch.tensor(float(rate))
            row["rate_mean"], row["rate_min"], row["rate_max"] = (float(rate.mean()), float(rate.min()),
                                                                 float(rate.max()))  # fmt: skip
        rows.append(row)
    return rows


def curvature(maml: Any, batches: Sequence[Any], loss_fn: Callable[[Any, Any], Tensor]) -> dict[str, dict[str, float]]:
    """Per adapted tensor, over ``batches``: mean κ = gᵀHg / ‖g‖², mean ‖α ⊙ g‖ / ‖θ‖ and mean α·κ."""
    params = dict(maml.model.named_parameters())
    names = [n for n in maml.adapt_names if params[n].dim() >= 1]
    out: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    for batch in batches:
        loss = loss_fn(maml.model, batch)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True, allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is None or not bool(grad.abs().sum() > 0):
                continue
            direction = grad.detach()
            (hv,) = torch.autograd.grad((grad * direction).sum(), params[name], retain_graph=True)
            kappa = float((direction * hv).sum() / (direction * direction).sum())
            rate = maml.lr(name)
            rate = rate.detach() if isinstance(rate, Tensor) else torch.tensor(float(rate))
            step = float((rate * direction).norm() / params[name].detach().norm().clamp(min=1e-12))
            out[name].append((kappa, step, float(rate.mean()) * kappa))
    return {n: {"kappa": float(np.mean([v[0] for v in vals])), "step": float(np.mean([v[1] for v in vals])),
                "rate_kappa": float(np.mean([v[2] for v in vals]))} for n, vals in out.items() if vals}  # fmt: skip


def saturation(model: nn.Module, batches: Sequence[Any], run: Callable[[nn.Module, Any], Any]) -> dict[str, float]:
    """Share of saturated pre-activations of every SiLU and sigmoid module while ``run(model, batch)`` runs."""
    counts: dict[str, list[float]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.SiLU, nn.Sigmoid)):
            flat = (lambda x: x < SILU_FLAT) if isinstance(module, nn.SiLU) else (lambda x: x.abs() > SIGMOID_FLAT)

            def hook(_m: Any, inputs: Any, _o: Any, name: str = name, flat: Any = flat) -> None:
                counts.setdefault(name, []).append(float(flat(inputs[0].detach()).float().mean()))

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for batch in batches:
                run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: float(np.mean(values)) for name, values in counts.items()}


def curvature_link(rows: list[dict[str, Any]], curv: dict[str, dict[str, float]]) -> dict[str, float]:
    """Spearman correlation across weight matrices between scale / Xavier and the curvature κ (and its p-value)."""
    from scipy.stats import spearmanr

    pairs = [(r["std/xavier"], curv[r["tensor"]]["kappa"]) for r in rows if "std/xavier" in r and r["tensor"] in curv]
    if len(pairs) < 3:
        return {"n": len(pairs), "spearman": float("nan"), "p_value": float("nan")}
    result = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    return {"n": len(pairs), "spearman": float(result.statistic), "p_value": float(result.pvalue)}
