"""The stability criterion of a candidate, and how its threshold was chosen on the training data.

Castelli et al. (Energy Environ. Sci. 2012), who computed the perovskite set, call a compound stable
enough to screen when its heat of formation relative to all competing phases (``heat_all``) is at most
0.2 eV/atom. The predictor predicts ``heat_ref`` (heat of formation against the standard elemental
references, eV per 5-atom cell), not ``heat_all``; so the criterion here is

    predicted heat_ref / atoms <= ``HEAT_REF_THRESHOLD_EV_PER_ATOM``,

with the threshold chosen on the decoder's TRAINING families as the ``heat_ref`` cut that best
reproduces Castelli's ``heat_all <= 0.2 eV/atom`` label (highest balanced accuracy,
:func:`choose_threshold`; ``matmeta bench recipes/generate.toml`` recomputes and prints it). On those
4,570 training compounds that is 0.2 eV/atom, balanced accuracy 0.972 (29 % of them stable).

Heat alone says nothing about the structure: many compositions with a low heat of formation do not stay
cubic (a small A cation off-centre in its cage, tilted octahedra). So a candidate is stable here when
BOTH hold: the heat criterion above and the structural one, Goldschmidt's tolerance factor in a window
chosen on training compositions relaxed with CHGNet (:mod:`matmeta.design.tolerance`; ``shape``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matmeta.design.tolerance import ToleranceWindow

CASTELLI_HEAT_ALL_EV_PER_ATOM = 0.2
HEAT_REF_THRESHOLD_EV_PER_ATOM = 0.2


@dataclass(frozen=True)
class StabilityCriterion:
    """Predicted heat of formation per atom at most ``threshold_ev_per_atom`` and t in ``shape`` (module docstring).

    ``shape`` None: the heat criterion alone.
    """

    threshold_ev_per_atom: float = HEAT_REF_THRESHOLD_EV_PER_ATOM
    shape: ToleranceWindow | None = ToleranceWindow()

    def heat_per_atom(self, heat_ref_ev_per_cell: float, n_atoms: int) -> float:
        """The predicted heat of formation per atom (eV)."""
        return float(heat_ref_ev_per_cell) / max(int(n_atoms), 1)

    def stable(self, heat_ref_ev_per_cell: float, n_atoms: int) -> bool:
        """True when the predicted heat per atom is finite and at most the threshold (the heat part only)."""
        value = self.heat_per_atom(heat_ref_ev_per_cell, n_atoms)
        return bool(np.isfinite(value) and value <= self.threshold_ev_per_atom)

    def describe(self) -> str:
        """One line for summaries."""
        shape = f" and {self.shape.describe()}" if self.shape is not None else ""
        return f"stable: predicted heat of formation <= {self.threshold_ev_per_atom:g} eV/atom{shape}"

    def shape_verdict(self, structure: object) -> dict[str, object]:
        """The structural fields of a row (:meth:`ToleranceWindow.verdict`; all cubic when ``shape`` is None)."""
        if self.shape is None:
            nan = float("nan")
            return {"tolerance_factor": nan, "octahedral_factor": nan, "bartel_tau": nan, "cubic_by_tolerance": True}
        return self.shape.verdict(structure)


def choose_threshold(
    heat_ref_per_atom: Sequence[float],
    heat_all_per_atom: Sequence[float],
    label_cut: float = CASTELLI_HEAT_ALL_EV_PER_ATOM,
    step: float = 0.01,
) -> tuple[float, float]:
    """The ``heat_ref`` cut (on a ``step`` grid) that best reproduces ``heat_all <= label_cut``.

    Returns:
        ``(threshold eV/atom, balanced accuracy)``; ties go to the lower (stricter) threshold.
    """
    ref = np.asarray(heat_ref_per_atom, dtype=np.float64)
    label = np.asarray(heat_all_per_atom, dtype=np.float64) <= label_cut
    if label.all() or not label.any():
        raise ValueError("choose_threshold needs both stable and unstable training compounds")
    grid = np.round(np.arange(np.floor(ref.min() / step), np.ceil(ref.max() / step) + 1) * step, 10)
    best = (float(grid[0]), -1.0)
    for tau in grid:
        pred = ref <= tau
        score = 0.5 * ((pred & label).sum() / label.sum() + (~pred & ~label).sum() / (~label).sum())
        if score > best[1] + 1e-12:
            best = (float(tau), float(score))
    return best
