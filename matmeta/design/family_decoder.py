"""The meta-learned family decoder at inference: load, adapt to a family's examples, sample slot assignments.

One job: the decoder side of ``matmeta generate --prototype`` (judging is :mod:`matmeta.design.family_design`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.design.family_table import Family
from matmeta.design.family_train import (
    DEFAULT_CHECKPOINT,
    MAX_SLOTS,
    FamilyTrainConfig,
    Vocabulary,
    encode_members,
    loss_fn,
    padded_slots,
)
from matmeta.models.site_decoder import SiteDecoder, SiteDecoderConfig, condition

ADAPT_STEPS = 3


class FamilyDecoder:
    """A :class:`SiteDecoder` in its MAML wrapper (the learned inner rates travel with it)."""

    def __init__(self, maml: Any, metadata: dict[str, Any], path: Path) -> None:
        self.maml, self.metadata, self.path = maml, metadata, path
        self.model: SiteDecoder = maml.model
        self.vocab = Vocabulary(list(self.model.config.elements))
        self.train_config = FamilyTrainConfig(
            **{k: v for k, v in metadata["train_config"].items() if k in FamilyTrainConfig.__dataclass_fields__}
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> FamilyDecoder:
        """The shipped (or given) checkpoint; a checkpoint of another kind is refused with its name."""
        from matmeta.checkpoint import expect, load_checkpoint, load_state_strict
        from matmeta.meta.maml import MAML
        from matmeta.recipes import config_from_dict

        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        tensors, metadata = load_checkpoint(path)
        expect(metadata, path, kind="family_generator")
        config = config_from_dict(SiteDecoderConfig, metadata["model_config"], f"{path}[model_config]")
        train = metadata["train_config"]
        maml = MAML(
            SiteDecoder(config), float(train["inner_lr"]), int(train["inner_steps"]), learn_inner_lr=True, adapt="head"
        )
        load_state_strict(maml, tensors, path)
        maml.eval()
        return cls(maml, metadata, path)

    def adapt(self, family: Family, members: Sequence[Any], steps: int | None = None) -> dict[str, torch.Tensor]:
        """Fast weights after the inner loop on ``members`` (shown without gaps, as in training); {} for none."""
        if not members:
            return {}
        n = len(members)
        support = encode_members(
            family, list(members), self.vocab, np.zeros(n), np.ones(n), self.model.config.gap_scale_ev
        )
        return self.maml.adapt(support, loss_fn, steps=steps if steps is not None else self.maml.inner_steps)

    def _forward(self, fast: dict[str, torch.Tensor]) -> Any:
        return self.maml.functional(fast) if fast else self.model

    def sample(
        self,
        family: Family,
        fast: dict[str, torch.Tensor],
        gap_ev: float | None,
        pbe: bool,
        n: int,
        generator: torch.Generator,
        temperature: float = 1.0,
    ) -> list[tuple[int, ...]]:
        """``n`` slot assignments (atomic numbers, slot order), ancestral sampling slot by slot.

        ``gap_ev`` None: unconditioned (the null condition).
        """
        forward = self._forward(fast)
        one = lambda x: torch.full((n,), float(x))  # noqa: E731
        if gap_ev is None:
            cond = condition(one(0), one(0), one(0), one(1), self.model.config.gap_scale_ev)
        else:
            cond = condition(one(gap_ev), one(gap_ev > 0), one(pbe), one(0), self.model.config.gap_scale_ev)
        slots = padded_slots(family).unsqueeze(0).expand(n, -1, -1)
        targets = torch.full((n, MAX_SLOTS), -1, dtype=torch.long)
        with torch.no_grad():
            for s in range(family.n_slots):
                logits = forward(slots, cond, targets)[:, s] / max(temperature, 1e-3)
                targets[:, s] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
        elements = self.vocab.elements
        return [tuple(elements[i] for i in row[: family.n_slots].tolist()) for row in targets]

    def log_likelihood(
        self, family: Family, fast: dict[str, torch.Tensor], assignments: Sequence[tuple[int, ...]]
    ) -> np.ndarray:
        """Unconditioned log p of each assignment (-inf for an element outside the vocabulary).

        Shapes:
            -> (len(assignments),)
        """
        from matmeta.models.site_decoder import nll_per_example

        codes = [self.vocab.encode(a) for a in assignments]
        ok = np.array([min(c) >= 0 for c in codes])
        out = np.full(len(assignments), -np.inf)
        if ok.any():
            n = int(ok.sum())
            targets = torch.full((n, MAX_SLOTS), -1, dtype=torch.long)
            for row, c in enumerate([c for c, k in zip(codes, ok, strict=True) if k]):
                targets[row, : family.n_slots] = torch.as_tensor(c)
            one = lambda x: torch.full((n,), float(x))  # noqa: E731
            cond = condition(one(0), one(0), one(0), one(1), self.model.config.gap_scale_ev)
            slots = padded_slots(family).unsqueeze(0).expand(n, -1, -1)
            with torch.no_grad():
                out[ok] = -nll_per_example(self._forward(fast)(slots, cond, targets), targets).numpy()
        return out
