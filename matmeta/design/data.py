"""Decoder data: ABX3 cells as decoder tensors, and the family episodes the engine trains on.

One job: turn structures into what :class:`matmeta.models.decoder.CrystalCVAE` reads and back —
the canonical five-site cell (:func:`canonical_cell`, :func:`cell_to_structure`), the condition
rows, the encoded dataset (:class:`CellArrays`) loaded from a graph store, the decoder's batches and
loss (:func:`loss_fn`, with the explainability hooks :func:`per_example_loss` and :func:`collate`),
the engine's episodes (:class:`DecoderEpisodes`) and the element descriptors / site roles stored
in a checkpoint. Used by :mod:`matmeta.design_train` (meta-training) and :mod:`matmeta.design` (the app).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import MatmetaInputError, RecipeError, StoreError
from matmeta.families import electronegativity
from matmeta.models.decoder import COND_DIM

N_SITES = 5


# ---------------------------------------------------------------------------------------- cells


def canonical_cell(
    structure: Any, elements: Sequence[str], name: str = "structure"
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Canonical five-site representation of an ABX3 cell.

    Sites: A, B (the two least electronegative sites, in file order), then the three anions
    (most electronegative) ordered by the lattice axis along which each sits from B
    (X1 on a, X2 on b, X3 on c; an assignment problem, robust to distortions). Coordinates
    are shifted so that A is at the origin.

    Args:
        structure: a pymatgen Structure with 5 sites.
        elements: the species vocabulary.
        name: names the input in error messages.

    Returns:
        ``(species_index (5,), frac (5, 3) in [0, 1), lattice (6,) = a, b, c [Å], α, β, γ [°])``.

    Raises:
        MatmetaInputError: wrong number of atoms or an element outside the vocabulary.
    """
    from scipy.optimize import linear_sum_assignment

    if len(structure) != N_SITES:
        raise MatmetaInputError(f"{name}: {len(structure)} atoms; the decoder models 5-atom ABX3 cells")
    symbols = [site.specie.symbol for site in structure]
    unknown = sorted({s for s in symbols if s not in elements})
    if unknown:
        raise MatmetaInputError(f"{name}: element(s) {', '.join(unknown)} never seen by the decoder")
    chi = np.array([electronegativity(s) for s in symbols])
    order = np.argsort(-chi, kind="stable")
    anions = sorted(order[:3].tolist())
    cations = sorted(order[3:].tolist())
    frac = np.asarray(structure.frac_coords, dtype=np.float64)
    b = frac[cations[1]]
    disp = frac[anions] - b
    disp -= np.round(disp)
    rows, cols = linear_sum_assignment(-np.abs(disp))
    anion_by_axis = [anions[r] for r in rows[np.argsort(cols)]]
    sites = cations + anion_by_axis
    coords = np.remainder(frac[sites] - frac[cations[0]], 1.0)
    lat = structure.lattice
    lattice = np.array([*lat.abc, *lat.angles], dtype=np.float64)
    index = [elements.index(symbols[i]) for i in sites]
    return index, coords, lattice


def cell_to_structure(species: Sequence[int], frac: np.ndarray, lattice: np.ndarray, elements: Sequence[str]) -> Any:
    """A pymatgen Structure from a decoded cell (inverse of :func:`canonical_cell`)."""
    from pymatgen.core import Lattice, Structure

    lat = Lattice.from_parameters(*[float(x) for x in lattice])
    return Structure(lat, [elements[int(i)] for i in species], np.asarray(frac, dtype=np.float64))


def condition(gap_ev: Tensor | float, present: bool = True, metal: bool | Tensor = False, scale: float = 2.0) -> Tensor:
    """Condition rows ``[present, is_metal, gap/scale]``.

    Shapes:
        gap_ev: () or (n,) -> (n, 3).
    """
    gap = torch.as_tensor(gap_ev, dtype=torch.float32).reshape(-1)
    metal_t = torch.as_tensor(metal, dtype=torch.float32).reshape(-1).expand_as(gap)
    present_t = torch.full_like(gap, 1.0 if present else 0.0)
    out = torch.stack([present_t, metal_t, gap / scale], dim=1)
    return out * present_t[:, None]


@dataclass(frozen=True)
class CellArrays:
    """Encoded dataset: canonical cells, gaps and families.

    Shapes:
        species (N, 5) int64, angles (N, 5, 3) float32, lattice (N, 6) float32 (ln abc, angles/90),
        gap (N,) float32 eV.
    """

    species: Tensor
    angles: Tensor
    lattice: Tensor
    gap: Tensor
    families: tuple[str, ...]
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.species.shape[0])


def encode_cells(cells: Sequence[tuple[list[int], np.ndarray, np.ndarray]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack canonical cells into (species, angles, lattice) model tensors.

    Shapes:
        -> species (N, 5) int64, angles (N, 5, 3), lattice (N, 6).
    """
    species = torch.tensor([c[0] for c in cells], dtype=torch.int64).reshape(-1, N_SITES)
    frac = torch.tensor(np.stack([c[1] for c in cells]) if cells else np.zeros((0, N_SITES, 3)), dtype=torch.float32)
    lat = np.stack([c[2] for c in cells]) if cells else np.zeros((0, 6))
    lattice = torch.tensor(np.concatenate([np.log(lat[:, :3]), lat[:, 3:] / 90.0], axis=1), dtype=torch.float32)
    return species, frac * (2 * math.pi), lattice


def make_batch(
    species: Tensor, angles: Tensor, lattice: Tensor, cond: Tensor, generator: torch.Generator, latent_dim: int
) -> dict[str, Tensor]:
    """A decoder batch with its reparameterisation noise drawn from ``generator``."""
    eps = torch.randn(species.shape[0], latent_dim, generator=generator)
    weight = torch.ones(species.shape[0])
    return {"species": species, "angles": angles, "lattice": lattice, "cond": cond, "eps": eps, "weight": weight}


def per_example_loss(forward: Any, batch: dict[str, Tensor]) -> Tensor:
    """Negative ELBO of each example (the explainability hook).

    Shapes:
        -> (n,).
    """
    return forward(batch["species"], batch["angles"], batch["lattice"], batch["cond"], batch["eps"])


def loss_fn(forward: Any, batch: dict[str, Tensor]) -> Tensor:
    """Weighted mean negative ELBO per atom, the loss the engine minimises.

    Examples weigh ``batch["weight"]``; an all-zero support set makes the inner loop a no-op
    (a zero-shot episode: the query loss then scores the meta-initialisation itself).
    """
    weight = batch["weight"]
    return (weight * per_example_loss(forward, batch)).sum() / weight.sum().clamp_min(1.0) / N_SITES


def collate(items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate single-example batches (the explainability hook)."""
    return {k: torch.cat([item[k] for item in items]) for k in items[0]}


# ---------------------------------------------------------------------------------------- data


def load_design_data(
    source: str | Path,
    gap_target: str,
    family_by: str,
    elements: Sequence[str] | None = None,
    min_family_size: int = 1,
) -> tuple[CellArrays, list[Any], tuple[str, ...]]:
    """Structures, gaps and family keys from a graph store (``.lmdb``), as decoder tensors.

    Args:
        source: path of a graph store built by ``matmeta ingest``.
        gap_target: the store's band-gap target column (e.g. ``ind_gap``).
        family_by: family key (``b_site``, ``anion_set``, ...).
        elements: vocabulary (default: every element in the store, sorted by Z).
        min_family_size: at least one family needs this many usable cells (an episode's support + query);
            checked on the labels before any structure is read, and again on the 5-atom cells.

    Returns:
        ``(arrays, structures, elements)``.

    Raises:
        RecipeError: the store has no ``gap_target``.
        StoreError: naming the store: no usable cell, or no family large enough for an episode.
    """
    from matmeta.store.reader import GraphStore

    store = GraphStore(source)
    names = tuple(store.target_names)
    if gap_target not in names:
        raise RecipeError(f"{source}: no target {gap_target!r} in the store (has {', '.join(names)})")
    gaps = np.asarray(store.targets, dtype=np.float64)[:, names.index(gap_target)]
    families = list(store.family_keys(family_by))
    labelled = [i for i in range(len(store)) if np.isfinite(gaps[i])]
    what = f"with a finite {gap_target}"
    check_family_sizes([families[i] for i in labelled], min_family_size, source, f"structures {what}")
    structures = [store.structure(i) for i in range(len(store))]
    ids = list(store.ids)
    keep = [i for i in labelled if len(structures[i]) == N_SITES]
    check_family_sizes([families[i] for i in keep], min_family_size, source, f"5-atom cells {what}")
    structures = [structures[i] for i in keep]
    arrays, elements = arrays_from_structures(
        structures, gaps[keep], [families[i] for i in keep], [ids[i] for i in keep], elements, str(source)
    )
    return arrays, structures, elements


def check_family_sizes(families: Sequence[str], needed: int, source: str | Path, what: str) -> None:
    """Refuse data in which no family has ``needed`` members, naming ``source`` and the largest family.

    Raises:
        StoreError: ``"<source>: no family has <needed> <what> (largest: <family> with <n>) ..."``.
    """
    from collections import Counter

    sizes = Counter(families)
    if sizes and max(sizes.values()) >= needed:
        return
    largest = f"largest: {sizes.most_common(1)[0][0]} with {sizes.most_common(1)[0][1]}" if sizes else "none at all"
    raise StoreError(f"{source}: no family has {needed} {what} ({largest}); an episode needs {needed}")


def arrays_from_structures(
    structures: Sequence[Any],
    gaps: Sequence[float],
    families: Sequence[str],
    ids: Sequence[str],
    elements: Sequence[str] | None = None,
    source: str = "data",
) -> tuple[CellArrays, tuple[str, ...]]:
    """Encode 5-atom structures with their gaps and families (vocabulary: their elements by Z)."""
    if elements is None:
        from pymatgen.core import Element

        seen = {site.specie.symbol for s in structures for site in s}
        elements = tuple(sorted(seen, key=lambda e: Element(e).Z))
    cells = [canonical_cell(s, elements, name=f"{source}[{i}]") for s, i in zip(structures, ids, strict=True)]
    species, angles, lattice = encode_cells(cells)
    arrays = CellArrays(
        species,
        angles,
        lattice,
        torch.tensor(np.asarray(gaps, dtype=np.float64), dtype=torch.float32),
        tuple(families),
        tuple(ids),
    )
    return arrays, tuple(elements)


class DecoderEpisodes:
    """Episodes for the engine: a family's unlabelled support cells, its labelled query cells.

    The support set carries the null condition (at inference the family examples come without
    labels); the query set carries ``[1, is_metal, gap]``, with ``k_nonmetal`` of its members drawn
    from the family's non-metals (when it has any) so that the rare gapped compounds are seen,
    and each query condition replaced by the null condition with probability ``null_prob``.

    Args:
        arrays: the encoded dataset.
        families: the family names this source draws from.
        k_support: support cells per task.
        k_query: query cells per task.
        k_nonmetal: of the query cells, how many come from non-metals.
        null_prob: condition-dropout probability on the query set.
        zero_shot_prob: fraction of episodes whose support weighs zero (no adaptation), so that the
            meta-initialisation itself is a good generator when no family examples are given.
        latent_dim: size of the reparameterisation noise.
        gap_scale_ev: the condition's gap scale.
        source: names the data (the store's path) in the error.

    Raises:
        StoreError: ``"<source>: none of the <n> families ... has <k> members for episodes ..."``.
    """

    def __init__(
        self,
        arrays: CellArrays,
        families: Sequence[str],
        k_support: int,
        k_query: int,
        k_nonmetal: int,
        null_prob: float,
        latent_dim: int,
        gap_scale_ev: float,
        zero_shot_prob: float = 0.0,
        source: str = "data",
    ) -> None:
        self.arrays = arrays
        by_family: dict[str, list[int]] = {}
        for i, fam in enumerate(arrays.families):
            by_family.setdefault(fam, []).append(i)
        self.families = [f for f in families if len(by_family.get(f, ())) >= k_support + k_query]
        if not self.families:
            sizes = sorted((len(by_family.get(f, ())), f) for f in families)
            largest = f"largest: {sizes[-1][1]} with {sizes[-1][0]}" if sizes else "no family given"
            raise StoreError(
                f"{source}: none of the {len(sizes)} families has k_support + k_query = {k_support + k_query} "
                f"members for episodes ({largest})"
            )
        self.members = {f: torch.tensor(by_family[f]) for f in self.families}
        gap = arrays.gap
        self.nonmetals = {f: m[gap[m] > 0] for f, m in self.members.items()}
        self.k_support, self.k_query, self.k_nonmetal = k_support, k_query, k_nonmetal
        self.null_prob, self.latent_dim, self.scale = null_prob, latent_dim, gap_scale_ev
        self.zero_shot_prob = zero_shot_prob

    def _batch(self, idx: Tensor, cond: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        a = self.arrays
        return make_batch(a.species[idx], a.angles[idx], a.lattice[idx], cond, generator, self.latent_dim)

    def sample(self, n_tasks: int, generator: torch.Generator) -> list[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        """``n_tasks`` (support, query) pairs; all randomness from ``generator``."""
        tasks = []
        picks = torch.randint(len(self.families), (n_tasks,), generator=generator)
        for p in picks.tolist():
            fam = self.families[p]
            members = self.members[fam]
            perm = members[torch.randperm(len(members), generator=generator)]
            support = perm[: self.k_support]
            rest = perm[self.k_support :]
            nm = self.nonmetals[fam]
            nm = nm[~torch.isin(nm, support)]
            n_nm = min(self.k_nonmetal, len(nm))
            chosen_nm = nm[torch.randperm(len(nm), generator=generator)[:n_nm]]
            rest = rest[~torch.isin(rest, chosen_nm)]
            query = torch.cat([chosen_nm, rest[: self.k_query - n_nm]])
            gap = self.arrays.gap[query]
            cond = condition(gap, metal=gap <= 0, scale=self.scale)
            drop = torch.rand(len(query), generator=generator) < self.null_prob
            cond = cond * (~drop)[:, None]
            null = torch.zeros(len(support), COND_DIM)
            support_batch = self._batch(support, null, generator)
            if float(torch.rand((), generator=generator)) < self.zero_shot_prob:
                support_batch["weight"] = torch.zeros(len(support))
            tasks.append((support_batch, self._batch(query, cond, generator)))
        return tasks


# ---------------------------------------------------------------------------------------- checkpoint metadata


ELEMENT_DESCRIPTORS = (
    "X",
    "row",
    "group",
    "mendeleev_no",
    "atomic_radius",
    "average_ionic_radius",
    "max_oxidation_state",
    "min_oxidation_state",
)


def element_features(elements: Sequence[str]) -> list[list[float]]:
    """Standardised descriptors of each element (``ELEMENT_DESCRIPTORS``, pymatgen), rows in vocabulary order."""
    from pymatgen.core import Element

    raw = np.array(
        [[float(getattr(Element(e), name) or 0.0) for name in ELEMENT_DESCRIPTORS] for e in elements],
        dtype=np.float64,
    )
    raw = np.nan_to_num(raw)
    std = raw.std(0)
    out = (raw - raw.mean(0)) / np.where(std > 1e-8, std, 1.0)
    return [[round(float(x), 6) for x in row] for row in out]


def site_elements(arrays: CellArrays, elements: Sequence[str]) -> list[list[str]]:
    """Elements seen at each canonical site (the prototype's site roles)."""
    return [sorted({elements[i] for i in arrays.species[:, s].tolist()}) for s in range(N_SITES)]
