"""What a finetune did: the leave-one-out error of every candidate, the one kept, and a summary line."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class FinetuneReport:
    """What :meth:`Predictor.finetune` did.

    Attributes:
        target: the target's public name (``formation_energy_per_atom``, ``band_gap_pbe``, ``heat_ref``, …).
        unit: unit of the target.
        n_support: labelled structures used.
        steps: inner steps.
        loo_mae: leave-one-out MAE of every candidate (:data:`matmeta.predict.adaptation.CHOICES`; NaN
            where it cannot be computed, e.g. one structure). ``unadapted`` is its plain MAE.
        kept: the candidate kept (lowest leave-one-out MAE).
        loo_predictions: the leave-one-out predictions of the adapted model.
        loo_by_candidate: the leave-one-out predictions of every candidate.
    """

    target: str
    unit: str
    n_support: int
    steps: int
    loo_mae: dict[str, float]
    kept: str
    loo_predictions: list[float]
    loo_by_candidate: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def loo_mae_adapted(self) -> float:
        """Leave-one-out MAE of the adapted model."""
        return self.loo_mae["adapted"]

    @property
    def loo_mae_unadapted(self) -> float:
        """MAE of the unadapted model."""
        return self.loo_mae["unadapted"]

    def message(self) -> str:
        """One human-readable summary line: which candidate was kept and by how much it beat the others."""
        maes = ", ".join(f"{kind} {mae:.4g}" for kind, mae in self.loo_mae.items() if math.isfinite(mae))
        base = f"leave-one-out MAE on {self.n_support} support structures ({self.unit}): {maes}"
        if self.n_support == 1:
            return base + "; one structure: no leave-one-out check possible, adapted weights kept"
        others = {k: v for k, v in self.loo_mae.items() if k != self.kept and math.isfinite(v)}
        runner = min(others, key=others.get) if others else None  # type: ignore[arg-type]
        margin = f", {others[runner] - self.loo_mae[self.kept]:.3g} {self.unit} better than {runner}" if runner else ""
        adapted, unadapted = self.loo_mae_adapted, self.loo_mae_unadapted
        worse = "; adaptation made it worse (or diverged)" if not adapted <= unadapted else ""
        return f"{base}; kept: {self.kept}{margin}{worse}"
