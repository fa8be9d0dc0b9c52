"""The default fit of a few readings: the exact posterior under the prior's distribution, incubation included."""

import math

import numpy as np
import torch

from matmeta.kinetics.posterior import FractionPrior, fit_fraction_posterior, load_fraction_prior
from matmeta.kinetics.synthetic import IncubationConfig


def test_shipped_prior_carries_christians_range_and_an_incubation_prior():
    prior = load_fraction_prior()
    assert prior.n_range == (0.5, 5.0)
    assert prior.incubation.share == 0.5 and prior.incubation.max_ratio == 1.0


def test_precise_readings_give_the_two_point_solve():
    # two exact readings of n = 2.5, t50 = 100 s, no incubation in the prior: the data decide
    n, t50 = 2.5, 100.0
    times = torch.tensor([[60.0, 150.0]], dtype=torch.float64)
    frac = -torch.expm1(-math.log(2.0) * (times / t50) ** n)
    prior = FractionPrior(incubation=IncubationConfig(share=0.0))
    fit = fit_fraction_posterior(times, frac, torch.ones_like(times), prior, noise=0.001)
    assert abs(math.exp(float(fit.ln_times[0.5][0])) / t50 - 1) < 0.01
    assert abs(float(fit.fits.n[0]) / n - 1) < 0.03
    assert float(fit.fits.t0[0]) == 0.0


def test_intervals_cover_at_their_rate_on_the_priors_own_curves():
    from matmeta.bench.jmak_real_validation import synthetic_readings

    prior = load_fraction_prior()
    time_s, frac, t50, t90 = synthetic_readings(prior, (0.05, 0.95), 3, 200, seed=5)
    t, x = torch.as_tensor(time_s), torch.as_tensor(frac)
    fit = fit_fraction_posterior(t, x, torch.ones_like(t), prior, samples=8)
    for p, truth in ((0.5, t50), (0.9, t90)):
        lo, hi = (v.numpy() for v in fit.intervals[p])
        cover = np.mean((lo <= np.log(truth)) & (np.log(truth) <= hi))
        assert 0.82 <= cover <= 0.97, (p, cover)
    assert np.median(np.abs(fit.ln_times[0.9].exp().numpy() / t90 - 1)) < 0.1


def test_given_incubation_shifts_the_curve_and_odd_readings_still_get_a_fit():
    prior = load_fraction_prior()
    n, t50s, t0 = 2.0, 50.0, 30.0
    times = torch.tensor([[50.0, 70.0, 100.0]], dtype=torch.float64)
    frac = -torch.expm1(-math.log(2.0) * ((times - t0) / t50s) ** n)
    fit = fit_fraction_posterior(times, frac, torch.ones_like(times), prior, noise=0.005, t0_s=t0)
    assert float(fit.fits.t0[0]) == t0
    assert abs(math.exp(float(fit.ln_times[0.5][0])) / (t0 + t50s) - 1) < 0.03
    falling = torch.tensor([[0.8, 0.5, 0.2]], dtype=torch.float64)
    odd = fit_fraction_posterior(times, falling, torch.ones_like(times), prior)
    assert bool(odd.fits.ok[0]) and float(odd.fits.n[0]) > 0
    assert torch.isfinite(odd.samples).all()
