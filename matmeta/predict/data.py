"""Data side of the predictor app: target normalisation, graph tables, the loss, episode sources.

Targets, per structure: ``heat_ref`` (eV/cell) and ``band_gap`` (eV, 0 for metals). The model
sees them normalised (see :class:`TargetStats`)::

    y = [(heat_ref / n_atoms − μ_h) / σ_h,   1[band_gap ≤ threshold],   (band_gap − μ_g) / σ_g]

with μ, σ from the training families (the gap statistics over non-metals only). The third
entry is NaN for metals, so the gap regression sees non-metals only (two-stage gap model).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import StoreError
from matmeta.models.gnn import GraphBatch, collate
from matmeta.predict.config import DataConfig
from matmeta.predict.support import read_support  # noqa: F401 - re-exported; it lives in predict.support

Graph = tuple[Tensor, Tensor, Tensor]  # atomic_numbers (n,), edge_index (2, e), edge_dist (e,)
TARGETS = ("heat_ref", "band_gap")
UNITS = {"heat_ref": "eV/cell", "band_gap": "eV"}


@dataclasses.dataclass(frozen=True)
class TargetStats:
    """Normalisation of the targets (stored in every predictor checkpoint).

    Attributes:
        heat_per_atom_mean: mean of heat_ref / n_atoms over training structures (eV/atom).
        heat_per_atom_std: its standard deviation (eV/atom).
        gap_mean: mean band gap of training non-metals (eV).
        gap_std: its standard deviation (eV).
        metal_threshold_ev: band gaps at or below this count as metals.
    """

    heat_per_atom_mean: float
    heat_per_atom_std: float
    gap_mean: float
    gap_std: float
    metal_threshold_ev: float = 0.0

    @classmethod
    def fit(cls, heat_ref: np.ndarray, band_gap: np.ndarray, n_atoms: np.ndarray) -> TargetStats:
        """Statistics of training targets (NaN entries ignored).

        Shapes:
            heat_ref, band_gap, n_atoms: (N,).
        """
        per_atom = heat_ref / n_atoms
        per_atom = per_atom[np.isfinite(per_atom)]
        gaps = band_gap[np.isfinite(band_gap) & (band_gap > 0.0)]
        if per_atom.size < 2 or gaps.size < 2:
            raise ValueError("need at least two heat_ref values and two non-metal band gaps to normalise")

        def spread(values: np.ndarray) -> float:
            std = float(values.std())
            return std if std > 1e-8 else 1.0  # constant targets: only shift, do not divide by 0

        return cls(float(per_atom.mean()), spread(per_atom), float(gaps.mean()), spread(gaps))

    def encode(self, heat_ref: np.ndarray, band_gap: np.ndarray, n_atoms: np.ndarray) -> Tensor:
        """Normalised target rows (NaN where unknown).

        Shapes:
            heat_ref, band_gap, n_atoms: (N,) → (N, 3) float32.
        """
        heat = (np.asarray(heat_ref, float) / np.asarray(n_atoms, float) - self.heat_per_atom_mean) / (
            self.heat_per_atom_std
        )
        gap = np.asarray(band_gap, float)
        known = np.isfinite(gap)
        metal = np.where(known, (gap <= self.metal_threshold_ev).astype(float), np.nan)
        gap_norm = np.where(known & (gap > self.metal_threshold_ev), (gap - self.gap_mean) / self.gap_std, np.nan)
        return torch.as_tensor(np.stack([heat, metal, gap_norm], axis=1), dtype=torch.float32)

    def decode_heat(self, heat_norm: Tensor, n_atoms: Tensor) -> Tensor:
        """Heat of formation in eV/cell from the model's normalised per-atom output.

        Shapes:
            heat_norm, n_atoms: (G,) or broadcastable → same shape.
        """
        return (heat_norm * self.heat_per_atom_std + self.heat_per_atom_mean) * n_atoms

    def decode_gap(self, gap_norm: Tensor) -> Tensor:
        """Band gap of a non-metal in eV (clamped at 0) from the normalised output."""
        return (gap_norm * self.gap_std + self.gap_mean).clamp(min=0.0)

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


def map_unknown(z: Tensor, known: set[int]) -> Tensor:
    """Atomic numbers not in ``known`` replaced by 0 (the UNK embedding row).

    Shapes:
        z: (n,) → (n,).
    """
    index = torch.as_tensor(sorted(known), dtype=torch.long)
    return torch.where(torch.isin(z, index), z, torch.zeros_like(z))


def graph_from_data(data: Any, unknown_to: set[int] | None = None) -> Graph:
    """The model's tensors from a ``matmeta.graphs`` PyG ``Data`` (copies; the input is not changed).

    Args:
        data: a graph with ``atomic_numbers``, ``edge_index``, ``edge_dist``.
        unknown_to: if given, atomic numbers NOT in this set become 0 (the UNK embedding).

    Shapes:
        → atomic_numbers (n,) int64, edge_index (2, e) int64, edge_dist (e,) float32.
    """
    z = data.atomic_numbers.to(torch.long).clone()
    if unknown_to is not None:
        z = map_unknown(z, unknown_to)
    return z, data.edge_index.to(torch.long).clone(), data.edge_dist.to(torch.float32).clone()


def graph_from_structure(structure: Any, config: Any) -> Graph:
    """The model's tensors for a pymatgen structure, built by :func:`matmeta.graphs.structure_graph_arrays`.

    Same graph as ``matmeta.graphs.structure_to_graph`` (same function underneath) without
    building a PyG ``Data`` object, so prediction does not import torch_geometric (seconds of start-up).

    Raises:
        MatmetaInputError: a disordered structure or an atom without neighbours within the cutoff.

    Shapes:
        → atomic_numbers (n,) int64, edge_index (2, e) int64, edge_dist (e,) float32.
    """
    from matmeta.graphs import structure_graph_arrays

    arrays, _ = structure_graph_arrays(structure, config, on_isolated_atoms="error")
    return (
        torch.from_numpy(arrays["atomic_numbers"]),
        torch.from_numpy(arrays["edge_index"]),
        torch.from_numpy(arrays["edge_dist"]),
    )


@dataclasses.dataclass
class GraphTable:
    """All graphs of a data set in memory with their normalised targets.

    Attributes:
        graphs: one ``(atomic_numbers, edge_index, edge_dist)`` per structure.
        y: (N, 3) normalised targets (see :class:`TargetStats`).
        heat_ref: (N,) eV/cell (NaN = unknown).
        band_gap: (N,) eV (NaN = unknown).
        families: family key of each structure.
        ids: identifiers.
    """

    graphs: list[Graph]
    y: Tensor
    heat_ref: np.ndarray
    band_gap: np.ndarray
    families: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per structure, shape (N,)."""
        return np.array([g[0].shape[0] for g in self.graphs], dtype=float)

    def batch(self, indices: Sequence[int] | np.ndarray) -> GraphBatch:
        """Collate the structures at ``indices`` into one :class:`GraphBatch`."""
        return collate([(*self.graphs[int(i)], self.y[int(i)]) for i in indices])

    def elements(self, indices: Sequence[int] | np.ndarray | None = None) -> list[int]:
        """Sorted atomic numbers occurring in the structures at ``indices`` (all by default)."""
        chosen = range(len(self)) if indices is None else indices
        return sorted({int(z) for i in chosen for z in self.graphs[int(i)][0].tolist()})


def per_example_loss(forward: Any, batch: GraphBatch, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Tensor:
    """Loss of each structure: heat MSE + BCE(metal) + non-metal gap MSE (all normalised; NaN skipped).

    Args:
        forward: the model (or the engine's functional form of it).
        batch: the structures with their normalised targets.
        weights: weights of the heat, metal and gap terms.

    Shapes:
        → (G,).
    """
    out = forward(*batch.inputs(), **batch.extra())
    y = batch.y
    known = torch.isfinite(y)
    target = torch.nan_to_num(y)
    heat = torch.where(known[:, 0], (out[:, 0] - target[:, 0]) ** 2, 0.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 1], target[:, 1], reduction="none")
    metal = torch.where(known[:, 1], bce, 0.0)
    gap = torch.where(known[:, 2], (out[:, 2] - target[:, 2]) ** 2, 0.0)
    return weights[0] * heat + weights[1] * metal + weights[2] * gap


def loss_fn(forward: Any, batch: GraphBatch) -> Tensor:
    """Mean of :func:`per_example_loss` over the batch's graphs (the engine's ``loss_fn``).

    ``batch`` is a :class:`~matmeta.models.gnn.GraphBatch` or one task of padded graphs
    (:class:`matmeta.predict.batched.PaddedGraphs`, whose padding graphs weigh 0).
    """
    return batch.reduce(per_example_loss(forward, batch))


class FamilyEpisodes:
    """Episode source for the meta-trainer: (support, query) from one family of a :class:`GraphTable`.

    Args:
        table: the graphs.
        families: the families tasks are drawn from (e.g. the training split).
        k_support: support sizes; each task picks one of them at random.
        k_query: query size.
        seed: seed of the underlying ``EpisodeSampler``.
    """

    def __init__(
        self, table: GraphTable, families: Sequence[str], k_support: Sequence[int], k_query: int, seed: int
    ) -> None:
        from matmeta.tasks import EpisodeSampler

        self.table = table
        self.samplers = [EpisodeSampler(table.families, list(families), int(k), int(k_query), seed) for k in k_support]

    def sample(self, n_tasks: int, generator: torch.Generator) -> list[tuple[GraphBatch, GraphBatch]]:
        """``n_tasks`` tasks ``(support, query)``."""
        tasks = []
        for _ in range(n_tasks):
            sampler = self.samplers[int(torch.randint(len(self.samplers), (1,), generator=generator))]
            episode = sampler.sample(generator)
            tasks.append((self.table.batch(episode.support), self.table.batch(episode.query)))
        return tasks


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (normal approximation)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    half = 1.96 * arr.std(ddof=1) / math.sqrt(arr.size) if arr.size > 1 else math.nan
    return float(arr.mean()), float(half)


def ensure_store(config: DataConfig, graph_config: Any = None) -> Path:
    """The recipe's store; built from the shared CSV (``source_csv``) when it does not exist yet."""
    from matmeta.store.datasets import ensure_store as ensure_dataset_store

    return ensure_dataset_store(
        config.store, config.source_csv, graph_config, targets=(config.heat_column, "ind_gap", "dir_gap")
    )


def load_table(store_path: Path, config: DataConfig, stats: TargetStats | None = None) -> tuple[GraphTable, Any]:
    """All graphs of a store with raw targets (``y`` normalised only when ``stats`` is given).

    Returns:
        ``(table, graph_config)``.
    """
    from matmeta.store.reader import GraphStore

    store = GraphStore(store_path)
    names = list(store.target_names)
    for column in (config.heat_column, config.gap_column):
        if column not in names:
            raise StoreError(f"{store_path}: store has targets {names}, not {column!r}")
    targets = np.asarray(store.targets, dtype=float)
    heat = targets[:, names.index(config.heat_column)]
    gap = targets[:, names.index(config.gap_column)]
    graphs = [graph_from_data(store[i]) for i in range(len(store))]
    families = list(store.family_keys(config.family_by))
    table = GraphTable(graphs, torch.empty(0), heat, gap, families, list(store.ids))
    n_atoms = table.n_atoms
    table.y = (stats or TargetStats.fit(heat, gap, n_atoms)).encode(heat, gap, n_atoms)
    return table, store.graph_config


def family_indices(table: GraphTable, families: Sequence[str]) -> np.ndarray:
    """Indices of the structures whose family is in ``families``."""
    wanted = set(families)
    return np.array([i for i, f in enumerate(table.families) if f in wanted], dtype=np.int64)


def split(table: GraphTable, config: DataConfig) -> Any:
    """Seeded leave-family-out split (``FamilySplit``)."""
    from matmeta.tasks import split_families

    return split_families(
        table.families, fractions=config.split_fractions, seed=config.split_seed, min_size=config.min_family_size
    )
