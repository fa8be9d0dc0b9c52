"""The federation's only door to the predictor app (data, model, loss, checkpoint metadata).

Every predictor import of :mod:`matmeta.federate` goes through this module, so a move of the
predictor's modules changes one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.models.gnn import CrystalGNN, GNNConfig
from matmeta.predict.config import DataConfig, MAMLSettings, build_maml
from matmeta.predict.data import (
    TARGETS,
    UNITS,
    GraphTable,
    TargetStats,
    family_indices,
    load_table,
    loss_fn,
    mean_ci95,
    per_example_loss,
)
from matmeta.predict.predictor import Predictor
from matmeta.tasks import FamilyEpisodes

__all__ = [
    "CrystalGNN",
    "DataConfig",
    "FamilyEpisodes",
    "GNNConfig",
    "GraphTable",
    "LabData",
    "TARGETS",
    "UNITS",
    "MAMLSettings",
    "Predictor",
    "TargetStats",
    "build_maml",
    "family_indices",
    "load_lab",
    "loss_fn",
    "mean_ci95",
    "per_example_loss",
]


@dataclass
class LabData:
    """One lab's private data: its graphs (with targets) and the families it trains on.

    Attributes:
        table: the lab's graphs; ``y`` is normalised once the federation's statistics are known.
        families: the lab's training families (never leave the lab).
        graph_config: the store's graph settings (cutoff, ...).
    """

    table: GraphTable
    families: list[str]
    graph_config: Any

    @property
    def indices(self) -> np.ndarray:
        """Indices of the structures of the lab's training families."""
        return family_indices(self.table, self.families)

    def normalise(self, stats: TargetStats) -> None:
        """Encode the targets with the federation's statistics."""
        t = self.table
        t.y = stats.encode(t.energy, t.band_gap, t.n_atoms)


def load_lab(
    store: str | Path,
    family_by: str = "b_site",
    families: Sequence[str] | None = None,
    min_family_size: int = 30,
    heat_column: str = "heat_ref",
    gap_column: str = "ind_gap",
) -> LabData:
    """A lab's data from its own store: all families with at least ``min_family_size`` structures by default.

    Raises:
        StoreError: a missing store or target column.
        MatmetaInputError: none of the requested families is in the store.
    """
    from collections import Counter

    from matmeta.errors import MatmetaInputError, StoreError

    if not Path(store).exists():
        raise StoreError(f"{store}: no such graph store")
    config = DataConfig(store=Path(store), family_by=family_by, energy_column=heat_column, gap_column=gap_column)
    table, graph_config = load_table(Path(store), config)
    sizes = Counter(table.families)
    if families is None:
        chosen = sorted(f for f, n in sizes.items() if n >= min_family_size)
    else:
        chosen = [f for f in families if sizes.get(f, 0) > 0]
    if not chosen:
        raise MatmetaInputError(f"{store}: no {family_by} family with >= {min_family_size} structures")
    return LabData(table, chosen, graph_config)


def lab_subset(lab: LabData, families: Sequence[str]) -> LabData:
    """The same table restricted (by family list) to ``families``: one store shared by simulated labs."""
    return LabData(lab.table, list(families), lab.graph_config)


def new_model_state(model: GNNConfig, maml: MAMLSettings, seed: int) -> dict[str, torch.Tensor]:
    """The seeded initial weights (and Meta-SGD log-rates) of the predictor's engine."""
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in build_maml(model, maml).state_dict().items()}
