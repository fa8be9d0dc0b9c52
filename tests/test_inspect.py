"""matmeta inspect: scales against Xavier / Kaiming, curvature as a Rayleigh quotient, saturation, the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn


def _maml(model, rate=0.1):
    from matmeta.meta.maml import MAML

    return MAML(model, inner_lr=rate, inner_steps=1, learn_inner_lr=True)


def test_scales_compare_each_matrix_with_its_xavier_and_kaiming_scale():
    from matmeta.meta.inspect import scales

    torch.manual_seed(0)
    layer = nn.Linear(300, 200)
    nn.init.normal_(layer.weight, std=0.5)
    (weight, bias) = scales(_maml(layer, 0.05))
    assert weight["xavier"] == pytest.approx(math.sqrt(2 / 500)) and weight["kaiming"] == pytest.approx(
        math.sqrt(2 / 300)
    )
    assert weight["std"] == pytest.approx(0.5, rel=0.02) and weight["std/xavier"] == pytest.approx(
        0.5 / math.sqrt(2 / 500), rel=0.02
    )
    assert weight["rate_mean"] == pytest.approx(0.05) and "xavier" not in bias


def test_curvature_is_the_rayleigh_quotient_of_the_loss_along_the_gradient():
    from matmeta.meta.inspect import curvature

    model = nn.Linear(2, 1, bias=False)
    maml = _maml(model, rate=0.25)
    x = torch.tensor([[1.0, 0.0]] * 4)  # the loss mean((w·x − t)²) has Hessian 2·e1e1ᵀ; the gradient lies along e1
    batch = (x, torch.tensor([3.0] * 4))

    def loss_fn(forward, b):
        return ((forward(b[0])[:, 0] - b[1]) ** 2).mean()

    result = curvature(maml, [batch], loss_fn)["weight"]
    assert result["kappa"] == pytest.approx(2.0, rel=1e-5)
    assert result["rate_kappa"] == pytest.approx(0.5, rel=1e-5)  # α·κ: a quarter step of the Newton step 1/κ


def test_saturation_counts_the_flat_part_of_silu():
    from matmeta.meta.inspect import saturation

    model = nn.Sequential(nn.Identity(), nn.SiLU())
    share = saturation(model, [torch.tensor([-10.0, -5.0, 0.0, 3.0])], lambda m, b: m(b))
    assert share == {"1": 0.5}


def test_inspect_cli_prints_every_tensor_of_a_predictor(tmp_path):
    from typer.testing import CliRunner

    from matmeta.cli import app
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.train import untrained_predictor

    path = untrained_predictor(GNNConfig(hidden=8, layers=1, n_rbf=4)).save(tmp_path / "tiny.ckpt")
    result = CliRunner().invoke(app, ["inspect", str(path), "--out", str(tmp_path / "layers.csv")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "layers.csv").read_text()  # (the table may wrap names in a narrow terminal)
    assert "head.0.weight" in text and text.count("\n") > 5
