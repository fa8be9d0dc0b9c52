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
#: Predictions of the shipped Materials Project checkpoint (mc_samples=0) on data/structures, pinned: a retrain
#: that changes them must update these numbers knowingly. (formation energy eV/atom, PBE gap eV, measured-level gap eV)
PINNED = {
    "NaCl": (-1.9683, 4.9243, 6.1133),
    "SrTiO3": (-3.4205, 1.8429, 2.9062),
    "Cu": (0.0955, 0.0, 0.0),
    "Si": (0.1639, 0.7637, 1.3203),
    "GaAs": (-0.3677, 0.3668, 0.9869),
}


def _structure(name: str):
    from matmeta.io import read_structure_file

    return read_structure_file(REPO / "data" / "structures" / f"{name}.cif")[0][1]


def test_shipped_checkpoint_predicts_its_pinned_numbers():
    from matmeta.predict.predictor import DEFAULT_CHECKPOINT, Predictor

    predictor = Predictor.load()
    assert predictor.path == DEFAULT_CHECKPOINT and predictor.measured is not None
    assert predictor.model.config.open_shell_metal_offset == 0.0  # the perovskite model's hurdle is not applied here
    assert predictor.metadata["targets"]["units"] == {"formation_energy_per_atom": "eV/atom", "band_gap_pbe": "eV"}
    rows = predictor.predict_structures([_structure(name) for name in PINNED], mc_samples=0)
    for (name, (energy, gap, measured)), row in zip(PINNED.items(), rows, strict=True):
        assert row["formation_energy_per_atom"] == pytest.approx(energy, abs=2e-3), name
        assert row["band_gap_pbe"] == pytest.approx(gap, abs=5e-3), name
        assert row["band_gap"] == pytest.approx(measured, abs=5e-3), name
        assert (
            row["formation_energy_per_atom_lo"] < row["formation_energy_per_atom"] < row["formation_energy_per_atom_hi"]
        )
        assert row["out_of_domain"] is None and row["warning"] is None


def test_shipped_checkpoint_is_deterministic_and_intensive(srtio3):
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load()
    supercell = srtio3.copy()
    supercell.make_supercell([1, 1, 2])
    one, two = predictor.predict_structures([srtio3, supercell])
    assert two["formation_energy_per_atom"] == pytest.approx(one["formation_energy_per_atom"], abs=0.02)
    assert two["p_metal"] == pytest.approx(one["p_metal"], abs=0.05)
    rows = predictor.predict_structures(_examples())
    again = predictor.predict_structures(_examples()[:2])  # same numbers (fixed MC-dropout masks), whatever the batch
    text = ("warning", "out_of_domain")
    for first, second in zip(again, rows[:2], strict=True):
        assert {
            k: v if v is None else pytest.approx(v, rel=1e-4, abs=1e-6) for k, v in first.items() if k not in text
        } == {k: v for k, v in second.items() if k not in text}


def test_perovskite_checkpoint_stays_selectable_by_name():
    from matmeta.predict.predictor import SHIPPED, Predictor

    predictor = Predictor.load("perovskites")
    assert predictor.path == SHIPPED["perovskites"]
    assert predictor.metadata["targets"]["units"] == {"heat_ref": "eV/cell", "band_gap": "eV"}
    for row in predictor.predict_structures(_examples()):
        assert math.isfinite(row["heat_ref"]) and -5.0 < row["heat_ref"] < 10.0  # eV per 5-atom cell
        assert 0.0 <= row["p_metal"] <= 1.0 and row["band_gap"] >= 0.0


def test_finetune_on_shifted_family_lowers_loo_error(tmp_path):
    """A family whose energy is the model's own prediction + 0.3 eV/atom: adaptation must remove most of the shift."""
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load()
    structures = _examples()[:10]
    base = predictor.predict_structures(structures, mc_samples=0)
    shifted = [row["formation_energy_per_atom"] + 0.3 for row in base]
    adapted, report = predictor.finetune(structures, shifted, "formation_energy_per_atom")
    assert report.unit == "eV/atom" and report.loo_mae_unadapted == pytest.approx(0.3, abs=1e-4)
    assert report.kept == "recalibrated"  # a pure shift: the recalibration learns it exactly
    assert report.loo_mae["recalibrated"] < 0.02
    after = adapted.predict_structures(structures, mc_samples=0)
    assert np.mean(np.abs(np.array([r["formation_energy_per_atom"] for r in after]) - shifted)) < 0.05
    # only the adapted copy changed: the base predictor is untouched
    first = predictor.predict_structures(structures[:1], mc_samples=0)[0]["formation_energy_per_atom"]
    assert first == pytest.approx(base[0]["formation_energy_per_atom"], abs=1e-5)
    reloaded = Predictor.load(adapted.save(tmp_path / "family.ckpt"))
    assert reloaded.metadata["adapted"]["target"] == "formation_energy_per_atom"
    again = reloaded.predict_structures(structures[:1], mc_samples=0)[0]["formation_energy_per_atom"]
    assert again == pytest.approx(after[0]["formation_energy_per_atom"], abs=1e-5)


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
