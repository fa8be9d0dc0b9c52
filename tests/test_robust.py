"""Robust adaptation: perturbed geometry on a fixed neighbour list, PGD in the ball, the drift loss, the recipes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def _predictor(**settings):
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.config import MAMLSettings
    from matmeta.predict.train import untrained_predictor

    config = GNNConfig(hidden=16, layers=2, n_rbf=8, node_features="both", composition_features=True, dropout=0.0)
    predictor = untrained_predictor(config, MAMLSettings(**{"inner_lr": 0.05, "per_element_lr": True, **settings}))
    predictor.maml.eval()
    return predictor


def _batch(predictor, structures, energies=None, gaps=None):
    """A GeometricBatch of pymatgen structures with per-atom energies (eV/atom) and gaps (eV) as labels."""
    from matmeta.models.gnn import collate
    from matmeta.predict.data import graph_from_structure
    from matmeta.predict.robust import GeometricBatch, structure_edge_vectors

    graphs = [graph_from_structure(s, predictor.graph_config) for s in structures]
    n_atoms = np.array([len(s) for s in structures], dtype=float)
    energies = np.zeros(len(structures)) if energies is None else np.asarray(energies, float)
    gaps = np.full(len(structures), 1.5) if gaps is None else np.asarray(gaps, float)
    y = predictor.stats.encode(energies * n_atoms, gaps, n_atoms)
    vectors = [structure_edge_vectors(s, predictor.graph_config) for s in structures]
    return GeometricBatch(collate([(*g, y[i]) for i, g in enumerate(graphs)]), torch.cat(vectors))


@pytest.fixture
def distorted():
    """A low-symmetry ternary oxide cell (every atom off its high-symmetry site)."""
    from pymatgen.core import Lattice, Structure

    lattice = Lattice.from_parameters(4.1, 4.3, 4.6, 88.0, 93.0, 91.0)
    coords = [[0.02, 0.01, 0.03], [0.51, 0.48, 0.52], [0.49, 0.53, 0.04], [0.47, 0.02, 0.51], [0.03, 0.52, 0.46]]
    return Structure(lattice, ["Sr", "Ti", "O", "O", "O"], coords)


def test_edge_vectors_give_the_graph_lengths_and_follow_a_displaced_structure(distorted):
    from matmeta.predict.robust import moved_distances

    predictor = _predictor()
    batch = _batch(predictor, [distorted])
    assert torch.allclose(moved_distances(batch), batch.graphs.edge_dist, atol=1e-5)
    rng = np.random.default_rng(0)
    moves = rng.normal(scale=0.04, size=(len(distorted), 3))
    moved = distorted.copy()
    for i, move in enumerate(moves):
        moved.translate_sites([i], move, frac_coords=False, to_unit_cell=False)
    src, dst = batch.graphs.edge_index.numpy()
    # the same edges (same atoms, same image offsets) measured in the displaced structure by hand
    offsets = batch.edge_vec.numpy() - (distorted.cart_coords[src] - distorted.cart_coords[dst])
    expected = np.linalg.norm(moved.cart_coords[src] + offsets - moved.cart_coords[dst], axis=1)
    got = moved_distances(batch, torch.as_tensor(moves, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_rigid_translation_keeps_every_length_and_isotropic_strain_scales_them(distorted):
    from matmeta.predict.robust import moved_distances

    predictor = _predictor()
    batch = _batch(predictor, [distorted])
    n = batch.graphs.atomic_numbers.shape[0]
    shift = torch.tensor([[0.07, -0.03, 0.05]]).expand(n, 3)
    assert torch.allclose(moved_distances(batch, shift), batch.graphs.edge_dist, atol=1e-5)
    strain = 0.02 * torch.eye(3)[None]
    assert torch.allclose(moved_distances(batch, strain=strain), 1.02 * batch.graphs.edge_dist, atol=1e-5)


def test_pgd_stays_in_the_ball_and_drifts_further_than_random_moves_of_the_same_size(distorted, nacl):
    from matmeta.predict.robust import drift_terms, moved_distances, outputs_at, pgd_displacement, project

    predictor = _predictor()
    forward = predictor.maml.functional()
    batch = _batch(predictor, [distorted, nacl])
    epsilon = 0.05
    delta = pgd_displacement(forward, batch, epsilon, steps=5, generator=torch.Generator().manual_seed(0))
    assert float(delta.norm(dim=1).max()) <= epsilon + 1e-6
    with torch.no_grad():
        clean = outputs_at(forward, batch, moved_distances(batch))
        adversarial = drift_terms(outputs_at(forward, batch, moved_distances(batch, delta)), clean, batch.graphs)
        for seed in range(5):
            move = torch.randn(delta.shape, generator=torch.Generator().manual_seed(seed))
            move = project(move * 10, epsilon)  # exactly ε per atom
            random = drift_terms(outputs_at(forward, batch, moved_distances(batch, move)), clean, batch.graphs)
            assert float(random.sum()) <= float(adversarial.sum()) * 1.02 + 1e-9


def test_robust_loss_is_the_clean_loss_without_a_perturbation_and_adds_a_drift_with_one(distorted, nacl):
    from matmeta.predict.data import loss_fn
    from matmeta.predict.robust import Perturbation, RobustConfig, robust_loss_fn

    predictor = _predictor()
    forward = predictor.maml.functional()
    labelled = _batch(predictor, [distorted, nacl], energies=[-2.0, -2.1], gaps=[3.0, 0.0])
    loss = robust_loss_fn(RobustConfig(kinds=("rattle",), drift_weight=1.0))
    clean = float(loss_fn(forward, labelled.graphs).detach())
    assert float(loss(forward, labelled).detach()) == pytest.approx(clean, rel=1e-6)
    assert float(loss(forward, labelled.graphs).detach()) == pytest.approx(clean, rel=1e-6)
    unlabelled = _batch(predictor, [distorted, nacl], energies=[np.nan] * 2, gaps=[np.nan] * 2)  # clean loss 0
    assert float(loss(forward, unlabelled).detach()) == 0.0
    for kind, size in (("rattle", 0.1), ("strain", 0.03), ("pgd", 0.1)):
        value = loss(forward, unlabelled.with_perturbation(Perturbation(kind, size, seed=3)))
        assert float(value.detach()) > 0.0
        grads = torch.autograd.grad(value, list(predictor.maml.meta_parameters().values()), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_adapting_with_the_robust_loss_lowers_the_worst_case_drift(distorted, nacl, srtio3):
    from matmeta.predict.robust import Perturbation, RobustConfig, robust_loss_fn, worst_drift

    predictor = _predictor(inner_lr=0.3, per_element_lr=False)
    batch = _batch(predictor, [distorted, nacl, srtio3], energies=[np.nan] * 3, gaps=[np.nan] * 3)  # drift only
    loss = robust_loss_fn(RobustConfig(kinds=("pgd",), drift_weight=1e6))  # an untrained net drifts ~1e-3
    before = worst_drift(predictor.maml.functional(), batch, 0.1, steps=3).sum()
    fast = predictor.maml.adapt(batch.with_perturbation(Perturbation("pgd", 0.1, 0)), loss, steps=30)
    after = worst_drift(predictor.maml.functional(fast), batch, 0.1, steps=3).sum()
    assert float(after) < 0.8 * float(before)


def test_robust_config_refuses_unknown_kinds_and_bad_ranges():
    from matmeta.predict.robust import RobustConfig

    with pytest.raises(ValueError, match="kinds"):
        RobustConfig(kinds=("shake",))
    with pytest.raises(ValueError, match="range"):
        RobustConfig(kinds=("rattle",), rattle_sigma=(0.1, 0.02))
    assert not RobustConfig().enabled and RobustConfig(kinds=("strain",)).enabled


def test_the_robust_recipe_is_the_shipped_recipe_plus_perturbed_tasks():
    from matmeta.predict.config import PredictorRecipe
    from matmeta.recipes import load_recipe

    base = PredictorRecipe.from_recipe(load_recipe("recipes/mp.toml"))
    robust = PredictorRecipe.from_recipe(load_recipe("recipes/mp_robust.toml"))
    assert not base.robust.enabled and set(robust.robust.kinds) == {"rattle", "strain", "pgd"}
    assert robust.data == base.data and robust.model == base.model and robust.maml == base.maml
    assert robust.pretrain == base.pretrain and robust.trainer == base.trainer


def test_finetune_robust_adapts_with_the_robust_loss_and_records_it(tmp_path, nacl, cu, srtio3, distorted):
    from typer.testing import CliRunner

    from matmeta.cli import app
    from matmeta.io import write_cif
    from matmeta.predict.predictor import Predictor

    predictor = _predictor(inner_steps=2, inner_lr=0.002)
    predictor.metadata["targets"]["names"] = ["formation_energy_per_atom", "band_gap_pbe"]
    predictor.metadata["targets"]["units"] = {"formation_energy_per_atom": "eV/atom", "band_gap_pbe": "eV"}
    checkpoint = Predictor(predictor.maml, predictor.metadata, None).save(tmp_path / "tiny.ckpt")
    rows = ["name,path,formation_energy_per_atom"]
    for name, structure, value in (
        ("NaCl", nacl, -2.1),
        ("Cu", cu, 0.0),
        ("SrTiO3", srtio3, -3.5),
        ("d", distorted, -3.2),
    ):
        write_cif(structure, tmp_path / f"{name}.cif")
        rows.append(f"{name},{name}.cif,{value}")
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    runs = {}
    for flag in ([], ["--robust"]):
        out = tmp_path / f"adapted{len(flag)}.ckpt"
        args = ["finetune", "--model", str(checkpoint), "--support", str(tmp_path / "s.csv"), "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--target", "formation_energy_per_atom", *flag])
        assert result.exit_code == 0, result.output
        runs[bool(flag)] = Predictor.load(out).metadata["adapted"]
    assert runs[False]["robust"] is None and runs[True]["robust"] == {"pgd_epsilon": 0.05}
    # the unadapted candidate is the same; the adapted one moved with another loss
    assert runs[True]["loo_mae"]["unadapted"] == pytest.approx(runs[False]["loo_mae"]["unadapted"])
    assert math.isfinite(runs[True]["loo_mae"]["adapted"])
    assert runs[True]["loo_mae"]["adapted"] != runs[False]["loo_mae"]["adapted"]
