"""A space too large to enumerate: B-site ordered double perovskites A2BB'X6 from the decoder's elements.

One job: propose rock-salt-ordered double perovskites, either guided by the conditional decoder or at
random, for the same fill loop (:mod:`matmeta.design.fill`). With 52 A-site and 52 B-site elements and
the training anion sets, the space holds ~52 x 1,326 x (anion sets) combinations before the
charge-neutrality screen — too many to score each with the predictor; this is where a steered
proposer has to earn its keep.

* Geometry (the same for both proposers, so only the choice of composition differs): the 10-atom
  primitive cell of the Fm-3m double perovskite (fcc lattice vectors a_p (0,1,1), (1,0,1), (1,1,0)),
  B at 0, B' at (½,½,½), A at (¼,¼,¼) and (¾,¾,¾), the six anions at the octahedron corners, the
  anion triple (X1, X2, X3) of an ABX3 parent used twice. The pseudo-cubic a_p is twice the mean B–X
  distance from pymatgen's average ionic radii (:func:`pseudo_cubic`). A cell from Shannon bond lengths
  with each anion at its own Fm-3m x parameter was tried in session 10: it relaxes known Fm-3m compounds
  far less (Ba2MgWO6 0.072 → 0.026 Å) and starts at a better volume (median change 29 % → 10 %), but on
  120 decoder pairs at validation targets the median RMSD stayed ~0.64 Å (those compositions distort
  wherever they start), so by its rule it was not adopted.
* Decoder proposer: draw ABX3 cells from the decoder conditioned on the window; any two draws with
  the same A and anion triple but different B make one A2BB'X6 (the decoder's chemistry, paired).
* Random proposer: A, B ≠ B' uniformly from the decoder's A/B site elements and an anion triple
  uniformly from the training ones; only charge-neutral (SMACT) compositions are kept.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from matmeta.design.fill import Proposer

_FRAC = [
    [0.0, 0.0, 0.0],  # B
    [0.5, 0.5, 0.5],  # B'
    [0.25, 0.25, 0.25],  # A
    [0.75, 0.75, 0.75],  # A
    [0.25, 0.25, 0.75],  # X ...
    [0.75, 0.25, 0.75],
    [0.25, 0.75, 0.25],
    [0.75, 0.75, 0.25],
    [0.75, 0.25, 0.25],
    [0.25, 0.75, 0.75],
]


def pseudo_cubic(b: str, b2: str, anions: Sequence[str]) -> float:
    """a_p (Å): twice the mean B–X distance, each the sum of average ionic radii (floor 3.4 Å)."""
    from pymatgen.core import Element

    r_x = float(np.mean([Element(x).average_ionic_radius for x in anions]))
    r_b = 0.5 * (float(Element(b).average_ionic_radius) + float(Element(b2).average_ionic_radius))
    return max(2.0 * (r_b + r_x), 3.4)


def double_perovskite(a: str, b: str, b2: str, anions: Sequence[str]) -> Any:
    """The 10-atom rock-salt-ordered A2BB'X6 cell (module docstring); ``anions`` is an (X1, X2, X3) triple."""
    from pymatgen.core import Lattice, Structure

    a_p = pseudo_cubic(b, b2, anions)
    lattice = Lattice(a_p * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
    species = [b, b2, a, a, *anions, *anions]
    return Structure(lattice, species, _FRAC)


def _key(a: str, b: str, b2: str, anions: Sequence[str]) -> str:
    """The reduced formula of a double perovskite (the fill loop's identity of a proposal)."""
    from pymatgen.core import Composition

    amounts: dict[str, float] = {}
    for el, k in ((a, 2), (b, 1), (b2, 1), *((x, 2) for x in anions)):
        amounts[el] = amounts.get(el, 0) + k
    return Composition(amounts).reduced_formula


def random_double_proposer(
    a_sites: Sequence[str], b_sites: Sequence[str], anion_sets: Sequence[Sequence[str]], seed: int
) -> Proposer:
    """Uniformly random charge-neutral A2BB'X6 (module docstring); a draw is one random combination."""
    rng = np.random.default_rng(seed)

    def propose(k: int, rnd: int, taken: Collection[str], draws_left: int) -> tuple[list[Any], int]:
        out, seen, draws = [], set(taken), 0
        while len(out) < k and draws < max(draws_left, 1):
            draws += 1
            a = a_sites[int(rng.integers(len(a_sites)))]
            b, b2 = (b_sites[int(i)] for i in rng.choice(len(b_sites), 2, replace=False))
            anions = anion_sets[int(rng.integers(len(anion_sets)))]
            if a not in (b, b2):
                _admit(a, b, b2, anions, seen, out)
        return out, draws

    return propose


def _admit(a: str, b: str, b2: str, anions: Sequence[str], seen: set[str], out: list[Any]) -> None:
    """Append A2BB'X6 to ``out`` unless its formula was seen or is not charge-neutral (SMACT)."""
    from pymatgen.core import Composition

    from matmeta.design.validity import compositional_validity

    formula = _key(a, b, b2, anions)
    if formula not in seen and compositional_validity(Composition(formula)):
        seen.add(formula)
        out.append(double_perovskite(a, b, b2, anions))


def decoder_double_proposer(
    generator: Any, window: tuple[float, float], seed: int, draws_per_round: int = 2048, **sample_options: Any
) -> Proposer:
    """Pairs of decoder draws (same A and anions, different B) as A2BB'X6 (module docstring).

    A draw is one decoder sample; every round draws ``draws_per_round`` (fewer when the budget has
    less left) conditioned uniformly over the window.
    """
    from matmeta.design.request import target_gaps

    def propose(k: int, rnd: int, taken: Collection[str], draws_left: int) -> tuple[list[Any], int]:
        m = max(2, min(draws_per_round, draws_left))
        round_seed = seed + 7_919 * rnd
        cells = generator.sample(
            m, target_gaps(m, window, generator.gap_range, round_seed), round_seed, **sample_options
        )
        groups: dict[tuple[str, ...], list[str]] = {}
        for s in cells:
            symbols = [site.specie.symbol for site in s]
            groups.setdefault((symbols[0], *symbols[2:]), []).append(symbols[1])
        out, seen = [], set(taken)
        for (a, *anions), bs in groups.items():
            for i, b in enumerate(bs):
                for b2 in bs[i + 1 :]:
                    if len(out) < k and b != b2 and a not in (b, b2):
                        _admit(a, b, b2, tuple(anions), seen, out)
        return out, m

    return propose
