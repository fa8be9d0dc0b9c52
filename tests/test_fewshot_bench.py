"""Pieces of the few-shot benchmark that can be checked exactly (the full run is `matmeta bench`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch


def test_roc_auc_known_values():
    from matmeta.bench.fewshot import roc_auc

    positive = np.array([True, True, False, False])
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), positive) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), positive) == 0.0
    assert roc_auc(np.array([0.9, 0.2, 0.8, 0.1]), positive) == 0.75
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), positive) == 0.5  # ties count half
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([True, True])))


def test_mean_ci95():
    from matmeta.predict.data import mean_ci95

    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)


def _table(families):
    from matmeta.predict.data import GraphTable, TargetStats

    n = len(families)
    graph = (torch.tensor([8, 22]), torch.tensor([[0, 1], [1, 0]]), torch.tensor([2.0, 2.0]))
    heat = np.arange(n, dtype=float)
    gap = np.where(np.arange(n) % 3 == 0, 2.0, 0.0)
    stats = TargetStats.fit(heat, gap, np.full(n, 2.0))
    return GraphTable(
        [graph] * n, stats.encode(heat, gap, np.full(n, 2.0)), heat, gap, families, [str(i) for i in range(n)]
    )


def test_episodes_are_disjoint_within_one_family_and_seeded():
    from matmeta.bench.fewshot import make_episodes

    families = ["Ti"] * 30 + ["Zr"] * 25 + ["tiny"] * 3
    table = _table(families)
    episodes = make_episodes(table, ["Ti", "Zr", "tiny"], k=5, per_family=4, query=10, seed=1)
    assert len(episodes) == 8  # "tiny" has fewer than k + 2 members
    for family, support, query in episodes:
        assert len(support) == 5 and len(query) == 10
        assert not set(support) & set(query)
        assert {families[i] for i in (*support, *query)} == {family}
    again = make_episodes(table, ["Ti", "Zr", "tiny"], k=5, per_family=4, query=10, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(episodes, again, strict=True))


def test_adam_finetune_leaves_the_pooled_model_untouched():
    from matmeta.bench.fewshot import adam_finetune
    from matmeta.models.gnn import CrystalGNN, GNNConfig

    table = _table(["Ti"] * 12)
    model = CrystalGNN(GNNConfig(hidden=8, layers=1, n_rbf=4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = adam_finetune(model, table, np.arange(6), steps=3, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())


def test_quick_benchmark_scores_every_method_and_writes_its_report(perovskites_csv, tmp_path, one_torch_thread):
    """The whole benchmark on the shipped checkpoint, quick settings: every method scored, the report written."""
    import math
    import tomllib

    from matmeta.bench.fewshot import run

    root = Path(__file__).resolve().parents[1]
    recipe = tomllib.loads((root / "recipes/perovskites.toml").read_text())
    checkpoint = root / recipe["meta_train"]["out"]
    lines = (root / "recipes/perovskites.toml").read_text().splitlines()
    rewritten = []
    for line in lines:
        if line.startswith("out = "):
            line = f'out = "{checkpoint}"'
        elif line.startswith("work_dir = "):
            line = f'work_dir = "{tmp_path / "work"}"'
        elif line.startswith("store = "):
            line = f'store = "{tmp_path / "perov.lmdb"}"'
        rewritten.append(line)
    predictor_recipe = tmp_path / "perovskites.toml"
    predictor_recipe.write_text("\n".join(rewritten) + "\n")
    bench = {"predictor_recipe": str(predictor_recipe), "out_dir": str(tmp_path / "bench"), "seed": 0}
    run({"bench": bench}, tmp_path / "fewshot.toml", quick=True)

    summary = json.loads((tmp_path / "bench/quick/summary.json").read_text())
    assert summary["quick"] is True and len(summary["test_families"]) == 2
    heat = {key: value[0] for key, value in summary["heat_mae"].items()}
    assert set(heat) == {
        f"{m}@k=5"
        for m in ("MAML", "fine-tune", "recalibrated", "zero-shot", "scratch", "mean", "MAML (no adaptation)")
    }
    assert all(math.isfinite(v) and v >= 0 for v in heat.values())
    # the meta-learned checkpoint adapted on 5 structures beats a network trained 3 steps from scratch
    assert heat["MAML@k=5"] < heat["scratch@k=5"]
    for name in ("results.csv", "mae_vs_k.png", "parity_k5.png"):
        assert (tmp_path / "bench/quick" / name).stat().st_size > 0


def test_gap_coverage_is_split_by_test_family():
    from types import SimpleNamespace

    from matmeta.bench.fewshot_gap import family_coverage_rows

    gaps = SimpleNamespace(
        hits={
            "band gap of non-metals, zero_shot": [np.array([True, False, True]), np.array([True])],
            "band gap of non-metals, adapted": [np.array([False, False])],
        },
        gap_families={
            "zero_shot": [np.array(["Hf", "Hf", "Sc"]), np.array(["Hf"])],
            "adapted": [np.array(["Sc", "Sc"])],
        },
    )
    rows = family_coverage_rows(gaps)
    assert rows[0][:3] == ("Hf", pytest.approx(2 / 3), 3) and math.isnan(rows[0][3]) and rows[0][4] == 0
    assert rows[1] == ("Sc", 1.0, 1, 0.0, 2)
    assert family_coverage_rows(SimpleNamespace(hits={}, gap_families={})) == []
