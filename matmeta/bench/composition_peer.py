"""The composition peer of the measured-gap benchmark: gradient-boosted trees on element statistics.

What users already like for measured gaps from a formula alone (Zhuo et al. 2018; matbench's expt_gap
leaderboard): Magpie-style features — the fraction-weighted mean, minimum, maximum and range of each element
descriptor of :func:`matmeta.elements.descriptor_table`, plus the number of elements — and scikit-learn's
``HistGradientBoosting`` models, a regressor for the gap and a classifier for metal / non-metal, with their
default settings (nothing is tuned on the benchmark). It needs no structure, so it trains on every measured
formula outside the test families, those without a structure too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def composition_features(formula: str) -> np.ndarray:
    """Element statistics of one formula; NaNs (an unreadable formula) where the trees handle them.

    Shapes:
        → (4 · descriptors + 1,)
    """
    from pymatgen.core import Composition

    from matmeta.elements import descriptor_table

    table = descriptor_table()
    try:
        amounts = Composition(formula).fractional_composition.get_el_amt_dict()
        numbers = [Composition(el).elements[0].Z for el in amounts]
    except Exception:  # noqa: BLE001 - a formula pymatgen cannot read: all-NaN features
        return np.full(4 * table.shape[1] + 1, np.nan)
    weights = np.array(list(amounts.values()))
    rows = table[np.array(numbers)]
    mean = weights @ rows
    low, high = rows.min(0), rows.max(0)
    return np.concatenate([mean, low, high, high - low, [len(numbers)]])


class CompositionPeer:
    """Fit on formulas and measured gaps; predict P(metal) and the gap of new formulas."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        self.regressor = HistGradientBoostingRegressor(random_state=seed)
        self.classifier = HistGradientBoostingClassifier(random_state=seed)

    def fit(self, formulas: Sequence[str], gaps: np.ndarray) -> CompositionPeer:
        """Train both models (gaps in eV, 0 = metal)."""
        x = np.stack([composition_features(f) for f in formulas])
        gaps = np.asarray(gaps, dtype=float)
        self.classifier.fit(x, (gaps <= 0).astype(int))
        nonmetal = gaps > 0
        self.regressor.fit(x[nonmetal], gaps[nonmetal])
        return self

    def predict(self, formulas: Sequence[str]) -> np.ndarray:
        """``[P(metal), gap if non-metal]`` per formula.

        Shapes:
            → (n, 2)
        """
        x = np.stack([composition_features(f) for f in formulas])
        p_metal = self.classifier.predict_proba(x)[:, list(self.classifier.classes_).index(1)]
        return np.stack([p_metal, np.clip(self.regressor.predict(x), 0.0, None)], axis=1)

    @staticmethod
    def reported(out: np.ndarray) -> np.ndarray:
        """The peer's reported gap: 0 when P(metal) ≥ 0.5."""
        return np.where(out[:, 0] >= 0.5, 0.0, out[:, 1])


def trained_peer(rows: Any, exclude: Sequence[str], seed: int = 0) -> CompositionPeer:
    """The peer trained on every measured row whose family is not in ``exclude`` (structure or not)."""
    held = set(exclude)
    keep = [i for i, family in enumerate(rows.family) if family not in held]
    return CompositionPeer(seed).fit([rows.formula[i] for i in keep], rows.gap[keep])
