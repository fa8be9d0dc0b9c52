"""The log-time JMAK prior for TTT readings: synthetic TTT phases, meta-training, phase adaptation.

*Synthetic TTT phases* (:class:`TTTSynthConfig`), chosen from generic metallurgy only (no real
table was looked at): a phase has one Avrami exponent n_f, uniform in [0.5, 5] (Christian's table of
the values of n: 0.5 for the thickening of large plates … 4 for constant nucleation with 3-D growth,
above 4 for an increasing nucleation rate, n = 4 + m for a rate I ∝ tᵐ, up to m = 1; until 2026-12 the
range was [1, 4]), each temperature jitters it by N(0, 0.1²) (n drifts slowly
with temperature); times are read at the TTT fractions (start = :data:`START_FRACTION`, 10 %,
90 %) with multiplicative error σ_read = 2 %. The time scale is irrelevant in normalised time.
Reading schemes: (start, 10 %) → the rest, as in the benchmark's query, and (start, 10 %, 90 %).

*Meta-training* learns the Gaussian prior of (ln k − z̄, n) (see
:func:`matmeta.kinetics.logtime.fit_log_time_map`) by minimising the squared log-time error at
X = 1, 10, 50, 90, 99 % of the MAP fit from the support readings, differentiating through the
unrolled Gauss–Newton iterations (the MAP is the inner loop; the prior is the meta-parameter).

*Per-curve fits* (plain ``matmeta jmak fit`` of time readings) do not use the Gaussian: they use the
exact posterior under the synthetic distribution itself (:func:`load_ttt_synthetic`,
:mod:`matmeta.kinetics.logtime_posterior`), of which the Gaussian is an approximation.

*Phase adaptation* (:func:`phase_prior`): the phase's other temperatures are the support. Their
log-time fits give n_j; the prior of n becomes the posterior of the phase's n (normal–normal, the
meta-learned prior as hyperprior) widened by the spread of the n_j (at least
:data:`MIN_PHASE_SPREAD`), so a new temperature is fitted with what the phase has shown.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matmeta.checkpoint import SHIPPED_DIR
from matmeta.kinetics.data import TTT_FRACTIONS
from matmeta.kinetics.logtime import LOG_TIME_NOISE, fit_log_time_ls, fit_log_time_map
from matmeta.models.jmak import LN_LN2

DEFAULT_TTT_PRIOR = SHIPPED_DIR / "JMAK-SynthTTT-2026-12-07-LogTimePrior.ckpt"
QUERY_FRACTIONS = (0.01, 0.1, 0.5, 0.9, 0.99)
MIN_PHASE_SPREAD = 0.05
OBSERVATION = "log_time"


@dataclasses.dataclass(frozen=True)
class TTTSynthConfig:
    """Synthetic TTT phases (see the module docstring for why these values)."""

    n_range: tuple[float, float] = (0.5, 5.0)
    n_jitter: float = 0.1
    read_noise: float = 0.02
    curves_per_phase: int = 8


def sample_readings(
    count: int, fractions: tuple[float, ...], cfg: TTTSynthConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``count`` curves read at ``fractions``: ``(time_s, fraction, true ln k, true n)``.

    Shapes:
        time_s, fraction: ``(count, len(fractions))``; ln k, n: ``(count,)``.
    """
    phases = -(-count // cfg.curves_per_phase)
    lo, hi = cfg.n_range
    n_f = lo + (hi - lo) * torch.rand(phases, generator=generator, dtype=torch.float64)
    n = n_f.repeat_interleave(cfg.curves_per_phase)[:count]
    n = (n + cfg.n_jitter * torch.randn(count, generator=generator, dtype=torch.float64)).clamp(min=0.5)
    ln_t50 = -2.0 + 14.0 * torch.rand(count, generator=generator, dtype=torch.float64)
    ln_k = LN_LN2 - n * ln_t50
    z = torch.tensor([math.log(-math.log1p(-x)) for x in fractions], dtype=torch.float64)
    ln_t = (z[None, :] - ln_k[:, None]) / n[:, None]
    ln_t = ln_t + cfg.read_noise * torch.randn(ln_t.shape, generator=generator, dtype=torch.float64)
    frac = torch.tensor(fractions, dtype=torch.float64).expand(count, -1)
    return ln_t.exp(), frac.clone(), ln_k, n


def query_error(fits: Any, ln_k: Tensor, n: Tensor, fractions: tuple[float, ...] = QUERY_FRACTIONS) -> Tensor:
    """Squared log-time error of each fit at ``fractions``, averaged. Shapes: ``(B,)``."""
    err = [(fits.ln_time_at(x) - (math.log(-math.log1p(-x)) - ln_k) / n) ** 2 for x in fractions]
    return torch.stack(err, 1).mean(1)


def meta_train_ttt_prior(
    steps: int = 300, batch: int = 512, lr: float = 0.03, seed: int = 0, cfg: TTTSynthConfig | None = None
) -> tuple[Any, list[float]]:
    """Meta-learn the log-time prior (a JMAK module's prior_mean/prior_log_prec/prior_offdiag).

    Returns:
        ``(maml, losses)``: the MAML-wrapped JMAK (same layout as the fraction prior) and the loss per step.
    """
    from matmeta.console import progress
    from matmeta.kinetics.prior import PriorConfig, build_maml

    cfg = cfg or TTTSynthConfig()
    maml = build_maml(PriorConfig(init_ln_k=0.0, init_n=2.5, prior_std=(0.5, 1.0), noise=LOG_TIME_NOISE))
    model = maml.model
    params = [model.prior_mean, model.prior_log_prec, model.prior_offdiag]
    optim = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    schemes = (TTT_FRACTIONS[:2], TTT_FRACTIONS)
    losses = []
    with progress() as bar:
        task = bar.add_task("meta-train TTT prior", total=steps)
        for step in range(steps):
            fractions = schemes[step % len(schemes)]
            time_s, frac, ln_k, n = sample_readings(batch, fractions, cfg, generator)
            fits, _ = fit_log_time_map(
                time_s, frac, torch.ones_like(frac), model.prior_mean, model.prior_precision(), iterations=12
            )
            loss = query_error(fits, ln_k, n).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
            bar.advance(task)
    with torch.no_grad():
        model.ln_k.copy_(model.prior_mean[0])
        model.n.copy_(model.prior_mean[1])
    return maml, losses


def save_ttt_prior(
    maml: Any, path: str | Path, cfg: TTTSynthConfig, steps: int, seed: int, validation: dict | None = None
) -> Path:
    """Write the log-time prior in the JMAK checkpoint layout (loadable by :func:`load_prior`)."""
    from matmeta import __version__
    from matmeta.checkpoint import save_checkpoint
    from matmeta.kinetics.prior import KIND, PriorConfig
    from matmeta.recipes import config_to_dict

    metadata = {
        "kind": KIND,
        "model_class": "matmeta.models.jmak.JMAK",
        "model_config": config_to_dict(PriorConfig(noise=LOG_TIME_NOISE)),
        "observation": OBSERVATION,
        "log_time_noise": LOG_TIME_NOISE,
        "ln_k_mean": "prior_mean[0] is relative to the mean z of a curve's read fractions (normalised time)",
        "synthetic": config_to_dict(cfg),
        "families_seen": f"synthetic TTT phases drawn afresh each step (seed {seed}, {steps} steps)",
        "validation": validation or {},
        "created": datetime.date.today().isoformat(),
        "matmeta_version": __version__,
    }
    return save_checkpoint(path, dict(maml.state_dict()), metadata)


def load_ttt_prior(path: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """``(prior_mean, prior_precision)`` of a log-time prior checkpoint (None: the shipped one).

    Raises:
        CheckpointError: the checkpoint is not a JMAK prior meta-trained for log-time readings.
    """
    from matmeta.errors import CheckpointError
    from matmeta.kinetics.prior import load_prior

    path = Path(path) if path is not None else DEFAULT_TTT_PRIOR
    maml, metadata = load_prior(path)
    if metadata.get("observation") != OBSERVATION:
        raise CheckpointError(f"{path}: a prior for fraction readings, not for TTT (time) readings")
    return maml.model.prior_mean.detach().double(), maml.model.prior_precision().detach().double()


def load_ttt_synthetic(path: str | Path | None = None) -> TTTSynthConfig:
    """The synthetic TTT distribution a log-time prior checkpoint was meta-trained on (None: the shipped one).

    Raises:
        CheckpointError: not a log-time prior, or its metadata lack a valid ``synthetic`` section.
    """
    from matmeta.checkpoint import load_checkpoint
    from matmeta.errors import CheckpointError, RecipeError
    from matmeta.recipes import config_from_dict

    path = Path(path) if path is not None else DEFAULT_TTT_PRIOR
    _, metadata = load_checkpoint(path)
    if metadata.get("observation") != OBSERVATION:
        raise CheckpointError(f"{path}: a prior for fraction readings, not for TTT (time) readings")
    try:
        return config_from_dict(TTTSynthConfig, metadata.get("synthetic", {}), where=f"{path}:synthetic")
    except RecipeError as exc:
        raise CheckpointError(str(exc)) from None


@dataclasses.dataclass
class PhasePrior:
    """A prior adapted to one phase: ``mean``/``prec`` for :func:`fit_log_time_map`, and the phase's start fraction."""

    mean: Tensor
    prec: Tensor
    start_fraction: float


def phase_prior(mean: Tensor, prec: Tensor, support: list[Any]) -> PhasePrior:
    """The prior adapted to a phase from its ``support`` rows (:class:`TTTRow`, other temperatures).

    Two things are learnt from the support: the fraction the phase's start line is drawn at (the
    geometric mean of :func:`matmeta.kinetics.data.implied_start_fraction` over the support, as
    the JMAK curve through t_10 and t_90 implies it), and n: the support rows, read with that start
    fraction, give n_j; n's prior becomes the posterior of the phase's n (normal–normal, the
    meta-learned prior as hyperprior) widened by the spread of the n_j. (ln k − z̄) keeps its
    meta-learned conditional given n.
    """
    from matmeta.kinetics.data import START_FRACTION, implied_start_fraction
    from matmeta.kinetics.fit import pad_curves

    if not support:
        return PhasePrior(mean, prec, START_FRACTION)
    start = math.exp(sum(math.log(implied_start_fraction(r)) for r in support) / len(support))
    time_s, frac, mask = pad_curves([r.curve() for r in support])
    frac[:, 0] = start
    fits = fit_log_time_ls(time_s, frac, mask)
    n_j = fits.n[fits.ok]
    if n_j.numel() == 0:
        return PhasePrior(mean, prec, start)
    cov = torch.linalg.inv(prec)
    spread2 = max(float(n_j.var()) if n_j.numel() > 1 else 0.0, MIN_PHASE_SPREAD**2)
    post_var = 1.0 / (1.0 / cov[1, 1] + n_j.numel() / spread2)
    post_mean = post_var * (mean[1] / cov[1, 1] + n_j.sum() / spread2)
    var_n = spread2 + post_var
    slope = cov[0, 1] / cov[1, 1]
    cond = cov[0, 0] - slope * cov[0, 1]
    new_cov = torch.stack([torch.stack([cond + slope**2 * var_n, slope * var_n]), torch.stack([slope * var_n, var_n])])
    new_mean = torch.stack([mean[0] + slope * (post_mean - mean[1]), post_mean])
    return PhasePrior(new_mean, torch.linalg.inv(new_cov), start)


def validation_error(mean: Tensor | None, prec: Tensor | None, cfg: TTTSynthConfig, seed: int) -> float:
    """Mean query error (:func:`query_error`) on fresh synthetic TTT curves; ``mean=None``: the flat classical fit."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for fractions in (TTT_FRACTIONS[:2], TTT_FRACTIONS):
        time_s, frac, ln_k, n = sample_readings(4000, fractions, cfg, generator)
        mask = torch.ones_like(frac)
        if mean is None:
            fits = fit_log_time_ls(time_s, frac, mask)
        else:
            fits, _ = fit_log_time_map(time_s, frac, mask, mean, prec)
        total += float(query_error(fits, ln_k, n).mean()) / 2
    return total


def meta_train_ttt_from_recipe(
    recipe: dict[str, Any], recipe_path: Path, out: Path | None = None, steps: int | None = None
) -> Path:
    """Meta-train the log-time TTT prior of ``recipe`` (``[ttt_synthetic]``, ``[ttt_train]``), validate, save.

    Validation: fresh synthetic TTT phases from ``validation_seed`` (never the training stream);
    the table compares the prior with the flat classical fit. The checkpoint is written either
    way; the metadata carry both validation numbers.
    """
    from matmeta.console import print_table
    from matmeta.errors import RecipeError
    from matmeta.recipes import config_from_dict

    target = out or recipe.get("meta_train", {}).get("checkpoint")
    if target is None:
        raise RecipeError(f"{recipe_path}: [meta_train] needs checkpoint = <path> (or pass --out)")
    cfg = config_from_dict(TTTSynthConfig, recipe.get("ttt_synthetic"), where=f"{recipe_path}[ttt_synthetic]")
    train = dict(recipe.get("ttt_train", {}))
    steps = int(steps if steps is not None else train.get("steps", 300))
    seed, val_seed = int(train.get("seed", 0)), int(train.get("validation_seed", 999))
    maml, losses = meta_train_ttt_prior(steps, int(train.get("batch", 512)), float(train.get("lr", 0.03)), seed, cfg)
    mean, prec = maml.model.prior_mean.detach().double(), maml.model.prior_precision().detach().double()
    val = {
        "prior": validation_error(mean, prec, cfg, val_seed),
        "classical": validation_error(None, None, cfg, val_seed),
    }
    print_table(
        "TTT prior (meta-trained; validation: mean squared log-time error at X = 1-99 %)",
        ["quantity", "value"],
        [["steps", steps], ["final train loss", losses[-1]], ["val: prior", val["prior"]],
         ["val: classical", val["classical"]], ["prior mean n", float(mean[1])],
         ["prior sd n", float(torch.linalg.inv(prec)[1, 1].sqrt())]],
    )  # fmt: skip
    return save_ttt_prior(maml, target, cfg, steps, seed, validation=val)
