"""``matmeta inspect``: a predictor checkpoint's layers against their textbook scales, on sampled tasks of its store.

The layer-by-layer numbers are :mod:`matmeta.meta.inspect`'s; this module loads the checkpoint, draws support
sets of its own training families from a graph store (targets normalised as in training), and puts it together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def task_batches(predictor: Any, store_path: Path, n_tasks: int, k: int, seed: int) -> list[Any]:
    """``n_tasks`` support sets of ``k`` structures of the checkpoint's training families (seeded)."""
    from matmeta.errors import StoreError
    from matmeta.models.gnn import collate
    from matmeta.predict.data import graph_from_data
    from matmeta.store.reader import GraphStore

    store = GraphStore(store_path)
    families = predictor.metadata["families"]
    keys = np.asarray(store.family_keys(families["by"], undefined="empty"))
    usable = [f for f in families["train"] if int((keys == f).sum()) >= k]
    if not usable:
        raise StoreError(f"{store_path}: none of the checkpoint's training families has {k} structures")
    columns = predictor.metadata["targets"].get("source_columns", {})
    names = list(store.target_names)
    targets = store.targets
    rng = np.random.default_rng(seed)
    batches = []
    for family in rng.choice(usable, size=n_tasks, replace=len(usable) < n_tasks):
        members = rng.choice(np.flatnonzero(keys == family), size=k, replace=False)
        graphs = [graph_from_data(store[int(i)]) for i in members]
        n_atoms = np.array([g[0].shape[0] for g in graphs], dtype=float)
        energy = targets[members, names.index(columns[predictor.names.energy])]
        gap = targets[members, names.index(columns[predictor.names.gap])]
        y = predictor.stats.encode(predictor.names.to_cell(energy, n_atoms), gap, n_atoms)
        batches.append(collate([(*g, y[j]) for j, g in enumerate(graphs)]))
    return batches


def inspect_predictor(
    checkpoint: str | Path | None, store: Path | None = None, n_tasks: int = 8, k: int = 10, seed: int = 0
) -> dict[str, Any]:
    """Scales and rates of every tensor; with a store, curvature, step sizes, saturation and their link."""
    from matmeta.meta.inspect import curvature, curvature_link, saturation, scales
    from matmeta.predict.data import loss_fn
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load(checkpoint)
    rows = scales(predictor.maml)
    result: dict[str, Any] = {"checkpoint": str(predictor.path), "tensors": rows}
    if store is None:
        return result
    batches = task_batches(predictor, store, n_tasks, k, seed)
    torch.manual_seed(seed)
    curv = curvature(predictor.maml, batches, loss_fn)
    for row in rows:
        row.update(curv.get(row["tensor"], {}))
    result["saturation"] = saturation(predictor.model, batches, lambda m, b: m(*b.inputs(), **b.extra()))
    result["curvature_link"] = curvature_link(rows, curv)
    result["tasks"] = {"n": n_tasks, "k": k, "store": str(store)}
    return result
