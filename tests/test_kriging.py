"""The ``kriged`` finetune candidate: a GP on recalibration residuals in the head's feature space."""

from __future__ import annotations

import numpy as np
import pytest


def _perovskite(a: str, b: str, lattice: float = 3.95):
    from pymatgen.core import Lattice, Structure

    sites = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(lattice), [a, b, "O", "O", "O"], sites)


def _tiny():
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.config import MAMLSettings
    from matmeta.predict.train import untrained_predictor

    config = GNNConfig(hidden=16, layers=2, n_rbf=8, node_features="descriptors", composition_features=True)
    return untrained_predictor(config, MAMLSettings())


def test_gp_carries_a_cluster_residual_to_its_neighbours_only():
    from matmeta.predict.kriging import fit_gp, gp_mean

    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 0.1, (5, 2))
    b = rng.normal(0.0, 0.1, (5, 2)) + 5.0
    residuals = np.r_[np.full(5, 1.0), np.full(5, -1.0)] + rng.normal(0.0, 0.05, 10)
    gp = fit_gp(np.r_[a, b], residuals)
    near_a, near_b, far = gp_mean(gp, np.array([[0.05, 0.0], [5.0, 5.05], [100.0, 100.0]]))
    assert near_a == pytest.approx(1.0, abs=0.2)
    assert near_b == pytest.approx(-1.0, abs=0.2)
    assert abs(far) < 1e-6  # far from every support point: no correction
    assert not np.any(fit_gp(a[:2], residuals[:2])["alpha"])  # too few points: no correction


def test_finetune_keeps_kriged_for_a_family_specific_gap_offset(tmp_path):
    """Lab gaps = the model's own gap + 3 eV, + 2 eV more for stannates: only a local correction learns that."""
    from matmeta.predict.predictor import Predictor

    predictor = _tiny()
    structures = [_perovskite(a, b) for a in ("Sr", "Ba", "Ca") for b in ("Ti", "Zr", "Sn", "Nb")]
    own = np.array([r["gap_if_nonmetal"] for r in predictor.predict_structures(structures, mc_samples=0)])
    stannate = np.array([s[1].specie.symbol == "Sn" for s in structures])
    values = own + 3.0 + 2.0 * stannate
    adapted, report = predictor.finetune(structures, values, "band_gap")
    assert report.kept == "kriged", report.message()
    assert report.loo_mae["kriged"] < 0.5 * min(report.loo_mae["recalibrated"], report.loo_mae["support_mean"])
    new = _perovskite("Sr", "Sn", lattice=4.02)  # a stannate that is not in the support set
    reloaded = Predictor.load(adapted.save(tmp_path / "kriged.ckpt"))
    (row,) = reloaded.predict_structures([new], mc_samples=0)
    (own_new,) = [r["gap_if_nonmetal"] for r in predictor.predict_structures([new], mc_samples=0)]
    assert row["band_gap"] == pytest.approx(own_new + 5.0, abs=0.5)
