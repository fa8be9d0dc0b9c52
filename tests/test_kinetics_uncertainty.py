import math

import pytest
import torch

from matmeta.kinetics.api import fit_curves
from matmeta.kinetics.data import Curve
from matmeta.kinetics.synthetic import SyntheticConfig, make_corpus, true_fraction, truth_grid
from matmeta.kinetics.uncertainty import derived_std, laplace_covariance, quantile
from matmeta.models.jmak import fraction_from_z


def test_laplace_covariance_is_inverse_gauss_newton_hessian():
    ln_k, n = torch.tensor([-0.4], dtype=torch.float64), torch.tensor([2.2], dtype=torch.float64)
    log_t = torch.tensor([[-1.0, -0.2, 0.5, 1.1]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    prior = torch.tensor([[0.5, 0.2], [0.2, 1.5]], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda p: fraction_from_z(p[0] + p[1] * log_t[0, :3]), torch.tensor([-0.4, 2.2], dtype=torch.float64)
    )
    sigma = 0.02
    expected = torch.linalg.inv(jac.T @ jac / sigma**2 + prior)
    cov = laplace_covariance(ln_k, n, log_t, mask, sigma, prior)[0]
    assert torch.allclose(cov, expected, rtol=1e-6)
    # delta method for ln t50 = (ln ln 2 − ln k)/n against a finite-difference gradient
    grad = torch.tensor([-1 / 2.2, -(math.log(math.log(2)) + 0.4) / 2.2**2], dtype=torch.float64)
    std = derived_std(ln_k, n, cov[None], torch.zeros(1, dtype=torch.float64), (0.5,))
    assert abs(float(std["ln_t_0.5"][0]) - float((grad @ cov @ grad).sqrt())) < 1e-9


@pytest.mark.parametrize(("method", "points"), [("maml", 3), ("least-squares", 10)])
def test_band_and_intervals_cover_truth_at_nominal_rate(method, points):
    corpus = make_corpus(100, 4, SyntheticConfig(n_range=(1.0, 3.5)), seed=100 + points, points=points)
    curves = [Curve(str(i), corpus.time_s[i].numpy(), corpus.fraction[i].numpy()) for i in range(len(corpus))]
    result = fit_curves(curves, method=method, noise=0.02)
    ok = result.fits.ok
    assert int(ok.sum()) >= 390
    grid = truth_grid(corpus.ln_k, corpus.n, 16)
    lo, hi = result.band(grid, 0.9)
    truth = true_fraction(corpus.ln_k, corpus.n, grid)
    band_coverage = float(((truth >= lo) & (truth <= hi))[ok].float().mean())
    q = quantile(0.9)
    n_coverage = float(((result.fits.n - corpus.n).abs() <= q * result.std["n"])[ok].float().mean())
    t50_error = (result.fits.ln_time_at(0.5) - corpus.ln_t50).abs()
    t50_coverage = float((t50_error <= q * result.std["ln_t_0.5"])[ok].float().mean())
    for coverage in (band_coverage, n_coverage, t50_coverage):
        assert 0.83 <= coverage <= 0.96, (band_coverage, n_coverage, t50_coverage)
    # a 50 % band is narrower and covers about half as often
    lo50, hi50 = result.band(grid, 0.5)
    assert bool(((hi50 - lo50) <= (hi - lo) + 1e-12).all())
    assert 0.4 <= float(((truth >= lo50) & (truth <= hi50))[ok].float().mean()) <= 0.65
