"""DSC traces: baseline subtraction is exact on synthetic traces, (k, n) are recovered, bad traces are named."""

import csv
import math

import numpy as np
import pytest

from matmeta.errors import MatmetaInputError
from matmeta.kinetics.dsc import integrate, read_traces

N, T50, T0 = 2.5, 200.0, 30.0  # t50 counted from t0
LN_K = math.log(math.log(2.0)) - N * math.log(T50)


def _trace(sign=-1.0, noise=0.0, drift=(0.3, 1e-4), points=3000, seed=0):
    """Heat flow H·dX/dt on a drifting linear baseline; returns (t, q, true X)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1200.0, points)
    dt = np.clip(t - T0, 0.0, None)
    x = -np.expm1(-math.exp(LN_K) * dt**N)
    rate = np.where(dt > 0, math.exp(LN_K) * N * np.where(dt > 0, dt, 1.0) ** (N - 1) * (1 - x), 0.0)
    q = sign * 50.0 * rate + drift[0] + drift[1] * t
    q = q + noise * 50.0 * rate.max() * rng.standard_normal(points)
    return t, q, x


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_baseline_subtraction_is_exact_with_given_limits(sign):
    t, q, x = _trace(sign)
    trace = integrate("s", t, q, limits=(0.0, 1150.0))
    assert trace.sign == sign and not trace.detected
    np.testing.assert_allclose(trace.baseline, 0.3 + 1e-4 * t, atol=1e-9)  # the drifting line itself
    got = np.interp(t[t <= 1150.0], trace.curve.time_s, trace.curve.fraction)
    assert np.abs(got - x[t <= 1150.0] / x[t <= 1150.0][-1]).max() < 1e-4


def test_detected_limits_and_fit_recover_k_and_n():
    from matmeta.kinetics.api import fit_curves

    t, q, _ = _trace(noise=0.002, seed=3)
    trace = integrate("s", t, q)
    assert trace.detected and 0.0 <= trace.limits[0] <= 40.0 and 500.0 < trace.limits[1] < 1200.0
    row = fit_curves([trace.curve], y_max=1.0).rows()[0]
    assert abs(row["n"] / N - 1) < 0.05
    assert abs(row["t50_s"] / (T0 + T50) - 1) < 0.01
    assert abs(row["ln_k"] - LN_K) < 0.5 and row["y_max"] == 1.0


def _write(path, traces, column="heat_flow_mW"):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["curve", "time_s", column])
        for name, t, q in traces:
            writer.writerows([name, f"{a:.6g}", f"{b:.8g}"] for a, b in zip(t, q, strict=True))


def test_bad_traces_are_named_and_the_good_one_is_fitted(tmp_path):
    from matmeta.kinetics.measured_api import fit_dsc_file

    t, q, _ = _trace(noise=0.001)
    flat = np.full(100, 0.2)
    jumbled = t[:100].copy()
    jumbled[50] = jumbled[10]
    nan = q[:100].copy()
    nan[5] = np.nan
    path = tmp_path / "dsc.csv"
    _write(path, [("good", t, q), ("flat", t[:100], flat + 1e-6 * np.arange(100)), ("back", jumbled, q[:100]),
                  ("nan", t[:100], nan)])  # fmt: skip
    errors = []
    result = fit_dsc_file(path, on_error=errors.append)
    assert [tr.name for tr in result.traces] == ["good"]
    assert len(errors) == 3 and all(e.startswith(f"{path}: trace '") and "\n" not in e for e in errors)
    assert "'flat'" in errors[2] and "no transformation peak" in errors[2]
    assert "'back'" in errors[0] and "does not increase" in errors[0]
    assert "'nan'" in errors[1] and "NaN" in errors[1]
    assert bool(result.fits.fits.ok[0]) and abs(float(result.fits.fits.n[0]) / N - 1) < 0.05


def test_missing_column_and_a_sign_changing_peak_are_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("time_s,power\n1,2\n")
    with pytest.raises(MatmetaInputError, match="time_s and heat_flow"):
        read_traces(path, on_error=lambda m: None)
    t, q, _ = _trace()
    wobble = q + 0.08 * np.sin(t / 40.0)  # a baseline that swings through the peak
    with pytest.raises(MatmetaInputError, match="falls by"):
        integrate("w", t, wobble, limits=(0.0, 1150.0))


def test_cli_dsc_plots_trace_baseline_and_fit(tmp_path):
    from typer.testing import CliRunner

    from matmeta.cli import app

    t, q, _ = _trace(noise=0.001)
    path = tmp_path / "trace.csv"
    _write(path, [("A", t, q), ("short", t[:5], q[:5])])
    out, plot = tmp_path / "fits.csv", tmp_path / "dsc.png"
    result = CliRunner().invoke(app, ["jmak", "fit", "--dsc", str(path), "--out", str(out), "--plot", str(plot)])
    assert result.exit_code == 1, result.output  # one bad trace: named, the good one still fitted and written
    assert "'short'" in result.output and "at least 20" in result.output
    assert plot.read_bytes()[:4] == b"\x89PNG"
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["curve"] for r in rows] == ["A"] and abs(float(rows[0]["n"]) / N - 1) < 0.05
