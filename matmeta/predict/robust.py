"""Learning to be robust: perturbed-structure tasks, the drift-penalised loss, and the worst-case drift.

A generated or unrelaxed cell is a perturbed structure, and the property asked of it is that of the relaxed
crystal: a prediction should not swing with a few hundredths of an ångström. Three perturbations of a structure's
geometry, all on its own neighbour list (which pairs are edges is kept; every edge vector moves):

* **rattle** — every atom displaced by N(0, σ²) per Cartesian component (thermal motion);
* **strain** — the cell deformed by a random symmetric strain, each component uniform in ±s (edge vector
  ``v → v (I + ε)``);
* **pgd** — the displacement within ε Å per atom that most changes the network's energy and gap, found by
  projected gradient ascent (Madry et al., ICLR 2018) against the weights being trained.

The robust loss (TRADES-style, Zhang et al., ICML 2019, for regression) is the clean loss plus ``drift_weight``
times the squared change of the normalised energy and (non-metal) gap outputs under the task's perturbation. Used as
MAML's inner *and* outer loss on perturbed tasks, it meta-learns a start that becomes robust on a new family in a
few inner steps (adversarial querying: Goldblum et al., NeurIPS 2020); ``matmeta finetune --robust`` adapts with it.

An edge vector is ``pos[src] + offset · cell − pos[dst]`` (the store's ``edge_vec``), so a displacement δ moves it
by ``δ[src] − δ[dst]``. Exact for perturbations that move no pair across the cutoff or past the neighbour cap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.models.gnn import GraphBatch
from matmeta.predict.config import RobustConfig
from matmeta.predict.data import per_example_loss

PGD_STEP_FACTOR = 2.5  # step = 2.5 ε / steps: the ball's radius is crossed within the steps


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """One task's perturbation: ``kind`` (``"none"``, or one of ``KINDS``), its size (σ, s or ε) and seed."""

    kind: str = "none"
    size: float = 0.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class GeometricBatch:
    """A :class:`GraphBatch` with its edge vectors (E, 3) Å and the perturbation its loss applies."""

    graphs: GraphBatch
    edge_vec: Tensor
    perturbation: Perturbation = Perturbation()

    def with_perturbation(self, perturbation: Perturbation) -> GeometricBatch:
        """The same structures under ``perturbation``."""
        return dataclasses.replace(self, perturbation=perturbation)


class EdgeVectors:
    """Edge vectors of a store's structures, read on first use (the in-memory table keeps lengths only)."""

    def __init__(self, store_path: Any) -> None:
        from matmeta.store.reader import GraphStore

        self.store = GraphStore(store_path)
        self._cache: dict[int, Tensor] = {}

    def __getitem__(self, i: int) -> Tensor:
        if i not in self._cache:
            self._cache[i] = self.store[int(i)].edge_vec.to(torch.float32)
        return self._cache[i]

    def batch(self, table: Any, indices: Sequence[int] | np.ndarray) -> GeometricBatch:
        """The structures at ``indices`` of ``table`` (same store order) with their edge vectors, unperturbed."""
        chosen = [int(i) for i in indices]
        return GeometricBatch(table.batch(chosen), torch.cat([self[i] for i in chosen]))


def structure_edge_vectors(structure: Any, graph_config: Any) -> Tensor:
    """Edge vectors (E, 3) Å of a structure, in the edge order of the predictor's own graph of it."""
    from matmeta.graphs import structure_graph_arrays

    arrays, _ = structure_graph_arrays(structure, graph_config, on_isolated_atoms="error")
    return torch.from_numpy(arrays["edge_vec"])


# ---------------------------------------------------------------------- geometry
def moved_distances(batch: GeometricBatch, delta: Tensor | None = None, strain: Tensor | None = None) -> Tensor:
    """Edge lengths (E,): each graph's cell strained by ``strain`` (G, 3, 3), then atoms moved by ``delta`` (N, 3)."""
    vec = batch.edge_vec
    src, dst = batch.graphs.edge_index[0], batch.graphs.edge_index[1]
    if strain is not None:
        graph_of_edge = batch.graphs.batch[dst]
        vec = vec + torch.einsum("ei,eij->ej", vec, strain[graph_of_edge])
    if delta is not None:
        vec = vec + delta[src] - delta[dst]
    return vec.norm(dim=1)


def project(delta: Tensor, epsilon: float) -> Tensor:
    """Each atom's displacement scaled back into the ball of radius ``epsilon`` (Å)."""
    norms = delta.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return delta * torch.clamp(epsilon / norms, max=1.0)


def random_strain(n_graphs: int, max_strain: float, generator: torch.Generator) -> Tensor:
    """Symmetric strains (G, 3, 3), each component uniform in ±``max_strain``."""
    raw = (torch.rand(n_graphs, 3, 3, generator=generator) * 2.0 - 1.0) * max_strain
    return 0.5 * (raw + raw.transpose(1, 2))


def outputs_at(forward: Any, batch: GeometricBatch, dist: Tensor) -> Tensor:
    """The network's outputs (G, 3) for the batch's graphs with edge lengths ``dist`` (E,)."""
    g = batch.graphs
    return forward(g.atomic_numbers, g.edge_index, dist, g.batch, g.num_graphs, **g.extra())


def drift_terms(perturbed: Tensor, clean: Tensor, graphs: GraphBatch) -> Tensor:
    """Per graph: squared change of the normalised energy, plus of the gap where the structure is a non-metal (G,)."""
    nonmetal = torch.isfinite(graphs.y[:, 2])
    gap = torch.where(nonmetal, (perturbed[:, 2] - clean[:, 2]) ** 2, 0.0)
    return (perturbed[:, 0] - clean[:, 0]) ** 2 + gap


def pgd_displacement(
    forward: Any,
    batch: GeometricBatch,
    epsilon: float,
    steps: int,
    generator: torch.Generator,
    objective: Any = None,
    clean: Tensor | None = None,
) -> Tensor:
    """The displacement (N, 3), within ``epsilon`` Å per atom, that maximises ``objective`` after ``steps`` ascents.

    ``objective(outputs) -> (G,)``, summed over graphs (graphs are independent, so each graph's atoms follow their
    own graph's gradient); default: the drift of the energy and gap outputs from the undisplaced ones (``clean``,
    computed when not given).
    """
    n = batch.graphs.atomic_numbers.shape[0]
    if objective is None:
        if clean is None:
            with torch.no_grad():
                clean = outputs_at(forward, batch, moved_distances(batch))
        clean = clean.detach()

        def objective(out: Tensor) -> Tensor:
            return drift_terms(out, clean, batch.graphs)

    delta = project(torch.randn(n, 3, generator=generator) * epsilon * 0.1, epsilon)
    step = PGD_STEP_FACTOR * epsilon / max(steps, 1)
    with torch.enable_grad():
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            value = objective(outputs_at(forward, batch, moved_distances(batch, delta))).sum()
            (grad,) = torch.autograd.grad(value, delta)
            direction = grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
            delta = project(delta + step * direction, epsilon)
    return delta.detach()


def perturbed_distances(
    forward: Any, batch: GeometricBatch, config: RobustConfig, clean: Tensor | None = None
) -> Tensor:
    """Edge lengths under the batch's own perturbation (PGD against ``forward``, from its ``clean`` outputs)."""
    p = batch.perturbation
    generator = torch.Generator().manual_seed(p.seed)
    n = batch.graphs.atomic_numbers.shape[0]
    if p.kind == "rattle":
        return moved_distances(batch, torch.randn(n, 3, generator=generator) * p.size)
    if p.kind == "strain":
        return moved_distances(batch, strain=random_strain(batch.graphs.num_graphs, p.size, generator))
    if p.kind == "pgd":
        return moved_distances(
            batch, pgd_displacement(forward, batch, p.size, config.pgd_steps, generator, clean=clean)
        )
    return moved_distances(batch)


def robust_loss_fn(config: RobustConfig) -> Any:
    """``loss(forward, batch)``: the clean loss + ``drift_weight`` × the squared drift under the batch's perturbation.

    A plain :class:`GraphBatch` gets the clean loss (the engine's ``loss_fn``).
    """

    def loss(forward: Any, batch: Any) -> Tensor:
        if not isinstance(batch, GeometricBatch):
            return per_example_loss(forward, batch).mean()
        graphs = batch.graphs
        clean_dist = moved_distances(batch)
        clean_batch = dataclasses.replace(graphs, edge_dist=clean_dist)
        out = outputs_at(forward, batch, clean_dist)
        total = per_example_loss(lambda *a, **k: out, clean_batch)
        if batch.perturbation.kind != "none" and config.drift_weight > 0:
            moved = outputs_at(forward, batch, perturbed_distances(forward, batch, config, out))
            total = total + config.drift_weight * drift_terms(moved, out, graphs)
        return total.mean()

    return loss


def draw_perturbation(config: RobustConfig, generator: torch.Generator) -> Perturbation:
    """A perturbation of one of the configured kinds, its size uniform in the configured range."""
    kind = config.kinds[int(torch.randint(len(config.kinds), (1,), generator=generator))]
    u = float(torch.rand(1, generator=generator))
    low, high = {"rattle": config.rattle_sigma, "pgd": config.pgd_epsilon}.get(kind, (config.max_strain,) * 2)
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    return Perturbation(kind, low + u * (high - low), seed)


class RobustEpisodes:
    """Episodes of perturbed structures: a family's (support, query), both under one drawn perturbation."""

    def __init__(self, episodes: Any, edge_vectors: EdgeVectors, config: RobustConfig) -> None:
        self.episodes, self.edge_vectors, self.config = episodes, edge_vectors, config

    def sample(self, n_tasks: int, generator: torch.Generator) -> list[tuple[GeometricBatch, GeometricBatch]]:
        """``n_tasks`` perturbed tasks (the trainer's episode-source interface)."""
        tasks = []
        table = self.episodes.table
        for _ in range(n_tasks):
            sampler = self.episodes.samplers[int(torch.randint(len(self.episodes.samplers), (1,), generator=generator))]
            episode = sampler.sample(generator)
            perturbation = draw_perturbation(self.config, generator)
            support = self.edge_vectors.batch(table, episode.support).with_perturbation(perturbation)
            query = self.edge_vectors.batch(table, episode.query).with_perturbation(perturbation)
            tasks.append((support, query))
        return tasks


class RobustSupport:
    """What ``matmeta finetune --robust`` adapts with: the support items' edge vectors and the robust loss.

    The inner loop's perturbation is PGD at ``epsilon`` Å per atom (the drift the benchmark's goal is stated at),
    with the drift weight and adversary steps of the checkpoint's own ``[robust]`` recipe when it has one.
    """

    def __init__(self, edge_vecs: Sequence[Tensor], config: RobustConfig, epsilon: float = 0.05, seed: int = 0) -> None:
        self.edge_vecs, self.config = list(edge_vecs), config
        self.perturbation = Perturbation("pgd", float(epsilon), int(seed))
        self.loss = robust_loss_fn(config)

    @classmethod
    def for_structures(cls, structures: Sequence[Any], predictor: Any, epsilon: float = 0.05) -> RobustSupport:
        """Edge vectors of ``structures`` on ``predictor``'s graph rule; the robust settings its checkpoint records."""
        recorded = predictor.metadata.get("robust") or {}
        fields = {f.name for f in dataclasses.fields(RobustConfig)}
        config = RobustConfig(**{**{k: v for k, v in recorded.items() if k in fields}, "kinds": ("pgd",)})
        return cls([structure_edge_vectors(s, predictor.graph_config) for s in structures], config, epsilon)

    def batch(self, items: Sequence[Any], indices: Sequence[int]) -> GeometricBatch:
        """The items at ``indices`` (``(z, edge_index, edge_dist, y)``) collated, with their edge vectors and PGD."""
        from matmeta.models.gnn import collate

        chosen = list(indices)
        vec = torch.cat([self.edge_vecs[i] for i in chosen])
        return GeometricBatch(collate([items[i] for i in chosen]), vec, self.perturbation)


# ---------------------------------------------------------------------- measurement
def worst_drift(forward: Any, batch: GeometricBatch, epsilon: float, steps: int = 5, seed: int = 0) -> Tensor:
    """Per graph (G, 2): the largest change of the normalised energy and gap outputs found by PGD within ``epsilon``.

    Each property is attacked on its own, up and down (four PGD runs), as ``predict --sensitivity`` does.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = outputs_at(forward, batch, moved_distances(batch))
    worst = torch.zeros(batch.graphs.num_graphs, 2)
    for column, target in enumerate((0, 2)):
        for sign in (1.0, -1.0):

            def objective(out: Tensor, target: int = target, sign: float = sign) -> Tensor:
                return sign * out[:, target]

            delta = pgd_displacement(forward, batch, epsilon, steps, generator, objective)
            with torch.no_grad():
                moved = outputs_at(forward, batch, moved_distances(batch, delta))
            worst[:, column] = torch.maximum(worst[:, column], (moved[:, target] - clean[:, target]).abs())
    return worst
