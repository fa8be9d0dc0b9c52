"""The information limit of a synthetic benchmark: the exact grid posterior under the generating distribution.

For curves drawn by :func:`matmeta.kinetics.synthetic.make_corpus` (fixed window, no n jitter),
everything the data say about a curve is the posterior over (ln t50, n) under

* the prior the generator used: n uniform in ``n_range`` and ln t50's marginal (family mid-point
  log-uniform plus the Arrhenius offset of the curve's temperature), histogrammed from
  ``prior_samples`` draws of the generator itself;
* the sampling of the times: log-uniform in [window₀·t50, window₁·t50], so every time must lie
  in that window (a likelihood factor that is 0 or a constant);
* the fractions: Gaussian noise σ, clipped to [0, 1] (a clipped 0 or 1 is censored: Φ terms).

The posterior-mean prediction of X(t) minimises the expected squared error at every t; its RMSE
on the truth grid is the floor any method fitted to those points can reach on average.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from matmeta.kinetics.synthetic import Corpus, SyntheticConfig, sample_families, truth_grid
from matmeta.models.jmak import LN_LN2, fraction_from_z


def _ln_t50_prior(cfg: SyntheticConfig, samples: int, bins: int, seed: int) -> tuple[Tensor, Tensor]:
    """Histogram of the generator's per-curve ln t50: (bin centres, log density)."""
    gen = torch.Generator().manual_seed(seed)
    _, _, ln_t50, _, _ = sample_families(samples // 4, 4, cfg, gen)
    lo, hi = float(ln_t50.min()), float(ln_t50.max())
    hist = torch.histc(ln_t50, bins=bins, min=lo, max=hi).double() + 1e-3
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    return centres, torch.log(hist / hist.sum())


def _log_norm_cdf(x: Tensor) -> Tensor:
    return torch.special.log_ndtr(x)


def grid_posterior_predict(
    corpus: Corpus,
    cfg: SyntheticConfig,
    grid: tuple[int, int] = (80, 60),
    prior_samples: int = 400_000,
    seed: int = 0,
    chunk: int = 16,
) -> Tensor:
    """Posterior-mean X of every curve at its truth grid (:func:`truth_grid`, 64 points).

    Args:
        corpus: curves made with ``cfg`` (window_jitter 0, n_jitter 0).
        cfg: the generating distribution.
        grid: points in ln t50 (within each curve's window-allowed range) and in n.
        prior_samples: draws of the generator for the ln t50 marginal.
        seed: seed of those draws.
        chunk: curves per tensor block.

    Shapes:
        returns ``(B, 64)``.
    """
    centres, log_density = _ln_t50_prior(cfg, prior_samples, 400, seed)
    n_grid = torch.linspace(*cfg.n_range, grid[1], dtype=torch.float64)
    w_lo, w_hi = math.log(cfg.window[0]), math.log(cfg.window[1])
    sigma = cfg.noise
    eval_t = truth_grid(corpus.ln_k, corpus.n)
    out = []
    for start in range(0, len(corpus), chunk):
        sl = slice(start, start + chunk)
        log_t, x, mask = corpus.time_s[sl].log(), corpus.fraction[sl], corpus.mask[sl]
        big = torch.where(mask > 0, log_t, torch.full_like(log_t, -1e9)).max(1).values
        small = torch.where(mask > 0, log_t, torch.full_like(log_t, 1e9)).min(1).values
        # ln t50 such that every time is in the window: [max ln t − w_hi, min ln t − w_lo]
        lo, hi = big - w_hi, small - w_lo
        frac = torch.linspace(0.0, 1.0, grid[0], dtype=torch.float64)
        ln_t50 = lo[:, None] + (hi - lo)[:, None] * frac[None, :]  # (C, G1)
        idx = torch.bucketize(ln_t50, centres).clamp(1, len(centres) - 1)
        prior = torch.where((ln_t50 >= centres[0] - 1e-9) & (ln_t50 <= centres[-1] + 1e-9), log_density[idx], -math.inf)
        ln_k = LN_LN2 - n_grid[None, None, :] * ln_t50[:, :, None]  # (C, G1, G2)
        z = ln_k[..., None] + n_grid[None, None, :, None] * log_t[:, None, None, :]
        pred = fraction_from_z(z)
        xo = x[:, None, None, :]
        normal = -0.5 * ((xo - pred) / sigma) ** 2
        low = _log_norm_cdf((0.0 - pred) / sigma)
        high = _log_norm_cdf((pred - 1.0) / sigma)
        ll = torch.where(xo <= 0.0, low, torch.where(xo >= 1.0, high, normal)) * mask[:, None, None, :]
        logw = ll.sum(-1) + prior[:, :, None]
        w = torch.softmax(logw.reshape(logw.shape[0], -1), dim=1).reshape(logw.shape)
        z_eval = ln_k[..., None] + n_grid[None, None, :, None] * eval_t[sl].log()[:, None, None, :]
        out.append((w[..., None] * fraction_from_z(z_eval)).sum((1, 2)))
    return torch.cat(out)
