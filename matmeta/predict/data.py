"""Data side of the predictor app: target names and normalisation, graph tables, the loss, episode sources.

A predictor has two targets, an energy and a band gap, whose public names and units are the
checkpoint's own (:class:`TargetNames`): ``formation_energy_per_atom`` (eV/atom) and ``band_gap_pbe``
(eV) for the Materials Project model, ``heat_ref`` (eV/cell) and ``band_gap`` for the perovskite one.
Inside the app the two roles are :data:`ENERGY` (always eV per cell) and :data:`GAP` (eV, 0 for
metals); :class:`TargetNames` converts at the boundary. The model sees them normalised (see
:class:`TargetStats`)::

    y = [(energy / n_atoms − μ_h) / σ_h,   1[band_gap ≤ threshold],   (band_gap − μ_g) / σ_g]

with μ, σ from the training families (the gap statistics over non-metals only). The third
entry is NaN for metals, so the gap regression sees non-metals only (two-stage gap model).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import MatmetaInputError, StoreError
from matmeta.models.gnn import GraphBatch, collate
from matmeta.predict.config import DataConfig

Graph = tuple[Tensor, Tensor, Tensor]  # atomic_numbers (n,), edge_index (2, e), edge_dist (e,)
ENERGY, GAP = "energy", "band_gap"  # the two target roles inside the app (energy in eV per cell)
MEASURED = "measured_gap"  # the measured-level gap of a checkpoint with a fidelity head (matmeta.predict.measured)
ROLES = (ENERGY, GAP)
TARGETS = ("heat_ref", "band_gap")  # the perovskite checkpoint's public names (older checkpoints)
UNITS = {"heat_ref": "eV/cell", "band_gap": "eV"}
#: Public energy names a predictor may carry, with their unit; the unit is part of the name.
ENERGY_NAMES = {"heat_ref": "eV/cell", "formation_energy_per_atom": "eV/atom"}
GAP_NAMES = ("band_gap", "band_gap_pbe")


@dataclasses.dataclass(frozen=True)
class TargetNames:
    """The public names of a predictor's two targets, and whether its energy is per atom.

    Attributes:
        energy: the energy target's name (:data:`ENERGY_NAMES`): its unit follows from it.
        gap: the band gap's name (:data:`GAP_NAMES`), eV.
    """

    energy: str = "heat_ref"
    gap: str = "band_gap"

    def __post_init__(self) -> None:
        if self.energy not in ENERGY_NAMES or self.gap not in GAP_NAMES:
            raise ValueError(
                f"targets {self.energy!r}, {self.gap!r}: energy must be one of {', '.join(ENERGY_NAMES)}, "
                f"gap one of {', '.join(GAP_NAMES)}"
            )

    @property
    def energy_per_atom(self) -> bool:
        """True when the public energy is per atom (eV/atom), False for per cell."""
        return ENERGY_NAMES[self.energy] == "eV/atom"

    @property
    def names(self) -> tuple[str, str]:
        """``(energy, gap)``."""
        return self.energy, self.gap

    def unit(self, name: str) -> str:
        """The unit of a public target name."""
        return ENERGY_NAMES[name] if name == self.energy else "eV"

    def role(self, name: str) -> str | None:
        """:data:`ENERGY` or :data:`GAP` for a public name, None for a name this predictor lacks."""
        return ENERGY if name == self.energy else GAP if name == self.gap else None

    def to_public(self, energy_per_cell: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
        """Energies in eV/cell → the public unit."""
        values = np.asarray(energy_per_cell, float)
        return values / np.asarray(n_atoms, float) if self.energy_per_atom else values

    def to_cell(self, energy: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
        """Energies in the public unit → eV/cell."""
        values = np.asarray(energy, float)
        return values * np.asarray(n_atoms, float) if self.energy_per_atom else values

    @classmethod
    def from_metadata(cls, targets: dict[str, Any]) -> TargetNames:
        """From a checkpoint's ``targets`` entry (``names``: [energy, gap])."""
        names = list(targets.get("names", TARGETS))
        if len(names) != 2:
            raise ValueError(f"a predictor has two targets (energy, gap), got {names}")
        return cls(str(names[0]), str(names[1]))


@dataclasses.dataclass(frozen=True)
class TargetStats:
    """Normalisation of the targets (stored in every predictor checkpoint).

    Attributes:
        heat_per_atom_mean: mean of the energy per atom over training structures (eV/atom).
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
    def fit(cls, energy: np.ndarray, band_gap: np.ndarray, n_atoms: np.ndarray) -> TargetStats:
        """Statistics of training targets (energy in eV/cell; NaN entries ignored).

        Shapes:
            energy, band_gap, n_atoms: (N,).
        """
        per_atom = energy / n_atoms
        per_atom = per_atom[np.isfinite(per_atom)]
        gaps = band_gap[np.isfinite(band_gap) & (band_gap > 0.0)]
        if per_atom.size < 2 or gaps.size < 2:
            raise MatmetaInputError(
                f"training targets: need at least two energies and two non-metal band gaps to normalise "
                f"(found {per_atom.size} and {gaps.size})"
            )

        def spread(values: np.ndarray) -> float:
            std = float(values.std())
            return std if std > 1e-8 else 1.0  # constant targets: only shift, do not divide by 0

        return cls(float(per_atom.mean()), spread(per_atom), float(gaps.mean()), spread(gaps))

    def encode(self, energy: np.ndarray, band_gap: np.ndarray, n_atoms: np.ndarray) -> Tensor:
        """Normalised target rows (energy in eV/cell; NaN where unknown).

        Shapes:
            energy, band_gap, n_atoms: (N,) → (N, 3) float32.
        """
        heat = (np.asarray(energy, float) / np.asarray(n_atoms, float) - self.heat_per_atom_mean) / (
            self.heat_per_atom_std
        )
        gap = np.asarray(band_gap, float)
        known = np.isfinite(gap)
        metal = np.where(known, (gap <= self.metal_threshold_ev).astype(float), np.nan)
        gap_norm = np.where(known & (gap > self.metal_threshold_ev), (gap - self.gap_mean) / self.gap_std, np.nan)
        return torch.as_tensor(np.stack([heat, metal, gap_norm], axis=1), dtype=torch.float32)

    def decode_heat(self, heat_norm: Tensor, n_atoms: Tensor) -> Tensor:
        """The energy target in eV/cell from the model's normalised per-atom output.

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
        energy: (N,) the energy target, eV/cell (NaN = unknown).
        band_gap: (N,) eV (NaN = unknown).
        families: family key of each structure.
        ids: identifiers.
    """

    graphs: list[Graph]
    y: Tensor
    energy: np.ndarray
    band_gap: np.ndarray
    families: list[str]
    ids: list[str]
    _features: list[tuple[np.ndarray, np.ndarray]] | None = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per structure, shape (N,)."""
        return np.array([g[0].shape[0] for g in self.graphs], dtype=float)

    def composition(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Composition features of structure ``i`` (:func:`matmeta.elements.composition_features`), computed once."""
        if self._features is None:
            self._features = [None] * len(self.graphs)  # type: ignore[list-item]
        cached = self._features[i]
        if cached is None:
            from matmeta.predict.batched import composition_of

            cached = self._features[i] = composition_of(self.graphs[i][0])
        return cached

    def batch(self, indices: Sequence[int] | np.ndarray) -> GraphBatch:
        """Collate the structures at ``indices`` into one :class:`GraphBatch` (composition features included)."""
        chosen = [int(i) for i in indices]
        return collate([(*self.graphs[i], self.y[i]) for i in chosen], [self.composition(i) for i in chosen])

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

    return ensure_dataset_store(config.store, config.source_csv, graph_config, targets=tuple(config.store_targets))


def load_table(store_path: Path, config: DataConfig, stats: TargetStats | None = None) -> tuple[GraphTable, Any]:
    """All graphs of a store with raw targets (``y`` normalised only when ``stats`` is given).

    The energy column is read in the unit of ``config.targets[0]`` and kept in eV/cell.

    Returns:
        ``(table, graph_config)``.

    Raises:
        StoreError: the store lacks a target column the recipe names.
    """
    from matmeta.store.reader import GraphStore

    store = GraphStore(store_path)
    names = list(store.target_names)
    for column in (config.energy_column, config.gap_column):
        if column not in names:
            raise StoreError(f"{store_path}: store has targets {names}, not {column!r}")
    targets = np.asarray(store.targets, dtype=float)
    graphs = [graph_from_data(store[i]) for i in range(len(store))]
    n_atoms = np.array([g[0].shape[0] for g in graphs], dtype=float)
    energy = TargetNames(*config.targets).to_cell(targets[:, names.index(config.energy_column)], n_atoms)
    gap = targets[:, names.index(config.gap_column)]
    families = list(store.family_keys(config.family_by, undefined="empty"))
    table = GraphTable(graphs, torch.empty(0), energy, gap, families, list(store.ids))
    table.y = (stats or TargetStats.fit(energy, gap, n_atoms)).encode(energy, gap, n_atoms)
    return table, store.graph_config


def family_indices(table: GraphTable, families: Sequence[str]) -> np.ndarray:
    """Indices of the structures whose family is in ``families``."""
    wanted = set(families)
    return np.array([i for i, f in enumerate(table.families) if f in wanted], dtype=np.int64)


def split(table: GraphTable, config: DataConfig) -> Any:
    """The recipe's leave-family-out split (``FamilySplit``): fixed lists, or seeded.

    A fixed split (``val_families``, ``test_families``) takes every other family of at least
    ``min_family_size`` structures as a training family; a family the recipe names that the store lacks
    is refused. Structures without a key of the recipe's kind ("" from the store) join no family.
    """
    from matmeta.tasks import FamilySplit, split_families

    keyed = [f for f in table.families if f]
    if not config.val_families:
        try:
            return split_families(
                keyed, fractions=config.split_fractions, seed=config.split_seed, min_size=config.min_family_size
            )
        except ValueError as exc:  # too few families of the kind and size
            raise StoreError(f"{config.store}: {config.family_by} families: {exc}") from None
    sizes = Counter(keyed)
    missing = sorted((set(config.val_families) | set(config.test_families)) - set(sizes))
    if missing:
        raise StoreError(f"recipe names {len(missing)} {config.family_by} families the store lacks: {missing[:5]}")
    held = set(config.val_families) | set(config.test_families)
    train = tuple(sorted(f for f, n in sizes.items() if n >= config.min_family_size and f not in held))
    dropped = tuple(sorted(f for f, n in sizes.items() if n < config.min_family_size and f not in held))
    return FamilySplit(train, tuple(sorted(config.val_families)), tuple(sorted(config.test_families)), dropped)


def pretrain_indices(table: GraphTable, family_split: Any, config: DataConfig) -> np.ndarray:
    """The structures of pooled pretraining: the training families, or everything but the held-out ones."""
    if config.pretrain_pool == "train_families":
        return family_indices(table, family_split.train)
    held = set(family_split.val) | set(family_split.test)
    return np.array([i for i, f in enumerate(table.families) if f not in held], dtype=np.int64)
