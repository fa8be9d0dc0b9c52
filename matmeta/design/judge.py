"""Does a candidate meet the request? Validity, prediction, window and stability, with predictor calls counted.

One job: the per-candidate verdict shared by the fill loop (:mod:`matmeta.design.fill`), the exhaustive
screen (:mod:`matmeta.design.screen`) and the benchmark. Only valid candidates (structurally and by
SMACT) reach the predictor, so ``calls`` is the number of structures the predictor scored.
Uniqueness and novelty are settled before, by composition (the fill loop never proposes a training
composition or one it has proposed before), so a hit here is valid ∧ non-metal ∧ in window ∧ stable.
Stable is the heat criterion AND the structural one (tolerance factor in its window,
:mod:`matmeta.design.tolerance`); the structural one needs no predictor, so only valid candidates inside
the tolerance window are scored. Non-metal is the predictor's own call (:class:`MetalCall`: P(non-metal) at
or above the checkpoint's cut), the same call ``matmeta predict`` makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matmeta.design.stability import StabilityCriterion
from matmeta.design.validity import compositional_validity, structural_validity


@dataclass(frozen=True)
class MetalCall:
    """The predictor's metal / non-metal call, as ``matmeta predict`` makes it.

    Non-metal when P(non-metal) = 1 - ``p_metal`` is at or above ``cut`` (the checkpoint's
    ``nonmetal_threshold``, chosen on its calibration families; 0.017 for the shipped predictor), or, for
    a row whose P was recalibrated as a new B site (``p_recalibrated``), at or above ``new_family_cut``
    (the same cut mapped through the recalibration, so the call does not change).

    Attributes:
        cut: P(non-metal) at or above which a structure is a non-metal.
        new_family_cut: the cut on a recalibrated P.
    """

    cut: float
    new_family_cut: float

    @classmethod
    def of(cls, predictor: Any) -> MetalCall:
        """The call of ``predictor``, a :class:`~matmeta.predict.predictor.Predictor` or any scorer.

        The scorer needs ``nonmetal_cut``; ``new_family_cut`` is optional (default: the same cut).
        """
        cut = float(predictor.nonmetal_cut)
        return cls(cut, float(getattr(predictor, "new_family_cut", cut)))

    def nonmetal(self, prediction: dict[str, Any]) -> bool:
        """True when the structure of this prediction row is called a non-metal."""
        cut = self.new_family_cut if prediction.get("p_recalibrated") else self.cut
        return bool(1.0 - float(prediction["p_metal"]) >= cut)


@dataclass
class Judgement:
    """Verdicts on a list of structures, in order.

    Attributes:
        structures: the judged structures.
        rows: one dict each: formula, struct_valid, comp_valid, valid, band_gap_ev, band_gap_std_ev,
            p_metal, nonmetal (the predictor's call), heat_ref_ev_per_cell, heat_ref_std_ev, heat_ev_per_atom,
            heat_stable, tolerance_factor, octahedral_factor, bartel_tau, cubic_by_tolerance, stable (heat and
            tolerance), in_window, hit, min_distance_ang, volume_per_atom_ang3, warning (predictions NaN for
            unscored ones).
        calls: predictor calls made (structures scored).
    """

    structures: list[Any] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0

    @property
    def hits(self) -> list[int]:
        """Indices of the candidates that meet the request."""
        return [i for i, r in enumerate(self.rows) if r["hit"]]

    @classmethod
    def concat(cls, parts: Sequence[Judgement]) -> Judgement:
        """One judgement from several, in order."""
        out = cls()
        for part in parts:
            out.structures += part.structures
            out.rows += part.rows
            out.calls += part.calls
        return out


def prediction_verdict(
    prediction: dict[str, Any],
    n_atoms: int,
    window: tuple[float, float],
    criterion: StabilityCriterion,
    call: MetalCall,
    cubic: bool = True,
) -> dict[str, Any]:
    """Row fields from one predictor output: gap, metal probability and call, heat, stable, in window.

    ``call``: the predictor's metal call; ``cubic``: the candidate's structural verdict (stable needs it
    and the heat criterion).
    """
    heat_ok = criterion.stable(float(prediction["heat_ref"]), n_atoms)
    gap, metal, heat = float(prediction["band_gap"]), float(prediction["p_metal"]), float(prediction["heat_ref"])
    nonmetal = call.nonmetal(prediction)
    return {
        "band_gap_ev": gap,
        "band_gap_std_ev": float(prediction.get("band_gap_std", float("nan"))),
        "p_metal": metal,
        "nonmetal": nonmetal,
        "heat_ref_ev_per_cell": heat,
        "heat_ref_std_ev": float(prediction.get("heat_ref_std", float("nan"))),
        "heat_ev_per_atom": criterion.heat_per_atom(heat, n_atoms),
        "heat_stable": heat_ok,
        "stable": bool(heat_ok and cubic),
        "in_window": bool(nonmetal and window[0] <= gap <= window[1]),
        "warning": prediction.get("warning") or "",
    }


def judge_for_request(
    structures: Sequence[Any], predictor: Any, window: tuple[float, float], criterion: StabilityCriterion
) -> Judgement:
    """Validity and tolerance factor of every structure, then the predictor on the valid ones inside the window.

    ``predictor``: ``predict_structures(structures) -> list[dict]`` and ``nonmetal_cut`` (:class:`MetalCall`).
    """
    call = MetalCall.of(predictor)
    structures = list(structures)
    rows: list[dict[str, Any]] = []
    for s in structures:
        ok, shortest, volume = structural_validity(s)
        comp_ok = compositional_validity(s.composition)
        rows.append(
            {
                "formula": s.composition.reduced_formula,
                "struct_valid": ok,
                "comp_valid": comp_ok,
                "valid": ok and comp_ok,
                "min_distance_ang": shortest,
                "volume_per_atom_ang3": volume,
                "band_gap_ev": float("nan"),
                "band_gap_std_ev": float("nan"),
                "p_metal": float("nan"),
                "nonmetal": False,
                "heat_ref_ev_per_cell": float("nan"),
                "heat_ref_std_ev": float("nan"),
                "heat_ev_per_atom": float("nan"),
                "heat_stable": False,
                "stable": False,
                "in_window": False,
                "warning": "",
                **criterion.shape_verdict(s),
            }
        )
    valid = [i for i, r in enumerate(rows) if r["valid"] and r["cubic_by_tolerance"]]
    predictions = predictor.predict_structures([structures[i] for i in valid]) if valid else []
    for i, p in zip(valid, predictions, strict=True):
        cubic = rows[i]["cubic_by_tolerance"]
        rows[i].update(prediction_verdict(p, len(structures[i]), window, criterion, call, cubic))
    for r in rows:
        r["hit"] = bool(r["valid"] and r["in_window"] and r["stable"])
    return Judgement(structures, rows, len(valid))
