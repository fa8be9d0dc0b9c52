"""Time readings: the exact posterior fit, reading-scheme detection and the window prior of the JMAK model."""

import math
import tomllib
from pathlib import Path

import torch

from matmeta.kinetics.data import Curve, is_reading_scheme, read_curves
from matmeta.kinetics.logtime import fit_log_time_ls
from matmeta.kinetics.logtime_posterior import fit_log_time_posterior, n_prior_log_density


def _z(x):
    return math.log(-math.log1p(-x))


def _readings(n, ln_k, fractions=(0.01, 0.1)):
    n, ln_k = torch.tensor(n, dtype=torch.float64), torch.tensor(ln_k, dtype=torch.float64)
    z = torch.tensor([_z(x) for x in fractions], dtype=torch.float64)
    time_s = ((z[None, :] - ln_k[:, None]) / n[:, None]).exp()
    frac = torch.tensor(fractions, dtype=torch.float64).expand(len(n), -1).clone()
    return time_s, frac, torch.ones_like(frac)


def test_posterior_mode_is_the_exact_solve_inside_the_range_and_pulls_outside():
    time_s, frac, mask = _readings([1.6, 2.5, 6.0], [-3.0, 1.0, -20.0])
    exact = fit_log_time_ls(time_s, frac, mask)
    fits, cov = fit_log_time_posterior(time_s, frac, mask, (1.0, 4.0), 0.1, 0.02)
    # inside [1, 4] (prior flat to < 1e-6 there): the two-point solve, whatever the grid
    assert torch.allclose(fits.n[:2], exact.n[:2], atol=1e-5)
    assert torch.allclose(fits.ln_time_at(0.9)[:2], exact.ln_time_at(0.9)[:2], atol=1e-5)
    # n = 6 is far outside the generator's range: the prior pulls it to the range's soft edge
    assert 3.9 < float(fits.n[2]) < 4.6
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())


def test_posterior_mean_and_covariance_match_brute_force_integration():
    time_s, frac, mask = _readings([3.8], [-2.0])
    time_s = time_s * torch.tensor([[1.0, 1.03]], dtype=torch.float64)  # a noisy second reading
    noise = 0.05
    fits, cov = fit_log_time_posterior(time_s, frac, mask, (1.0, 4.0), 0.1, noise, estimate="mean")
    # brute force: a 2-D grid over (n, a) with a flat prior on a, in normalised time
    lt = time_s.log()[0]
    lt = lt - lt.mean()
    z = torch.tensor([_z(0.01), _z(0.1)], dtype=torch.float64)
    n = torch.linspace(0.3, 5.0, 3000, dtype=torch.float64)[:, None]
    a = torch.linspace(-3.0, 3.0, 3000, dtype=torch.float64)[None, :]
    resid = lt[None, None, :] - a[..., None] - z[None, None, :] / n[..., None]
    logw = -0.5 * (resid**2).sum(-1) / noise**2 + n_prior_log_density(n, (1.0, 4.0), 0.1)
    w = torch.softmax(logw.reshape(-1), 0).reshape(logw.shape)
    mean_b = float((w / n).sum())
    assert abs(1.0 / float(fits.n[0]) - mean_b) < 1e-3
    lnk = -a * n
    e_n, e_k = float((w * n).sum()), float((w * lnk).sum())
    assert abs(float(cov[0, 1, 1]) - (float((w * n**2).sum()) - e_n**2)) < 2e-3
    assert abs(float(cov[0, 0, 0]) - (float((w * lnk**2).sum()) - e_k**2)) < 2e-2


def test_one_reading_leaves_n_to_the_prior():
    time_s, frac, mask = _readings([2.0], [0.0], fractions=(0.1,))
    fits, cov = fit_log_time_posterior(time_s, frac, mask, (1.0, 4.0), 0.1, 0.02, estimate="mean")
    assert 2.0 < float(fits.n[0]) < 3.0  # 1/E[1/n] of U(1, 4) is 2.16
    assert 0.5 < float(cov[0, 1, 1].sqrt()) < 1.0  # the uniform's sd is 0.87


def test_reading_levels_are_detected_and_measured_fractions_are_not(tmp_path):
    readings = [Curve("a", [1.0, 2.0], [0.01, 0.1]), Curve("b", [3.0, 5.0, 9.0], [0.1, 0.5, 0.9])]
    assert is_reading_scheme(readings)
    assert not is_reading_scheme([*readings, Curve("c", [1.0, 2.0], [0.013, 0.1])])
    assert not is_reading_scheme([Curve("d", [1.0, 2.0], [0.1, 0.1])])  # one level twice: not a scheme
    path = tmp_path / "two.csv"
    path.write_text("curve,time_s,fraction\nx,2.1,0.01\nx,4.3,0.10\ny,1.5,0.01\ny,2.8,0.1\n")
    curves = read_curves(path, on_error=lambda m: None, warn=lambda m: None)
    assert [c.observed for c in curves] == ["time", "time"]
    path.write_text("curve,time_s,fraction\nx,2.1,0.012\nx,4.3,0.10\n")
    assert read_curves(path, on_error=lambda m: None, warn=lambda m: None)[0].observed == "fraction"


def test_plain_fit_of_two_readings_in_a_points_file_is_the_two_point_solve(tmp_path):
    from matmeta.kinetics.api import fit_curves

    time_s, frac, mask = _readings([2.0, 3.0], [-4.0, -9.0])
    path = tmp_path / "two.csv"
    lines = ["curve,time_s,fraction"] + [
        f"c{i},{float(time_s[i, j]):.9g},{float(frac[i, j]):g}" for i in range(2) for j in range(2)
    ]
    path.write_text("\n".join(lines) + "\n")
    curves = read_curves(path, on_error=lambda m: None, warn=lambda m: None)
    result = fit_curves(curves)
    assert result.observed == "time"
    assert torch.allclose(result.fits.n, torch.tensor([2.0, 3.0], dtype=torch.float64), atol=1e-4)
    # the same file read as fractions (σ = 0.02 in X): a 1 % point says little, n is not recovered
    forced = fit_curves(curves, observed="fraction")
    assert forced.observed == "fraction"
    assert float((forced.fits.n - torch.tensor([2.0, 3.0], dtype=torch.float64)).abs().max()) > 0.1


def test_window_penalty_is_zero_inside_the_window_and_grows_outside():
    from matmeta.models.jmak import JMAK, LN_LN2

    model = JMAK(window=True).double()
    with torch.no_grad():
        model.window_log.copy_(torch.tensor([math.log(0.3), math.log(2.5)], dtype=torch.float64))
        model.window_log_weight.fill_(0.0)
    log_t = torch.tensor([-0.5, 0.5], dtype=torch.float64)  # ln t50 allowed in [0.5 − ln 2.5, −0.5 − ln 0.3]
    for ln_t50, expected in ((0.0, 0.0), (0.9, 0.5 * (0.9 - (-0.5 - math.log(0.3))) ** 2)):
        with torch.no_grad():
            model.n.fill_(2.0)
            model.ln_k.fill_(LN_LN2 - 2.0 * ln_t50)
        assert abs(float(model.window_penalty(log_t).detach()) - expected) < 1e-9
    # batched fast weights (B, 1) with log_t (B, P)
    fast_n = torch.tensor([[2.0], [2.0]], dtype=torch.float64)
    model.n = torch.nn.Parameter(fast_n)
    model.ln_k = torch.nn.Parameter(LN_LN2 - 2.0 * torch.tensor([[0.0], [0.9]], dtype=torch.float64))
    pen = model.window_penalty(log_t.expand(2, 2))
    assert pen.shape == (2, 1) and float(pen[0, 0].detach()) == 0.0 and float(pen[1, 0].detach()) > 0.0


def test_shipped_two_point_prior_learned_an_open_window():
    from matmeta.kinetics.prior import load_prior, prior_summary

    path = Path(__file__).resolve().parents[1] / "recipes" / "jmak_2pt.toml"
    recipe = tomllib.loads(path.read_text())
    ckpt = Path(__file__).resolve().parents[1] / recipe["meta_train"]["checkpoint"]
    assert ckpt.stat().st_size < 20e6
    maml, metadata = load_prior(ckpt)
    assert metadata["model_config"]["window_prior"] and metadata["synthetic"]["points_range"] == [2, 2]
    summary = prior_summary(maml)
    # it started closed (w0 = w1 = 1); the benchmark's times lie in [0.3, 2.5]·t50
    assert 0.2 < summary["window_lo"] < 0.8 and 1.3 < summary["window_hi"] < 3.5
