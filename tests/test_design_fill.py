"""The fill loop (n hits or a stated budget), the exhaustive screen and the stability criterion."""

import numpy as np
import pytest

from matmeta.design.fill import FillBudget, fill
from matmeta.design.stability import StabilityCriterion, choose_threshold

A_SITES = ["Li", "Na", "K", "Rb", "Cs", "Ca", "Sr", "Ba", "La", "Y"]
B_SITES = ["Ti", "Zr", "Hf", "Nb", "Ta", "V", "Sc", "Al", "Ga", "In"]


def _abx3(a, b, x=("O", "O", "O"), lattice=4.0):
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(lattice), [a, b, *x], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )


class GapByElement:
    """Test scorer: 2 eV non-metal for compositions with one of ``gapped`` elements, else a metal."""

    nonmetal_cut = 0.5

    def __init__(self, gapped, heat=-1.0):
        self.gapped, self.heat, self.calls = set(gapped), heat, 0

    def predict_structures(self, structures):
        self.calls += len(structures)
        out = []
        for s in structures:
            hit = bool(self.gapped & {e.symbol for e in s.composition})
            out.append({"band_gap": 2.0 if hit else 0.0, "p_metal": 0.1 if hit else 0.9, "heat_ref": self.heat})
        return out


def _cycling_proposer(pairs):
    """Proposes the (A, B) pairs in order, skipping avoided compositions; each proposal costs two draws."""

    def propose(k, rnd, taken, draws_left):
        out = []
        for a, b in pairs:
            s = _abx3(a, b)
            if s.composition.reduced_formula not in taken:
                out.append(s)
            if len(out) == k:
                break
        return out, 2 * len(out)

    return propose


def _valid_pairs():
    from matmeta.design.validity import compositional_validity

    return [(a, b) for a in A_SITES for b in B_SITES if compositional_validity(_abx3(a, b).composition)]


PAIRS = _valid_pairs()
#: the fill / screen mechanics on these hand-made pairs are judged by heat alone; the structural part of the
#: criterion (tolerance factor) has its own tests in test_design_tolerance.py
HEAT_ONLY = StabilityCriterion(shape=None)


def test_fill_stops_when_it_has_n_hits():
    scorer = GapByElement({"Ba"})
    first_ba = next(i for i, (a, _) in enumerate(PAIRS) if a == "Ba")
    fifth_ba = [i for i, (a, _) in enumerate(PAIRS) if a == "Ba"][4]
    result = fill(5, _cycling_proposer(PAIRS), scorer, (1.5, 2.5), HEAT_ONLY, FillBudget(round_size=10))
    assert result.stop == "filled"
    assert len(result.hits) >= 5 and all(result.judgement.rows[i]["formula"].startswith("Ba") for i in result.hits)
    rounds = fifth_ba // 10 + 1  # rounds of 10 until the fifth Ba pair has been judged
    assert first_ba > 10 and result.rounds == rounds
    assert result.draws == 2 * 10 * rounds and result.calls == scorer.calls == 10 * rounds
    assert result.message(5, FillBudget()).startswith(
        f"5 of 5 requested candidates found in {20 * rounds} draws, {10 * rounds} predictor calls ({rounds} rounds)"
    )


def test_fill_stops_at_its_draw_budget_with_the_stated_message():
    scorer = GapByElement({"Xe"})  # nothing ever qualifies
    budget = FillBudget(max_draws=50, round_size=8)
    result = fill(3, _cycling_proposer(PAIRS), scorer, (1.5, 2.5), HEAT_ONLY, budget)
    assert result.stop == "draw budget spent" and not result.hits
    assert result.draws == 64 and result.rounds == 4  # the round that passed 50 finished; no new round began
    assert result.message(3, budget) == (
        "0 of 3 requested candidates found in 64 draws, 32 predictor calls; stopped: the draw budget (50) is spent"
    )


def test_search_progress_follows_whatever_ends_the_search_first():
    from matmeta.design.deliver import search_fraction

    budget = FillBudget(max_draws=50, round_size=8)
    result = fill(3, _cycling_proposer(PAIRS), GapByElement({"Xe"}), (1.5, 2.5), HEAT_ONLY, budget)
    assert search_fraction(result, 3, budget) == 1.0  # no hit, but the draw budget is spent: the search is over
    filled = fill(5, _cycling_proposer(PAIRS), GapByElement({"Ba"}), (1.5, 2.5), HEAT_ONLY, FillBudget(round_size=10))
    assert search_fraction(filled, 5, FillBudget()) == 1.0
    # asked for 50 with a roomy budget: the draws (2 per call) are the furthest along
    hits, draws, calls = len(filled.hits), filled.draws, filled.calls
    assert draws == 2 * calls and draws / 800 > max(hits / 50, calls / 4000)
    assert search_fraction(filled, 50, FillBudget(max_draws=800, max_predictor_calls=4000)) == draws / 800 < 1
    assert search_fraction(filled, 50, FillBudget(max_draws=10**6, max_predictor_calls=4000)) == hits / 50


def test_fill_never_passes_its_predictor_budget_and_notices_an_exhausted_proposer():
    scorer = GapByElement({"Xe"})
    budget = FillBudget(max_predictor_calls=30, round_size=8)
    result = fill(3, _cycling_proposer(PAIRS), scorer, (1.5, 2.5), HEAT_ONLY, budget)
    assert result.stop == "predictor-call budget spent" and result.calls == scorer.calls == 30
    small = fill(50, _cycling_proposer(PAIRS[:12]), GapByElement({"Li"}), (1.5, 2.5), HEAT_ONLY)
    lithium = sum(a == "Li" for a, _ in PAIRS[:12])
    assert 0 < lithium < 12 and small.stop == "proposer exhausted" and len(small.hits) == lithium and small.calls == 12
    assert "stopped: no new composition came in 3 rounds" in small.message(50, FillBudget())


def test_unstable_and_invalid_candidates_are_not_hits():
    criterion = StabilityCriterion(threshold_ev_per_atom=0.2, shape=None)
    hot = fill(2, _cycling_proposer(PAIRS[:20]), GapByElement({"Li"}, heat=1.5), (1.5, 2.5), criterion)
    assert not hot.hits and all(r["heat_ev_per_atom"] == pytest.approx(0.3) for r in hot.judgement.rows)
    squeezed = [_abx3("Li", b, lattice=0.9) for b in B_SITES]  # atoms 0.45 A apart: structurally invalid

    def propose(k, rnd, taken, draws_left):
        return [s for s in squeezed if s.composition.reduced_formula not in taken][:k], k

    scorer = GapByElement({"Li"})
    result = fill(2, propose, scorer, (1.5, 2.5), criterion, FillBudget(round_size=5))
    assert not result.hits and scorer.calls == 0  # invalid cells never reach the predictor
    assert criterion.stable(1.0, 5) and not criterion.stable(1.01, 5) and not criterion.stable(float("nan"), 5)


def test_exhaustive_screen_counts_a_hand_enumerated_space_exactly():
    from matmeta.design.screen import allowed_space, screen

    prototypes = [_abx3("Sr", "Ti"), _abx3("La", "Ti", x=("O", "O", "N"))]
    sites = [["Sr", "Ba", "La", "Ti"], ["Ti", "Zr", "Sr"], ["O", "N"], ["O", "N"], ["O", "N"]]
    allowed = {"Sr", "Ba", "La", "Ti", "Zr", "O", "N"}
    space = allowed_space(prototypes, sites, allowed, known={"SrTiO3"})
    # 2 anion sets x 10 ordered cation pairs (A != B) = 20, less SrTiO3 (known), TiSrO3 (= SrTiO3), TiSrO2N (= SrTiO2N)
    assert len(space) == 17
    judged = screen(space, GapByElement({"Ba"}), (1.5, 2.5), HEAT_ONLY)
    # Ba with Ti, Zr or Sr, on either anion set: 6
    assert len(judged.hits) == 6 and judged.calls == 17
    expected = {
        _abx3("Ba", b, x).composition.reduced_formula for b in ("Ti", "Zr", "Sr") for x in (("O",) * 3, ("O", "O", "N"))
    }
    assert {judged.rows[i]["formula"] for i in judged.hits} == expected and len(expected) == 6
    no_n = allowed_space(prototypes, sites, allowed - {"N"}, known={"SrTiO3"})
    assert len(no_n) == 8  # the oxynitride prototype is gone: 10 pairs less SrTiO3 and TiSrO3
    assert allowed_space(prototypes, sites, {"Ba", "O"}, known=()) == []  # no B-site element left


def test_threshold_is_the_cut_that_best_reproduces_the_label():
    rng = np.random.default_rng(0)
    heat_all = rng.uniform(0.0, 0.6, 400)
    heat_ref = heat_all + 0.05  # heat_ref overestimates by 0.05: the best cut is 0.2 + 0.05
    tau, score = choose_threshold(heat_ref, heat_all, label_cut=0.2)
    assert tau == pytest.approx(0.25) and score == pytest.approx(1.0)
    with pytest.raises(ValueError):
        choose_threshold([0.1, 0.2], [0.0, 0.1])
