"""Synthetic JMAK corpora: families of curves with Arrhenius kinetics, sparse noisy sampling.

A *family* is one alloy/phase: one Avrami exponent (mechanism) with a small per-curve jitter,
one activation energy Q, and a rate that follows Arrhenius across the family's temperatures::

    1/t50(T) = (1/t50(T_mid))·exp(−(Q/R)·(1/T − 1/T_mid)),   ln k = ln ln 2 − n·ln t50.

(The Arrhenius law is put on the characteristic rate k^(1/n) = (ln 2)^(1/n)/t50, the usual form
when n is constant for a mechanism.) A *curve* is one temperature; it is measured at a few times
drawn log-uniformly between ``window[0]·t50`` and ``window[1]·t50``, with Gaussian noise on the
fraction (clipped to [0, 1], as a measured fraction is reported). Everything is drawn from one
``torch.Generator``, so the same seed gives the same corpus.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from matmeta.models.jmak import LN_LN2, fraction_from_z

GAS_CONSTANT = 8.314462618  # J/(mol K)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Distribution of synthetic families and of their measurements.

    Attributes:
        n_range: family Avrami exponents, uniform in this range (default: Christian's 0.5–5, see recipes/jmak.toml).
        n_jitter: per-curve standard deviation of n around the family's value.
        log10_t50_range: t50 (s) at the family's middle temperature, log-uniform in this range of decades.
        q_kj_range: activation energy Q (kJ/mol), uniform.
        t_mid_k_range: middle temperature of a family (K), uniform.
        t_span_k: temperatures of a family's curves: T_mid ± t_span_k / 2, uniform.
        window: measured times lie in [window[0]·t50, window[1]·t50] (log-uniform).
        window_jitter: each curve's window bounds are multiplied by exp(U(−j, j)) (0: fixed window).
        noise: standard deviation of the measured fraction.
        points_range: number of measured points per curve, uniform integer in this closed range.
    """

    n_range: tuple[float, float] = (0.5, 5.0)
    n_jitter: float = 0.05
    log10_t50_range: tuple[float, float] = (-1.0, 5.0)
    q_kj_range: tuple[float, float] = (80.0, 350.0)
    t_mid_k_range: tuple[float, float] = (500.0, 1100.0)
    t_span_k: float = 100.0
    window: tuple[float, float] = (0.3, 2.5)
    window_jitter: float = 0.0
    noise: float = 0.02
    points_range: tuple[int, int] = (2, 10)


@dataclasses.dataclass(frozen=True)
class IncubationConfig:
    """Incubation times t0 of the prior's curves (a recipe's ``[incubation]`` section).

    X(t) = 1 − exp(−k·(t − t0)ⁿ) for t > t0: a curve has an incubation period with probability
    ``share``; its t0 is then uniform in (0, ``max_ratio``·t50'] with t50' the half time counted from
    t0 (so t0 is at most ``max_ratio / (1 + max_ratio)`` of the whole half time t0 + t50').

    Attributes:
        share: fraction of curves with an incubation period (0: none has one, the plain JMAK curve).
        max_ratio: largest t0 / t50'.
    """

    share: float = 0.0
    max_ratio: float = 1.0


def sample_incubation(ln_t50_shifted: Tensor, config: IncubationConfig, generator: torch.Generator) -> Tensor:
    """Incubation times t0 (s) of curves whose half time counted from t0 is exp(``ln_t50_shifted``).

    Shapes:
        ln_t50_shifted: ``(B,)`` → ``(B,)``.
    """
    b = ln_t50_shifted.shape[0]
    has = torch.rand(b, generator=generator, dtype=torch.float64) < config.share
    ratio = config.max_ratio * torch.rand(b, generator=generator, dtype=torch.float64)
    return torch.where(has, ratio * ln_t50_shifted.exp(), torch.zeros_like(ratio))


@dataclasses.dataclass
class Corpus:
    """Curves with their true parameters and padded measurements.

    Shapes:
        - ``ln_k``, ``n``, ``ln_t50``, ``temperature_k``, ``family``, ``count``: ``(B,)``
        - ``time_s``, ``fraction``, ``mask``: ``(B, P)``; padded entries have mask 0, time 1, fraction 0.
    """

    ln_k: Tensor
    n: Tensor
    ln_t50: Tensor
    temperature_k: Tensor
    family: Tensor
    time_s: Tensor
    fraction: Tensor
    mask: Tensor
    count: Tensor

    def __len__(self) -> int:
        return int(self.n.shape[0])


def _uniform(lo: float, hi: float, size: int, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(size, generator=generator, dtype=torch.float64)


def sample_families(
    n_families: int, curves_per_family: int, config: SyntheticConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """True (ln k, n, ln t50, T) of ``n_families × curves_per_family`` curves, plus family ids.

    Returns:
        ``(ln_k, n, ln_t50, temperature_k, family)`` each of shape ``(n_families·curves_per_family,)``
        (returned as a tuple of five tensors; ``family`` is int64).
    """
    f, c = n_families, curves_per_family
    n_fam = _uniform(*config.n_range, f, generator)
    ln_t50_mid = _uniform(*config.log10_t50_range, f, generator) * math.log(10.0)
    q = _uniform(*config.q_kj_range, f, generator) * 1e3
    t_mid = _uniform(*config.t_mid_k_range, f, generator)
    temp = t_mid[:, None] + config.t_span_k * (torch.rand(f, c, generator=generator, dtype=torch.float64) - 0.5)
    ln_t50 = ln_t50_mid[:, None] + (q[:, None] / GAS_CONSTANT) * (1.0 / temp - 1.0 / t_mid[:, None])
    n = n_fam[:, None] + config.n_jitter * torch.randn(f, c, generator=generator, dtype=torch.float64)
    lo, hi = config.n_range
    n = n.clamp(0.8 * lo, 1.1 * hi)
    ln_k = LN_LN2 - n * ln_t50
    family = torch.arange(f).repeat_interleave(c)
    return ln_k.reshape(-1), n.reshape(-1), ln_t50.reshape(-1), temp.reshape(-1), family


def sample_times(
    ln_t50: Tensor, config: SyntheticConfig, generator: torch.Generator, points: int | None = None
) -> tuple[Tensor, Tensor]:
    """Measurement times for each curve, padded to ``points_range[1]`` columns.

    Args:
        ln_t50: true ln t50 of each curve.
        config: the sampling window and point counts.
        generator: the random source.
        points: fixed number of points per curve (default: uniform in ``points_range``).

    Returns:
        ``(time_s, mask)``.

    Shapes:
        - ln_t50: ``(B,)``; time_s, mask: ``(B, P)`` with ``P = points or points_range[1]``.
    """
    b = ln_t50.shape[0]
    p_max = points if points is not None else config.points_range[1]
    if points is None:
        count = torch.randint(config.points_range[0], config.points_range[1] + 1, (b,), generator=generator)
    else:
        count = torch.full((b,), points)
    lo = math.log(config.window[0]) + config.window_jitter * (2 * torch.rand(b, generator=generator) - 1)
    hi = math.log(config.window[1]) + config.window_jitter * (2 * torch.rand(b, generator=generator) - 1)
    u = torch.rand(b, p_max, generator=generator, dtype=torch.float64)
    mask = (torch.arange(p_max)[None, :] < count[:, None]).to(torch.float64)
    u = torch.where(mask > 0, u, torch.full_like(u, 2.0)).sort(dim=1).values  # real points first, sorted
    log_t = ln_t50[:, None] + lo.double()[:, None] + (hi - lo).double()[:, None] * u.clamp(max=1.0)
    time_s = torch.where(mask > 0, log_t.exp(), torch.ones_like(log_t))
    return time_s, mask


def true_fraction(ln_k: Tensor, n: Tensor, time_s: Tensor) -> Tensor:
    """Noise-free X(t) of each curve at its times. Shapes: ln_k, n ``(B,)``; time_s ``(B, P)``."""
    return fraction_from_z(ln_k[:, None] + n[:, None] * time_s.log())


def make_corpus(
    n_families: int,
    curves_per_family: int,
    config: SyntheticConfig,
    seed: int,
    points: int | None = None,
) -> Corpus:
    """A reproducible corpus of noisy sparse curves (same ``seed`` → same corpus)."""
    generator = torch.Generator().manual_seed(int(seed))
    ln_k, n, ln_t50, temp, family = sample_families(n_families, curves_per_family, config, generator)
    time_s, mask = sample_times(ln_t50, config, generator, points=points)
    clean = true_fraction(ln_k, n, time_s)
    noisy = (clean + config.noise * torch.randn(clean.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return Corpus(
        ln_k=ln_k,
        n=n,
        ln_t50=ln_t50,
        temperature_k=temp,
        family=family,
        time_s=time_s,
        fraction=noisy * mask,
        mask=mask,
        count=mask.sum(1).long(),
    )


def truth_grid(ln_k: Tensor, n: Tensor, points: int = 64, span: tuple[float, float] = (0.01, 0.99)) -> Tensor:
    """Times (s) spanning the whole transformation, log-spaced from X = span[0] to X = span[1].

    This is the grid on which curve errors are measured (benchmark) and query losses computed
    (meta-training): it weighs every stage of the transformation, whatever n and k.

    Shapes:
        ln_k, n: ``(B,)`` → ``(B, points)``.
    """
    z_lo, z_hi = (math.log(-math.log1p(-s)) for s in span)
    log_lo = (z_lo - ln_k) / n
    log_hi = (z_hi - ln_k) / n
    frac = torch.linspace(0.0, 1.0, points, dtype=ln_k.dtype)
    return (log_lo[:, None] + (log_hi - log_lo)[:, None] * frac[None, :]).exp()


# Documented curves of data/jmak_points.csv: (name, t50 in s, n, number of points). Times are drawn
# log-uniformly in [0.3, 2.5]·t50, fractions carry 2 % Gaussian noise, seed 5.
DEMO_CURVES = (
    ("AlCu_ageing_190C", 3600.0, 1.5, 3),
    ("bainite_350C", 60.0, 2.5, 2),
    ("Cu_recrystallisation_250C", 2.0e4, 3.0, 5),
    ("Ti_alpha_700C", 5.0, 1.0, 3),
)


def demo_curves(seed: int = 5, noise: float = 0.02) -> list[tuple[str, list[float], list[float]]]:
    """The sparse noisy points of :data:`DEMO_CURVES` as ``(name, times_s, fractions)``."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for name, t50, n, points in DEMO_CURVES:
        u = torch.rand(points, generator=generator, dtype=torch.float64).sort().values
        log_t = math.log(0.3 * t50) + u * math.log(2.5 / 0.3)
        ln_k = torch.tensor([LN_LN2 - n * math.log(t50)], dtype=torch.float64)
        clean = true_fraction(ln_k, torch.tensor([n], dtype=torch.float64), log_t.exp()[None, :])[0]
        noisy = (clean + noise * torch.randn(points, generator=generator, dtype=torch.float64)).clamp(0, 1)
        out.append((name, log_t.exp().tolist(), noisy.tolist()))
    return out
