"""Design calls a non-metal exactly as ``matmeta predict`` does: P(non-metal) at or above the predictor's cut."""

import numpy as np
import pytest

from matmeta.design.judge import MetalCall, judge_for_request
from matmeta.design.stability import StabilityCriterion


def _abx3(a, b, lattice=4.0):
    from pymatgen.core import Lattice, Structure

    frac = [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(lattice), [a, b, "O", "O", "O"], frac)


class LowCut:
    """A scorer with a low non-metal cut (as the shipped predictor's, 0.017): P(metal) per B site."""

    nonmetal_cut = 0.05
    new_family_cut = 0.3  # the cut on a recalibrated P (a B site new to the model)
    P_METAL = {"Ti": 0.9, "Zr": 0.99, "Hf": 0.8, "Nb": 0.4}  # P(non-metal) 0.1, 0.01, 0.2 (recal.), 0.6

    def predict_structures(self, structures):
        rows = []
        for s in structures:
            b = s[1].specie.symbol
            p = self.P_METAL[b]
            called = 1 - p >= (self.new_family_cut if b == "Hf" else self.nonmetal_cut)
            rows.append(
                {"band_gap": 2.0 if called else 0.0, "p_metal": p, "heat_ref": -5.0, "p_recalibrated": b == "Hf"}
            )
        return rows


def test_the_fill_loop_and_the_screen_use_the_predictors_cut_not_one_half():
    structures = [_abx3("Sr", b) for b in ("Ti", "Zr", "Hf", "Nb")]
    judged = judge_for_request(structures, LowCut(), (1.5, 2.5), StabilityCriterion(shape=None))
    # Ti: P(non-metal) 0.1 >= 0.05 is a non-metal for predict (p_metal 0.9 was a "metal" at p_metal < 0.5);
    # Zr: 0.01 < 0.05 a metal; Hf: recalibrated 0.2 < 0.3 a metal although 0.2 >= 0.05; Nb: 0.6, a non-metal
    assert [r["nonmetal"] for r in judged.rows] == [True, False, False, True]
    assert [r["in_window"] for r in judged.rows] == [True, False, False, True]
    assert judged.hits == [0, 3]


def test_the_notebook_pipeline_and_the_relaxed_recheck_use_it_too(srtio3):
    from matmeta.design.deliver import relax_and_recheck
    from matmeta.design.pipeline import candidate_rows

    structures = [_abx3("Sr", b) for b in ("Ti", "Zr", "Hf", "Nb")]
    judged = [{"valid": True, "unique": True} for _ in structures]
    rows = candidate_rows(structures, judged, LowCut(), (1.5, 2.5))
    assert [r["nonmetal"] for r in rows] == [True, False, False, True]
    assert [r["in_window"] for r in rows] == [True, False, False, True]

    class Unchanged:
        def relax_all(self, structures, on_done=None):
            from matmeta.design.relax import describe_relaxation

            return list(structures), [describe_relaxation(s, s, np.array([-7.0, -7.0]), 1) for s in structures]

    rows = [{"formula": s.composition.reduced_formula} for s in structures]
    relax_and_recheck(rows, structures, LowCut(), (1.5, 2.5), StabilityCriterion(shape=None), relaxer=Unchanged())
    assert [r["nonmetal_relaxed"] for r in rows] == [True, False, False, True]
    assert [r["in_window_relaxed"] for r in rows] == [True, False, False, True]


def test_the_call_is_the_shipped_predictors_own(srtio3):
    """On the shipped predictor, MetalCall agrees with predict's call (a metal's band gap is exactly 0)."""
    from pathlib import Path

    from matmeta.io import read_structure_file
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load("perovskites")  # the predictor generate uses by default
    call = MetalCall.of(predictor)
    assert call.cut == pytest.approx(predictor.nonmetal_cut) and call.cut < 0.5
    assert call.new_family_cut == pytest.approx(predictor.new_family_cut)
    files = sorted((Path(__file__).resolve().parents[1] / "data" / "structures").glob("*.cif"))
    structures = [read_structure_file(p)[0][1] for p in files] + [_abx3("Sr", b) for b in ("Hf", "Sc", "Ge")]
    rows = predictor.predict_structures(structures, mc_samples=0)
    assert [call.nonmetal(r) for r in rows] == [r["band_gap"] != 0.0 for r in rows]
    assert any(r["p_recalibrated"] for r in rows)  # the new-B-site branch is exercised
