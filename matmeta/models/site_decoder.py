"""A conditional, autoregressive decoder of the elements on a prototype's slots.

p(z_1, ..., z_S | slots, condition) = prod_s p(z_s | slot s, condition, z_<s): each slot's query vector
(from what the slot is — its formula fraction, Wyckoff orbits, rank — the condition and the mean embedding
of the elements already placed) is scored against every element's embedding (from its physical
descriptors, :func:`matmeta.elements.descriptor_table`, so an element never seen on a slot still has a
place), plus a per-element bias. An element already placed is masked: slots hold distinct species.

The head (the last layer of the slot network and the element bias) is what the MAML inner loop adapts
to a family's examples; the rest is the meta-learned start. The condition is
(band gap / ``gap_scale_ev``, non-metal, PBE fidelity, null); null = 1 zeros the rest (condition dropout).

One job: the network; data, episodes and training live in :mod:`matmeta.design.family_train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

COND_DIM = 4


@dataclass
class SiteDecoderConfig:
    """Architecture of :class:`SiteDecoder`; ``elements`` are atomic numbers (the vocabulary)."""

    elements: list[int] = field(default_factory=list)
    slot_features: int = 4
    hidden: int = 128
    embed: int = 64
    gap_scale_ev: float = 2.0


class SiteDecoder(nn.Module):
    """Logits of every element on every slot, teacher-forced on the true elements of earlier slots."""

    head_prefixes = ("head.", "element_bias")

    def __init__(self, config: SiteDecoderConfig) -> None:
        super().__init__()
        from matmeta.elements import descriptor_table

        self.config = config
        table = torch.as_tensor(descriptor_table()[config.elements], dtype=torch.float32)
        self.register_buffer("descriptors", table)
        h, d = config.hidden, config.embed
        self.element_net = nn.Sequential(nn.Linear(table.shape[1], h), nn.SiLU(), nn.Linear(h, d))
        self.slot_net = nn.Sequential(
            nn.Linear(config.slot_features + COND_DIM + d, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU()
        )
        self.head = nn.Linear(h, d)
        self.element_bias = nn.Parameter(torch.zeros(len(config.elements)))

    @property
    def n_elements(self) -> int:
        """Vocabulary size."""
        return len(self.config.elements)

    def element_embeddings(self) -> Tensor:
        """Shapes: (E, embed)."""
        return self.element_net(self.descriptors)

    def step_logits(self, slot: Tensor, cond: Tensor, context: Tensor, used: Tensor, embeddings: Tensor) -> Tensor:
        """Logits of one slot.

        Shapes:
            slot: (B, F); cond: (B, COND_DIM); context: (B, embed); used: (B, E) bool; embeddings: (E, embed)
            -> (B, E)
        """
        query = self.head(self.slot_net(torch.cat([slot, cond, context], dim=-1)))
        logits = query @ embeddings.T / embeddings.shape[1] ** 0.5 + self.element_bias
        return logits.masked_fill(used, -1e4)

    def forward(self, slots: Tensor, cond: Tensor, targets: Tensor) -> Tensor:
        """Teacher-forced logits of all slots (padded slots give logits too; the loss masks them).

        Shapes:
            slots: (B, S, F); cond: (B, COND_DIM); targets: (B, S) long element indices (-1: padding)
            -> (B, S, E)
        """
        embeddings = self.element_embeddings()
        safe = targets.clamp_min(0)
        valid = (targets >= 0).to(embeddings.dtype)
        placed = embeddings[safe] * valid.unsqueeze(-1)  # (B, S, d)
        before = torch.cumsum(placed, dim=1) - placed  # strictly earlier slots
        count = (torch.cumsum(valid, dim=1) - valid).clamp_min(1.0).unsqueeze(-1)
        context = before / count
        one_hot = nn.functional.one_hot(safe, self.n_elements).to(embeddings.dtype) * valid.unsqueeze(-1)
        used = (torch.cumsum(one_hot, dim=1) - one_hot) > 0.5
        b, s, _ = slots.shape
        flat = self.step_logits(
            slots.reshape(b * s, -1),
            cond.unsqueeze(1).expand(b, s, -1).reshape(b * s, -1),
            context.reshape(b * s, -1),
            used.reshape(b * s, -1),
            embeddings,
        )
        return flat.reshape(b, s, -1)


def condition(gap_ev: Tensor, nonmetal: Tensor, pbe: Tensor, null: Tensor, gap_scale_ev: float) -> Tensor:
    """The condition vector (null = 1 zeros the others).

    Shapes:
        each input: (B,) -> (B, COND_DIM)
    """
    keep = 1.0 - null
    return torch.stack([gap_ev / gap_scale_ev * keep, nonmetal * keep, pbe * keep, null], dim=-1)


def nll_per_example(logits: Tensor, targets: Tensor) -> Tensor:
    """Negative log-likelihood of each example's elements, summed over its real slots.

    Shapes:
        logits: (B, S, E); targets: (B, S) -> (B,)
    """
    valid = targets >= 0
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return -(logp * valid).sum(dim=1)
