"""Exact posterior of a few fraction readings under the prior's generating distribution, incubation included.

The shipped JMAK prior was meta-trained on a synthetic distribution of curves: n from the uniform
``n_range`` convolved with a small jitter (:class:`~matmeta.kinetics.synthetic.SyntheticConfig`),
an incubation time t0 that is 0 with probability 1 − share and uniform in (0, max_ratio·t50']
otherwise (:class:`~matmeta.kinetics.synthetic.IncubationConfig`; t50' is the half time counted
from t0), and Gaussian noise σ on the measured fraction. For a curve of a few readings (t_i, X_i)
the posterior of (n, ln t50', s = t0/t50') under that distribution is computed on a grid::

    log p = −Σ_i (X_i − y·F(ln ln 2 + n·(ln(t_i − t0) − ln t50')))² / 2σ² + log p(n) + log p(s) + const,

with F(z) = 1 − exp(−exp(z)) (F = 0 for t_i ≤ t0), y the fraction the curve tops out at (1 for
normalised readings, or given) and the location ln t50' *flat* within :data:`LOCATION_DECADES` of
the readings: real readings are not taken in a designed window around t50 (early readings only,
late ones only), so no window is assumed — this is where the meta-learned Gaussian of the network
(:func:`matmeta.kinetics.fit.fit_maml`), trained on readings taken around t50, goes wrong on real
curves. Where the readings pin the curve down the prior of n is flat and the fit is the data's;
near and beyond the range's edges, and for t0, the prior acts.

A coarse grid finds where the posterior lives; a fine grid over that box gives the summaries:
posterior medians (the Bayes estimate under absolute error in ln t) of n, t0, ln k and ln t_p, their
standard deviations, central intervals of ln t_p, and samples of (ln k, n, t0, y) for bands. The
median was chosen on synthetic validation only (curves of the prior's own distribution, never the
benchmark's: the first table of ``matmeta bench recipes/jmak_real.toml``): the mean loses, the grid mode
ties with it but moves with the grid's resolution (:mod:`matmeta.bench.jmak_real_validation`).
A fit never fails: odd readings get the prior's broad answer (that is the fallback of
:func:`matmeta.kinetics.api.fit_curves` when the other methods find no finite fit).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import Tensor

from matmeta.kinetics.fit import Fits
from matmeta.kinetics.logtime_posterior import n_prior_log_density
from matmeta.kinetics.synthetic import IncubationConfig
from matmeta.models.jmak import LN_LN2, fraction_from_z

LOCATION_DECADES = 2.0  # t50' lies within 100x of the readings' span (flat prior inside)
GRID = {"coarse": (48, 64), "fine": (40, 40)}  # (n nodes, ln t50' nodes)
INCUBATION_NODES = 16
BUDGET = 3_000_000  # grid nodes x points per block
FRACTIONS = (0.1, 0.5, 0.9)


@dataclasses.dataclass(frozen=True)
class FractionPrior:
    """The parts of a prior's generating distribution the posterior uses (see the module docstring)."""

    n_range: tuple[float, float] = (0.5, 5.0)
    n_jitter: float = 0.05
    noise: float = 0.02
    incubation: IncubationConfig = IncubationConfig()

    @property
    def n_support(self) -> tuple[float, float]:
        """Where the prior of n has mass: ``n_range`` ± 6 jitter sd (n ≥ 0.05)."""
        return max(0.05, self.n_range[0] - 6 * self.n_jitter), self.n_range[1] + 6 * self.n_jitter


def load_fraction_prior(path: str | Path | None = None) -> FractionPrior:
    """The :class:`FractionPrior` of a fraction prior checkpoint (None: the shipped one).

    Raises:
        CheckpointError: not a JMAK fraction prior, or its metadata cannot be read as one.
    """
    from matmeta.checkpoint import expect, load_checkpoint
    from matmeta.errors import CheckpointError, RecipeError
    from matmeta.kinetics.prior import DEFAULT_PRIOR, KIND
    from matmeta.recipes import config_from_dict

    path = Path(path) if path is not None else DEFAULT_PRIOR
    _, metadata = load_checkpoint(path)
    expect(metadata, path, kind=KIND)
    if metadata.get("observation") == "log_time":
        raise CheckpointError(f"{path}: a prior for TTT (time) readings, not for fraction readings")
    synthetic = metadata.get("synthetic", {})
    try:
        incubation = config_from_dict(IncubationConfig, metadata.get("incubation", {}), where=f"{path}:incubation")
        return FractionPrior(
            n_range=(float(synthetic["n_range"][0]), float(synthetic["n_range"][1])),
            n_jitter=float(synthetic.get("n_jitter", 0.0)),
            noise=float(metadata.get("model_config", {}).get("noise", 0.02)),
            incubation=incubation,
        )
    except (RecipeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: metadata is not a fraction prior's ({exc})") from None


@dataclasses.dataclass
class PosteriorFit:
    """Posterior summaries of B curves.

    Shapes:
        ``cov``: ``(B, 2, 2)`` of (ln k, n) in normalised time; ``std``, ``ln_times``, ``intervals``
        values: ``(B,)``; ``samples``: ``(B, S, 4)`` draws of (ln k normalised, n, t0 (s), y_max).
    """

    fits: Fits
    cov: Tensor
    std: dict[str, Tensor]
    ln_times: dict[float, Tensor]
    intervals: dict[float, tuple[Tensor, Tensor]]
    samples: Tensor


@dataclasses.dataclass
class _Grid:
    """Nodes of one block: n ``(C, Gn)``, ln t50' ``(C, GL)``, s ``(Gs,)`` with log prior ``(Gs,)``."""

    n: Tensor
    loc: Tensor
    s: Tensor
    s_logp: Tensor


def _incubation_nodes(cfg: IncubationConfig, given: bool) -> tuple[Tensor, Tensor]:
    """Nodes of s = t0/t50' and their log prior weights (a point mass at 0 plus a uniform part, midpoint rule)."""
    if given or cfg.share <= 0:
        return torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    mids = (torch.arange(INCUBATION_NODES, dtype=torch.float64) + 0.5) * cfg.max_ratio / INCUBATION_NODES
    logp = torch.full_like(mids, math.log(cfg.share / INCUBATION_NODES))
    if cfg.share >= 1:
        return mids, logp
    return torch.cat([torch.zeros(1, dtype=torch.float64), mids]), torch.cat(
        [torch.tensor([math.log1p(-cfg.share)], dtype=torch.float64), logp]
    )


def _log_post(
    grid: _Grid, t: Tensor, x: Tensor, m: Tensor, t0: Tensor | None, y: Tensor, noise: float, prior: FractionPrior
) -> tuple[Tensor, Tensor]:
    """Log posterior ``(C, Gn, GL, Gs)`` and the nodes' absolute t0 (same shape, broadcast).

    Shapes:
        t, x, m: ``(C, P)``; t0, y: ``(C,)``.
    """
    n = grid.n[:, :, None, None, None]
    loc = grid.loc[:, None, :, None, None]
    s = grid.s[None, None, None, :, None]
    t0_abs = s * loc.exp() if t0 is None else t0[:, None, None, None, None].expand_as(s * loc)
    dt = t[:, None, None, None, :] - t0_abs
    after = dt > 0
    z = LN_LN2 + n * (torch.where(after, dt, torch.ones_like(dt)).log() - loc)
    pred = torch.where(after, fraction_from_z(z), torch.zeros_like(z)) * y[:, None, None, None, None]
    resid = (x[:, None, None, None, :] - pred) * m[:, None, None, None, :]
    ll = -0.5 * (resid**2).sum(-1) / noise**2
    lp = ll + n_prior_log_density(grid.n, prior.n_range, prior.n_jitter)[:, :, None, None]
    return lp + grid.s_logp[None, None, None, :], t0_abs[..., 0]


def _box(lp: Tensor, nodes: Tensor, dim: int, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per curve, the range of ``nodes`` holding all but ``eps`` of the marginal mass, one node wider each side."""
    other = [d for d in (1, 2, 3) if d != dim]
    marginal = torch.softmax(lp.flatten(1), 1).reshape(lp.shape).sum(other)
    cdf = marginal.cumsum(1)
    count = nodes.shape[1]
    lo = ((cdf < eps).sum(1) - 1).clamp(0, count - 1)
    hi = ((cdf < 1 - eps).sum(1) + 1).clamp(0, count - 1)
    return nodes.gather(1, lo[:, None])[:, 0], nodes.gather(1, hi[:, None])[:, 0]


def _quantiles(values: Tensor, weights: Tensor, qs: tuple[float, ...]) -> Tensor:
    """Weighted quantiles per row. Shapes: values, weights ``(C, N)`` → ``(C, len(qs))``."""
    order = values.argsort(1)
    v, w = values.gather(1, order), weights.gather(1, order)
    cdf = w.cumsum(1)
    target = torch.tensor(qs, dtype=cdf.dtype).expand(v.shape[0], -1) * cdf[:, -1:]
    idx = torch.searchsorted(cdf.contiguous(), target.contiguous()).clamp(max=v.shape[1] - 1)
    return v.gather(1, idx)


def _linspace(lo: Tensor, hi: Tensor, count: int) -> Tensor:
    frac = torch.linspace(0.0, 1.0, count, dtype=torch.float64)
    return lo[:, None] + (hi - lo)[:, None] * frac[None, :]


def _block(
    t: Tensor, x: Tensor, m: Tensor, t0: Tensor | None, y: Tensor, prior: FractionPrior, noise: float,
    level: float, samples: int, generator: torch.Generator, estimate: str,
) -> tuple:  # fmt: skip
    """Summaries of one block of curves (see :func:`fit_fraction_posterior`)."""
    c = t.shape[0]
    big = torch.full_like(t, math.inf)
    ln_lo = torch.where(m > 0, t, big).clamp(min=1e-300).log().amin(1)
    ln_hi = torch.where(m > 0, t, -big).clamp(min=1e-300).log().amax(1)
    width = LOCATION_DECADES * math.log(10.0)
    s_nodes, s_logp = _incubation_nodes(prior.incubation, t0 is not None)
    n_lo, n_hi = (torch.full((c,), v, dtype=torch.float64) for v in prior.n_support)
    (gn, gl), (fn, fl) = GRID["coarse"], GRID["fine"]
    grid = _Grid(_linspace(n_lo, n_hi, gn), _linspace(ln_lo - width, ln_hi + width, gl), s_nodes, s_logp)
    lp, _ = _log_post(grid, t, x, m, t0, y, noise, prior)
    (a_n, b_n), (a_l, b_l) = _box(lp, grid.n, 1), _box(lp, grid.loc, 2)
    grid = _Grid(_linspace(a_n, b_n, fn), _linspace(a_l, b_l, fl), s_nodes, s_logp)
    lp, t0_abs = _log_post(grid, t, x, m, t0, y, noise, prior)
    w = torch.softmax(lp.flatten(1), 1)
    shape = lp.shape
    n = grid.n[:, :, None, None].expand(shape).flatten(1)
    loc = grid.loc[:, None, :, None].expand(shape).flatten(1)
    t0n = t0_abs.expand(shape).flatten(1)
    ln_t0 = t0n.clamp(min=1e-300).log()
    qs = (0.5 - level / 2, 0.5, 0.5 + level / 2)
    out_t, out_iv, out_sd = {}, {}, {}
    best = w.argmax(1, keepdim=True)
    for p in FRACTIONS:
        ln_tp = torch.logaddexp(ln_t0, loc + math.log(-math.log1p(-p) / math.log(2.0)) / n)
        q = _quantiles(ln_tp, w, qs)
        mean = (w * ln_tp).sum(1)
        out_iv[p] = (q[:, 0], q[:, 2])
        out_t[p] = {"median": q[:, 1], "mean": mean, "mode": ln_tp.gather(1, best)[:, 0]}[estimate]
        out_sd[p] = ((w * (ln_tp - mean[:, None]) ** 2).sum(1)).clamp(min=0).sqrt()
    ln_k_phys = LN_LN2 - n * loc

    def med_sd(v: Tensor) -> tuple[Tensor, Tensor]:
        mean = (w * v).sum(1)
        return _quantiles(v, w, (0.5,))[:, 0], ((w * (v - mean[:, None]) ** 2).sum(1)).clamp(min=0).sqrt()

    (n_med, n_sd), (t0_med, t0_sd), (_, k_sd) = med_sd(n), med_sd(t0n), med_sd(ln_k_phys)
    draws = _draws(grid, w, t0, shape, samples, generator)
    return n_med, n_sd, t0_med, t0_sd, k_sd, out_t, out_iv, out_sd, (w, n, loc), draws


def _draws(grid: _Grid, w: Tensor, t0: Tensor | None, shape: torch.Size, samples: int, generator: torch.Generator):
    """``samples`` draws of (n, ln t50', t0) from the grid posterior, jittered within their cells: ``(C, S, 3)``."""
    idx = torch.multinomial(w, samples, replacement=True, generator=generator)
    _, gn, gl, gs = shape
    i_n, i_l, i_s = idx // (gl * gs), (idx // gs) % gl, idx % gs
    step_n = (grid.n[:, 1] - grid.n[:, 0])[:, None]
    step_l = (grid.loc[:, 1] - grid.loc[:, 0])[:, None]
    u = torch.rand((*idx.shape, 3), generator=generator, dtype=torch.float64) - 0.5
    n = (grid.n.gather(1, i_n) + u[..., 0] * step_n).clamp(min=0.05)
    loc = grid.loc.gather(1, i_l) + u[..., 1] * step_l
    s = grid.s[i_s]
    if grid.s.numel() > 1:
        ds = float(grid.s[-1] - grid.s[-2])
        s = torch.where(s > 0, s + u[..., 2] * ds, s)
    t0_abs = s * loc.exp() if t0 is None else t0[:, None].expand_as(loc)
    return torch.stack([n, loc, t0_abs], -1)


def fit_fraction_posterior(
    time_s: Tensor,
    fraction: Tensor,
    mask: Tensor,
    prior: FractionPrior,
    noise: float | None = None,
    t0_s: float | None = None,
    y_max: float | None = None,
    level: float = 0.9,
    samples: int = 400,
    seed: int = 0,
    estimate: str = "median",
) -> PosteriorFit:
    """Posterior fit of sparse fraction readings, all curves in blocks (see the module docstring).

    Args:
        time_s: measured times (s, > 0 for real points).
        fraction: measured fractions (as measured: noise may put them slightly outside [0, 1]).
        mask: 1 for real points, 0 for padding.
        prior: the generating distribution (:func:`load_fraction_prior`).
        noise: σ of the fraction (default: the prior's).
        t0_s: a given incubation time (s) for every curve (default: t0 under the prior).
        y_max: the fraction every curve tops out at (default 1: normalised readings).
        level: coverage of the ``intervals``.
        samples: draws per curve kept for bands.
        seed: seed of the draws.
        estimate: the reported ln t_p: the posterior ``median`` (default), ``mean`` or ``mode`` (the grid's
            most probable node); the alternatives are kept for the synthetic validation that chose it.

    Shapes:
        time_s, fraction, mask: ``(B, P)``.
    """
    noise = prior.noise if noise is None else float(noise)
    t = time_s.to(torch.float64)
    x, m = fraction.to(torch.float64), mask.to(torch.float64)
    b, p = t.shape
    t0 = None if t0_s is None else torch.full((b,), float(t0_s), dtype=torch.float64)
    y = torch.full((b,), 1.0 if y_max is None else float(y_max), dtype=torch.float64)
    nodes = max(math.prod(GRID["coarse"]), math.prod(GRID["fine"])) * (INCUBATION_NODES + 1)
    chunk = max(1, BUDGET // (nodes * max(p, 1)))
    generator = torch.Generator().manual_seed(int(seed))
    parts = [
        _block(t[i : i + chunk], x[i : i + chunk], m[i : i + chunk], None if t0 is None else t0[i : i + chunk],
               y[i : i + chunk], prior, noise, level, samples, generator, estimate)
        for i in range(0, b, chunk)
    ]  # fmt: skip
    fit = _assemble(parts, t, m, y, level)
    if t0 is not None:  # a given t0 has no spread (not the grid's rounding of one)
        fit.std["t0_s"] = torch.zeros_like(fit.std["t0_s"])
    return fit


def _assemble(parts: list[tuple], t: Tensor, m: Tensor, y: Tensor, level: float) -> PosteriorFit:
    """Concatenate the blocks' summaries into a :class:`PosteriorFit`."""
    cat = torch.cat
    n_med, n_sd, t0_med, t0_sd, k_sd = (cat([q[i] for q in parts]) for i in range(5))
    ln_times = {p: cat([q[5][p] for q in parts]) for p in FRACTIONS}
    intervals = {p: (cat([q[6][p][0] for q in parts]), cat([q[6][p][1] for q in parts])) for p in FRACTIONS}
    t_sd = {p: cat([q[7][p] for q in parts]) for p in FRACTIONS}
    draws = cat([q[9] for q in parts])
    ln_t_ref = (t.clamp(min=1e-300).log() * m).sum(1) / m.sum(1).clamp(min=1.0)
    # the point curve: n and t0 at their medians, through the median t50
    shifted = (ln_times[0.5].exp() - t0_med).clamp(min=1e-300).log()
    ln_k = LN_LN2 - n_med * (shifted - ln_t_ref)
    ok = torch.isfinite(ln_k) & torch.isfinite(n_med) & (n_med > 0)
    fits = Fits(ln_k, n_med, ln_t_ref, ok, t0_s=t0_med, y_max=y)
    cov = _cov([q[8] for q in parts], ln_t_ref)
    std = {"ln_k": k_sd, "n": n_sd, "t0_s": t0_sd, "y_max": torch.zeros_like(y)}
    std |= {f"ln_t_{p:g}": t_sd[p] for p in FRACTIONS}
    ln_k_draws = LN_LN2 - draws[..., 0] * (draws[..., 1] - ln_t_ref[:, None])
    samples = torch.stack([ln_k_draws, draws[..., 0], draws[..., 2], y[:, None].expand_as(ln_k_draws)], -1)
    return PosteriorFit(fits, cov, std, ln_times, intervals, samples)


def _cov(blocks: list[tuple[Tensor, Tensor, Tensor]], ln_t_ref: Tensor) -> Tensor:
    """Posterior covariance of (ln k normalised by t_ref, n) from the grid weights. Shapes: → ``(B, 2, 2)``."""
    out, start = [], 0
    for w, n, loc in blocks:
        ref = ln_t_ref[start : start + w.shape[0], None]
        start += w.shape[0]
        lnk = LN_LN2 - n * (loc - ref)
        e_k, e_n = (w * lnk).sum(1), (w * n).sum(1)
        c_kk = (w * lnk**2).sum(1) - e_k**2
        c_nn = (w * n**2).sum(1) - e_n**2
        c_kn = (w * lnk * n).sum(1) - e_k * e_n
        out.append(torch.stack([torch.stack([c_kk, c_kn], -1), torch.stack([c_kn, c_nn], -1)], -2))
    return torch.cat(out)
