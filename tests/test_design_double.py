"""Double perovskites A2BB'X6: the cell, and the random and decoder-paired proposers."""

import numpy as np
import pytest

from matmeta.design.double import decoder_double_proposer, double_perovskite, pseudo_cubic, random_double_proposer


def _abx3(a, b, x=("O", "O", "O")):
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(4.0), [a, b, *x], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )


def test_rock_salt_ordered_cell():
    from matmeta import geometry

    s = double_perovskite("Sr", "Ti", "Zr", ("O", "O", "O"))
    assert len(s) == 10 and s.composition.reduced_formula == "Sr2ZrTiO6"
    a_p = pseudo_cubic("Ti", "Zr", ("O", "O", "O"))
    assert s.volume == pytest.approx(2 * a_p**3)  # two perovskite units
    centers, neighbors, _, dist = geometry.neighbor_list(s.lattice.matrix, s.cart_coords, 0.51 * a_p)
    for b in (0, 1):  # each B and B' has six anions at a_p / 2 and no cation that close
        mine = centers == b
        assert mine.sum() == 6 and np.allclose(dist[mine], a_p / 2)
        assert {s[int(j)].specie.symbol for j in neighbors[mine]} == {"O"}


def test_random_proposer_gives_new_charge_neutral_compositions():
    from matmeta.design.validity import compositional_validity

    propose = random_double_proposer(["Sr", "Ba", "La"], ["Ti", "Zr", "Nb", "Sc"], [("O", "O", "O")], seed=0)
    made, draws = propose(5, 0, {"Sr2ZrTiO6"}, 1000)
    formulas = [s.composition.reduced_formula for s in made]
    assert len(set(formulas)) == 5 and "Sr2ZrTiO6" not in formulas and draws >= 5
    assert all(compositional_validity(s.composition) and len(s) == 10 for s in made)


def test_decoder_proposer_pairs_draws_with_the_same_a_site_and_anions():
    class FakeDecoder:
        gap_range = (0.0, 6.0)

        def sample(self, m, gaps, seed, **options):
            return [
                _abx3("Sr", "Ti"),
                _abx3("Sr", "Zr"),
                _abx3("Ba", "Ti"),
                _abx3("Sr", "Ti"),
                _abx3("Sr", "Hf", ("O", "O", "N")),
            ]

    propose = decoder_double_proposer(FakeDecoder(), (1.0, 3.0), seed=0)
    made, draws = propose(10, 0, set(), 5)
    # (Sr, O3) holds Ti, Zr, Ti: one new pair (Ti, Zr); Ba and the oxynitride have no partner
    assert [s.composition.reduced_formula for s in made] == ["Sr2ZrTiO6"] and draws == 5
    assert propose(10, 1, {"Sr2ZrTiO6"}, 5)[0] == []


def test_connectivity_check_reads_double_perovskites():
    from matmeta.design.relax import keeps_perovskite_connectivity

    s = double_perovskite("Ba", "Fe", "Mo", ("O", "O", "O"))
    assert keeps_perovskite_connectivity(s)
    # B' pushed 0.35 a_p towards one corner anion: its octahedron is torn apart
    torn = s.copy()
    a_p = pseudo_cubic("Fe", "Mo", ("O", "O", "O"))
    torn.translate_sites([1], [0.0, 0.0, 0.35 * a_p], frac_coords=False)
    assert not keeps_perovskite_connectivity(torn)
    # an A site swapped with an anion: no longer A2BB'X6 with six-fold B sites
    swapped = s.copy()
    swapped.replace(2, "O")
    swapped.replace(4, "Ba")
    assert not keeps_perovskite_connectivity(swapped)
