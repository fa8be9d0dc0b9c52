import csv
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fit_demo_points_with_plot_and_csv(tmp_path):
    from typer.testing import CliRunner

    from matmeta.cli import app

    out, plot = tmp_path / "fits.csv", tmp_path / "fits.png"
    result = CliRunner().invoke(
        app, ["jmak", "fit", str(REPO / "data" / "jmak_points.csv"), "--out", str(out), "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    with out.open() as handle:
        rows = {r["curve"]: r for r in csv.DictReader(handle)}
    assert len(rows) == 4 and all(r["method"] == "maml" and r["ok"] == "True" for r in rows.values())
    for row in rows.values():
        assert all(math.isfinite(float(row[c])) for c in ("ln_k", "ln_k_std", "n", "n_std", "t50_s", "residual_rms"))
        assert float(row["t10_s"]) < float(row["t50_s"]) < float(row["t90_s"])
    # documented truth (matmeta.kinetics.synthetic.DEMO_CURVES): t50 = 3600 s, n = 1.5 from 3 points
    assert 0.5 < float(rows["AlCu_ageing_190C"]["t50_s"]) / 3600 < 2
    assert 0.6 < float(rows["Cu_recrystallisation_250C"]["n"]) / 3.0 < 1.4
    assert "t50" in result.output and f"fits: {out}" in result.output


def test_fit_accepts_the_ttt_table_after_cleaning(ttt_csv, capsys, tmp_path):
    from matmeta.commands.jmak import run_fit

    assert run_fit(ttt_csv, method="avrami", out=tmp_path / "f.csv") == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 19 and all("dropped" in w for w in warnings)
    with (tmp_path / "f.csv").open() as handle:
        rows = {r["curve"]: r for r in csv.DictReader(handle)}
    assert len(rows) == 88 and rows["Bainite@327.6C"]["points"] == "3"
    # t_10 and t_90 are points of the fit: the fitted t10/t90 lie close to them
    assert abs(float(rows["Bainite@327.6C"]["t90_s"]) / 297 - 1) < 0.1


def test_unknown_method_is_refused():
    import pytest

    from matmeta.errors import MatmetaInputError
    from matmeta.kinetics.api import fit_curves
    from matmeta.kinetics.data import read_points

    curves = read_points(REPO / "data" / "jmak_points.csv", on_error=lambda m: None)
    with pytest.raises(MatmetaInputError, match="spline"):
        fit_curves(curves, method="spline")


def test_bench_quick_runs_both_parts(tmp_path, ttt_csv, monkeypatch, capsys):
    from matmeta.bench.jmak import run
    from matmeta.recipes import load_recipe

    monkeypatch.setenv("MATMETA_SHARED_DATA", str(ttt_csv.parents[1]))
    recipe = load_recipe(REPO / "recipes" / "jmak.toml")
    recipe["bench"]["out_dir"] = str(tmp_path)
    run(recipe, REPO / "recipes" / "jmak.toml", quick=True)
    text = capsys.readouterr().out
    assert "held-out synthetic" in text and "leave-one-phase-out" in text
    with (tmp_path / "synthetic.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    matched = "MAML (prior of this distribution)"  # recipes/jmak_2pt.toml's prior, at the limit's point count
    assert len(rows) == 14
    assert {r["method"] for r in rows} == {"MAML", "Avrami", "curve_fit", "information limit", matched}
    assert all(r["failures"] == "0" for r in rows if r["method"].startswith("MAML"))
    limit = [r for r in rows if r["method"] == "information limit"]
    assert [r["points"] for r in limit] == ["2"] and 0 < float(limit[0]["RMSE p90"]) < 0.5
    assert [r["points"] for r in rows if r["method"] == matched] == ["2"]
    assert (tmp_path / "ttt.csv").exists()
    with (tmp_path / "ttt_loto.csv").open() as handle:
        loto = list(csv.DictReader(handle))
    assert {r["phase"] for r in loto} == {"Ferrite", "Perlite", "Bainite"}
    assert {r["method"] for r in loto} >= {"joint TTT fit", "phase-adapted prior", "classical (two-point solve)"}
    assert "TTT goals" in text


def _bainite_slice(bainite_csv, tmp_path, step=8):
    """Every ``step``-th row of the shared bainite curves (a few hundred points each), as a points file."""
    lines = bainite_csv.read_text().splitlines()
    path = tmp_path / "bainite_slice.csv"
    path.write_text("\n".join([lines[0], *lines[1::step]]) + "\n")
    return path


def test_fit_measured_traces_with_incubation_and_plateau(bainite_csv, tmp_path):
    from typer.testing import CliRunner

    from matmeta.cli import app

    out, plot = tmp_path / "fits.csv", tmp_path / "fits.png"
    path = _bainite_slice(bainite_csv, tmp_path)
    result = CliRunner().invoke(app, ["jmak", "fit", str(path), "--out", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output  # t = 0 and noise below 0 are what a trace reads, not bad rows
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(r["fit"] == "robust trace" for r in rows)
    for r in rows:
        assert 0.6 < float(r["y_max"]) < 0.72 and float(r["t0_s"]) > 5
        assert 90 < float(r["t50_s"]) < 130 and float(r["t90_lo_s"]) < float(r["t90_s"]) < float(r["t90_hi_s"])
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # a given t0 and plateau are used as given
    fixed = tmp_path / "fixed.csv"
    args = ["jmak", "fit", str(path), "--t0", "0", "--y-max", "0.7", "--out", str(fixed)]
    assert CliRunner().invoke(app, args).exit_code == 0
    with fixed.open() as handle:
        assert all(float(r["t0_s"]) == 0 and float(r["y_max"]) == 0.7 for r in csv.DictReader(handle))


def test_odd_readings_are_fitted_under_the_prior_with_a_warning(tmp_path, capsys):
    from matmeta.commands.jmak import run_fit

    path = tmp_path / "odd.csv"
    path.write_text("curve,time_s,fraction\ngood,10,0.1\ngood,30,0.5\ngood,60,0.9\nfalls,10,0.8\nfalls,20,0.5\n"
                    "falls,40,0.2\n")  # fmt: skip
    out = tmp_path / "fits.csv"
    bad = run_fit(path, method="least-squares", out=out)
    assert bad == 0  # no longer an exit 1: the curve is fitted under the prior
    text = " ".join(capsys.readouterr().err.split())
    assert "curve 'falls'" in text and "falls with time" in text and "under the prior" in text
    with out.open() as handle:
        rows = {r["curve"]: r for r in csv.DictReader(handle)}
    assert rows["falls"]["ok"] == "True" and rows["falls"]["fit"].startswith("under the prior")
    assert float(rows["falls"]["n"]) > 0 and rows["good"]["fit"] == ""
    assert abs(float(rows["good"]["t50_s"]) - 30) < 3


def test_real_bench_quick_runs(tmp_path, bainite_csv, monkeypatch, capsys):
    from matmeta.bench.jmak_real import run
    from matmeta.recipes import load_recipe

    monkeypatch.setenv("MATMETA_SHARED_DATA", str(bainite_csv.parents[1]))
    recipe = load_recipe(REPO / "recipes" / "jmak_real.toml")
    recipe["bench"]["out_dir"] = str(tmp_path)
    run(recipe, REPO / "recipes" / "jmak_real.toml", quick=True)
    text = capsys.readouterr().out
    assert "Dense curves" in text and "jmak_real goals" in text and "Synthetic validation" in text
    with (tmp_path / "readings.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["readings from"] for r in rows} == {"early", "spread", "noisy", "noisy, σ given"}
    assert {r["method"] for r in rows} >= {"meta-prior (default fit)", "least squares", "Avrami"}
    assert all(r["failures"] == "0" for r in rows if r["method"] == "meta-prior (default fit)")
    with (tmp_path / "dense.csv").open() as handle:
        dense = list(csv.DictReader(handle))
    assert len(dense) == 2 and all(200 < float(r["t90 (s)"]) < 300 for r in dense)
