import math

import numpy as np
import pytest
import torch

from matmeta.design.data import canonical_cell, cell_to_structure, encode_cells, loss_fn, make_batch
from matmeta.models.decoder import CrystalCVAE, DecoderConfig

ELEMENTS = ("O", "N", "F", "Ti", "Sr", "Ba", "Nb", "K")


def _model(seed: int = 0) -> CrystalCVAE:
    torch.manual_seed(seed)
    return CrystalCVAE(DecoderConfig(elements=ELEMENTS, latent_dim=4, hidden=32))


def _batch(srtio3, n: int = 4, seed: int = 0):
    cell = canonical_cell(srtio3, ELEMENTS)
    species, angles, lattice = encode_cells([cell] * n)
    cond = torch.tensor([[1.0, 0.0, 1.6]] * n)
    return make_batch(species, angles, lattice, cond, torch.Generator().manual_seed(seed), 4)


def test_canonical_cell_of_srtio3(srtio3):
    species, frac, lattice = canonical_cell(srtio3, ELEMENTS)
    assert [ELEMENTS[i] for i in species] == ["Sr", "Ti", "O", "O", "O"]
    np.testing.assert_allclose(frac[0], 0.0, atol=1e-9)
    np.testing.assert_allclose(frac[1], [0.5, 0.5, 0.5], atol=1e-9)
    # X1, X2, X3 sit from B along a, b, c: their coordinate on that axis is 0 (A-origin setting)
    for axis in range(3):
        assert frac[2 + axis][axis] == pytest.approx(0.0, abs=1e-9)
        assert np.delete(frac[2 + axis], axis) == pytest.approx([0.5, 0.5])
    np.testing.assert_allclose(lattice, [3.905, 3.905, 3.905, 90, 90, 90])


def test_canonical_cell_round_trip_and_origin_shift(srtio3):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    shifted = srtio3.copy()
    shifted.translate_sites(list(range(5)), [0.13, 0.71, 0.2])
    species, frac, lattice = canonical_cell(shifted, ELEMENTS)
    np.testing.assert_allclose(frac[1], [0.5, 0.5, 0.5], atol=1e-9)
    back = cell_to_structure(species, frac, lattice, ELEMENTS)
    assert StructureMatcher().fit(back, srtio3)


def test_canonical_cell_refuses_other_cells(nacl):
    from matmeta.errors import MatmetaInputError

    with pytest.raises(MatmetaInputError, match="8 atoms"):
        canonical_cell(nacl, ("Na", "Cl"))
    with pytest.raises(MatmetaInputError, match="Zr never seen"):
        canonical_cell(_abx3("Sr", "Zr"), ELEMENTS)


def _abx3(a: str, b: str):
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(4.0), [a, b, "O", "O", "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )


def test_loss_is_finite_per_example_and_matches_von_mises_normaliser(srtio3):
    model = _model()
    batch = _batch(srtio3)
    per = model(batch["species"], batch["angles"], batch["lattice"], batch["cond"], batch["eps"])
    assert per.shape == (4,) and torch.isfinite(per).all()
    # the von Mises density integrates to one for any kappa (log I0 via i0e is right)
    for kappa in (0.1, 3.0, 50.0):
        theta = torch.linspace(-math.pi, math.pi, 20001, dtype=torch.float64)
        k = torch.tensor(kappa, dtype=torch.float64)
        log_norm = torch.log(torch.special.i0e(k)) + k + math.log(2 * math.pi)
        density = torch.exp(k * torch.cos(theta - 0.3) - log_norm)
        assert torch.trapezoid(density, theta).item() == pytest.approx(1.0, abs=1e-6)


def test_sample_is_seeded_and_respects_the_element_mask():
    model = _model().eval()
    cond = torch.tensor([[1.0, 0.0, 1.0]] * 32)
    mask = torch.zeros(5, len(ELEMENTS), dtype=torch.bool)
    mask[0, ELEMENTS.index("Ba")] = mask[0, ELEMENTS.index("K")] = True
    mask[1, ELEMENTS.index("Nb")] = True
    mask[2:, ELEMENTS.index("O")] = mask[2:, ELEMENTS.index("N")] = True
    a = model.sample(cond, torch.Generator().manual_seed(5), mask, guidance=2.0)
    b = model.sample(cond, torch.Generator().manual_seed(5), mask, guidance=2.0)
    c = model.sample(cond, torch.Generator().manual_seed(6), mask, guidance=2.0)
    assert torch.equal(a["species"], b["species"]) and torch.equal(a["frac"], b["frac"])
    assert not torch.equal(a["z"], c["z"])
    allowed = mask.nonzero().tolist()
    for row in a["species"].tolist():
        assert all([site, e] in allowed for site, e in enumerate(row))
    assert ((a["frac"] >= 0) & (a["frac"] < 1)).all()
    assert (a["lattice"][:, :3] > 0).all()


def test_species_logits_are_autoregressive(srtio3):
    """Changing the species at site k changes the logits of sites > k only."""
    model = _model()
    batch = _batch(srtio3, n=1)
    hidden = model._hidden(batch["eps"], batch["cond"])
    base = model.species_logits(hidden, batch["species"])
    changed = batch["species"].clone()
    changed[0, 1] = ELEMENTS.index("Nb")
    other = model.species_logits(hidden, changed)
    assert torch.allclose(base[:, :2], other[:, :2])
    assert not torch.allclose(base[:, 2:], other[:, 2:])


def test_inner_loop_lowers_the_support_loss(srtio3):
    from matmeta.meta.maml import MAML

    model = _model()
    maml = MAML(model, inner_lr=0.02, inner_steps=5, adapt="head").eval()
    batch = _batch(srtio3)
    before = loss_fn(maml.functional(), batch).item()
    fast = maml.adapt(batch, loss_fn)
    after = loss_fn(maml.functional(fast), batch).item()
    assert after < before - 0.1
    assert set(fast) == {n for n, _ in model.named_parameters() if n.startswith(CrystalCVAE.head_prefixes)}


def test_zero_weight_support_is_a_no_op_and_vmap_matches_loop(srtio3):
    from matmeta.meta.maml import MAML

    model = _model()
    maml = MAML(model, inner_lr=0.05, inner_steps=2, adapt="head")
    support, query = _batch(srtio3, seed=1), _batch(srtio3, seed=2)
    zero = {**support, "weight": torch.zeros(4)}
    fast = maml.adapt(zero, loss_fn)
    for name, value in fast.items():
        assert torch.allclose(value, dict(model.named_parameters())[name])
    tasks = [(support, query), (zero, query)]
    a = maml.meta_loss(tasks, loss_fn, vectorize=True)
    b = maml.meta_loss(tasks, loss_fn, vectorize=False)
    assert a.item() == pytest.approx(b.item(), rel=1e-4)
