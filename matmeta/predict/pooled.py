"""Pooled (non-meta) pretraining: the start of meta-training and the fine-tuning baseline, cached by key."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.models.gnn import CrystalGNN, GNNConfig
from matmeta.predict.config import PretrainConfig
from matmeta.predict.data import GraphTable, TargetStats


# ---------------------------------------------------------------------- pooled baseline
def train_pooled(
    table: GraphTable,
    indices: np.ndarray,
    model_config: GNNConfig,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> CrystalGNN:
    """Train ``CrystalGNN`` on the pooled structures at ``indices`` (Adam, cosine decay).

    This is the standard transfer-learning baseline's pretraining (and the random-split model).
    """
    from matmeta.console import progress as progress_bar
    from matmeta.predict.data import per_example_loss

    torch.manual_seed(seed)
    model = CrystalGNN(pooled_config(model_config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5, fused=True)  # one kernel per step
    steps_per_epoch = max(1, math.ceil(len(indices) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    model.train()
    with progress_bar(disable=None if progress is None else not progress) as bar:
        task = bar.add_task("pooled training", total=epochs)
        for _ in range(epochs):
            order = rng.permutation(indices)
            for begin in range(0, len(order), batch_size):
                batch = table.batch(order[begin : begin + batch_size])
                loss = per_example_loss(model, batch).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
                schedule.step()
            bar.update(task, advance=1)
    model.eval()
    return model


def training_fields(model_config: GNNConfig) -> dict[str, Any]:
    """The architecture fields that pooled training depends on.

    The open-shell offset is set after training, and the activation's learned shape after it (a pooled network
    always trains with SiLU, the shape a rational activation starts from: :func:`pooled_config`).
    """
    skip = ("open_shell_metal_offset", "activation")
    return {k: v for k, v in dataclasses.asdict(model_config).items() if k not in skip}


def pooled_config(model_config: GNNConfig) -> GNNConfig:
    """The architecture pooled pretraining trains: the same, with SiLU (a learned shape starts at SiLU after it)."""
    return dataclasses.replace(model_config, activation="silu")


def load_pooled(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a pooled (SiLU) network's weights into ``model``; activation shapes keep their initial (SiLU) value."""
    from matmeta.models.activations import is_shape_parameter

    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [n for n in missing if not is_shape_parameter(n)] + list(unexpected)
    if wrong:
        raise RuntimeError(f"pooled weights do not fit the network: {wrong[:5]}")


def pooled_key(
    families: Sequence[str], model_config: GNNConfig, pretrain: PretrainConfig, seed: int, stats: TargetStats, n: int
) -> dict[str, Any]:
    """What identifies a pooled network (to reuse a cached one only when it was trained the same way)."""
    return {
        "families": sorted(families),
        "model": training_fields(model_config),
        "pretrain": dataclasses.asdict(pretrain),
        "seed": seed,
        "stats": stats.to_dict(),
        "n": n,
    }


def _cached_pooled(path: Path, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """Weights of a pooled network cached at ``path`` when it was trained with the same ``key``."""
    import json

    from matmeta.checkpoint import load_checkpoint

    if not path.exists():
        return None
    try:
        tensors, metadata = load_checkpoint(path)
    except Exception:  # noqa: BLE001 - a broken cache is simply retrained
        return None
    same = json.loads(json.dumps(metadata.get("pooled_key"))) == json.loads(json.dumps(key))
    return tensors if same else None
