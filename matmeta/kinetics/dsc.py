"""Isothermal DSC traces → transformed fraction X(t): read, subtract a linear baseline, integrate.

A trace is heat flow against time at one temperature (CSV columns ``time_s`` and one whose name starts
with ``heat_flow``, any unit; optional ``curve`` for several traces, ``temperature_C``/``_K``). The
transformation's peak sits on a baseline; the baseline is the straight line through the signal at the
two limits (t_start, t_end), chosen or detected, and the fraction is the normalised running integral::

    X(t) = ∫_{t_start}^{t} s·(q − b) dt' / ∫_{t_start}^{t_end} s·(q − b) dt',

with s = ±1 the sign of the peak (exothermic up or down, whichever the instrument plots). Points
before t_start have X = 0 (the incubation, if any, is then fitted); the fraction is normalised by
the total heat, so its plateau is 1.

Detected limits: on the signal smoothed over about 1 % of the trace, a first baseline flat at the
median of its last 5 % (in time: the reaction is over there; the start of an isothermal run may
already hold the peak, or the instrument's transient); the limits are where the signal, walking out
from the peak, falls below max(3σ, :data:`THRESHOLD` × peak) above it (σ the noise of the smoothed
signal, from the raw signal's scatter in the last 5 %); the baseline is then redrawn through the
signal at those limits and the walk repeated. A trace whose peak above that final baseline is not
more than 5σ (and more than 0.5 % of the signal's whole range) has no transformation to integrate.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from matmeta.errors import MatmetaInputError
from matmeta.kinetics.data import TEMPERATURE_COLUMNS, Curve, to_kelvin

THRESHOLD = 0.005  # limits where the peak has fallen to 0.5 % of its height (or 3σ of the noise)
MIN_POINTS = 20
END_SHARE = 0.05
MAX_FALL = 0.05  # X may fall by at most this much inside the limits (noise); more: the baseline is wrong


@dataclasses.dataclass
class Trace:
    """One DSC trace, its baseline and the fraction it integrates to.

    Shapes:
        ``time_s``, ``heat_flow``, ``baseline``: ``(N,)``; ``curve``: the fraction up to t_end.
    """

    name: str
    time_s: np.ndarray
    heat_flow: np.ndarray
    baseline: np.ndarray
    limits: tuple[float, float]
    sign: float
    detected: bool
    curve: Curve


TraceArrays = tuple[np.ndarray, np.ndarray, float | None]


def read_traces(path: str | Path, on_error: Callable[[str], None]) -> dict[str, TraceArrays]:
    """``{name: (time_s, heat_flow, temperature K or None)}`` of a DSC CSV; a bad trace is reported and skipped.

    Raises:
        MatmetaInputError: unreadable file, or no ``time_s`` / ``heat_flow…`` column.
    """
    from matmeta.guards import MAX_CSV_BYTES, regular_file

    path = Path(regular_file(path, MAX_CSV_BYTES))
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            flow = next((f for f in fields if f.strip().lower().startswith("heat_flow")), None)
            if "time_s" not in fields or flow is None:
                raise MatmetaInputError(f"{path}: a DSC trace needs columns time_s and heat_flow (any unit suffix)")
            temp = next((c for c in TEMPERATURE_COLUMNS if c in fields), None)
            rows: dict[str, list[tuple[int, dict[str, str]]]] = {}
            for line, record in enumerate(reader, start=2):
                name = (record.get("curve") or "").strip() or path.stem
                rows.setdefault(name, []).append((line, record))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MatmetaInputError(f"{path}: not a readable UTF-8 CSV ({type(exc).__name__})") from None
    except OSError as exc:
        raise MatmetaInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    out = {}
    for name, records in rows.items():
        try:
            out[name] = _trace_arrays(path, name, records, flow, temp)
        except MatmetaInputError as exc:
            on_error(str(exc))
    return out


def _trace_arrays(path: Path, name: str, records: list, flow: str, temp: str | None) -> TraceArrays:
    """One trace's arrays, checked: numbers, strictly increasing time, one temperature, enough points."""
    where = f"{path}: trace {name!r}"
    times, values, temps = [], [], set()
    for line, record in records:
        try:
            t, q = float(record["time_s"]), float(record[flow])
            if temp is not None:
                temps.add(to_kelvin(float(record[temp]), temp))
        except (TypeError, ValueError):
            raise MatmetaInputError(f"{where} row {line}: non-numeric cell (time_s={record['time_s']!r}, "
                                    f"{flow}={record[flow]!r})") from None  # fmt: skip
        if not (math.isfinite(t) and math.isfinite(q)):
            raise MatmetaInputError(f"{where} row {line}: NaN or infinite value (time_s={t:g}, {flow}={q:g})")
        if times and t <= times[-1]:
            raise MatmetaInputError(f"{where} row {line}: time_s = {t:g} s does not increase "
                                    f"(previous {times[-1]:g} s)")  # fmt: skip
        times.append(t)
        values.append(q)
    if len(times) < MIN_POINTS:
        raise MatmetaInputError(f"{where}: {len(times)} points; a trace needs at least {MIN_POINTS}")
    if len(temps) > 1:
        raise MatmetaInputError(f"{where}: rows at {len(temps)} different temperatures; one trace is one temperature")
    return np.array(times), np.array(values), next(iter(temps), None)


def _smooth(q: np.ndarray) -> np.ndarray:
    width = max(3, len(q) // 100) | 1
    pad = np.pad(q, width // 2, mode="edge")
    return np.convolve(pad, np.ones(width) / width, mode="valid")


def _line(t: np.ndarray, q: np.ndarray, at: tuple[float, float], half: float) -> np.ndarray:
    """The straight line through the mean signal within ``half`` seconds of each of the two times ``at``."""
    ends = []
    for t_end in at:
        near = np.abs(t - t_end) <= half
        ends.append(float(np.mean(q[near])) if near.any() else float(np.interp(t_end, t, q)))
    slope = (ends[1] - ends[0]) / max(at[1] - at[0], 1e-300)
    return ends[0] + slope * (t - at[0])


def detect_limits(time_s: np.ndarray, heat_flow: np.ndarray) -> tuple[tuple[float, float], float, float, float]:
    """Detected (t_start, t_end), the peak's sign, its height and the noise σ (see the module docstring)."""
    t, q = time_s, _smooth(heat_flow)
    span = t[-1] - t[0]
    last = t >= t[-1] - END_SHARE * span
    ends = (float(t[0]), float(t[-1]))
    base = np.full_like(q, float(np.median(q[last])))  # first guess: flat at the end, where the reaction is over
    d = q - base
    sign = 1.0 if d[np.argmax(np.abs(d))] > 0 else -1.0
    ends_resid = (heat_flow - q)[last]
    width = max(3, len(q) // 100) | 1
    sigma = 1.4826 * float(np.median(np.abs(ends_resid - np.median(ends_resid)))) / math.sqrt(width)
    limits = ends
    for _ in range(2):
        d = sign * (q - base)
        peak = int(np.argmax(d))
        height = float(d[peak])
        level = max(3 * sigma, THRESHOLD * height)
        left = np.nonzero(d[: peak + 1] <= level)[0]
        right = np.nonzero(d[peak:] <= level)[0]
        limits = (float(t[left[-1]] if left.size else t[0]), float(t[peak + right[0]] if right.size else t[-1]))
        base = _line(t, q, limits, 0.005 * span)
    inside = (t >= limits[0]) & (t <= limits[1])
    height = float(np.max(sign * (q - base)[inside])) if inside.any() else 0.0  # above the final baseline
    return limits, sign, height, max(sigma, 1e-3 * float(np.ptp(heat_flow)))  # a peak is > 0.5 % of the range


def integrate(
    name: str, time_s: np.ndarray, heat_flow: np.ndarray, limits: tuple[float, float] | None = None,
    temperature_k: float | None = None, where: str = "",
) -> Trace:  # fmt: skip
    """Baseline, sign and fraction X(t) of one trace (limits given or detected).

    Raises:
        MatmetaInputError: limits outside the trace, no peak above the noise, or a fraction that falls
            inside the limits (a wrong baseline, or a trace that changes sign).
    """
    t, q = np.asarray(time_s, dtype=float), np.asarray(heat_flow, dtype=float)
    label = f"{where}trace {name!r}"
    if limits is None:
        limits, sign, height, sigma = detect_limits(t, q)
        if height <= 5 * sigma:
            raise MatmetaInputError(f"{label}: no transformation peak above the noise "
                                    f"(peak {height:.3g}, noise {sigma:.3g})")  # fmt: skip
        detected = True
    else:
        lo, hi = (float(v) for v in limits)
        if not (t[0] <= lo < hi <= t[-1]):
            raise MatmetaInputError(f"{label}: baseline limits {lo:g}, {hi:g} s not inside the trace "
                                    f"({t[0]:g}–{t[-1]:g} s)")  # fmt: skip
        limits, detected = (lo, hi), False
        base = _line(t, q, limits, 0.0)
        mid = (t >= lo) & (t <= hi)
        sign = 1.0 if np.trapezoid(q[mid] - base[mid], t[mid]) >= 0 else -1.0
    baseline = _line(t, q, limits, 0.0 if not detected else 0.005 * (t[-1] - t[0]))
    inside = (t >= limits[0]) & (t <= limits[1])
    d = sign * (q - baseline)
    heat = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(t))])
    heat -= np.interp(limits[0], t, heat)
    total = float(np.interp(limits[1], t, heat))
    if not total > 0:
        raise MatmetaInputError(f"{label}: the heat between the limits is {total:.3g}: no transformation peak there")
    x = np.where(t < limits[0], 0.0, heat / total)
    fall = float(np.max(np.maximum.accumulate(x[inside]) - x[inside])) if inside.any() else 0.0
    if fall > MAX_FALL:
        raise MatmetaInputError(f"{label}: the integrated fraction falls by {fall:.2f} inside the limits "
                                "(the heat flow changes sign: wrong baseline limits, or not one peak)")  # fmt: skip
    keep = t <= limits[1]
    curve = Curve(name, t[keep], x[keep], temperature_k=temperature_k)
    return Trace(name, t, q, baseline, limits, sign, detected, curve)
