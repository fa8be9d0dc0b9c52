"""Activation functions of the crystal network: SiLU, or SiLU plus a learned rational term (its shape meta-learned).

``RationalSiLU`` is ``f(x) = SiLU(x) + (a₀ + a₁x + a₂x² + a₃x³) / (1 + x⁴)``: a rational function (Padé-type
activations: Molina et al., "Padé Activation Units", ICLR 2020) anchored on SiLU. The rational term has no pole on
the real line and decays like 1/x, so the learned part shapes the region where LayerNorm puts nearly every
pre-activation (|x| ≲ 3) and the tails stay SiLU's. With ``a = 0`` (the initial value) it *is* SiLU, so a network
trained with SiLU loads into it unchanged and the shape starts where SiLU is. The coefficients are the activation's
shape parameters: the predictor's MAML keeps them out of the inner loop (:func:`is_shape_parameter`), so the outer
loop learns one shape for every family and adaptation moves only the weights.

A cubic B-spline residual was tried first: the same idea, 13 coefficients, but evaluating the basis on every
(edge, channel) made a second-order meta-step ~170x slower in the activation alone (measured, one thread); the
rational term costs ~5x SiLU there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = ("silu", "rational")
SHAPE_PARAMETER = "shape_coefficients"  # the name every activation-shape parameter ends with


class RationalSiLU(nn.Module):
    """SiLU plus a learned rational term (see the module docstring).

    Shapes:
        x: (...) → (...).
    """

    def __init__(self) -> None:
        super().__init__()
        self.shape_coefficients = nn.Parameter(torch.zeros(4))

    def forward(self, x: Tensor) -> Tensor:
        """SiLU(x) plus the rational term, elementwise."""
        a = self.shape_coefficients
        numerator = a[0] + x * (a[1] + x * (a[2] + x * a[3]))
        return nn.functional.silu(x) + numerator / (1.0 + x**4)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of ``ACTIVATIONS``)."""
    if name == "silu":
        return nn.SiLU()
    if name == "rational":
        return RationalSiLU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def is_shape_parameter(name: str) -> bool:
    """True for an activation's shape parameter (kept out of MAML's inner loop)."""
    return name.endswith(SHAPE_PARAMETER)
