"""Robust fits of measured traces: incubation t0, plateau y_max, outliers, and the shared bainite curves."""

import math

import numpy as np
import pytest

from matmeta.kinetics.robust import fit_measured, ln_time_std, point_noise


def _trace(n=2.2, t50=300.0, t0=40.0, y=0.7, noise=0.004, points=1500, outliers=0.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, t0 + 4 * t50, points)
    shifted = np.clip(t - t0, 0.0, None)
    x = y * -np.expm1(-math.log(2.0) * (shifted / t50) ** n) + noise * rng.standard_normal(points)
    bad = rng.random(points) < outliers
    x[bad] += rng.choice([-0.3, 0.3], bad.sum())
    return t, x


def _t50(fit):
    return fit.t0_s + math.exp((math.log(math.log(2.0)) - fit.ln_k) / fit.n + fit.ln_t_ref)


def test_trace_with_incubation_and_plateau_is_recovered():
    t, x = _trace()
    fit = fit_measured(t, x)
    assert fit.ok
    assert abs(fit.n / 2.2 - 1) < 0.03
    assert abs(fit.t0_s - 40.0) < 6.0
    assert abs(fit.y_max - 0.7) < 0.005
    assert abs(_t50(fit) / 340.0 - 1) < 0.01  # t0 + t50' = 340 s
    assert 0.002 < point_noise(x) < 0.006
    # the interval of ln t50 is honest about a 1 % error, not a 0.01 % one (AR(1)-free noise here)
    assert 1e-4 < ln_time_std(fit, 0.5) < 0.02


def test_outliers_do_not_pull_the_robust_fit():
    t, x = _trace(outliers=0.03, seed=1)
    robust = fit_measured(t, x)
    plain = fit_measured(t, x, loss="linear")
    assert abs(robust.n / 2.2 - 1) < 0.04 and abs(robust.y_max - 0.7) < 0.01
    assert abs(_t50(robust) / 340.0 - 1) < 0.02
    assert abs(robust.y_max - 0.7) <= abs(plain.y_max - 0.7) + 1e-3


def test_given_incubation_and_plateau_are_kept():
    t, x = _trace(t0=0.0, y=1.0, noise=0.002)
    fit = fit_measured(t, x, t0_s=0.0, y_max=1.0)
    assert fit.t0_s == 0.0 and fit.y_max == 1.0
    assert abs(fit.n / 2.2 - 1) < 0.02
    assert fit.cov[2, 2] == 0.0 and fit.cov[3, 3] == 0.0


def test_shared_bainite_trace_slice(bainite_csv):
    from matmeta.kinetics.data import read_curves

    curves = read_curves(bainite_csv, on_error=print, warn=print)
    assert [len(c.time_s) > 2000 and c.dense for c in curves] == [True, True]
    assert all(c.temperature_k == pytest.approx(673.15) for c in curves)
    curve = curves[0]
    t, x = curve.time_s[::10], curve.fraction[::10]  # a slice: 241 points
    fit = fit_measured(t, x)
    assert fit.ok and 0.9 < fit.n < 1.7 and 5.0 < fit.t0_s < 40.0
    assert 0.64 < fit.y_max < 0.68  # the bainite reaction stops at about two thirds
    assert 100.0 < _t50(fit) < 130.0
