"""Crystal structure → periodic radius graph (``torch_geometric.data.Data``).

The graph schema is defined here, once, and every model and the store follow it:

=================  ============  =========  =========================================================
field              shape         dtype      meaning
=================  ============  =========  =========================================================
``atomic_numbers`` (N,)          int64      element of each atom
``pos``            (N, 3)        float32    Cartesian positions in Å, wrapped into the cell
``cell``           (1, 3, 3)     float32    lattice vectors as rows, Å
``edge_index``     (2, E)        int64      row 0: neighbour j (source), row 1: centre i (target)
``cell_offsets``   (E, 3)        float32    integer image offset n of the neighbour (j sits at pos[j] + n @ cell)
``edge_vec``       (E, 3)        float32    pos[j] + cell_offsets @ cell − pos[i], Å
``edge_dist``      (E,)          float32    ‖edge_vec‖, Å
``y``              (1, T)        float32    targets (NaN = missing); T may be 0
=================  ============  =========  =========================================================

Edges are directed (both i→j and j→i appear), grouped by centre i in increasing order and, within a
centre, sorted by distance. Periodic images are found for any cutoff, also when the cutoff exceeds the
cell (one atom may then be its own neighbour through other images) and for triclinic cells.
Graphs batch with ``torch_geometric.data.Batch.from_data_list``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from matmeta.errors import MatmetaInputError
from matmeta.geometry import Pairs, neighbor_list, wrap_fractional

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from torch_geometric.data import Data

IsolatedPolicy = Literal["error", "warn", "ignore"]
ISOLATED_POLICIES = ("error", "warn", "ignore")

#: Field name → (dtype, shape) of every graph field (symbolic shapes).
GRAPH_SCHEMA: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "atomic_numbers": ("int64", ("N",)),
    "pos": ("float32", ("N", 3)),
    "cell": ("float32", (1, 3, 3)),
    "edge_index": ("int64", (2, "E")),
    "cell_offsets": ("float32", ("E", 3)),
    "edge_vec": ("float32", ("E", 3)),
    "edge_dist": ("float32", ("E",)),
    "y": ("float32", (1, "T")),
}

# Distances are compared after rounding to this many decimals (Å) so that symmetry-equivalent
# neighbours, equal up to floating-point noise, tie and are then ordered by index and image.
_TIE_DECIMALS = 6


@dataclass(frozen=True)
class GraphConfig:
    """How a crystal becomes a graph.

    Attributes:
        cutoff_angstrom: Radius within which two atoms (any periodic images) are connected, Å.
        max_neighbors: Keep at most this many nearest neighbours per atom (ties broken by neighbour
            index, then image offset, so the choice is deterministic).
    """

    cutoff_angstrom: float = 6.0
    max_neighbors: int = 12

    def __post_init__(self) -> None:
        if not (isinstance(self.cutoff_angstrom, (int, float)) and np.isfinite(self.cutoff_angstrom)):
            raise ValueError(f"cutoff_angstrom must be a finite number, got {self.cutoff_angstrom!r}")
        if self.cutoff_angstrom <= 0:
            raise ValueError(f"cutoff_angstrom must be > 0, got {self.cutoff_angstrom}")
        if isinstance(self.max_neighbors, bool) or not isinstance(self.max_neighbors, int) or self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be an integer >= 1, got {self.max_neighbors!r}")
        object.__setattr__(self, "cutoff_angstrom", float(self.cutoff_angstrom))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in graph stores and checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GraphConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown graph setting(s): {', '.join(unknown)}")
        return cls(**values)


def graph_arrays(
    lattice: np.ndarray,
    frac_coords: np.ndarray,
    atomic_numbers: np.ndarray,
    config: GraphConfig,
    on_isolated_atoms: IsolatedPolicy = "error",
    name: str = "structure",
    pairs: Pairs | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The graph of one crystal as numpy arrays (every schema field except ``y``).

    Args:
        lattice: Lattice vectors as rows, Å.
        frac_coords: Fractional coordinates (any range; wrapped into the cell).
        atomic_numbers: Element of each atom.
        config: Cutoff and neighbour limit.
        on_isolated_atoms: An atom with no neighbour inside the cutoff raises
            :class:`MatmetaInputError` (``"error"``), is reported in the returned warnings
            (``"warn"``) or is kept silently without edges (``"ignore"``).
        name: Used in messages ("<name>: <reason>").
        pairs: ``neighbor_list(lattice, wrapped Cartesian positions, config.cutoff_angstrom)`` when the
            caller already has it (ingest shares it with the family keys); searched here otherwise.

    Returns:
        ``(arrays, warnings)``: arrays keyed by schema field name with the schema's dtypes.

    Shapes:
        lattice: (3, 3); frac_coords: (N, 3); atomic_numbers: (N,) → see the module table.
    """
    if on_isolated_atoms not in ISOLATED_POLICIES:
        raise ValueError(f"on_isolated_atoms must be one of {ISOLATED_POLICIES}, got {on_isolated_atoms!r}")
    lattice = np.asarray(lattice, dtype=np.float64).reshape(3, 3)
    numbers = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
    frac = wrap_fractional(np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3))
    cart = frac @ lattice
    n_atoms = len(numbers)

    centers, neighbors, offsets, dist = (
        pairs if pairs is not None else neighbor_list(lattice, cart, config.cutoff_angstrom)
    )
    order = edge_order(centers, neighbors, offsets, dist, n_atoms)
    counts = np.bincount(centers, minlength=n_atoms)
    if len(order):  # keep the max_neighbors first edges of each centre
        rank = np.arange(len(order)) - (np.cumsum(counts) - counts)[centers[order]]
        order = order[rank < config.max_neighbors]
    centers, neighbors, offsets, dist = centers[order], neighbors[order], offsets[order], dist[order]

    warnings: list[str] = []
    isolated = np.flatnonzero(counts == 0)
    if len(isolated) and on_isolated_atoms != "ignore":
        message = (
            f"{name}: {len(isolated)} atom(s) with no neighbour within {config.cutoff_angstrom:g} Å "
            f"(site index {', '.join(str(i) for i in isolated[:5])}{', …' if len(isolated) > 5 else ''})"
        )
        if on_isolated_atoms == "error":
            raise MatmetaInputError(message)
        warnings.append(message)

    vec = cart[neighbors] + offsets @ lattice - cart[centers]
    arrays = {
        "atomic_numbers": numbers,
        "pos": cart.astype(np.float32),
        "cell": lattice.astype(np.float32).reshape(1, 3, 3),
        "edge_index": np.stack([neighbors, centers]).astype(np.int64).reshape(2, -1),
        "cell_offsets": np.rint(offsets).astype(np.float32).reshape(-1, 3),
        "edge_vec": vec.astype(np.float32).reshape(-1, 3),
        "edge_dist": dist.astype(np.float32),
    }
    return arrays, warnings


def edge_order(
    centers: np.ndarray, neighbors: np.ndarray, offsets: np.ndarray, dist: np.ndarray, n_atoms: int
) -> np.ndarray:
    """The edge order: centre, distance rounded to ``_TIE_DECIMALS``, neighbour index, image offset.

    Every pair is unique, so the order is fully determined. When the keys fit, they are packed into
    one int64 per pair and sorted once (``rint(d * 10**k)`` orders like ``np.round(d, k)``, which
    computes exactly that before dividing); otherwise a six-key ``np.lexsort``.

    Shapes:
        centers, neighbors, dist: (P,); offsets: (P, 3) integer-valued → (P,) int64
    """
    if len(dist):
        steps = np.rint(dist * 10.0**_TIE_DECIMALS)
        images = np.rint(offsets).astype(np.int64)
        reach = int(np.abs(images).max())
        image_bits = (2 * reach).bit_length()
        atom_bits = max(int(n_atoms) - 1, 1).bit_length()
        dist_bits = int(steps.max()).bit_length() if np.isfinite(steps.max()) else 64
        if 2 * atom_bits + dist_bits + 3 * image_bits <= 62 and bool((offsets == images).all()):
            images += reach
            key = (centers << dist_bits) | steps.astype(np.int64)
            for column in (neighbors, images[:, 0], images[:, 1], images[:, 2]):
                key = (key << (atom_bits if column is neighbors else image_bits)) | column
            return np.argsort(key)
    return np.lexsort((offsets[:, 2], offsets[:, 1], offsets[:, 0], neighbors, np.round(dist, _TIE_DECIMALS), centers))


def targets_array(y: Any = None) -> np.ndarray:
    """Targets as a (1, T) float32 array (``None`` → T = 0).

    Shapes:
        y: (T,) or (1, T) → (1, T)
    """
    if y is None:
        return np.zeros((1, 0), dtype=np.float32)
    return np.asarray(y, dtype=np.float32).reshape(1, -1)


def arrays_to_data(arrays: dict[str, Any]) -> Data:
    """Wrap schema arrays (numpy or torch) into a ``Data`` object without copying numpy buffers.

    Shapes:
        arrays: the schema fields (module table); ``y`` defaults to (1, 0).
    """
    import torch
    from torch_geometric.data import Data

    fields = {}
    for key in GRAPH_SCHEMA:
        value = arrays.get(key)
        if value is None and key == "y":
            value = targets_array(None)
        fields[key] = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    data = Data()
    mapping = getattr(data._store, "_mapping", None)  # PyG's storage dict: 10x faster than setattr per field
    if isinstance(mapping, dict):
        mapping.update(fields)
    else:  # pragma: no cover - a PyG without ``_mapping``: the public (slower) way
        for key, value in fields.items():
            setattr(data, key, value)
    return data  # num_nodes follows from pos


def structure_graph_arrays(
    structure: Structure,
    config: GraphConfig | None = None,
    on_isolated_atoms: IsolatedPolicy = "error",
    name: str | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The graph arrays of an ordered ``Structure`` and any isolated-atom warnings (no PyG needed).

    Raises:
        MatmetaInputError: partially occupied sites, or isolated atoms under ``"error"``.
    """
    config = config or GraphConfig()
    name = name or structure.composition.reduced_formula
    if not structure.is_ordered:
        raise MatmetaInputError(f"{name}: partially occupied sites; use an ordered approximation first")
    return graph_arrays(
        structure.lattice.matrix,
        structure.frac_coords,
        np.array(structure.atomic_numbers, dtype=np.int64),
        config,
        on_isolated_atoms=on_isolated_atoms,
        name=name,
    )


def structure_to_graph(
    structure: Structure,
    config: GraphConfig | None = None,
    on_isolated_atoms: IsolatedPolicy = "error",
    y: Any = None,
    name: str | None = None,
) -> Data:
    """A pymatgen ``Structure`` as a periodic radius graph.

    Args:
        structure: An ordered crystal (see :func:`matmeta.structure_checks.check_structure` for validation).
        config: Cutoff and neighbour limit (default ``GraphConfig()``: 6 Å, 12 neighbours).
        on_isolated_atoms: ``"error"`` | ``"warn"`` | ``"ignore"`` for atoms without neighbours.
        y: Optional targets, stored as ``y`` of shape (1, T).
        name: Name used in messages (default: the reduced formula).

    Returns:
        ``Data`` with the fields of the module table.

    Shapes:
        see the module table: N atoms, E edges, T targets.
    """
    arrays, warnings = structure_graph_arrays(structure, config, on_isolated_atoms, name)
    if warnings:
        from matmeta.console import warn

        for message in warnings:
            warn(message)
    arrays["y"] = targets_array(y)
    return arrays_to_data(arrays)
