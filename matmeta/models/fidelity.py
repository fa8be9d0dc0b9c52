"""Fidelity head: the measured-level band gap from a PBE-level predictor's own outputs and features.

DFT at the PBE level underestimates band gaps by 30–50 % and is not uniformly wrong: the shift depends on
the chemistry (d states, localisation, excitons, measurement). The head maps what the PBE-level network
knows about a structure — the hidden features of its property head, its PBE gap and its metal logit, the
composition's charge-balance flags — to the gap a measurement would give::

    gap_measured  = gap_pbe · (slope + Δs(x)) + shift + Δb(x)
    logit_metal   = logit_pbe + Δm(x)
    (Δs, Δb, Δm)  = W₂ SiLU(LN(W₁ x))            (W₂ starts at 0: at initialisation a linear recalibration)

The global ``slope`` and ``shift`` and the small MLP are meta-learned with the engine across families of
measured gaps (:mod:`matmeta.predict.measured`), so that a new family's few measurements adapt them in a
few inner steps. LayerNorm only (no BatchNorm).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class FidelityConfig:
    """Architecture of :class:`FidelityHead` (saved in the checkpoint).

    Attributes:
        in_features: width of the input rows (head features + PBE gap + metal logit + composition flags).
        hidden: width of the correction MLP.
        slope, shift: initial linear map from the PBE to the measured gap (eV).
    """

    in_features: int = 70
    hidden: int = 32
    slope: float = 1.0
    shift: float = 0.0


class FidelityHead(nn.Module):
    """PBE-level outputs and features → measured-level ``[metal logit, gap (eV)]``.

    Shapes:
        x: (N, in_features); gap_pbe (N,) eV; logit_pbe (N,) → (N, 2).
    """

    def __init__(self, config: FidelityConfig | None = None) -> None:
        super().__init__()
        self.config = config or FidelityConfig()
        self.slope = nn.Parameter(torch.tensor(float(self.config.slope)))
        self.shift = nn.Parameter(torch.tensor(float(self.config.shift)))
        self.hidden = nn.Linear(self.config.in_features, self.config.hidden)
        self.norm = nn.LayerNorm(self.config.hidden)
        self.out = nn.Linear(self.config.hidden, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, gap_pbe: Tensor, logit_pbe: Tensor) -> Tensor:
        """Measured-level metal logit and gap of every row."""
        delta = self.out(nn.functional.silu(self.norm(self.hidden(x))))
        gap = gap_pbe * (self.slope + delta[:, 0]) + self.shift + delta[:, 1]
        return torch.stack([logit_pbe + delta[:, 2], gap], dim=1)
