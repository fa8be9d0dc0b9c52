"""Inverse design: a meta-learned conditional decoder proposes ABX3 cells for a target band gap.

Pipeline of :func:`generate`::

    decoder (optionally adapted to a family from a few example CIFs with the MAML inner loop)
      → sample n cells conditioned on (non-metal, gap); optional classifier-free guidance on the species
                                                                    [steering 1: conditioning]
      → structural / compositional validity, uniqueness, novelty     [matmeta.validity]
      → band gap, metal probability, formation energy by the predictor
      → rank: valid ∧ unique ∧ in the gap window first             [steering 2: predictor rejection]

No gradient steps in latent space are taken (the predictor is a graph network on the decoded
structure, not differentiable through the sampling of species).

The decoder is :class:`matmeta.models.decoder.CrystalCVAE` on a canonical five-site cell
(see :func:`canonical_cell`). It is meta-trained by the engine (:class:`matmeta.meta.trainer.MetaTrainer`)
with families (B-site cation by default) as tasks: the inner loop adapts to a family from its
*unlabelled* example structures (null condition), the outer loss is the conditional ELBO on other
structures of the same family. That is exactly the ``--family-examples`` use at inference.
Half of the training episodes are zero-shot (support weight 0), so the meta-initialisation is also a
good generator by itself. The judges of a candidate live in :mod:`matmeta.validity` and are
re-exported here.
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

from matmeta.errors import MatmetaError, MatmetaInputError, RecipeError
from matmeta.models.decoder import COND_DIM, CrystalCVAE, DecoderConfig
from matmeta.validity import (  # re-exported: the reusable judges of a candidate
    ReferenceSet,
    compositional_validity,
    coverage,
    judge_candidates,
    structural_validity,
    unique_mask,
)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "CrystalCVAE-Perovskites-2026-11-26-BandGap.ckpt"
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
    chi = np.array([_electronegativity(s) for s in symbols])
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


def _electronegativity(symbol: str) -> float:
    from pymatgen.core import Element

    x = Element(symbol).X
    return 0.0 if x is None or math.isnan(x) else float(x)


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
    source: str | Path, gap_target: str, family_by: str, elements: Sequence[str] | None = None
) -> tuple[CellArrays, list[Any], tuple[str, ...]]:
    """Structures, gaps and family keys from a graph store (``.lmdb``), as decoder tensors.

    Args:
        source: path of a graph store built by ``matmeta ingest``.
        gap_target: the store's band-gap target column (e.g. ``ind_gap``).
        family_by: family key (``b_site``, ``anion_set``, ...).
        elements: vocabulary (default: every element in the store, sorted by Z).

    Returns:
        ``(arrays, structures, elements)``.
    """
    from matmeta.store import GraphStore

    store = GraphStore(source)
    names = tuple(store.target_names)
    if gap_target not in names:
        raise RecipeError(f"{source}: no target {gap_target!r} in the store (has {', '.join(names)})")
    gaps = np.asarray(store.targets, dtype=np.float64)[:, names.index(gap_target)]
    families = list(store.family_keys(family_by))
    structures = [store.structure(i) for i in range(len(store))]
    ids = list(store.ids)
    keep = [i for i, s in enumerate(structures) if len(s) == N_SITES and np.isfinite(gaps[i])]
    structures = [structures[i] for i in keep]
    arrays, elements = arrays_from_structures(
        structures, gaps[keep], [families[i] for i in keep], [ids[i] for i in keep], elements, str(source)
    )
    return arrays, structures, elements


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
    ) -> None:
        self.arrays = arrays
        by_family: dict[str, list[int]] = {}
        for i, fam in enumerate(arrays.families):
            by_family.setdefault(fam, []).append(i)
        self.families = [f for f in families if len(by_family.get(f, ())) >= k_support + k_query]
        if not self.families:
            raise MatmetaError(f"no family has {k_support + k_query} members for episodes")
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


# ---------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class GeneratorTrainConfig:
    """The ``[meta_train]`` section of a generator recipe (besides ``app``).

    Attributes:
        store: graph store of the training structures.
        gap_target: band-gap target in the store (the one the predictor predicts as ``band_gap``).
        family_by: family key that defines tasks.
        split_seed: seed of the leave-family-out split.
        split_fractions: train / validation / test fractions of the families.
        k_support: unlabelled examples the inner loop adapts on.
        k_query: labelled cells per task for the outer loss.
        k_nonmetal: query cells drawn from the family's non-metals.
        null_prob: condition dropout on the query set.
        zero_shot_prob: fraction of episodes without adaptation (see ``DecoderEpisodes``).
        inner_lr: inner step size (initial value; Meta-SGD learns one per tensor).
        inner_steps: inner steps.
        first_order: first-order MAML.
        adapt: which parameters adapt ("all", "head" = the decoder only, ...).
        checkpoint: output path (relative to the repository root).
    """

    store: Path = Path("out/perov.lmdb")
    gap_target: str = "ind_gap"
    family_by: str = "b_site"
    split_seed: int = 0
    split_fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    k_support: int = 5
    k_query: int = 16
    k_nonmetal: int = 6
    null_prob: float = 0.2
    zero_shot_prob: float = 0.5
    inner_lr: float = 0.05
    inner_steps: int = 2
    first_order: bool = False
    adapt: str = "head"
    checkpoint: Path = DEFAULT_CHECKPOINT


def _repo_root(recipe_path: Path) -> Path:
    return Path(recipe_path).resolve().parent.parent


def _resolve(path: Path, recipe_path: Path) -> Path:
    return path if path.is_absolute() else _repo_root(recipe_path) / path


def family_split(arrays: CellArrays, config: GeneratorTrainConfig) -> Any:
    """The leave-family-out split of the store's families (``matmeta.tasks.split_families``).

    Called exactly as the predictor's recipe does (same families, fractions and seed), so the
    held-out test families are unseen by both the decoder and the predictor that scores it.
    """
    from matmeta.tasks import split_families

    return split_families(sorted(set(arrays.families)), fractions=tuple(config.split_fractions), seed=config.split_seed)


def meta_train_from_recipe(recipe: dict, recipe_path: Path, out: Path | None = None, steps: int | None = None) -> Path:
    """Meta-train the decoder from a recipe; returns the checkpoint path.

    Sections: ``[meta_train]`` (``GeneratorTrainConfig`` + ``app``), ``[model]`` (``DecoderConfig``
    without ``elements``), ``[trainer]`` (``TrainerConfig``).
    """
    from matmeta import __version__
    from matmeta.meta.maml import MAML
    from matmeta.meta.trainer import MetaTrainer, TrainerConfig
    from matmeta.recipes import config_from_dict, config_to_dict

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    section = {k: v for k, v in recipe.get("meta_train", {}).items() if k != "app"}
    cfg = config_from_dict(GeneratorTrainConfig, section, f"{recipe_path}[meta_train]")
    model_section = dict(recipe.get("model", {}))
    if "elements" in model_section:
        raise RecipeError(f"{recipe_path}[model]: elements come from the store, do not set them")
    trainer_section = dict(recipe.get("trainer", {}))
    if steps is not None:
        trainer_section["outer_steps"] = int(steps)
    if trainer_section.get("log_path"):
        trainer_section["log_path"] = str(_resolve(Path(trainer_section["log_path"]), recipe_path))
    tcfg = config_from_dict(TrainerConfig, trainer_section, f"{recipe_path}[trainer]")
    store = _resolve(cfg.store, recipe_path)
    arrays, _, elements = load_design_data(store, cfg.gap_target, cfg.family_by)
    model_section = {**model_section, "elements": list(elements), "element_features": element_features(elements)}
    mcfg = config_from_dict(DecoderConfig, model_section, f"{recipe_path}[model]")
    split = family_split(arrays, cfg)
    torch.manual_seed(tcfg.seed)
    model = CrystalCVAE(mcfg)
    maml = MAML(model, cfg.inner_lr, cfg.inner_steps, first_order=cfg.first_order, learn_inner_lr=True, adapt=cfg.adapt)
    common = dict(
        k_support=cfg.k_support,
        k_query=cfg.k_query,
        k_nonmetal=cfg.k_nonmetal,
        latent_dim=mcfg.latent_dim,
        gap_scale_ev=mcfg.gap_scale_ev,
    )
    train_src = DecoderEpisodes(
        arrays, split.train, null_prob=cfg.null_prob, zero_shot_prob=cfg.zero_shot_prob, **common
    )
    val_src = DecoderEpisodes(arrays, split.val, null_prob=0.0, **common) if split.val else None
    path = Path(out) if out is not None else _resolve(cfg.checkpoint, recipe_path)
    gaps = arrays.gap.numpy()
    train_mask = np.isin(np.array(arrays.families), np.array(split.train))
    metadata = {
        "kind": "generator",
        "model_class": "CrystalCVAE",
        "model_config": config_to_dict(mcfg),
        "train_config": config_to_dict(cfg),
        "gap_target": cfg.gap_target,
        "gap_range_ev": [0.0, float(gaps[train_mask].max())],
        "family_by": cfg.family_by,
        "families": {"train": list(split.train), "val": list(split.val), "test": list(split.test)},
        "site_elements": site_elements(arrays, elements),
        "recipe": recipe,
        "matmeta_version": __version__,
    }
    trainer = MetaTrainer(maml, loss_fn, train_src, tcfg, val_source=val_src, checkpoint_path=path, metadata=metadata)
    trainer.fit()
    return path


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


# ---------------------------------------------------------------------------------------- generator


class Generator:
    """A trained decoder with its metadata; samples (optionally family-adapted) ABX3 cells.

    Args:
        maml: the engine wrapping the decoder (its inner loop adapts to family examples).
        metadata: checkpoint metadata.
        path: where it was loaded from.
    """

    def __init__(self, maml: Any, metadata: dict[str, Any], path: Path | None = None) -> None:
        self.maml = maml
        self.model: CrystalCVAE = maml.model
        self.metadata = metadata
        self.path = path
        self.elements: tuple[str, ...] = tuple(self.model.config.elements)
        self.fast: dict[str, Tensor] | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> Generator:
        """Load a generator checkpoint (None: the shipped default)."""
        from matmeta.checkpoint import expect, load_checkpoint, load_state_strict
        from matmeta.meta.maml import MAML
        from matmeta.recipes import config_from_dict

        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        tensors, meta = load_checkpoint(path)
        expect(meta, path, kind="generator")
        mcfg = config_from_dict(DecoderConfig, meta["model_config"], f"{path}:model_config")
        tcfg = meta.get("training", {}).get("maml", {})
        train_cfg = meta.get("train_config", {})
        model = CrystalCVAE(mcfg)
        maml = MAML(
            model,
            float(tcfg.get("inner_lr", train_cfg.get("inner_lr", 0.05))),
            int(tcfg.get("inner_steps", train_cfg.get("inner_steps", 1))),
            learn_inner_lr=bool(tcfg.get("learn_inner_lr", True)),
            adapt=tuple(tcfg["adapt_names"]) if "adapt_names" in tcfg else train_cfg.get("adapt", "all"),
        )
        load_state_strict(maml, tensors, path)
        maml.eval()
        return cls(maml, meta, path)

    @property
    def gap_range(self) -> tuple[float, float]:
        """Band gaps (eV) the decoder was trained on."""
        lo, hi = self.metadata.get("gap_range_ev", [0.0, 10.0])
        return float(lo), float(hi)

    def encode_structures(
        self, structures: Sequence[Any], names: Sequence[str] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Canonical tensors of example structures (errors name the input)."""
        names = names or [f"structure {i}" for i in range(len(structures))]
        cells = [canonical_cell(s, self.elements, n) for s, n in zip(structures, names, strict=True)]
        return encode_cells(cells)

    def adapt(
        self, structures: Sequence[Any], seed: int = 0, steps: int | None = None, names: Sequence[str] | None = None
    ) -> None:
        """Adapt the decoder to a family from a few unlabelled example structures (the inner loop).

        Args:
            structures: 1–20 examples of the family (5-atom ABX3 cells).
            seed: seeds the reparameterisation noise of the inner loop.
            steps: inner steps (default: the meta-trained number).
            names: names of the examples for error messages.
        """
        species, angles, lattice = self.encode_structures(structures, names)
        gen = torch.Generator().manual_seed(seed)
        null = torch.zeros(len(species), COND_DIM)
        batch = make_batch(species, angles, lattice, null, gen, self.model.config.latent_dim)
        self.maml.eval()
        self.fast = self.maml.adapt(batch, loss_fn, steps=steps)

    def reset(self) -> None:
        """Forget any family adaptation."""
        self.fast = None

    def element_mask(self, elements: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> Tensor:
        """(S, V) bool: which element may sit on which canonical site.

        Site roles come from the training data (cation sites / anion sites); ``elements``
        restricts, ``exclude`` removes. Unknown symbols raise ``MatmetaInputError``.
        """
        from pymatgen.core import Element

        for flag, group in (("--elements", elements), ("--exclude-elements", exclude)):
            for sym in group or ():
                try:
                    Element(sym)
                except ValueError:
                    raise MatmetaInputError(f"{flag}: {sym!r} is not an element symbol") from None
                if sym not in self.elements:
                    raise MatmetaInputError(
                        f"{flag}: {sym} was never seen by the decoder (it knows {len(self.elements)} elements)"
                    )
        allowed = set(elements) if elements else set(self.elements)
        allowed -= set(exclude or ())
        roles = self.metadata.get("site_elements") or [list(self.elements)] * N_SITES
        mask = torch.zeros(N_SITES, len(self.elements), dtype=torch.bool)
        for s, role in enumerate(roles):
            for sym in role:
                if sym in allowed:
                    mask[s, self.elements.index(sym)] = True
        empty = [s for s in range(N_SITES) if not mask[s].any()]
        if empty:
            kind = "cation (A/B)" if empty[0] < 2 else "anion (X)"
            raise MatmetaInputError(f"--elements/--exclude-elements: no allowed element left for the {kind} sites")
        return mask

    def sample(
        self,
        n: int,
        gap_ev: Tensor | None,
        seed: int = 0,
        element_mask: Tensor | None = None,
        temperature: float = 1.0,
        geometry_noise: float = 0.0,
        guidance: float = 0.0,
    ) -> list[Any]:
        """``n`` structures; conditioned on ``gap_ev`` (n,) as a non-metal, or unconditioned when None."""
        gen = torch.Generator().manual_seed(seed)
        scale = self.model.config.gap_scale_ev
        cond = torch.zeros(n, COND_DIM) if gap_ev is None else condition(gap_ev, scale=scale)
        model = self.model if self.fast is None else _adapted_copy(self.model, self.fast)
        out = model.sample(
            cond,
            gen,
            element_mask,
            temperature,
            geometry_noise,
            guidance=guidance if gap_ev is not None else 0.0,
            guide=self.model,
        )
        return [
            cell_to_structure(
                out["species"][i].tolist(), out["frac"][i].numpy(), out["lattice"][i].numpy(), self.elements
            )
            for i in range(n)
        ]


def _adapted_copy(model: CrystalCVAE, fast: dict[str, Tensor]) -> CrystalCVAE:
    """A copy of ``model`` holding the fast (family-adapted) weights."""
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in clone.named_parameters():
            if name in fast:
                param.copy_(fast[name])
    return clone.eval()


# ---------------------------------------------------------------------------------------- requests


def parse_gap_window(band_gap: str | float, tolerance: float = 0.3) -> tuple[float, float]:
    """``"2.0"`` with a tolerance, or ``"1.5:2.5"``, as a window (lo, hi) in eV."""
    text = str(band_gap).strip()
    try:
        if ":" in text:
            lo_s, hi_s = text.split(":", 1)
            lo, hi = float(lo_s), float(hi_s)
        else:
            centre = float(text)
            if tolerance < 0:
                raise MatmetaInputError(f"--tolerance {tolerance}: must be >= 0")
            lo, hi = centre - tolerance, centre + tolerance
    except ValueError:
        raise MatmetaInputError(f"--band-gap {text!r}: expected a number (2.0) or a window (1.5:2.5) in eV") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise MatmetaInputError(f"--band-gap {text!r}: the window must be finite with low <= high")
    if hi < 0:
        raise MatmetaInputError(f"--band-gap {text!r}: a band gap cannot be negative")
    return max(lo, 0.0), hi


def check_request(n: int, window: tuple[float, float], gap_range: tuple[float, float]) -> None:
    """Refuse requests that cannot be met, with one line: nothing to generate, a gap out of reach."""
    if n < 1:
        raise MatmetaInputError(f"-n {n}: nothing to generate; ask for at least one candidate")
    lo, hi = window
    if lo > gap_range[1] or hi < gap_range[0]:
        raise MatmetaInputError(
            f"--band-gap {lo:g}:{hi:g} eV: outside what the decoder was trained on "
            f"({gap_range[0]:g}–{gap_range[1]:.2f} eV); no candidate can be steered there"
        )


def target_gaps(n: int, window: tuple[float, float], gap_range: tuple[float, float], seed: int) -> Tensor:
    """Condition values: uniform over the window clipped to the trained range (the centre for a point).

    Shapes:
        -> (n,).
    """
    lo, hi = max(window[0], gap_range[0]), min(window[1], gap_range[1])
    gen = torch.Generator().manual_seed(seed + 7919)
    return lo + (hi - lo) * torch.rand(n, generator=gen)


@dataclass
class GenerationResult:
    """Candidates of one ``generate`` call.

    Attributes:
        structures: the decoded structures, in generation order.
        rows: one dict per candidate (the ``candidates.csv`` columns).
        counts: (filter name, count) in pipeline order.
        window: the band-gap window (eV).
    """

    structures: list[Any]
    rows: list[dict[str, Any]]
    counts: list[tuple[str, int]]
    window: tuple[float, float]


def generate(
    n: int,
    window: tuple[float, float],
    generator: Generator,
    predictor: Any,
    seed: int = 0,
    elements: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    family_examples: Sequence[Any] | None = None,
    reference: Any | None = None,
    conditional: bool = True,
    temperature: float = 1.0,
    guidance: float = 0.0,
) -> GenerationResult:
    """Sample, judge, score and rank ``n`` candidates for a band-gap window.

    Args:
        n: candidates to sample.
        window: band-gap window (eV).
        generator: the decoder (``Generator.load()``).
        predictor: anything with ``predict_structures(structures) -> list[dict]`` (``matmeta.predict.Predictor``).
        seed: the one seed (same seed, same candidates).
        elements: allowed elements (None: all the decoder knows).
        exclude: forbidden elements.
        family_examples: example structures of a family to adapt to first (inner loop).
        reference: a :class:`matmeta.validity.ReferenceSet` for novelty (None: novelty not judged).
        conditional: condition on the window (False: the unconditioned decoder).
        temperature: species softmax temperature.
        guidance: classifier-free guidance weight on the species (0: plain conditioning).
    """
    check_request(n, window, generator.gap_range)
    mask = generator.element_mask(elements, exclude)
    if family_examples:
        generator.adapt(family_examples, seed=seed)
    gaps = target_gaps(n, window, generator.gap_range, seed) if conditional else None
    structures = generator.sample(n, gaps, seed=seed, element_mask=mask, temperature=temperature, guidance=guidance)
    judged = judge_candidates(structures, reference)
    preds = predictor.predict_structures(structures)
    rows = []
    for i, (s, j, p) in enumerate(zip(structures, judged, preds, strict=True)):
        gap = float(p["band_gap"])
        metal = float(p["p_metal"])
        in_window = bool(j["valid"] and metal < 0.5 and window[0] <= gap <= window[1])
        rows.append(
            {
                "id": f"cand-{i:05d}",
                "formula": s.composition.reduced_formula,
                "band_gap_ev": gap,
                "band_gap_std_ev": float(p.get("band_gap_std", float("nan"))),
                "p_metal": metal,
                "heat_ref_ev_per_cell": float(p["heat_ref"]),
                "heat_ref_std_ev": float(p.get("heat_ref_std", float("nan"))),
                **j,
                "in_window": in_window,
                "warning": p.get("warning") or "",
            }
        )
    centre = 0.5 * (window[0] + window[1])
    order = sorted(
        range(n),
        key=lambda i: (
            not (rows[i]["in_window"] and rows[i]["unique"]),
            not rows[i]["valid"],
            not rows[i]["unique"],
            rows[i].get("novel") is False,
            abs(rows[i]["band_gap_ev"] - centre) + 10.0 * rows[i]["p_metal"],
            rows[i]["heat_ref_ev_per_cell"],
        ),
    )
    for rank, i in enumerate(order, start=1):
        rows[i]["rank"] = rank
    counts = filter_counts(rows)
    if family_examples:
        generator.reset()
    return GenerationResult(structures, rows, counts, window)


def filter_counts(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """How many candidates survive each filter, applied in sequence."""
    stages = [
        ("generated", lambda r: True),
        ("structurally valid", lambda r: r["struct_valid"]),
        ("compositionally valid", lambda r: r["comp_valid"]),
        ("unique", lambda r: r["unique"]),
        ("novel", lambda r: r.get("novel") is not False),
        ("predicted non-metal", lambda r: r["p_metal"] < 0.5),
        ("gap in window", lambda r: r["in_window"]),
    ]
    if rows and all(r.get("novel") is None for r in rows):
        stages = [(name + " (not judged: no store)" if name == "novel" else name, keep) for name, keep in stages]
    alive = list(rows)
    counts = []
    for name, keep in stages:
        alive = [r for r in alive if keep(r)]
        counts.append((name, len(alive)))
    return counts


@dataclass(frozen=True)
class DesignRequest:
    """What ``matmeta generate`` is asked for (CLI flags; a notebook can build one directly).

    Attributes:
        band_gap: a value ("2.0") or a window ("1.5:2.5"), eV.
        tolerance: half-width around a single value, eV.
        n: candidates to sample.
        seed: the one seed.
        elements: allowed elements (None: all).
        exclude: forbidden elements.
        guidance: classifier-free guidance weight.
        temperature: species softmax temperature.
    """

    band_gap: str = "2.0"
    tolerance: float = 0.3
    n: int = 200
    seed: int = 0
    elements: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    guidance: float = 0.0
    temperature: float = 1.0


def training_reference(generator: Generator, store: str | Path | None = None) -> Any:
    """The decoder's training structures (training families of its store) as a novelty reference.

    Returns None (novelty not judged, with a warning) when the store is not available.
    """
    from matmeta.console import warn
    from matmeta.validity import ReferenceSet

    meta = generator.metadata
    if store is None:
        stored = meta.get("train_config", {}).get("store")
        store = stored if stored and Path(stored).exists() else None
        if store is None and stored:
            root = CHECKPOINT_DIR.parent.parent
            store = root / stored if (root / stored).exists() else None
    if store is None or not Path(store).exists():
        warn("training store not found: novelty is not judged (pass --store out/perov.lmdb)")
        return None
    from matmeta.store import GraphStore

    graphs = GraphStore(store)
    train = set(meta.get("families", {}).get("train", []))
    families = graphs.family_keys(meta.get("family_by", "b_site"))
    return ReferenceSet([graphs.structure(i) for i, f in enumerate(families) if not train or f in train])


def run_generate(
    request: DesignRequest,
    family_examples: Sequence[tuple[str, Any]] | None = None,
    checkpoint: str | Path | None = None,
    predictor: str | Path | None = None,
    store: str | Path | None = None,
) -> GenerationResult:
    """``matmeta generate`` as a library call: load the decoder and predictor, generate, judge, rank.

    Args:
        request: the target and options.
        family_examples: ``(name, structure)`` examples to adapt to first.
        checkpoint: generator checkpoint (None: shipped).
        predictor: predictor checkpoint (None: shipped).
        store: training store for novelty (None: the checkpoint's when present).
    """
    from matmeta.predict import Predictor

    window = parse_gap_window(request.band_gap, request.tolerance)
    gen = Generator.load(checkpoint)
    check_request(request.n, window, gen.gap_range)
    gen.element_mask(request.elements, request.exclude)
    examples = None
    if family_examples:
        names = [name for name, _ in family_examples]
        examples = [s for _, s in family_examples]
        gen.encode_structures(examples, names)  # one-line errors naming a bad example, before any work
    scorer = Predictor.load(predictor)
    reference = training_reference(gen, store)
    return generate(
        request.n,
        window,
        gen,
        scorer,
        seed=request.seed,
        elements=request.elements,
        exclude=request.exclude,
        family_examples=examples,
        reference=reference,
        temperature=request.temperature,
        guidance=request.guidance,
    )


CSV_COLUMNS = (
    "rank",
    "id",
    "formula",
    "band_gap_ev",
    "band_gap_std_ev",
    "p_metal",
    "heat_ref_ev_per_cell",
    "heat_ref_std_ev",
    "in_window",
    "struct_valid",
    "comp_valid",
    "valid",
    "unique",
    "novel",
    "min_distance_ang",
    "volume_per_atom_ang3",
    "cif",
    "warning",
)


def write_candidates(result: GenerationResult, out_dir: str | Path) -> Path:
    """Write one CIF per structurally valid candidate and ``candidates.csv`` (rank order), atomically.

    Returns:
        The path of ``candidates.csv``.
    """
    import csv
    import io

    from pymatgen.io.cif import CifWriter

    from matmeta.atomic import write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(result.rows, key=lambda r: r["rank"])
    for row in rows:
        row["cif"] = ""
        if row["struct_valid"]:
            index = int(row["id"].split("-")[1])
            name = f"{row['rank']:04d}_{row['formula']}.cif"
            write_text_atomic(out_dir / name, str(CifWriter(result.structures[index])))
            row["cif"] = name
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    path = out_dir / "candidates.csv"
    write_text_atomic(path, buffer.getvalue())
    return path


__all__ = [
    "ReferenceSet",
    "compositional_validity",
    "coverage",
    "judge_candidates",
    "structural_validity",
    "unique_mask",
    "CellArrays",
    "DecoderEpisodes",
    "DesignRequest",
    "GenerationResult",
    "Generator",
    "GeneratorTrainConfig",
    "canonical_cell",
    "cell_to_structure",
    "check_request",
    "collate",
    "filter_counts",
    "generate",
    "loss_fn",
    "meta_train_from_recipe",
    "parse_gap_window",
    "per_example_loss",
    "run_generate",
    "training_reference",
    "write_candidates",
]
