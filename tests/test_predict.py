"""Predictor app: predictions in target units, few-shot finetune, checkpoint refusal, target normalisation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "data" / "structures").glob("*.cif"))


def _examples():
    from matmeta.io import read_structure_file

    return [read_structure_file(p)[0][1] for p in EXAMPLES]


def _tiny(**settings):
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.config import MAMLSettings
    from matmeta.predict.train import untrained_predictor

    return untrained_predictor(GNNConfig(hidden=16, layers=2, n_rbf=8), MAMLSettings(**settings))


# ---------------------------------------------------------------------- normalisation
def test_target_stats_roundtrip_and_two_stage_gap():
    from matmeta.predict.data import TargetStats

    heat = np.array([1.0, 2.0, np.nan])
    gap = np.array([0.0, 3.0, 2.0])
    stats = TargetStats.fit(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 3.0]), np.array([5.0, 5.0, 5.0]))
    assert stats.heat_per_atom_mean == pytest.approx(0.4)
    assert stats.gap_mean == pytest.approx(2.0)  # non-metals only
    y = stats.encode(heat, gap, np.array([5.0, 10.0, 5.0]))
    assert y[0, 1] == 1 and y[1, 1] == 0 and math.isnan(y[0, 2])  # metal: no gap target
    assert math.isnan(y[2, 0])
    back = stats.decode_heat(y[:2, 0], torch.tensor([5.0, 10.0]))
    assert torch.allclose(back, torch.tensor([1.0, 2.0], dtype=back.dtype), atol=1e-5)
    assert float(stats.decode_gap(y[1:2, 2])) == pytest.approx(3.0, abs=1e-5)


def test_loss_skips_missing_targets():
    from matmeta.models.gnn import collate
    from matmeta.predict.data import per_example_loss

    graph = (torch.tensor([8, 22]), torch.tensor([[0, 1], [1, 0]]), torch.tensor([2.0, 2.0]))
    batch = collate([(*graph, torch.tensor([1.0, math.nan, math.nan])), (*graph, torch.tensor([math.nan, 0.0, 2.0]))])

    def forward(*_):
        return torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 1.0]])

    loss = per_example_loss(forward, batch)
    assert loss[0].item() == pytest.approx(1.0)  # heat only
    assert loss[1].item() == pytest.approx(math.log(2.0) + 1.0)  # BCE(0 logit) + (1 - 2)^2


# ---------------------------------------------------------------------- shipped checkpoint
def test_shipped_checkpoint_predicts_finite_numbers_in_target_units():
    from matmeta.predict.predictor import DEFAULT_CHECKPOINT, Predictor

    assert EXAMPLES, "data/structures/*.cif missing (scripts/make_example_data.py)"
    predictor = Predictor.load()
    assert predictor.path == DEFAULT_CHECKPOINT
    assert predictor.metadata["targets"]["units"] == {"heat_ref": "eV/cell", "band_gap": "eV"}
    rows = predictor.predict_structures(_examples())
    assert len(rows) == len(EXAMPLES)
    for row in rows:
        for key in ("heat_ref", "heat_ref_std", "band_gap", "band_gap_std", "p_metal"):
            assert math.isfinite(row[key]), (key, row)
        assert 0.0 <= row["p_metal"] <= 1.0 and row["band_gap"] >= 0.0 and row["heat_ref_std"] > 0
        assert -5.0 < row["heat_ref"] < 10.0  # eV per 5-atom cell (training range -0.3 .. 4.4)
        assert row["warning"] is None  # all example elements occur in the training set
    # same input, same numbers (fixed MC-dropout masks), whatever else is in the batch
    again = predictor.predict_structures(_examples()[:2])
    text = ("warning", "out_of_domain")
    for first, second in zip(again, rows[:2], strict=True):
        assert {
            k: v if v is None else pytest.approx(v, rel=1e-4, abs=1e-6) for k, v in first.items() if k not in text
        } == {k: v for k, v in second.items() if k not in text}


def test_shipped_checkpoint_supercell_is_extensive(srtio3):
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load()
    supercell = srtio3.copy()
    supercell.make_supercell([1, 1, 2])
    one, two = predictor.predict_structures([srtio3, supercell], mc_samples=0)
    assert two["heat_ref"] == pytest.approx(2 * one["heat_ref"], rel=0.05, abs=0.05)
    assert two["p_metal"] == pytest.approx(one["p_metal"], abs=0.05)


def test_finetune_on_shifted_family_lowers_loo_error(tmp_path):
    """A family whose heat_ref is the model's own prediction + 1 eV/cell: adaptation must remove most of the shift."""
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load()
    structures = _examples()[:10]
    base = predictor.predict_structures(structures, mc_samples=0)
    shifted = [row["heat_ref"] + 1.0 for row in base]
    adapted, report = predictor.finetune(structures, shifted, "heat_ref")
    assert report.loo_mae_unadapted == pytest.approx(1.0, abs=1e-4)
    assert report.loo_mae_adapted < 0.5 * report.loo_mae_unadapted, report
    assert report.kept == "recalibrated"  # a pure shift: the recalibration learns it exactly
    assert report.loo_mae["recalibrated"] < 0.05
    after = adapted.predict_structures(structures, mc_samples=0)
    assert np.mean(np.abs(np.array([r["heat_ref"] for r in after]) - shifted)) < 0.5
    # only the fast weights changed: the base predictor is untouched
    assert predictor.predict_structures(structures[:1], mc_samples=0)[0]["heat_ref"] == pytest.approx(
        base[0]["heat_ref"], abs=1e-5
    )
    path = adapted.save(tmp_path / "family.ckpt")
    reloaded = Predictor.load(path)
    assert reloaded.metadata["adapted"]["target"] == "heat_ref"
    assert reloaded.predict_structures(structures[:1], mc_samples=0)[0]["heat_ref"] == pytest.approx(
        after[0]["heat_ref"], abs=1e-5
    )


# ---------------------------------------------------------------------- finetune logic (tiny model)
def test_finetune_keeps_unadapted_weights_when_adaptation_hurts():
    predictor = _tiny(inner_lr=50.0, inner_steps=3, learn_inner_lr=False)  # absurd step size: adaptation diverges
    structures = _examples()[:4]
    base = predictor.predict_structures(structures, mc_samples=0)
    values = [row["heat_ref"] for row in base]  # the unadapted model is already exact
    adapted, report = predictor.finetune(structures, values, "heat_ref")
    assert report.kept == "unadapted"
    assert "worse" in report.message()
    again = adapted.predict_structures(structures, mc_samples=0)
    assert [r["heat_ref"] for r in again] == pytest.approx(values, abs=1e-6)


def test_finetune_band_gap_with_head_adaptation_lowers_loo():
    predictor = _tiny(inner_lr=0.05, inner_steps=10, learn_inner_lr=False, adapt="head")
    structures = _examples()
    gaps = [3.0 + 0.1 * i for i in range(len(structures))]
    _, report = predictor.finetune(structures, gaps, "band_gap")
    assert report.loo_mae_adapted < report.loo_mae_unadapted


def test_finetune_refuses_bad_values_and_unknown_target():
    from matmeta.errors import CheckpointError, MatmetaInputError

    predictor = _tiny()
    structures = _examples()[:2]
    with pytest.raises(CheckpointError, match="dir_gap"):
        predictor.finetune(structures, [1.0, 2.0], "dir_gap")
    with pytest.raises(MatmetaInputError, match="second"):
        predictor.finetune(structures, [1.0, -2.0], "band_gap", names=["first", "second"])
    with pytest.raises(MatmetaInputError):
        predictor.finetune(structures, [1.0, math.nan], "heat_ref")


def test_unknown_element_gives_warning_not_crash(srtio3):
    predictor = _tiny()
    predictor.elements_seen = {8, 22}  # Sr "never seen"
    (row,) = predictor.predict_structures([srtio3])
    assert "Sr" in row["warning"]
    assert math.isfinite(row["heat_ref"])


# ---------------------------------------------------------------------- checkpoint refusal
def _saved_tiny(tmp_path):
    predictor = _tiny()
    return predictor, predictor.save(tmp_path / "tiny.ckpt")


def test_checkpoint_roundtrip(tmp_path, srtio3):
    from matmeta.predict.predictor import Predictor

    predictor, path = _saved_tiny(tmp_path)
    loaded = Predictor.load(path)
    assert loaded.predict_structures([srtio3]) == predictor.predict_structures([srtio3])
    assert loaded.graph_config == predictor.graph_config


def test_corrupted_checkpoint_is_refused(tmp_path):
    from matmeta.errors import CheckpointError
    from matmeta.predict.predictor import Predictor

    _, path = _saved_tiny(tmp_path)
    data = path.read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="broken.ckpt"):
        Predictor.load(broken)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        Predictor.load(garbage)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "generator"}, "kind"),
        ({"model_class": "DecoderNet"}, "model_class"),
        ({"model_config": {"hidden": 32, "layers": 2, "n_rbf": 8}}, "weights do not match"),
        ({"targets": {"names": ["formation_energy_per_atom"], "stats": {}}}, "predicts"),
        ({"graph_config": {"cutoff_angstrom": 4.0, "max_neighbors": 12}}, "cutoff"),
        ({"model_config": {"hidden": 16, "layers": 2, "n_rbf": 8, "conv": "transformer"}}, "unusable"),
    ],
)
def test_mismatched_checkpoint_is_refused(tmp_path, change, message):
    from matmeta.checkpoint import save_checkpoint
    from matmeta.errors import CheckpointError
    from matmeta.predict.predictor import Predictor

    predictor, _ = _saved_tiny(tmp_path)
    metadata = {**predictor.metadata, **change}
    path = save_checkpoint(tmp_path / "other.ckpt", predictor.maml.state_dict(), metadata)
    with pytest.raises(CheckpointError, match=message):
        Predictor.load(path)


def test_lr_gain_keeps_initial_rate_and_scales_its_gradient():
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.config import MAMLSettings, build_maml

    plain = build_maml(GNNConfig(hidden=8, layers=1, n_rbf=4), MAMLSettings(inner_lr=0.02, lr_gain=1.0))
    fast = build_maml(GNNConfig(hidden=8, layers=1, n_rbf=4), MAMLSettings(inner_lr=0.02, lr_gain=30.0))
    name = fast.adapt_names[0]
    assert fast.lr(name).item() == pytest.approx(0.02) == plain.lr(name).item()
    fast.lr(name).backward()
    plain.lr(name).backward()
    key = name.replace(".", "__")
    assert float(fast.log_lrs[key].grad) == pytest.approx(30 * 0.02, rel=1e-5)
    assert float(plain.log_lrs[key].grad) == pytest.approx(0.02, rel=1e-5)


def test_adapt_steps_set_inference_steps_only(tmp_path):
    """``adapt_steps``: meta-training keeps ``inner_steps``; a loaded predictor (finetune, bench) takes adapt_steps."""
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.config import MAMLSettings, build_maml
    from matmeta.predict.predictor import Predictor

    settings = MAMLSettings(inner_steps=5, adapt_steps=10)
    assert build_maml(GNNConfig(hidden=16, layers=2, n_rbf=8), settings).inner_steps == 5
    assert build_maml(GNNConfig(hidden=16, layers=2, n_rbf=8), settings, inference=True).inner_steps == 10
    predictor = _tiny(inner_steps=5, adapt_steps=7)
    path = predictor.save(tmp_path / "p.ckpt")
    assert Predictor.load(path).maml.inner_steps == 7
    assert Predictor.load(_tiny(inner_steps=4).save(tmp_path / "q.ckpt")).maml.inner_steps == 4
    with pytest.raises(ValueError, match="adapt_steps"):
        MAMLSettings(adapt_steps=-1)
