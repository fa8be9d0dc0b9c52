"""The meta-learned JMAK prior: build, meta-train from a recipe, save and load.

Each MAML task is one curve of a synthetic family (:mod:`matmeta.kinetics.synthetic`): the support
set is its 2–10 noisy sparse points, the query set the true curve on a grid spanning X = 1–99 %,
both in the support's normalised time. The inner loop adapts (ln k, n) from the support points
(Meta-SGD: per-parameter learned rates); the outer loop learns the start (ln k, n), the rates and
the Gaussian prior (mean, precision) that regularises the inner loss — so that 2–3 points already
land on a good curve. The engine is :class:`matmeta.meta.maml.MAML` (vmap over same-shaped curve
tasks) driven by :class:`matmeta.meta.trainer.MetaTrainer`.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import torch

from matmeta.checkpoint import SHIPPED_DIR as CHECKPOINT_DIR
from matmeta.kinetics.fit import DEFAULT_NOISE, loss_fn, make_batch
from matmeta.kinetics.synthetic import (
    IncubationConfig,
    SyntheticConfig,
    sample_families,
    sample_times,
    true_fraction,
)
from matmeta.kinetics.synthetic import truth_grid as _truth_grid

DEFAULT_PRIOR = CHECKPOINT_DIR / "JMAK-SynthArrhenius-2026-12-07-MetaSGDPrior.ckpt"
KIND = "jmak"


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """The JMAK prior model and its inner loop (a recipe's ``[prior]`` section).

    Attributes:
        init_ln_k, init_n: starting values of the meta-learned initialisation (normalised time).
        prior_std: starting prior standard deviations of (ln k, n).
        inner_lr: starting Meta-SGD inner rate (learned per parameter).
        inner_steps: inner gradient steps per curve.
        first_order: first-order MAML (drop second derivatives).
        noise: measurement σ assumed in the inner loss and the Laplace uncertainty.
        query_points: grid points of the query (true) curve.
        curves_per_family: curves drawn per family in a meta-batch.
        window_prior: also meta-learn the window the times are taken in around t50
            (:meth:`matmeta.models.jmak.JMAK.window_penalty`); off in priors saved before it existed.
        ensemble: members of a jointly trained ensemble whose adapted curves are averaged
            (:mod:`matmeta.kinetics.ensemble`; 1: a single prior).
        ensemble_spread: the members start at n = init_n + spread·(−1 … 1), evenly (prior means too).
    """

    init_ln_k: float = -0.4
    init_n: float = 2.0
    prior_std: tuple[float, float] = (1.5, 1.0)
    inner_lr: float = 5.0
    inner_steps: int = 50
    first_order: bool = False
    noise: float = DEFAULT_NOISE
    query_points: int = 32
    curves_per_family: int = 4
    window_prior: bool = False
    ensemble: int = 1
    ensemble_spread: float = 0.6


def build_maml(config: PriorConfig) -> Any:
    """A fresh :class:`MAML` around :class:`JMAK` that adapts only (ln k, n), with Meta-SGD rates.

    With ``config.ensemble > 1``: an :class:`~matmeta.kinetics.ensemble.EnsembleMAML` of such members,
    each started at its own n (:func:`~matmeta.kinetics.ensemble.member_offsets`).
    """
    if config.ensemble > 1:
        from matmeta.kinetics.ensemble import EnsembleMAML, member_offsets

        offsets = member_offsets(config.ensemble, config.ensemble_spread)
        single = dataclasses.replace(config, ensemble=1)
        return EnsembleMAML([build_maml(dataclasses.replace(single, init_n=config.init_n + d)) for d in offsets])
    from matmeta.meta.maml import MAML
    from matmeta.models.jmak import JMAK

    model = JMAK(config.init_ln_k, config.init_n, config.prior_std, window=config.window_prior)
    return MAML(
        model,
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        first_order=config.first_order,
        learn_inner_lr=True,
        adapt=lambda name: name in JMAK.adapted,
    )


class SyntheticEpisodes:
    """``EpisodeSource`` of curve tasks from freshly drawn synthetic families.

    Every call draws new families from the trainer's generator, so training and validation
    (a separate generator) never share a family.
    """

    def __init__(self, synthetic: SyntheticConfig, prior: PriorConfig) -> None:
        self.synthetic = synthetic
        self.prior = prior

    def sample(self, n_tasks: int, generator: torch.Generator) -> list[tuple[dict, dict]]:
        """``n_tasks`` (support, query) pairs, each a dict of same-shaped tensors."""
        per = max(1, self.prior.curves_per_family)
        families = -(-n_tasks // per)
        ln_k, n, ln_t50, _, _ = sample_families(families, per, self.synthetic, generator)
        ln_k, n, ln_t50 = ln_k[:n_tasks], n[:n_tasks], ln_t50[:n_tasks]
        time_s, mask = sample_times(ln_t50, self.synthetic, generator)
        clean = true_fraction(ln_k, n, time_s)
        noise = self.synthetic.noise * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
        fraction = (clean + noise).clamp(0, 1) * mask
        support, ln_t_ref = make_batch(time_s, fraction, mask, self.prior.noise)
        grid = _truth_grid(ln_k, n, self.prior.query_points)
        query, _ = make_batch(grid, true_fraction(ln_k, n, grid), torch.ones_like(grid), 0.0, ln_t_ref)
        return [({k: v[i] for k, v in support.items()}, {k: v[i] for k, v in query.items()}) for i in range(n_tasks)]


def load_prior(path: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The MAML-wrapped JMAK prior stored at ``path`` (None: the shipped default) and its metadata.

    Raises:
        CheckpointError: missing, unsafe or not a JMAK prior.
    """
    from matmeta.checkpoint import expect, load_checkpoint, load_state_strict
    from matmeta.recipes import config_from_dict

    path = Path(path) if path is not None else DEFAULT_PRIOR
    tensors, metadata = load_checkpoint(path)
    expect(metadata, path, kind=KIND)
    config = config_from_dict(PriorConfig, metadata.get("model_config", {}), where=f"{path}:model_config")
    maml = build_maml(config)
    load_state_strict(maml, tensors, path)
    maml.eval()
    return maml, metadata


def prior_summary(maml: Any) -> dict[str, float]:
    """Readable values of a prior: start, prior mean/std and inner rates of (ln k, n) (per member of an ensemble)."""
    if hasattr(maml, "members"):
        return {f"member {i} {k}": v for i, m in enumerate(maml.members) for k, v in prior_summary(m).items()}
    model = maml.model
    cov = torch.linalg.inv(model.prior_precision().detach())
    std = cov.diagonal().sqrt()
    window = {}
    if getattr(model, "window", False):
        w = model.window_log.detach().exp()
        weight = float(model.window_log_weight.detach().exp())
        window = {"window_lo": float(w[0]), "window_hi": float(w[1]), "window_weight": weight}
    return window | {
        "init_ln_k": float(model.ln_k.detach()),
        "init_n": float(model.n.detach()),
        "prior_mean_ln_k": float(model.prior_mean[0].detach()),
        "prior_mean_n": float(model.prior_mean[1].detach()),
        "prior_std_ln_k": float(std[0]),
        "prior_std_n": float(std[1]),
        "prior_corr": float(cov[0, 1] / (std[0] * std[1])),
        "lr_ln_k": float(torch.as_tensor(maml.lr("ln_k")).detach()),
        "lr_n": float(torch.as_tensor(maml.lr("n")).detach()),
    }


def meta_train_from_recipe(
    recipe: dict[str, Any], recipe_path: Path, out: Path | None = None, steps: int | None = None
) -> Path:
    """Meta-train the JMAK prior described by ``recipe`` and write its checkpoint.

    A ``[meta_train] observation = "log_time"`` recipe (recipes/jmak_ttt.toml) is refused: it is
    trained by ``matmeta jmak meta-train`` (:func:`matmeta.kinetics.ttt_prior.meta_train_ttt_from_recipe`).

    Recipe sections: ``[meta_train]`` (``app = "jmak"``, ``checkpoint``, optional ``init_from``: a trained
    single prior every member starts from, see :func:`matmeta.kinetics.ensemble.warm_start`), ``[prior]``
    (:class:`PriorConfig`), ``[synthetic]`` (:class:`SyntheticConfig` of the training corpus),
    ``[incubation]`` (:class:`~matmeta.kinetics.synthetic.IncubationConfig`: the prior's incubation
    times, stored in the checkpoint for the posterior fit of readings,
    :mod:`matmeta.kinetics.posterior`; the network's JMAK has no t0, so its episodes are the curves
    without incubation), ``[trainer]`` (:class:`matmeta.meta.trainer.TrainerConfig`).

    Args:
        recipe: the parsed TOML.
        recipe_path: where it came from (relative paths resolve against the current directory).
        out: checkpoint path (default: the recipe's ``[meta_train] checkpoint``).
        steps: override ``[trainer] outer_steps``.

    Returns:
        The checkpoint path.
    """
    from matmeta import __version__
    from matmeta.console import print_table
    from matmeta.errors import RecipeError

    if recipe.get("meta_train", {}).get("observation") == "log_time":
        raise RecipeError(f"{recipe_path}: a TTT (log-time) prior recipe: run `matmeta jmak meta-train {recipe_path}`")
    from matmeta.meta.trainer import MetaTrainer, TrainerConfig
    from matmeta.recipes import config_from_dict, config_to_dict

    section = dict(recipe.get("meta_train", {}))
    section.pop("app", None)
    target = out or section.pop("checkpoint", None)
    if target is None:
        raise RecipeError(f"{recipe_path}: [meta_train] needs checkpoint = <path> (or pass --out)")
    prior_cfg = config_from_dict(PriorConfig, recipe.get("prior"), where=f"{recipe_path}[prior]")
    synthetic = config_from_dict(SyntheticConfig, recipe.get("synthetic"), where=f"{recipe_path}[synthetic]")
    incubation = config_from_dict(IncubationConfig, recipe.get("incubation"), where=f"{recipe_path}[incubation]")
    trainer_values = dict(recipe.get("trainer", {}))
    if steps is not None:
        trainer_values["outer_steps"] = int(steps)
    trainer_cfg = config_from_dict(TrainerConfig, trainer_values, where=f"{recipe_path}[trainer]")
    torch.manual_seed(trainer_cfg.seed)
    maml = build_maml(prior_cfg)
    init_from = section.pop("init_from", None)
    if init_from:  # warm start: every member from a trained single prior, moved to its own start
        from matmeta.kinetics.ensemble import warm_start

        warm_start(maml, load_prior(init_from)[0], prior_cfg.ensemble_spread)
    metadata = {
        "kind": KIND,
        "model_class": "matmeta.models.jmak.JMAK",
        "model_config": config_to_dict(prior_cfg),
        "synthetic": config_to_dict(synthetic),
        "incubation": config_to_dict(incubation),
        "families_seen": "synthetic Arrhenius families drawn afresh each step (seeded)",
        "targets": ["fraction"],
        "normalisation": "times divided by the geometric mean of each curve's measured times",
        "recipe": recipe,
        "recipe_path": str(recipe_path),
        "init_from": str(init_from or ""),
        "created": datetime.date.today().isoformat(),
        "matmeta_version": __version__,
    }
    source = SyntheticEpisodes(synthetic, prior_cfg)
    trainer = MetaTrainer(
        maml, loss_fn, source, trainer_cfg, val_source=source, checkpoint_path=target, metadata=metadata
    )
    result = trainer.fit()
    summary = prior_summary(maml)
    rows = [["outer steps", result.steps], ["best step", result.best_step], ["best val MSE", result.best_val_loss]]
    if trainer.info.is_main:  # under torchrun, one report
        print_table("JMAK prior (meta-trained)", ["quantity", "value"], rows + [[k, v] for k, v in summary.items()])
    return Path(target)
