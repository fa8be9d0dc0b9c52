"""The engine benchmark's graph rows: higher, the loop and the padded vmap compute the same meta-gradient."""

from __future__ import annotations

import pytest
import torch

from matmeta.bench.engine_graph import IMPLS, GraphBenchConfig, measure_graph
from matmeta.models.gnn import CrystalGNN, GNNConfig, collate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _task(g: torch.Generator, k: int, q: int) -> tuple:
    def graph() -> tuple:
        z = torch.tensor([38, 22, 8, 8, 8])  # SrTiO3-like cell, 12 edges per atom like the perovskite store
        dst = torch.arange(5).repeat_interleave(12)
        src = torch.randint(5, (60,), generator=g)
        y = torch.tensor([float(torch.randn((), generator=g)), 0.0, float(torch.randn((), generator=g))])
        return z, torch.stack([src, dst]), 2.0 + 3.0 * torch.rand(60, generator=g), y

    return collate([graph() for _ in range(k)]), collate([graph() for _ in range(q)])


def test_graph_rows_agree_with_higher_and_memory_is_recorded():
    torch.manual_seed(0)
    model = CrystalGNN(GNNConfig(hidden=8, layers=2, n_rbf=6, dropout=0.0, node_features="descriptors",
                                 composition_features=True))  # fmt: skip
    g = torch.Generator().manual_seed(1)
    tasks = [_task(g, 3, 4), _task(g, 3, 4), _task(g, 3, 4)]
    cfg = GraphBenchConfig(inner_steps=2, repeats=2, warmup=0, memory_steps=3)
    rows, memory = measure_graph(model, tasks, cfg)
    assert [r["impl"] for r in rows] == list(IMPLS)
    for row in rows:
        assert row["median_ms"] > 0
        assert row["max_grad_diff"] < 1e-5, row  # the same second-order meta-gradient as higher
    assert [step for step, _ in memory] == [1, 3] and all(mib > 0 for _, mib in memory)
