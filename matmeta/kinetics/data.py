"""Kinetics input: CSV of (curve, time_s, fraction) points, and the TTT-table loader and cleaner.

Points CSV: one row per measurement, columns ``curve``, ``time_s`` (s, > 0) and ``fraction``
(transformed fraction X in [0, 1], normalised to the phase's final amount), optionally
``temperature_C`` or ``temperature_K``. A curve of :data:`DENSE_POINTS` rows or more is a measured
trace (dilatometry, DSC, diffraction): it may start at t = 0, its fractions are kept as measured
(noise about 0 and a plateau below 1 are what such a trace shows) and it is fitted robustly with
incubation and plateau (:mod:`matmeta.kinetics.robust`). A file whose every
curve has only conventional reading levels as fractions (1 %, 10 %, 90 % …, :func:`is_reading_scheme`)
holds *time readings* (``observed = "time"``), like a TTT table, and is fitted in log time. A curve needs at least
two valid points at two distinct times. A bad row (non-numeric cell, fraction outside [0, 1],
time not in (0, 1e12] s, an exact duplicate of an earlier row) or a curve with too few points
gives one error line naming the curve and the file row; the curve is skipped and the others are still returned.

TTT table (``phase, T (°C), t_start, t_10%, t_90%, y_max``): each clean row becomes a curve of
three points in the *normalised* fraction X = (phase fraction)/y_max, which is what JMAK
describes (X → 1 at completion whatever y_max is):

* ``t_start`` → X = 0.01. Start lines of TTT diagrams are drawn at a small detectable amount,
  conventionally 0.5–1 %; we take 1 % (:data:`START_FRACTION`). Checked on this file: the JMAK
  curve through each clean row's t_10 and t_90 passes t_start at X = 0.45–1.2 % (median 0.85 %;
  ferrite/pearlite ≈ 0.7 %, bainite ≈ 1.0 %; see :func:`implied_start_fraction`), so 1 % is within
  the data's own range, matches the larger (bainite) part of the table and is the round convention.
* ``t_10%`` → X = 0.10 and ``t_90%`` → X = 0.90.

Rows are dropped, with one warning line each, never fitted blindly: a time equal to the
1e6 s "never" sentinel (such rows read 1e6, 2e6, 3e6; genuine long times such as 2.96e6 s after a
5.37e5 s start are kept); y_max outside [1e-3, 1] (percentages such as 71.2, or 1e-13 meaning no
phase forms); non-numeric cells; times that are not strictly increasing (start < 10 % < 90 %).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from matmeta.errors import MatmetaInputError

START_FRACTION = 0.01
TTT_FRACTIONS = (START_FRACTION, 0.10, 0.90)
NEVER_SENTINEL_S = 1e6
Y_MAX_MIN = 1e-3
POINT_COLUMNS = ("curve", "time_s", "fraction")
TEMPERATURE_COLUMNS = ("temperature_C", "temperature_K")
DENSE_POINTS = 20  # a curve of this many rows or more is a measured trace (robust fit, t0 and y_max fitted)
DENSE_FRACTION = (-0.2, 1.2)  # the fractions a measured trace may read (noise about 0 and its plateau)
MAX_TIME_S = 1e12  # ~30,000 years: a larger time is a unit or typing error
# Fractions at which transformation diagrams are conventionally read (start lines 0.5–2 %, then 5 … 99.5 %)
READING_LEVELS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995)


@dataclasses.dataclass
class Curve:
    """One measured curve. ``time_s`` and ``fraction`` are 1-D arrays of equal length (≥ 2).

    ``observed`` says what was measured: ``"fraction"`` (X at set times; error in X) or ``"time"``
    (times read at fixed fractions, as in a TTT table; error in ln t, see :mod:`matmeta.kinetics.logtime`).
    ``temperature_k`` is the curve's (isothermal) temperature when the file gives one.
    """

    name: str
    time_s: np.ndarray
    fraction: np.ndarray
    rows: tuple[int, ...] = ()
    observed: str = "fraction"
    temperature_k: float | None = None

    @property
    def dense(self) -> bool:
        """A measured trace (at least :data:`DENSE_POINTS` points) rather than a few readings."""
        return len(self.time_s) >= DENSE_POINTS


@dataclasses.dataclass(frozen=True)
class TTTRow:
    """One clean TTT row: times (s) at X = 1 %, 10 %, 90 % of the phase's final fraction ``y_max``."""

    phase: str
    temperature_c: float
    t_start: float
    t_10: float
    t_90: float
    y_max: float
    row: int

    @property
    def name(self) -> str:
        """Curve name, e.g. ``Bainite@327.6C``."""
        return f"{self.phase}@{self.temperature_c:g}C"

    def curve(self, which: tuple[int, ...] = (0, 1, 2)) -> Curve:
        """The row as a curve of normalised fractions (``which`` picks start/10 %/90 % points)."""
        times = np.array([(self.t_start, self.t_10, self.t_90)[i] for i in which], dtype=float)
        fracs = np.array([TTT_FRACTIONS[i] for i in which], dtype=float)
        return Curve(self.name, times, fracs, (self.row,), observed="time")


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def read_points(path: str | Path, on_error: Callable[[str], None]) -> list[Curve]:
    """Read a points CSV; bad rows/curves are reported through ``on_error`` (one line each) and skipped.

    A curve of at least :data:`DENSE_POINTS` rows is a measured trace: its fractions are kept as
    measured within :data:`DENSE_FRACTION` (noise around 0 and around a plateau is not an error) and
    a time of 0 (the start of the isothermal hold) is allowed. An optional ``temperature_C`` or
    ``temperature_K`` column gives each curve's temperature (one per curve).

    Raises:
        MatmetaInputError: the file is missing, unreadable or lacks a required column.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise MatmetaInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    raw: dict[str, list[tuple[int, dict[str, str]]]] = {}
    with handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [c for c in POINT_COLUMNS if c not in fields]
        if missing:
            raise MatmetaInputError(f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(POINT_COLUMNS)}")
        temp_column = next((c for c in TEMPERATURE_COLUMNS if c in fields), None)
        for line, record in enumerate(reader, start=2):
            name = (record.get("curve") or "").strip()
            if not name:
                on_error(f"{path}: row {line}: empty curve name")
                continue
            raw.setdefault(name, []).append((line, record))
    checked = {name: _check_rows(path, name, rows, temp_column, on_error) for name, rows in raw.items()}
    curves = []
    for name, result in checked.items():
        if result is None:
            continue
        rows, temperature_k = result
        times = {t for t, _, _ in rows}
        if len(times) < 2:
            on_error(
                f"{path}: curve {name!r}: {len(rows)} point(s) at {len(times)} distinct time(s); "
                "a fit needs at least 2 distinct times"
            )
            continue
        rows.sort()
        curves.append(
            Curve(
                name,
                np.array([r[0] for r in rows]),
                np.array([r[1] for r in rows]),
                tuple(r[2] for r in rows),
                temperature_k=temperature_k,
            )  # fmt: skip
        )
    return curves


def _check_rows(
    path: Path, name: str, rows: list[tuple[int, dict[str, str]]], temp_column: str | None,
    on_error: Callable[[str], None],
) -> tuple[list[tuple[float, float, int]], float | None] | None:  # fmt: skip
    """A curve's valid ``(time_s, fraction, row)`` and its temperature (K), or None if any row is bad."""
    dense = len(rows) >= DENSE_POINTS
    lo_x, hi_x = DENSE_FRACTION if dense else (0.0, 1.0)
    good: list[tuple[float, float, int]] = []
    seen: dict[tuple[float, float], int] = {}
    temps: set[float] = set()
    bad = False
    for line, record in rows:
        where = f"{path}: curve {name!r} row {line}"
        try:
            t = _number(record["time_s"])
            x = _number(record["fraction"])
            if temp_column is not None:
                temps.add(to_kelvin(_number(record[temp_column]), temp_column))
        except (TypeError, ValueError):
            cells = f"time_s={record['time_s']!r}, fraction={record['fraction']!r}"
            on_error(f"{where}: non-numeric cell ({cells}{_temp_cell(record, temp_column)})")
            bad = True
            continue
        if not (0 <= t if dense else 0 < t) or t > MAX_TIME_S:
            on_error(f"{where}: time_s = {t:g} must be {'>=' if dense else '>'} 0 and <= {MAX_TIME_S:g} s")
            bad = True
        elif (t, x) in seen:
            on_error(f"{where}: duplicate of row {seen[(t, x)]} (same time_s and fraction)")
            bad = True
        elif not lo_x <= x <= hi_x:
            hint = " (a percentage? give fractions in [0, 1])" if 1.0 < x <= 100.0 else ""
            on_error(f"{where}: fraction = {x:g} outside [{lo_x:g}, {hi_x:g}]{hint}")
            bad = True
        else:
            seen[(t, x)] = line
            good.append((t, x, line))
    if len(temps) > 1:
        on_error(f"{path}: curve {name!r}: rows at {len(temps)} different temperatures; one curve is one temperature")
        bad = True
    return None if bad else (good, next(iter(temps), None))


def to_kelvin(value: float, column: str) -> float:
    """A temperature cell in K (``temperature_C`` cells are shifted by 273.15); must be above 0 K."""
    kelvin = value + 273.15 if column.endswith("_C") else value
    if not 0 < kelvin < 1e5:
        raise ValueError(column)
    return kelvin


def _temp_cell(record: dict[str, str], column: str | None) -> str:
    return "" if column is None else f", {column}={record.get(column)!r}"


def is_reading_scheme(curves: list[Curve]) -> bool:
    """True when every curve is a set of *time readings*: its fractions are distinct conventional levels.

    A measured fraction carries noise and is reported as measured (0.137, 0.62); a fraction that is a
    convention — the 1 %, 10 %, 50 %, 90 % … lines of a TTT or CCT diagram — is exactly one of a
    few round levels (:data:`READING_LEVELS`), and then the *time* is what was read, with its error
    in log time. A file counts as readings only if all its curves are, each with at least two
    distinct levels (so one file is fitted with one observation model).
    """

    def reads(curve: Curve) -> bool:
        fracs = [float(x) for x in curve.fraction]
        on_level = all(any(abs(x - level) < 1e-9 for level in READING_LEVELS) for x in fracs)
        return on_level and len(set(fracs)) == len(fracs) >= 2

    return bool(curves) and all(reads(c) for c in curves)


def with_observed(curves: list[Curve], observed: str) -> list[Curve]:
    """The curves with ``observed`` set (``"fraction"`` or ``"time"``)."""
    return [dataclasses.replace(c, observed=observed) for c in curves]


def write_points(path: str | Path, curves: list[Curve]) -> None:
    """Write curves as a points CSV (atomically)."""
    from matmeta.atomic import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(POINT_COLUMNS)
        for curve in curves:
            for t, x in zip(curve.time_s, curve.fraction, strict=True):
                writer.writerow([curve.name, f"{t:.6g}", f"{x:.5f}"])


def load_ttt(path: str | Path, warn: Callable[[str], None]) -> list[TTTRow]:
    """Read and clean a TTT table; every dropped row is reported through ``warn`` (one line each).

    Raises:
        MatmetaInputError: the file is missing or does not have the six TTT columns.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise MatmetaInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    clean: list[TTTRow] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or len(header) < 6:
            raise MatmetaInputError(f"{path}: expected columns phase, T (°C), t_start, t_10%, t_90%, y_max")
        for line, cells in enumerate(reader, start=2):
            if not cells or not any(c.strip() for c in cells):
                continue
            label = f"{path}: row {line} ({' '.join(c.strip() for c in cells[:2])})"
            try:
                temp, t_start, t_10, t_90, y_max = (_number(c) for c in cells[1:6])
            except (ValueError, TypeError):
                warn(f"{label}: non-numeric or missing cell; dropped")
                continue
            times = (t_start, t_10, t_90)
            if NEVER_SENTINEL_S in times:
                warn(f"{label}: t = {NEVER_SENTINEL_S:g} s is the 'never' sentinel (no transformation); dropped")
            elif not Y_MAX_MIN <= y_max <= 1.0:
                why = "a percentage?" if y_max > 1 else "no measurable amount of the phase"
                warn(f"{label}: y_max = {y_max:g} outside [{Y_MAX_MIN:g}, 1] ({why}); dropped")
            elif not 0 < t_start < t_10 < t_90:
                warn(f"{label}: times {t_start:g}, {t_10:g}, {t_90:g} s not positive and increasing; dropped")
            else:
                clean.append(TTTRow(cells[0].strip(), temp, t_start, t_10, t_90, y_max, line))
    return clean


def implied_start_fraction(row: TTTRow) -> float:
    """Fraction X at t_start of the JMAK curve through the row's (t_10, 0.1) and (t_90, 0.9)."""
    z10, z90 = (math.log(-math.log1p(-x)) for x in TTT_FRACTIONS[1:])
    n = (z90 - z10) / math.log(row.t_90 / row.t_10)
    z = z10 + n * math.log(row.t_start / row.t_10)
    return -math.expm1(-math.exp(z))


def is_ttt_table(path: str | Path) -> bool:
    """True for a TTT table (a ``t_start`` column) rather than a CSV of (curve, time_s, fraction) points."""
    try:
        with Path(path).open(encoding="utf-8-sig") as handle:
            return "t_start" in handle.readline().lower()
    except OSError:
        return False


def read_curves(path: str | Path, on_error: Callable[[str], None], warn: Callable[[str], None]) -> list[Curve]:
    """Curves from a points CSV or a TTT table (cleaned, one warning per dropped row); bad rows go to ``on_error``.

    Raises:
        MatmetaInputError: not a regular file (a FIFO would block), not UTF-8 text, malformed CSV.
    """
    from matmeta.guards import MAX_CSV_BYTES, regular_file

    regular_file(path, MAX_CSV_BYTES)
    try:
        return _read_curves(path, on_error, warn)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MatmetaInputError(f"{path}: not a readable UTF-8 CSV ({type(exc).__name__})") from None


def _read_curves(path: str | Path, on_error: Callable[[str], None], warn: Callable[[str], None]) -> list[Curve]:
    if is_ttt_table(path):
        return [row.curve() for row in load_ttt(path, warn=warn)]
    curves = read_points(path, on_error=on_error)
    return with_observed(curves, "time") if is_reading_scheme(curves) else curves
