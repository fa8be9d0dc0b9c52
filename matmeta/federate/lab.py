"""A predictor lab in the federation: its statistics, its learner, its answer to each round.

Everything here runs inside the lab. What leaves it: two arrays in the statistics round (six
moments of its targets and a 0/1 mask of the elements it holds), and afterwards the update arrays
and scalar metrics of :class:`~matmeta.federate.local.LocalLearner`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from matmeta.errors import MatmetaInputError
from matmeta.federate.config import FederatedRecipe
from matmeta.federate.local import LocalLearner
from matmeta.federate.messages import state_names
from matmeta.federate.privacy import clip_arrays
from matmeta.federate.tasks import (
    FamilyEpisodes,
    GNNConfig,
    LabData,
    MAMLSettings,
    TargetStats,
    build_maml,
    loss_fn,
)

N_ELEMENTS = 119
Handler = Callable[[list[np.ndarray], dict[str, Any]], tuple[list[np.ndarray], int, dict[str, float]]]


def stats_arrays(lab: LabData) -> list[np.ndarray]:
    """The lab's target moments ``(n, Σ, Σ²)`` of heat per atom and non-metal gap, and its element mask."""
    idx = lab.indices
    t = lab.table
    heat = t.energy[idx] / t.n_atoms[idx]
    heat = heat[np.isfinite(heat)]
    gap = t.band_gap[idx]
    gap = gap[np.isfinite(gap) & (gap > 0.0)]
    moments = np.array([heat.size, heat.sum(), (heat**2).sum(), gap.size, gap.sum(), (gap**2).sum()], dtype=np.float64)
    mask = np.zeros(N_ELEMENTS, dtype=np.float32)
    mask[t.elements(idx)] = 1.0
    return [moments, mask]


def combine_stats(replies: list[list[np.ndarray]]) -> tuple[dict[str, float], list[int]]:
    """Pooled normalisation statistics and the union of elements from the labs' statistics arrays."""
    m = np.sum([np.asarray(r[0], dtype=np.float64) for r in replies], axis=0)
    mask = np.max([np.asarray(r[1]) for r in replies], axis=0)

    def mean_std(n: float, s: float, s2: float) -> tuple[float, float]:
        mean = s / max(n, 1.0)
        std = float(np.sqrt(max(s2 / max(n, 1.0) - mean**2, 0.0)))
        return float(mean), std if std > 1e-8 else 1.0

    hm, hs = mean_std(*m[:3])
    gm, gs = mean_std(*m[3:])
    stats = TargetStats(hm, hs, gm, gs)
    return dataclasses.asdict(stats), [int(z) for z in np.flatnonzero(mask > 0.5) if z > 0]


def model_instructions(recipe: FederatedRecipe) -> dict[str, Any]:
    """The model, engine and episode settings the server sends with every round (plain scalars)."""
    out: dict[str, Any] = {f"model.{k}": v for k, v in dataclasses.asdict(recipe.model).items()}
    settings = recipe.maml_settings()
    out |= {f"maml.{k}": v for k, v in dataclasses.asdict(settings).items() if v is not None}
    out["episodes.k_support"] = ",".join(str(k) for k in recipe.episodes.k_support)
    out["episodes.k_query"] = recipe.episodes.k_query
    out["graph.cutoff_angstrom"] = recipe.model.cutoff_angstrom
    out["graph.max_neighbors"] = recipe.data.max_neighbors
    return out


def _section(config: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def lab_learner(
    lab: LabData, model: GNNConfig, settings: MAMLSettings, episodes: tuple, algorithm: str, seed: int
) -> LocalLearner:
    """The lab's learner over its own families (``episodes``: ``(k_support tuple, k_query)``)."""
    torch.manual_seed(seed)
    maml = build_maml(model, settings)
    source = FamilyEpisodes(lab.table, lab.families, episodes[0], episodes[1], seed)
    indices = lab.indices

    def pooled_batch(n: int, generator: torch.Generator) -> Any:
        pick = torch.randint(len(indices), (n,), generator=generator).numpy()
        return lab.table.batch(indices[pick])

    return LocalLearner(maml, loss_fn, source, algorithm, state_names(maml.state_dict()), pooled_batch, seed)


class LabHandler:
    """Answers the server's rounds for one lab (used by the Flower client and the in-process driver).

    Args:
        lab: the lab's private data.
        seed: the lab's sampling seed.
    """

    def __init__(self, lab: LabData, seed: int = 0) -> None:
        self.lab = lab
        self.seed = seed
        self.learner: LocalLearner | None = None
        self.normalised = False

    def __call__(
        self, arrays: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, float]]:
        """One round: statistics or a local update."""
        if config.get("phase") == "stats":
            return stats_arrays(self.lab), 1, {}
        if self.learner is None:
            self._setup(config)
        if not self.normalised:
            self.lab.normalise(TargetStats(**_section(config, "stats.")))
            self.normalised = True
        assert self.learner is not None
        self.learner.algorithm = str(config["algorithm"])  # pretraining rounds are FedAvg
        result = self.learner.update(
            arrays,
            int(config["round"]),
            int(config["local_steps"]),
            str(config["client_optimizer"]),
            float(config["client_lr"]),
            int(config["meta_batch_size"]),
            int(config["batch_size"]),
            float(config.get("proximal_mu", 0.0)),
        )
        out = result.arrays
        if float(config.get("dp_clip", -1.0)) > 0:
            out = clip_arrays(out, float(config["dp_clip"]))
        return out, result.n_examples, result.metrics

    def _setup(self, config: dict[str, Any]) -> None:
        from matmeta.recipes import config_from_dict

        graph = self.lab.graph_config
        wanted = (float(config["graph.cutoff_angstrom"]), int(config["graph.max_neighbors"]))
        if (graph.cutoff_angstrom, graph.max_neighbors) != wanted:
            raise MatmetaInputError(
                f"lab store graphs (cutoff {graph.cutoff_angstrom}, max_neighbors {graph.max_neighbors}) differ "
                f"from the federation's {wanted}"
            )
        model = config_from_dict(GNNConfig, _section(config, "model."), "server model settings")
        settings = config_from_dict(MAMLSettings, _section(config, "maml."), "server engine settings")
        k_support = tuple(int(k) for k in str(config["episodes.k_support"]).split(","))
        episodes = (k_support, int(config["episodes.k_query"]))
        self.learner = lab_learner(self.lab, model, settings, episodes, str(config["algorithm"]), self.seed)
