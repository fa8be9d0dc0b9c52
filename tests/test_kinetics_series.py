"""Temperature series: the joint Arrhenius fit recovers Q within 10 % and predicts t50 where nothing was measured."""

import csv
import math

import numpy as np
import pytest

from matmeta.errors import MatmetaInputError
from matmeta.kinetics.data import Curve
from matmeta.kinetics.series import fit_series
from matmeta.kinetics.synthetic import GAS_CONSTANT

TEMPS = (600.0, 625.0, 650.0, 675.0)
Q = 200.0  # kJ/mol


def _tau(temp, q=Q):
    return 1000.0 * math.exp(q * 1e3 / GAS_CONSTANT * (1 / temp - np.mean(1 / np.array(TEMPS))))


def _series(points=0, n=2.0, n_trend=0.0, seed=0):
    rng = np.random.default_rng(seed)
    curves = []
    for temp in TEMPS:
        tau, n_t = _tau(temp), n + n_trend * (temp - 637.5) / 75.0
        if points:
            t = np.sort(rng.uniform(0.3 * tau, 2.5 * tau, points))
            t0, y, noise = 0.0, 1.0, 0.02
        else:
            t0, y, noise = 0.2 * tau, 0.8, 0.005
            t = np.linspace(0.0, t0 + 4 * tau, 300)
        x = y * np.where(t > t0, -np.expm1(-((np.clip(t - t0, 0, None) / tau) ** n_t)), 0.0)
        x = x + noise * rng.standard_normal(t.size)
        curves.append(Curve(f"T{temp:g}", t, np.clip(x, 0, 1) if points else x, temperature_k=temp))
    return curves


@pytest.mark.parametrize("points", [0, 5])
def test_q_within_ten_percent_and_t50_predicted_between_temperatures(points):
    fit = fit_series(_series(points))
    assert abs(fit.q_kj_mol / Q - 1) < 0.10
    assert abs(fit.q_kj_mol - Q) <= 3 * fit.q_std_kj_mol + 0.02 * Q
    assert fit.n_model == "shared" and abs(float(fit.n[0]) / 2.0 - 1) < 0.1
    tau = _tau(637.5)
    truth = (0.2 * tau if points == 0 else 0.0) + tau * math.log(2.0) ** 0.5
    t50, lo, hi = fit.t50(637.5)
    assert abs(t50 / truth - 1) < 0.1 and lo < t50 < hi


def test_a_trend_in_n_is_seen_by_the_bic():
    fit = fit_series(_series(0, n_trend=0.6))
    assert fit.n_model == "per-temperature" and fit.bic["per-temperature"] < fit.bic["shared"]
    assert fit.n[0] < fit.n[-1] and abs(fit.q_kj_mol / Q - 1) < 0.10


def test_series_needs_temperatures():
    curves = _series(5)
    with pytest.raises(MatmetaInputError, match="no temperature"):
        fit_series([*curves, Curve("x", np.array([1.0, 2.0]), np.array([0.2, 0.5]))])
    same = [Curve(c.name, c.time_s, c.fraction, temperature_k=600.0) for c in curves]
    with pytest.raises(MatmetaInputError, match="one temperature"):
        fit_series(same)


def test_cli_by_temperature_predicts_t50(tmp_path):
    from typer.testing import CliRunner

    from matmeta.cli import app

    path = tmp_path / "series.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["curve", "temperature_C", "time_s", "fraction"])
        for c in _series(5, seed=1):
            pairs = zip(c.time_s, c.fraction, strict=True)
            writer.writerows([c.name, c.temperature_k - 273.15, f"{t:.6g}", f"{x:.4f}"] for t, x in pairs)
    out, plot = tmp_path / "fits.csv", tmp_path / "series.png"
    args = ["jmak", "fit", str(path), "--by", "temperature", "--predict-at", "364.35"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "Q = " in result.output and "kJ/mol" in result.output and plot.read_bytes()[:4] == b"\x89PNG"
    with (tmp_path / "fits_series.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    q_row = next(r for r in rows if r["curve"].startswith("Q = "))
    assert abs(float(q_row["curve"].split()[2]) / Q - 1) < 0.10
    predicted = next(r for r in rows if r["curve"].startswith("predicted t50"))
    tau = _tau(637.5)
    assert abs(float(predicted["t50_s"].split()[0]) / (tau * math.log(2.0) ** 0.5) - 1) < 0.1


def test_demo_files_are_the_documented_kinetics(tmp_path):
    from matmeta.kinetics.demo import DSC_TRUTH, SERIES_TRUTH, write_demo_files
    from matmeta.kinetics.measured_api import fit_file

    write_demo_files(str(tmp_path))
    repo_data = __import__("pathlib").Path(__file__).resolve().parents[1] / "data"
    for name in ("dsc_trace.csv", "jmak_series.csv"):  # data/ is what the generator writes
        assert (repo_data / name).read_text() == (tmp_path / name).read_text()
    dsc = fit_file(dsc=repo_data / "dsc_trace.csv").fits.rows()[0]
    assert abs(dsc["n"] / DSC_TRUTH["n"] - 1) < 0.05
    assert abs(dsc["t50_s"] / (DSC_TRUTH["t0_s"] + DSC_TRUTH["t50_shifted_s"]) - 1) < 0.02
    series = fit_file(repo_data / "jmak_series.csv", by="temperature", predict_at_c=[330.0]).series
    assert abs(series.series.q_kj_mol / SERIES_TRUTH["q_kj_mol"] - 1) < 0.10
    t50 = series.predictions[0][1]
    assert abs(t50 / (SERIES_TRUTH["tau_s_at_330C"] * math.log(2.0) ** 0.5) - 1) < 0.05
