import csv
import subprocess
import sys

import numpy as np

from matmeta.kinetics.data import NEVER_SENTINEL_S, implied_start_fraction, load_ttt, read_points


def test_ttt_cleaning_drops_exactly_the_sentinel_rows(ttt_csv):
    messages = []
    rows = load_ttt(ttt_csv, warn=messages.append)
    with open(ttt_csv, newline="", encoding="utf-8-sig") as handle:
        raw = list(csv.reader(handle))[1:]
    sentinel_lines = {i + 2 for i, cells in enumerate(raw) if NEVER_SENTINEL_S in [float(c) for c in cells[2:5]]}
    dropped_as_sentinel = {int(m.split("row ")[1].split(" ")[0]) for m in messages if "sentinel" in m}
    assert dropped_as_sentinel == sentinel_lines
    assert len(sentinel_lines) == 14  # Ferrite 790, Perlite 720, Bainite 10–130.5 °C
    kept = {r.row for r in rows}
    assert not kept & sentinel_lines
    # genuine long times (t_90 = 2.96e6 s after a 5.37e5 s start) are not mistaken for the sentinel
    assert any(r.phase == "Bainite" and r.temperature_c == 141.4 for r in rows)
    # every dropped row gives exactly one warning line, and y_max problems are named
    assert len(messages) == len(raw) - len(rows) and all("\n" not in m for m in messages)
    assert sum("y_max" in m for m in messages) == 5
    assert all(0.001 <= r.y_max <= 1 and r.t_start < r.t_10 < r.t_90 for r in rows)


def test_ttt_start_fraction_is_consistent_with_the_data(ttt_csv):
    fractions = np.array([implied_start_fraction(r) for r in load_ttt(ttt_csv, warn=lambda m: None)])
    assert 0.005 < np.median(fractions) < 0.012


def test_non_monotone_and_non_numeric_ttt_rows(tmp_path):
    path = tmp_path / "ttt.csv"
    path.write_text(
        "Phase,T (°C),t_start,t_10%,t_90%,y_max\nA,500,1,2,5,0.5\nA,510,3,2,5,0.5\nA,520,x,2,5,0.5\nA,530,1,2,5,1e-13\n"
    )
    messages = []
    rows = load_ttt(path, warn=messages.append)
    assert [r.temperature_c for r in rows] == [500.0]
    assert len(messages) == 3 and "row 3" in messages[0] and "increasing" in messages[0]
    assert "non-numeric" in messages[1] and "y_max" in messages[2]


BAD = (
    "curve,time_s,fraction\n"
    "good,10,0.1\ngood,30,0.5\ngood,60,0.9\n"
    "pct,10,15\npct,20,50\n"
    "neg,-5,0.1\nneg,10,0.4\n"
    "one,10,0.3\n"
    "text,10,abc\ntext,20,0.5\n"
    "good2,1e4,0.2\ngood2,3e4,0.7\n"
)


def test_points_reader_reports_each_bad_row_once(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(BAD)
    errors = []
    curves = read_points(path, on_error=errors.append)
    assert [c.name for c in curves] == ["good", "good2"]
    assert len(errors) == 5
    assert "'pct' row 5" in errors[0] and "outside [0, 1]" in errors[0] and "percentage" in errors[0]
    assert "'pct' row 6" in errors[1]
    assert "'neg' row 7" in errors[2] and "> 0" in errors[2]
    assert "'text' row 10" in errors[3] and "non-numeric" in errors[3]
    assert "'one'" in errors[4] and "2 distinct times" in errors[4]


def test_cli_fits_good_curves_and_exits_nonzero(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(BAD)
    out = tmp_path / "fits.csv"
    result = subprocess.run(
        [sys.executable, "-m", "matmeta.cli", "jmak", "fit", str(path), "--method", "least-squares", "--out", str(out)],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": ""},
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 5 and all(line.startswith("error:") for line in lines)
    assert "Traceback" not in result.stderr
    assert "good2" in result.stdout
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["curve"] for r in rows] == ["good", "good2"]
    assert abs(float(rows[0]["t50_s"]) - 30) < 3


def test_missing_column_names_the_file(tmp_path):
    import pytest

    from matmeta.errors import MatmetaInputError

    path = tmp_path / "p.csv"
    path.write_text("name,t,x\na,1,0.1\n")
    with pytest.raises(MatmetaInputError, match="missing column.*curve, time_s, fraction"):
        read_points(path, on_error=lambda m: None)


def test_a_measured_trace_keeps_time_zero_and_noise_and_reads_its_temperature(tmp_path):
    from matmeta.kinetics.data import DENSE_POINTS

    rows = ["curve,temperature_C,time_s,fraction"]
    rows += [f"trace,400,{i * 0.5:g},{-0.004 if i % 2 else 0.0}" for i in range(10)]
    rows += [f"trace,400,{5 + i:g},{min(0.66, 0.02 * i):g}" for i in range(DENSE_POINTS)]
    rows += ["few,400,0,0.0", "few,400,10,0.3", "few,400,20,0.6"]  # a few readings: t = 0 is still refused
    rows += ["mixed,350,10,0.2", "mixed,360,20,0.5"]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    errors = []
    curves = {c.name: c for c in read_points(path, on_error=errors.append)}
    assert set(curves) == {"trace"} and curves["trace"].dense
    assert curves["trace"].time_s[0] == 0.0 and curves["trace"].fraction.min() < 0
    assert curves["trace"].temperature_k == 673.15
    assert len(errors) == 2 and "'few' row" in errors[0] and "must be > 0" in errors[0]
    assert "'mixed'" in errors[1] and "different temperatures" in errors[1]
