from pathlib import Path

import pytest
import torch

from matmeta.checkpoint import read_metadata
from matmeta.errors import CheckpointError
from matmeta.kinetics.prior import (
    DEFAULT_PRIOR,
    PriorConfig,
    SyntheticEpisodes,
    build_maml,
    load_prior,
    meta_train_from_recipe,
)
from matmeta.kinetics.synthetic import SyntheticConfig

REPO = Path(__file__).resolve().parents[1]

RECIPE = {
    "meta_train": {"app": "jmak"},
    "prior": {"inner_steps": 5, "inner_lr": 3.0},
    "synthetic": {"points_range": [2, 4]},
    "trainer": {
        "outer_steps": 40,
        "meta_batch_size": 32,
        "outer_lr": 0.02,
        "val_every": 40,
        "val_batches": 2,
        "seed": 3,
    },
}


def test_meta_training_lowers_the_query_loss_and_writes_a_loadable_prior(tmp_path):
    from matmeta.kinetics.fit import loss_fn
    from matmeta.meta.trainer import MetaTrainer, TrainerConfig

    out = meta_train_from_recipe(RECIPE, tmp_path / "r.toml", out=tmp_path / "p.ckpt")
    trained, metadata = load_prior(out)
    assert metadata["kind"] == "jmak" and metadata["model_config"]["inner_steps"] == 5
    assert "matmeta_version" in metadata and metadata["recipe"]["trainer"]["outer_steps"] == 40
    fresh = build_maml(PriorConfig(inner_steps=5, inner_lr=3.0))
    source = SyntheticEpisodes(SyntheticConfig(points_range=(2, 4)), PriorConfig(inner_steps=5))
    tasks = source.sample(256, torch.Generator().manual_seed(99))
    judge = MetaTrainer(fresh, loss_fn, source, TrainerConfig(meta_batch_size=256), progress=False)
    before = judge.validate(tasks)
    judge.maml = trained
    after = judge.validate(tasks)
    assert after < 0.9 * before


def test_recipe_dispatch_and_missing_checkpoint(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "[meta_train]\napp = 'jmak'\n[trainer]\nouter_steps = 2\nmeta_batch_size = 4\n[prior]\ninner_steps = 2\n"
    )
    from typer.testing import CliRunner

    from matmeta.cli import app

    out = tmp_path / "x.ckpt"
    result = CliRunner().invoke(app, ["jmak", "meta-train", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {out}" in result.output
    assert read_metadata(out)["kind"] == "jmak"
    with pytest.raises(CheckpointError, match="not found"):
        load_prior(tmp_path / "missing.ckpt")


def test_shipped_prior_is_small_and_named():
    assert DEFAULT_PRIOR.exists() and DEFAULT_PRIOR.stat().st_size < 20e6
    metadata = read_metadata(DEFAULT_PRIOR)
    assert metadata["kind"] == "jmak" and metadata["matmeta_version"]
    assert DEFAULT_PRIOR.name.startswith("JMAK-") and "2026-12-07" in DEFAULT_PRIOR.name
