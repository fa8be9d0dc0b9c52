"""The Materials Project path end to end on a slice: PBE meta-training, the measured-gap head, both benchmarks."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import require_shared

pytestmark = pytest.mark.slow


def _slice(tmp_path, n: int = 360):
    """mp36k rows whose structure has a measured gap (so the measured-gap join finds them), as a small CSV."""
    source, expt = require_shared("mp/mp36k.csv"), require_shared("expt_gaps/expt_gaps.csv")
    measured = {row["material_id"] for row in csv.DictReader(expt.open()) if row["material_id"]}
    csv.field_size_limit(1 << 30)
    rows = []
    with source.open() as handle:
        for row in csv.DictReader(handle):
            if row["material_id"] in measured and int(row["nsites"]) <= 20:
                rows.append(row)
            if len(rows) == n:
                break
    path = tmp_path / "slice.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_pbe_training_measured_head_and_both_benchmarks_on_a_slice(tmp_path, one_torch_thread, monkeypatch):
    import tomli_w

    from matmeta.predict.predictor import Predictor
    from matmeta.runs import bench, meta_train
    from matmeta.store.ingest import ingest

    shared = require_shared("mp/mp36k.csv").parents[1]
    monkeypatch.setenv("MATMETA_SHARED_DATA", str(shared))
    store = tmp_path / "mp.lmdb"
    ingest([_slice(tmp_path)], store, targets=("formation_energy_per_atom", "band_gap"), id_column="material_id",
           workers=1, show_progress=False)  # fmt: skip
    checkpoint = tmp_path / "mp.ckpt"
    pbe = {
        "meta_train": {"app": "predictor", "out": str(checkpoint), "work_dir": str(tmp_path / "work")},
        "data": {"store": str(store), "store_targets": ["formation_energy_per_atom", "band_gap"],
                 "energy_column": "formation_energy_per_atom", "gap_column": "band_gap",
                 "targets": ["formation_energy_per_atom", "band_gap_pbe"], "family_by": "anion_class",
                 "min_family_size": 10, "split_fractions": [0.5, 0.25, 0.25], "pretrain_pool": "all_but_held_out"},
        "model": {"hidden": 8, "layers": 1, "n_rbf": 8, "node_features": "both", "composition_features": True},
        "pretrain": {"epochs": 1, "batch_size": 64},
        "maml": {"inner_steps": 1, "adapt_steps": 2},
        "episodes": {"k_support": [2], "k_query": 3},
        "trainer": {"outer_steps": 2, "meta_batch_size": 2, "val_every": 1, "val_batches": 1},
        "uncertainty": {"mc_samples": 2, "calibration_episodes": 1},
    }  # fmt: skip
    (tmp_path / "mp.toml").write_text(tomli_w.dumps(pbe))
    meta_train(tmp_path / "mp.toml")
    families = Predictor.load(checkpoint).metadata["families"]
    measured = {
        "meta_train": {"app": "measured_gap", "base_checkpoint": str(checkpoint), "work_dir": str(tmp_path / "m")},
        "data": {"csv": "expt_gaps/expt_gaps.csv", "store": str(store), "family_by": "anion_class",
                 "min_family_size": 5, "val_families": families["val"], "test_families": families["test"]},
        "maml": {"k_support": [2], "k_query": 3, "pretrain_steps": 5, "hidden": 4},
        "trainer": {"outer_steps": 2, "meta_batch_size": 2, "val_every": 1, "val_batches": 1},
    }  # fmt: skip
    (tmp_path / "expt.toml").write_text(tomli_w.dumps(measured))
    meta_train(tmp_path / "expt.toml")
    predictor = Predictor.load(checkpoint)
    from matmeta.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(checkpoint)
    assert predictor.measured is not None and "measured.model.slope" in tensors and "measured_pooled.slope" in tensors
    entry = predictor.metadata["measured_gap"]
    assert entry["families"]["test"] == families["test"] and 0 < entry["uncertainty"]["nonmetal_threshold"] <= 1

    out = tmp_path / "bench_mp"
    (tmp_path / "fewshot_mp.toml").write_text(tomli_w.dumps({"bench": {
        "name": "fewshot_mp", "predictor_recipe": str(tmp_path / "mp.toml"), "out_dir": str(out)}}))  # fmt: skip
    bench(tmp_path / "fewshot_mp.toml", quick=True)
    summary = json.loads((out / "quick" / "summary.json").read_text())
    zero = summary["zero_shot"]["MAML (no adaptation)"]
    assert zero["n"] > 0 and math.isfinite(zero["energy_mae"]) and 0 <= zero["energy_coverage"] <= 1
    assert set(summary["episodes"]["5"]) == {"MAML", "fine-tune", "zero-shot", "mean"}
    assert summary["throughput"]["n"] > 0

    expt_out = tmp_path / "bench_expt"
    (tmp_path / "fe.toml").write_text(tomli_w.dumps({"bench": {
        "name": "fewshot_expt_gap", "checkpoint": str(checkpoint), "out_dir": str(expt_out), "min_query": 2,
        "finetune_lrs": [0.01]}}))  # fmt: skip
    bench(tmp_path / "fe.toml", quick=True)
    expt = json.loads((expt_out / "quick" / "summary.json").read_text())
    assert expt["test_families"] == families["test"][:2]
    assert all(math.isfinite(m["mae_all"]) for m in expt["by_k"]["5"].values())
