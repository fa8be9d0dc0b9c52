import math

import numpy as np
import torch

from matmeta.kinetics.synthetic import GAS_CONSTANT, SyntheticConfig, demo_curves, make_corpus, sample_families
from matmeta.models.jmak import LN_LN2


def test_same_seed_same_corpus_and_window_respected():
    config = SyntheticConfig(window=(0.3, 2.5), noise=0.02, points_range=(2, 6))
    a, b = make_corpus(5, 3, config, seed=4), make_corpus(5, 3, config, seed=4)
    assert torch.equal(a.fraction, b.fraction) and torch.equal(a.time_s, b.time_s)
    assert not torch.equal(a.fraction, make_corpus(5, 3, config, seed=5).fraction)
    rel = (a.time_s.log() - a.ln_t50[:, None]).exp()[a.mask > 0]
    assert float(rel.min()) >= 0.3 - 1e-9 and float(rel.max()) <= 2.5 + 1e-9
    assert set(a.count.tolist()) <= set(range(2, 7))
    assert float(a.fraction.min()) >= 0 and float(a.fraction.max()) <= 1
    # padded entries are inert and real points come first, sorted in time
    for i in range(len(a)):
        k = int(a.count[i])
        assert float(a.mask[i, :k].min()) == 1 and float(a.mask[i, k:].sum()) == 0
        assert bool((a.time_s[i, 1:k] >= a.time_s[i, : k - 1]).all())


def test_families_follow_arrhenius_and_jmak_relations():
    config = SyntheticConfig(n_jitter=0.0, t_span_k=150.0)
    generator = torch.Generator().manual_seed(1)
    ln_k, n, ln_t50, temp, family = sample_families(4, 6, config, generator)
    assert torch.allclose(ln_k, LN_LN2 - n * ln_t50)
    for f in range(4):
        sel = family == f
        assert len(set(np.round(n[sel].numpy(), 12))) == 1  # one mechanism per family
        slope, intercept = np.polyfit(1.0 / temp[sel].numpy(), ln_t50[sel].numpy(), 1)
        residual = ln_t50[sel].numpy() - (slope * (1.0 / temp[sel].numpy()) + intercept)
        assert np.abs(residual).max() < 1e-8  # ln t50 is linear in 1/T
        q_kj = slope * GAS_CONSTANT / 1e3
        assert config.q_kj_range[0] <= q_kj <= config.q_kj_range[1]
        assert bool((ln_t50[sel][temp[sel].argsort()].diff() < 0).all())  # hotter is faster


def test_demo_points_are_the_documented_curves():
    curves = demo_curves()
    assert [c[0] for c in curves][:2] == ["AlCu_ageing_190C", "bainite_350C"]
    name, times, fracs = curves[0]
    assert len(times) == 3 and all(0.3 * 3600 <= t <= 2.5 * 3600 for t in times)
    expected = [1 - math.exp(-math.log(2) * (t / 3600) ** 1.5) for t in times]
    assert max(abs(x - e) for x, e in zip(fracs, expected, strict=True)) < 0.08
