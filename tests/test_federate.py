"""Federated meta-learning: server maths, resume, privacy budget (no transport)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from matmeta.federate.aggregate import Update, check_update
from matmeta.federate.config import FederateConfig
from matmeta.federate.labs import split_labs
from matmeta.federate.privacy import clip_arrays, epsilon
from matmeta.federate.server import STATE_FILE, Coordinator, open_state


def _initial() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 2, generator=g), "b.bias": torch.randn(4, generator=g)}


def _update(client: str, seed: int, scale: float = 0.1, n: int = 2) -> Update:
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=(2, 3)).T.astype(np.float32) * scale, rng.normal(size=4).astype(np.float32) * scale]
    return Update(client, arrays, n, {"loss": 1.0 + seed})


def _coordinator(cfg: FederateConfig, path=None) -> Coordinator:
    return Coordinator(
        cfg, open_state(_initial(), path), state_path=None if path is None else path / STATE_FILE, log=lambda m: None
    )


def test_weighted_mean_and_avg_step():
    cfg = FederateConfig(rounds=3, server_optimizer="avg", server_lr=1.0)
    c = _coordinator(cfg)
    before = {k: v.clone() for k, v in c.state.params.items()}
    u1, u2 = _update("a", 1, n=1), _update("b", 2, n=3)
    report = c.finish_round([u1, u2], [])
    assert report.accepted == ["a", "b"] and report.loss == pytest.approx(2.5)
    for i, name in enumerate(c.state.names):
        mean = (u1.arrays[i] * 1 + u2.arrays[i] * 3) / 4
        np.testing.assert_allclose(c.state.params[name].numpy(), before[name].numpy() - mean, rtol=1e-5, atol=1e-6)


def test_nan_and_oversized_updates_are_rejected_and_do_not_poison_the_round():
    cfg = FederateConfig(rounds=3, server_optimizer="avg", max_update_norm=5.0)
    good = _update("good", 1)
    nan = _update("nan", 2)
    nan.arrays[1][2] = np.nan
    huge = _update("huge", 3, scale=100.0)
    wrong = Update("shape", [np.zeros((2, 2), np.float32), np.zeros(4, np.float32)], 2)
    c = _coordinator(cfg)
    report = c.finish_round([good, nan, huge, wrong], [])
    reference = _coordinator(cfg)
    reference.finish_round([good], [])
    assert report.accepted == ["good"]
    assert "NaN" in report.rejected["nan"] and "oversized" in report.rejected["huge"]
    assert "shape" in report.rejected["shape"]
    for name in c.state.names:
        assert torch.isfinite(c.state.params[name]).all()
        torch.testing.assert_close(c.state.params[name], reference.state.params[name])


def test_a_dropped_lab_does_not_stop_the_round_and_an_empty_round_keeps_the_weights():
    cfg = FederateConfig(rounds=3)
    c = _coordinator(cfg)
    start = {k: v.clone() for k, v in c.state.params.items()}
    report = c.finish_round([_update("a", 1)], ["client b"])
    assert report.dropped == ["client b"] and c.state.round == 1
    assert "dropped client b" in report.message()
    assert not torch.equal(c.state.params["b.bias"], start["b.bias"])
    kept = {k: v.clone() for k, v in c.state.params.items()}
    report = c.finish_round([], ["client a", "client b"])
    assert c.state.round == 2 and report.accepted == []
    for name in kept:
        torch.testing.assert_close(c.state.params[name], kept[name])


def test_resume_from_the_round_checkpoint_gives_the_uninterrupted_weights(tmp_path):
    cfg = FederateConfig(rounds=4, server_optimizer="adam", server_lr=0.05)
    straight = _coordinator(cfg)
    for r in range(4):
        straight.finish_round([_update("a", r), _update("b", 10 + r)], [])
    first = _coordinator(cfg, tmp_path)
    for r in range(2):
        first.finish_round([_update("a", r), _update("b", 10 + r)], [])
    resumed = _coordinator(cfg, tmp_path)  # a new server process reads server_state.ckpt
    assert resumed.state.round == 2 and resumed.state.adam_step == 2 and resumed.rounds_left() == 2
    for r in range(2, 4):
        resumed.finish_round([_update("a", r), _update("b", 10 + r)], [])
    assert resumed.phase == "done" and len(resumed.state.history) == 4
    for name in straight.state.names:
        torch.testing.assert_close(resumed.state.params[name], straight.state.params[name])


def test_check_update_reasons():
    shapes = [(3, 2), (4,)]
    ok = [np.ones((3, 2), np.float32), np.ones(4, np.float32)]
    assert check_update(ok, shapes, 10.0) is None
    assert "oversized" in check_update(ok, shapes, 1.0)
    assert "arrays" in check_update(ok[:1], shapes, 10.0)
    assert "non-finite" in check_update([ok[0], np.array([1, 2, np.inf, 0], np.float32)], shapes, 10.0)


def test_privacy_budget_and_clipping():
    # one round, σ = 1, δ = 1e-5: min_α α/2 + ln(1e5)/(α−1) = 5.30 at α ≈ 5.8
    assert epsilon(1, 1.0, 1e-5) == pytest.approx(0.5 + 2 * math.sqrt(math.log(1e5) / 2) + 0.0, abs=0.02)
    assert epsilon(10, 1.0, 1e-5) > epsilon(1, 1.0, 1e-5) > epsilon(1, 2.0, 1e-5)
    assert epsilon(5, 0.0, 1e-5) == math.inf and epsilon(0, 1.0, 1e-5) == 0.0
    clipped = clip_arrays([np.full(4, 3.0), np.full(5, 4.0)], 2.0)
    assert math.sqrt(sum(float((a**2).sum()) for a in clipped)) == pytest.approx(2.0, rel=1e-5)


def _noise_of_one_round(labs: int) -> torch.Tensor:
    """What one DP round adds to the shared weights when every one of ``labs`` labs sends a zero update."""
    cfg = FederateConfig(rounds=2, server_optimizer="avg", dp_clip=1.0, dp_noise=2.0)
    initial = {"a.weight": torch.zeros(40, 50), "b.bias": torch.zeros(2000)}  # 4,000 draws: std to ±2.3 %
    c = Coordinator(cfg, open_state(initial, None), log=lambda m: None)
    zero = [Update(f"lab{i}", [np.zeros((40, 50), np.float32), np.zeros(2000, np.float32)], 1) for i in range(labs)]
    report = c.finish_round(zero, [])
    assert len(report.accepted) == labs and c.privacy_budget() == pytest.approx(epsilon(1, 2.0, 1e-5))
    return torch.cat([(initial[n] - c.state.params[n]).flatten() for n in c.state.names])


def test_dp_noise_is_added_with_the_configured_scale():
    # σ · C / n_labs on the mean of n_labs updates: 2 · 1 / 2 = 1.0 and 2 · 1 / 8 = 0.25
    two, eight = _noise_of_one_round(2), _noise_of_one_round(8)
    assert float(two.std()) == pytest.approx(1.0, rel=0.07) and abs(float(two.mean())) < 0.07
    assert float(eight.std()) == pytest.approx(0.25, rel=0.07)
    torch.testing.assert_close(eight * 4, two)  # the same draws (same seed), scaled by 1 / n_labs exactly


def test_labs_are_chemically_contiguous_and_disjoint():
    families = ["Li", "Na", "K", "Ca", "Sr", "Ti", "V", "Nb", "Ni", "Pd", "Pt", "Al", "In", "Pb", "As", "Si"]
    labs = split_labs(families, 4, held_out=1, seed=0)
    names = [set(lab.train) | set(lab.held_out) for lab in labs]
    assert sum(len(n) for n in names) == len(families) and set().union(*names) == set(families)
    assert {"Li", "Na", "K"} <= names[0] and {"In", "Pb", "As"} <= names[3] and "Pd" in names[2]
    assert all(len(lab.held_out) == 1 for lab in labs)
    with pytest.raises(ValueError):
        split_labs(families[:5], 4, held_out=1)


def test_the_shared_start_is_an_ordinary_predictor_checkpoint(tmp_path):
    from matmeta.federate.config import FederatedRecipe
    from matmeta.federate.export import export_predictor
    from matmeta.federate.tasks import Predictor, new_model_state

    raw = {"federate": {"algorithm": "metasgd"}, "model": {"hidden": 8, "layers": 1}}
    recipe = FederatedRecipe.from_recipe(raw)
    state = open_state(new_model_state(recipe.model, recipe.maml_settings(), 0), None)
    state.extra = {
        "stats": {
            "heat_per_atom_mean": -1.0,
            "heat_per_atom_std": 0.5,
            "gap_mean": 2.0,
            "gap_std": 1.0,
            "metal_threshold_ev": 0.0,
        },
        "elements": [8, 22, 38],
    }
    state.round = 3
    path = export_predictor(recipe, state, tmp_path / "shared.ckpt", raw)
    predictor = Predictor.load(path)
    assert predictor.stats.heat_per_atom_mean == -1.0 and predictor.elements_seen == {8, 22, 38}
    assert predictor.maml.learn_inner_lr and predictor.metadata["families"]["train"] == []
    loaded = predictor.maml.state_dict()
    for name in state.names:
        if name != "model.embedding.weight":  # its UNK row is set from the labs' elements
            torch.testing.assert_close(loaded[name], state.params[name])
    z = torch.tensor([38, 22, 8, 8, 8])
    src, dst = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    keep = src != dst
    edges = torch.stack([src[keep], dst[keep]])
    (row,) = predictor.predict_graphs([(z, edges, torch.full((edges.shape[1],), 2.5))], mc_samples=1)
    assert all(math.isfinite(row[key]) for key in ("heat_ref", "band_gap", "p_metal"))


def test_pretraining_rounds_ask_for_fedavg_then_the_meta_algorithm():
    cfg = FederateConfig(
        rounds=3,
        pretrain_rounds=1,
        pretrain_local_steps=7,
        algorithm="reptile",
        server_optimizer="adam",
        server_lr=0.01,
    )
    c = _coordinator(cfg)
    first = c.instructions()
    assert first["algorithm"] == "fedavg" and first["local_steps"] == 7 and first["client_lr"] == cfg.pretrain_lr
    start = {k: v.clone() for k, v in c.state.params.items()}
    u = _update("a", 1)
    c.finish_round([u], [])  # a FedAvg round: the lab's local model becomes the shared one
    for i, name in enumerate(c.state.names):
        np.testing.assert_allclose(c.state.params[name].numpy(), start[name].numpy() - u.arrays[i], atol=1e-6)
    second = c.instructions()
    assert second["algorithm"] == "reptile" and second["local_steps"] == cfg.local_steps


def test_in_process_rounds_count_the_bytes_each_lab_sends_and_receives():
    from matmeta.federate.inprocess import run_in_process

    cfg = FederateConfig(rounds=3, server_optimizer="avg")
    c = _coordinator(cfg)

    def lab(arrays, config):
        return [np.full_like(a, 0.01) for a in arrays], 1, {"loss": 0.5}

    traffic = run_in_process(c, [lab, lab])
    per_message = (3 * 2 + 4) * 4  # float32 entries of the two arrays
    assert c.phase == "done" and traffic.up == [per_message] * 6 and traffic.down == [per_message] * 6
    np.testing.assert_allclose(c.state.params["b.bias"].numpy(), _initial()["b.bias"].numpy() - 0.03, atol=1e-6)


def test_bench_bytes_to_the_same_mae_counts_rounds_until_the_target_or_bounds_them():
    from matmeta.bench.federated import _bytes_to, _third

    fed = {"curve": [(13, 0.20), (16, 0.18), (19, 0.17)], "bytes_round": 100}
    avg = {"curve": [(13, 0.22), (16, 0.21), (19, 0.19)], "bytes_round": 100}
    assert _bytes_to(fed, 0.18) == {"reached": True, "round": 16, "bytes": 1600}
    assert _bytes_to(avg, 0.18) == {"reached": False, "round": 19, "bytes": 1900}
    assert _third(_bytes_to(fed, 0.19), _bytes_to(avg, 0.19)) == "NOT MET"  # 1600 vs 1900
    assert _third({"reached": True, "round": 2, "bytes": 200}, _bytes_to(avg, 0.19)) == "MET"
    assert _third(_bytes_to(fed, 0.18), _bytes_to(avg, 0.18)).startswith("UNDECIDED")  # 3 * 1600 > 1900
    assert _third({"reached": True, "round": 6, "bytes": 600}, _bytes_to(avg, 0.18)).startswith("MET")
    assert _third(_bytes_to(fed, 0.1), _bytes_to(avg, 0.1)).startswith("NOT MET")


def test_a_pretraining_server_step_extrapolates_the_labs_mean_progress():
    cfg = FederateConfig(rounds=2, pretrain_rounds=1, pretrain_server_lr=2.5, server_lr=0.5)
    c = _coordinator(cfg)
    start = {k: v.clone() for k, v in c.state.params.items()}
    u1, u2 = _update("a", 1), _update("b", 2)
    c.finish_round([u1, u2], [])
    after_pretraining = {k: v.clone() for k, v in c.state.params.items()}
    for i, name in enumerate(c.state.names):
        mean = (u1.arrays[i] + u2.arrays[i]) / 2
        np.testing.assert_allclose(after_pretraining[name].numpy(), start[name].numpy() - 2.5 * mean, atol=1e-6)
    c.finish_round([u1], [])  # a meta round takes server_lr
    for i, name in enumerate(c.state.names):
        expected = after_pretraining[name].numpy() - 0.5 * u1.arrays[i]
        np.testing.assert_allclose(c.state.params[name].numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="pretrain_server_lr"):
        FederateConfig(pretrain_server_lr=0.0)


def test_pretraining_server_momentum_is_heavy_ball_and_survives_a_restart(tmp_path):
    cfg = FederateConfig(rounds=3, pretrain_rounds=3, pretrain_server_lr=0.5, pretrain_server_momentum=0.75)
    c = _coordinator(cfg, tmp_path)
    start = {k: v.clone() for k, v in c.state.params.items()}
    u1, u2 = _update("a", 1), _update("b", 2)
    c.finish_round([u1], [])
    c.finish_round([u2], [])  # m2 = 0.75 u1 + u2; θ2 = θ0 − 0.5 (u1 + m2)
    for i, name in enumerate(c.state.names):
        expected = start[name].numpy() - 0.5 * (u1.arrays[i] + 0.75 * u1.arrays[i] + u2.arrays[i])
        np.testing.assert_allclose(c.state.params[name].numpy(), expected, atol=1e-6)
    resumed = _coordinator(cfg, tmp_path)  # the momentum buffer is part of the round checkpoint
    for name in c.state.names:
        torch.testing.assert_close(resumed.state.momentum[name], c.state.momentum[name])
    with pytest.raises(ValueError, match="pretrain_server_momentum"):
        FederateConfig(pretrain_server_momentum=1.0)


def test_fedprox_local_steps_settle_between_the_lab_optimum_and_the_shared_weights():
    """Local loss ½‖θ − t‖² plus μ/2 ‖θ − θ₀‖²: plain steps reach t, FedProx steps (t + μ θ₀) / (1 + μ)."""
    from matmeta.federate.local import LocalLearner
    from matmeta.meta.maml import MAML

    class Vector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

    target, shared = torch.tensor([1.0, -2.0, 0.5]), np.array([0.2, 0.4, -1.0], dtype=np.float32)

    def loss_fn(model, batch):
        return 0.5 * ((model.w - target) ** 2).sum()

    learner = LocalLearner(MAML(Vector()), loss_fn, None, "fedavg", ["model.w"], pooled_batch=lambda n, g: None)
    for mu, expected in (
        (0.0, target.numpy()),
        (1.0, (target.numpy() + shared) / 2),
        (0.25, (target.numpy() + 0.25 * shared) / 1.25),
    ):
        result = learner.update([shared], 1, 200, "sgd", 0.5, 1, 1, proximal_mu=mu)
        np.testing.assert_allclose(shared - result.arrays[0], expected, atol=1e-5)
    cfg = FederateConfig(rounds=2, pretrain_rounds=1, pretrain_proximal_mu=0.1)
    c = _coordinator(cfg)
    assert c.instructions()["proximal_mu"] == 0.1  # pretraining rounds ask for it ...
    c.finish_round([_update("a", 1)], [])
    assert c.instructions()["proximal_mu"] == 0.0  # ... meta rounds do not
    with pytest.raises(ValueError, match="pretrain_proximal_mu"):
        FederateConfig(pretrain_proximal_mu=-1.0)


def test_pretraining_local_rate_follows_a_cosine_to_its_final_value():
    from matmeta.federate.config import pretrain_lr

    cfg = FederateConfig(rounds=6, pretrain_rounds=5, pretrain_lr=0.002, pretrain_lr_final=0.0002)
    rates = [pretrain_lr(cfg, r) for r in range(5)]
    assert rates[0] == pytest.approx(0.002) and rates[-1] == pytest.approx(0.0002)
    assert rates[2] == pytest.approx(0.0011)  # halfway: the mean of the two
    assert rates[1] == pytest.approx(0.0002 + 0.0018 * (1 + math.cos(math.pi / 4)) / 2)
    assert pretrain_lr(FederateConfig(pretrain_rounds=5), 3) == FederateConfig().pretrain_lr  # constant by default
    c = _coordinator(cfg)
    for r in range(2):
        assert c.instructions()["client_lr"] == pytest.approx(rates[r])
        c.finish_round([_update("a", r)], [])
    with pytest.raises(ValueError, match="pretrain_lr_final"):
        FederateConfig(pretrain_lr_final=0.0)
