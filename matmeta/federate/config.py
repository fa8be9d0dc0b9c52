"""Settings of a federation (a recipe's ``[federate]`` section) and the recipe as a whole."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

ALGORITHMS = ("fomaml", "metasgd", "reptile", "fedavg")


@dataclasses.dataclass(frozen=True)
class FederateConfig:
    """How the server and the labs train (``[federate]``).

    Attributes:
        algorithm: ``fomaml`` (first-order MAML), ``metasgd`` (first-order Meta-SGD: the inner
            rates travel too), ``reptile``, or ``fedavg`` (supervised, no meta-learning: the baseline).
        rounds: training rounds in total, pretraining included (a resumed server continues up to this number).
        pretrain_rounds: the first rounds are supervised FedAvg (a start for meta-learning, like the
            predictor's pooled pretraining); 0: meta-learn from random weights.
        pretrain_local_steps: local steps per pretraining round.
        pretrain_lr: local Adam learning rate in pretraining rounds (the first one's, see below).
        pretrain_lr_final: the local learning rate of the last pretraining round, reached from
            ``pretrain_lr`` on a cosine (None: constant ``pretrain_lr``).
        pretrain_server_lr: server step on the labs' mean progress in pretraining rounds (1: FedAvg,
            the mean of the local models; > 1 extrapolates along it, FedAvg with a server learning rate).
        pretrain_server_momentum: server momentum β of the pretraining rounds (FedAvgM, Hsu et al. 2019:
            θ −= lr · m, m = β m + mean progress); 0: plain FedAvg.
        pretrain_proximal_mu: FedProx (Li et al., MLSys 2020) in the pretraining rounds: each lab adds
            μ/2 ‖θ − θ_round‖² to its local loss, which holds a lab's steps near the shared weights when
            the labs' data differ (non-IID); 0: plain local steps.
        local_steps: local optimiser steps per round in each lab.
        meta_batch_size: tasks per local step (``fedavg``: ``batch_size`` structures instead).
        batch_size: structures per local step of ``fedavg``.
        client_optimizer: ``sgd`` or ``adam`` (fresh each round) for the local steps.
        client_lr: its learning rate (``sgd`` at 1.0 with one local step sends the plain meta-gradient).
        server_optimizer: ``adam`` (the averaged update is a pseudo-gradient) or ``avg`` (θ −= server_lr · update).
        server_lr: the server's step size.
        rate_lr: server step size of the Meta-SGD log-rates (None: ``server_lr``).
        grad_clip: global-norm clip of the averaged update before the server step (None: no clip).
        max_update_norm: a lab's update with a larger global norm is rejected as oversized.
        min_labs: labs the server waits for before the first round (later rounds start at once with
            the labs still connected; a lab that dropped out is not waited for).
        round_timeout_s: a lab that has not answered by then is dropped from the round.
        wait_s: how long the server waits for ``min_labs`` to connect (and, later, for any lab at all:
            with none connected it stops with an error instead of skipping rounds).
        dp_clip: clip every lab's update to this norm (differential privacy); None: no DP.
        dp_noise: Gaussian noise multiplier σ (noise std = σ · dp_clip / n_labs on the mean).
        dp_delta: δ of the reported (ε, δ) budget.
        seed: initial weights and every lab's task sampling.
        out: the final predictor checkpoint.
        work_dir: the round checkpoint (``server_state.ckpt``) and the round log.
    """

    algorithm: str = "fomaml"
    rounds: int = 30
    pretrain_rounds: int = 0
    pretrain_local_steps: int = 30
    pretrain_lr: float = 0.002
    pretrain_lr_final: float | None = None
    pretrain_server_lr: float = 1.0
    pretrain_server_momentum: float = 0.0
    pretrain_proximal_mu: float = 0.0
    local_steps: int = 5
    meta_batch_size: int = 4
    batch_size: int = 32
    client_optimizer: str = "adam"
    client_lr: float = 0.001
    server_optimizer: str = "avg"
    server_lr: float = 1.0
    rate_lr: float | None = None
    grad_clip: float | None = None
    max_update_norm: float = 1e3
    min_labs: int = 2
    round_timeout_s: float = 600.0
    wait_s: float = 300.0
    dp_clip: float | None = None
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
    seed: int = 0
    out: Path = Path("out/federate/predictor.ckpt")
    work_dir: Path = Path("out/federate")

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.client_optimizer not in ("sgd", "adam") or self.server_optimizer not in ("adam", "avg"):
            raise ValueError("client_optimizer must be sgd/adam and server_optimizer adam/avg")
        if self.pretrain_rounds < 0 or self.pretrain_local_steps < 1 or not self.pretrain_lr > 0:
            raise ValueError("pretrain_rounds >= 0, pretrain_local_steps >= 1 and pretrain_lr > 0 are required")
        if self.pretrain_lr_final is not None and not self.pretrain_lr_final > 0:
            raise ValueError("pretrain_lr_final must be > 0 (or absent for a constant rate)")
        if not self.pretrain_server_lr > 0:
            raise ValueError("pretrain_server_lr must be > 0")
        if not 0.0 <= self.pretrain_server_momentum < 1.0:
            raise ValueError("pretrain_server_momentum must be in [0, 1)")
        if not 0.0 <= self.pretrain_proximal_mu < float("inf"):
            raise ValueError("pretrain_proximal_mu must be finite and >= 0")
        if self.rounds < 0 or self.local_steps < 1 or self.meta_batch_size < 1 or self.min_labs < 1:
            raise ValueError("rounds >= 0, local_steps, meta_batch_size and min_labs >= 1 are required")
        if not (self.client_lr > 0 and self.server_lr > 0 and self.max_update_norm > 0):
            raise ValueError("client_lr, server_lr and max_update_norm must be > 0")
        if self.dp_clip is not None and not (self.dp_clip > 0 and self.dp_noise >= 0 and 0 < self.dp_delta < 1):
            raise ValueError("dp_clip > 0, dp_noise >= 0 and 0 < dp_delta < 1 are required")


@dataclasses.dataclass(frozen=True)
class EpisodeSettings:
    """Episodes each lab draws from its own families (``[episodes]``)."""

    k_support: tuple[int, ...] = (5, 10)
    k_query: int = 10


@dataclasses.dataclass(frozen=True)
class LabDefaults:
    """What a lab reads from its store unless ``join`` says otherwise (``[data]``)."""

    family_by: str = "b_site"
    min_family_size: int = 30
    max_neighbors: int = 12
    heat_column: str = "heat_ref"
    gap_column: str = "ind_gap"


@dataclasses.dataclass(frozen=True)
class FederatedRecipe:
    """A federated meta-training recipe: ``[federate]``, ``[model]``, ``[maml]``, ``[episodes]``, ``[data]``."""

    federate: FederateConfig
    model: Any  # GNNConfig
    maml: Any  # MAMLSettings
    episodes: EpisodeSettings
    data: LabDefaults

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], where: str = "recipe") -> FederatedRecipe:
        """Build from a recipe dict; unknown sections or keys are refused by name."""
        from matmeta.errors import RecipeError
        from matmeta.federate.tasks import GNNConfig, MAMLSettings
        from matmeta.recipes import config_from_dict

        sections = {
            "federate": FederateConfig,
            "model": GNNConfig,
            "maml": MAMLSettings,
            "episodes": EpisodeSettings,
            "data": LabDefaults,
        }
        extra = sorted(set(recipe) - set(sections))
        if extra:
            raise RecipeError(f"{where}: unknown section(s) {', '.join(extra)}; known: {', '.join(sections)}")
        built = {name: config_from_dict(kind, recipe.get(name), f"{where} [{name}]") for name, kind in sections.items()}
        return cls(**built)

    def maml_settings(self) -> Any:
        """The engine settings the algorithm implies (first order; Meta-SGD rates only for ``metasgd``)."""
        return dataclasses.replace(
            self.maml, first_order=True, learn_inner_lr=self.federate.algorithm == "metasgd", per_element_lr=False
        )


def pretrain_lr(config: FederateConfig, round_index: int) -> float:
    """Local learning rate of pretraining round ``round_index`` (0-based): cosine from ``pretrain_lr`` to the final."""
    final = config.pretrain_lr_final
    if final is None or config.pretrain_rounds <= 1:
        return config.pretrain_lr
    progress = min(max(round_index / (config.pretrain_rounds - 1), 0.0), 1.0)
    return final + (config.pretrain_lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
