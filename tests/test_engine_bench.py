"""The engine benchmark's quick run: every implementation computes the same meta-gradient as ``higher``."""

from __future__ import annotations

import csv

from matmeta.bench import engine


def test_quick_engine_bench_writes_agreeing_rows(tmp_path, capsys):
    recipe = {"bench": {"name": "engine"}, "engine": {"out_dir": str(tmp_path), "seed": 3}}
    engine.run(recipe, tmp_path / "engine.toml", quick=True)
    rows = list(csv.DictReader((tmp_path / "engine.csv").open()))
    impls = ("higher", "matmeta vmap", "matmeta loop", "torch.func vmap(grad)")
    assert {(r["mode"], r["impl"]) for r in rows} == {(mode, impl) for mode in engine.MODES for impl in impls}
    for row in rows:
        assert float(row["median_ms"]) > 0
        assert float(row["max_grad_diff"]) < 1e-5, row  # same meta-gradient as higher, in every mode
    out = capsys.readouterr().out
    assert "higher" in out and "goal" in out
    assert (tmp_path / "engine.json").exists()
