"""The meta-learned activation: SiLU at first, pooled SiLU weights load into it, its shape is outer-loop only."""

from __future__ import annotations

import dataclasses

import pytest
import torch


def test_the_rational_activation_starts_as_silu_and_its_shape_changes_the_function():
    from matmeta.models.activations import RationalSiLU

    act = RationalSiLU()
    x = torch.linspace(-8, 8, 401)
    assert torch.equal(act(x), torch.nn.functional.silu(x))
    with torch.no_grad():
        act.shape_coefficients.copy_(torch.tensor([0.1, -0.2, 0.05, 0.3]))
    a0, a1, a2, a3 = 0.1, -0.2, 0.05, 0.3
    expected = torch.nn.functional.silu(x) + (a0 + a1 * x + a2 * x**2 + a3 * x**3) / (1 + x**4)
    assert torch.allclose(act(x), expected, atol=1e-6)
    assert (
        float((act(torch.tensor([1e4])).detach() - 1e4).abs()) < 1e-3
    )  # the tail is SiLU's: the rational term decays as 1/x


def test_a_pooled_silu_network_loads_into_the_rational_network_and_gives_the_same_outputs():
    from matmeta.models.gnn import CrystalGNN, GNNConfig
    from matmeta.predict.pooled import load_pooled, pooled_config, training_fields

    torch.manual_seed(0)
    config = GNNConfig(hidden=8, layers=2, n_rbf=4, activation="rational")
    silu = CrystalGNN(pooled_config(config)).eval()
    rational = CrystalGNN(config).eval()
    load_pooled(rational, silu.state_dict())
    z, ei = torch.tensor([8, 8, 22]), torch.tensor([[0, 1, 2, 2], [2, 2, 0, 1]])
    dist, batch = torch.tensor([1.9, 2.0, 1.9, 2.0]), torch.zeros(3, dtype=torch.long)
    assert torch.equal(silu(z, ei, dist, batch, 1), rational(z, ei, dist, batch, 1))
    assert training_fields(config) == training_fields(pooled_config(config))  # one pooled cache for both
    wrong = {k: v for k, v in silu.state_dict().items() if not k.startswith("head.")}
    with pytest.raises(RuntimeError, match="do not fit"):
        load_pooled(rational, wrong)


def test_activation_shapes_are_meta_parameters_but_never_adapted_and_get_their_own_outer_rate():
    from matmeta.meta.trainer import MetaTrainer, TrainerConfig
    from matmeta.models.activations import is_shape_parameter
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.config import MAMLSettings, build_maml
    from matmeta.predict.data import loss_fn

    config = GNNConfig(hidden=8, layers=2, n_rbf=4, activation="rational")
    maml = build_maml(config, MAMLSettings(per_element_lr=True))
    shapes = [n for n in maml.meta_parameters() if is_shape_parameter(n)]
    assert len(shapes) == 3  # two convolutions and the head
    assert not any(is_shape_parameter(n) for n in maml.adapt_names)
    plain = build_maml(dataclasses.replace(config, activation="silu"), MAMLSettings(per_element_lr=True))
    assert len(maml.adapt_names) == len(plain.adapt_names)
    trainer_config = TrainerConfig(outer_steps=1, inner_lr_outer_lr=0.03, shape_outer_lr=0.01)
    groups = MetaTrainer(maml, loss_fn, None, trainer_config)._param_groups()
    assert [g.get("lr") for g in groups] == [None, 0.03, 0.01]
    assert {id(p) for p in groups[2]["params"]} == {id(p) for n, p in maml.named_parameters() if is_shape_parameter(n)}
    with pytest.raises(ValueError, match="shape_outer_lr"):
        TrainerConfig(shape_outer_lr=0.0)
