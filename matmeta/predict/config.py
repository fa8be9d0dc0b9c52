"""The predictor's typed settings: how the engine adapts it (MAMLSettings) and the recipe sections."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from matmeta.errors import RecipeError
from matmeta.meta.maml import MAML, PredictorMAML
from matmeta.models.gnn import CrystalGNN, GNNConfig


@dataclasses.dataclass(frozen=True)
class MAMLSettings:
    """How the engine adapts the predictor (a recipe's ``[maml]`` section; saved in the checkpoint).

    Attributes:
        inner_lr: inner step size (initial value with ``learn_inner_lr``).
        inner_steps: inner steps in meta-training (and at inference when ``adapt_steps`` is None).
        first_order: first-order MAML.
        learn_inner_lr: Meta-SGD rates (one per parameter tensor, or per element).
        per_element_lr: one rate per weight element.
        adapt: parameters the inner loop changes: ``"all"``, ``"head"`` (ANIL) or ``"re:<regex>"``.
        lr_gain: Meta-SGD rates are ``exp(lr_gain · θ)``; > 1 lets the outer loop move them faster.
        adapt_steps: inner steps at inference (``finetune``, calibration, benchmark) with the
            meta-learned rates; None: ``inner_steps``. The benchmark gives the fine-tuning baseline
            the same number of steps.
    """

    inner_lr: float = 0.01
    inner_steps: int = 5
    first_order: bool = False
    learn_inner_lr: bool = True
    per_element_lr: bool = False
    adapt: str = "all"
    lr_gain: float = 1.0
    adapt_steps: int | None = None

    def __post_init__(self) -> None:
        if self.adapt_steps is not None and self.adapt_steps < 0:
            raise ValueError(f"adapt_steps must be >= 0 or None, got {self.adapt_steps}")


def build_maml(model_config: GNNConfig, settings: MAMLSettings, inference: bool = False) -> MAML:
    """A fresh ``CrystalGNN`` wrapped in the engine with ``settings``.

    With ``inference`` the engine takes ``settings.adapt_steps`` inner steps (when set) instead of
    the meta-training ``inner_steps``.
    """
    adapt: Any = settings.adapt
    if model_config.activation != "silu":  # activation shapes are outer-loop only: the inner loop never moves them
        from matmeta.meta.maml import _select
        from matmeta.models.activations import is_shape_parameter

        model = CrystalGNN(model_config)
        chosen = set(_select(model, adapt))
        adapt = [n for n, _ in model.named_parameters() if n in chosen and not is_shape_parameter(n)]
    maml = PredictorMAML(
        CrystalGNN(model_config),
        lr_gain=settings.lr_gain,
        inner_lr=settings.inner_lr,
        inner_steps=settings.inner_steps,
        first_order=settings.first_order,
        learn_inner_lr=settings.learn_inner_lr,
        per_element_lr=settings.per_element_lr,
        adapt=adapt,
    )
    if inference and settings.adapt_steps is not None:
        maml.inner_steps = int(settings.adapt_steps)
    from matmeta.predict.batched import GraphStacker

    maml.stacker = GraphStacker(model_config)  # tasks of graphs padded to one shape: vmap over tasks
    return maml


def set_hurdle(maml: MAML, metadata: dict[str, Any], offset: float) -> None:
    """Set the trained network's open-shell metal-logit offset (a post-training setting) and record it."""
    from matmeta.predict.batched import GraphStacker

    maml.model.config = dataclasses.replace(maml.model.config, open_shell_metal_offset=float(offset))
    if isinstance(maml.stacker, GraphStacker):  # the padded path must now supply the composition flags
        maml.stacker = GraphStacker(maml.model.config, maml.stacker.max_padding)
    metadata["model_config"] = {**metadata["model_config"], "open_shell_metal_offset": float(offset)}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the structures come from and how they are grouped (a recipe's ``[data]`` section).

    Attributes:
        store: graph store path (LMDB).
        source_csv: CSV to build the store from when it is missing, relative to the shared data
            directory (``$MATMETA_SHARED_DATA``, default ``../shared/data``).
        store_targets: the CSV's target columns the store is built with (in this order).
        family_by: family key (``prototype``, ``b_site``, ``anion_set``, ...).
        energy_column: store target holding the energy (in the unit of ``targets[0]``).
        gap_column: store target holding the band gap (eV).
        targets: the public names of the energy and the gap (:class:`matmeta.predict.data.TargetNames`):
            the predict CSV's columns and finetune's ``--target``.
        split_fractions: train/val/test fractions of the families (when no fixed split is given).
        split_seed: seed of the family split.
        min_family_size: families with fewer structures are no meta-learning task (and are left out of
            every split of a seeded split).
        val_families, test_families: a fixed split, stored in the recipe so that every run holds out the
            same families; the training families are then every other family of ``min_family_size``.
        pretrain_pool: ``"train_families"`` (pooled pretraining on the training families) or
            ``"all_but_held_out"`` (every structure outside the validation and test families, small
            families included).
    """

    store: Path = Path("out/perov.lmdb")
    source_csv: str = "perovskites/perovskites.csv"
    store_targets: tuple[str, ...] = ("heat_ref", "ind_gap", "dir_gap")
    family_by: str = "b_site"
    energy_column: str = "heat_ref"
    gap_column: str = "ind_gap"
    targets: tuple[str, str] = ("heat_ref", "band_gap")
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    min_family_size: int = 50
    val_families: tuple[str, ...] = ()
    test_families: tuple[str, ...] = ()
    pretrain_pool: str = "train_families"

    def __post_init__(self) -> None:
        if self.pretrain_pool not in ("train_families", "all_but_held_out"):
            raise ValueError(f"pretrain_pool: 'train_families' or 'all_but_held_out', not {self.pretrain_pool!r}")
        if bool(self.val_families) != bool(self.test_families):
            raise ValueError("a fixed split needs both val_families and test_families")
        for column in (self.energy_column, self.gap_column):
            if column not in self.store_targets:
                raise ValueError(f"{column!r} is not one of store_targets {list(self.store_targets)}")


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """Episodes for meta-training (a recipe's ``[episodes]`` section).

    Attributes:
        k_support: support sizes, one picked at random per task.
        k_query: query size.
    """

    k_support: tuple[int, ...] = (5, 10, 20)
    k_query: int = 20


@dataclasses.dataclass(frozen=True)
class UncertaintyConfig:
    """MC-dropout uncertainty and its calibration on validation families (``[uncertainty]``).

    Attributes:
        mc_samples: dropout samples per prediction.
        calibration_k: unused (kept so older recipes load): adapted calibration runs at k = 5, 10, 20.
        calibration_episodes: validation episodes per support size for the adapted calibration
            (split-conformal quantiles, :mod:`matmeta.predict.calibrate`).
        cross_folds: family-grouped folds of the training families whose out-of-fold residuals join
            the gap's calibration (``matmeta calibrate``, :mod:`matmeta.predict.cross_calibrate`).
        open_shell_metal_offset: set on the trained network before calibration
            (:attr:`matmeta.models.gnn.GNNConfig.open_shell_metal_offset`): the metal-logit hurdle
            for compositions that cannot be charge-balanced with closed-shell ions.
        new_family_gap_shift: ``matmeta calibrate`` also fits the zero-shot gap offset of families the
            network never saw (on the same held-out families) and ``predict`` adds it to structures whose
            B site is new (:func:`matmeta.predict.domain.new_family_corrections`).
        new_family_platt: ``matmeta calibrate`` also recalibrates the zero-shot P(non-metal) of such
            families (Platt scaling on the same held-out families); ``predict`` shows the recalibrated
            probability for structures whose B site is new (the call itself does not change).
        new_family_gap_shift_adapted: also fit a gap offset for adapted predictions of such families
            (on their adapted residuals); ``predict`` adds it after an adaptation that saw no gap labels.
    """

    mc_samples: int = 32
    calibration_k: int = 10
    calibration_episodes: int = 60
    cross_folds: int = 5
    open_shell_metal_offset: float = 0.0
    new_family_gap_shift: bool = False
    new_family_platt: bool = False
    new_family_gap_shift_adapted: bool = False


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Pooled pretraining before meta-training (a recipe's ``[pretrain]`` section).

    The meta-learned start is initialised from the network trained on all training families
    pooled (the same network the fine-tuning baseline starts from); ``epochs = 0`` starts
    meta-training from random weights.

    Attributes:
        epochs: passes over the pooled training families.
        lr: peak learning rate (one-cycle schedule, AdamW).
        batch_size: structures per batch.
    """

    epochs: int = 60
    lr: float = 2e-3
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """The ``[meta_train]`` section.

    Attributes:
        app: must be ``"predictor"``.
        out: the final checkpoint.
        work_dir: intermediate files (trainer checkpoint, resume state, log).
    """

    app: str = "predictor"
    out: Path = Path("out/predictor/predictor.ckpt")
    work_dir: Path = Path("out/predictor")


KINDS = ("rattle", "strain", "pgd")  # the perturbations of robust meta-training


@dataclasses.dataclass(frozen=True)
class RobustConfig:
    """A recipe's ``[robust]`` section: the perturbation tasks of robust meta-training (:mod:`matmeta.predict.robust`).

    Attributes:
        kinds: perturbation kinds drawn per task (empty: standard training).
        rattle_sigma: range (Å) σ is drawn from, uniformly.
        max_strain: strain components are uniform in ±this.
        pgd_epsilon: range (Å) ε is drawn from, uniformly.
        pgd_steps: gradient-ascent steps of the adversary inside the loss.
        drift_weight: weight of the squared output drift against the clean loss.
    """

    kinds: tuple[str, ...] = ()
    rattle_sigma: tuple[float, float] = (0.02, 0.1)
    max_strain: float = 0.03
    pgd_epsilon: tuple[float, float] = (0.02, 0.1)
    pgd_steps: int = 2
    drift_weight: float = 1.0

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"robust kinds must be among {KINDS}, got {unknown}")
        if self.pgd_steps < 1 or self.drift_weight < 0 or self.max_strain < 0:
            raise ValueError("pgd_steps >= 1, drift_weight >= 0 and max_strain >= 0 are required")
        for low, high in (self.rattle_sigma, self.pgd_epsilon):
            if not 0 <= low <= high:
                raise ValueError(f"a perturbation range must be 0 <= low <= high, got ({low}, {high})")

    @property
    def enabled(self) -> bool:
        """True when tasks are perturbed (any kind configured)."""
        return bool(self.kinds)


@dataclasses.dataclass(frozen=True)
class PredictorRecipe:
    """All settings of a predictor meta-training run, one dataclass per recipe section."""

    meta_train: MetaTrainConfig
    data: DataConfig
    model: GNNConfig
    maml: Any  # MAMLSettings (imported lazily from matmeta.predict to avoid a cycle)
    episodes: EpisodeConfig
    pretrain: PretrainConfig
    trainer: Any  # TrainerConfig
    uncertainty: UncertaintyConfig
    robust: RobustConfig = dataclasses.field(default_factory=RobustConfig)  # no [robust] section: standard training

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], where: str = "recipe") -> PredictorRecipe:
        """Build from a recipe dict; unknown sections or keys are refused."""
        from matmeta.meta.trainer import TrainerConfig
        from matmeta.recipes import config_from_dict

        sections = {
            "meta_train": MetaTrainConfig,
            "data": DataConfig,
            "model": GNNConfig,
            "maml": MAMLSettings,
            "episodes": EpisodeConfig,
            "pretrain": PretrainConfig,
            "trainer": TrainerConfig,
            "uncertainty": UncertaintyConfig,
            "robust": RobustConfig,
        }
        extra = sorted(set(recipe) - set(sections))
        if extra:
            raise RecipeError(f"{where}: unknown section(s) {', '.join(extra)}; known: {', '.join(sections)}")
        built = {name: config_from_dict(kind, recipe.get(name), f"{where} [{name}]") for name, kind in sections.items()}
        return cls(**built)
