"""The information limit: the exact grid posterior is the floor for the mean squared error."""

from matmeta.kinetics.fit import fit_least_squares, fit_maml
from matmeta.kinetics.infolimit import grid_posterior_predict
from matmeta.kinetics.prior import load_prior
from matmeta.kinetics.synthetic import SyntheticConfig, make_corpus, true_fraction, truth_grid


def test_grid_posterior_beats_every_fit_in_mean_squared_error():
    cfg = SyntheticConfig(n_range=(1.0, 3.5), n_jitter=0.0, log10_t50_range=(0.0, 4.0), noise=0.02)
    corpus = make_corpus(40, 4, cfg, seed=7, points=2)
    grid = truth_grid(corpus.ln_k, corpus.n)
    truth = true_fraction(corpus.ln_k, corpus.n, grid)
    limit = (grid_posterior_predict(corpus, cfg, prior_samples=100_000) - truth).pow(2).mean()
    maml, _ = load_prior()
    for fits in (
        fit_maml(maml, corpus.time_s, corpus.fraction, corpus.mask),
        fit_least_squares(corpus.time_s, corpus.fraction, corpus.mask),
    ):
        assert float(limit) < float((fits.predict(grid) - truth).pow(2).mean())
    # and it is a real fit, not a constant: far below predicting X = 1/2 everywhere
    assert float(limit) < 0.2 * float((0.5 - truth).pow(2).mean())
