"""Platt recalibration of a probability, Brier score and expected calibration error (matmeta.conformal)."""

import numpy as np
import pytest

from matmeta.conformal import brier_score, expected_calibration_error, fit_platt, platt


def test_fit_platt_recovers_the_slope_and_shift_that_generated_the_outcomes():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 4.0, 40_000)
    p_raw = 1.0 / (1.0 + np.exp(-logits))  # an over-confident model: the truth is sigmoid(0.4·logit − 0.8)
    outcome = rng.random(logits.size) < 1.0 / (1.0 + np.exp(-(0.4 * logits - 0.8)))
    a, b = fit_platt(p_raw, outcome)
    assert a == pytest.approx(0.4, abs=0.02) and b == pytest.approx(-0.8, abs=0.04)
    assert brier_score(platt(p_raw, a, b), outcome) < brier_score(p_raw, outcome)
    assert expected_calibration_error(platt(p_raw, a, b), outcome) < 0.01 < expected_calibration_error(p_raw, outcome)


def test_platt_identity_and_monotone():
    p = np.array([1e-9, 0.017, 0.3, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(platt(p[1:-1], 1.0, 0.0), p[1:-1], rtol=1e-9)
    assert np.all(np.diff(platt(p, 0.33, -0.75)) > 0)  # saturated inputs are clipped, still ordered
    assert 0.0 < platt(0.0, 0.33, -0.75) < platt(1.0, 0.33, -0.75) < 1.0


def test_brier_and_calibration_error_by_hand():
    p, y = np.array([0.05, 0.15, 0.95, 0.85]), np.array([0, 0, 1, 0])
    assert brier_score(p, y) == pytest.approx((0.05**2 + 0.15**2 + 0.05**2 + 0.85**2) / 4)
    # bins: [0, 0.1) → 0.05 vs 0; [0.1, 0.2) → 0.15 vs 0; [0.8, 0.9) → 0.85 vs 0; [0.9, 1] → 0.95 vs 1
    assert expected_calibration_error(p, y) == pytest.approx((0.05 + 0.15 + 0.85 + 0.05) / 4)
