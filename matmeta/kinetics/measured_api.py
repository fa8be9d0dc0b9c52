"""One call each for real measurements: a DSC file to fits, a temperature series to an Arrhenius fit.

What ``matmeta jmak fit --dsc trace.csv`` and ``matmeta jmak fit … --by temperature`` print; notebooks
call the same functions. Bad traces of a DSC file are reported (one line each) and the good ones fitted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matmeta.errors import MatmetaError, MatmetaInputError
from matmeta.kinetics.data import Curve
from matmeta.kinetics.results import CurveFits

SERIES_COLUMNS = ("curve", "temperature_C", "n", "n_std", "t0_s", "y_max", "ln_tau", "t50_s", "residual_rms")


@dataclasses.dataclass
class DSCFits:
    """The traces of a DSC file (:class:`~matmeta.kinetics.dsc.Trace`) and the fits of their fractions."""

    traces: list[Any]
    fits: CurveFits


def fit_dsc_file(
    path: str | Path, method: str = "maml", limits: tuple[float, float] | None = None, t0_s: float | None = None,
    prior: str | Path | None = None, on_error: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> DSCFits:  # fmt: skip
    """Read a DSC file, subtract each trace's baseline, integrate to X(t) and fit it (plateau 1: the total heat).

    Args:
        path: CSV with ``time_s`` and ``heat_flow…`` columns (optional ``curve``, ``temperature_C``/``_K``).
        method: as :func:`~matmeta.kinetics.api.fit_curves`.
        limits: baseline limits (t_start, t_end) in s for every trace (default: detected per trace).
        t0_s: a given incubation time (default: fitted).
        prior: prior checkpoint (default: the shipped one).
        on_error: called with one line per bad trace (it is skipped).
        on_warning: called with one line per odd curve.

    Raises:
        MatmetaInputError: the file cannot be read as a DSC file, or no trace is usable.
    """
    from matmeta.kinetics.api import fit_curves
    from matmeta.kinetics.dsc import integrate, read_traces

    report = on_error or (lambda _message: None)
    traces = []
    for name, (time_s, heat_flow, temperature_k) in read_traces(path, report).items():
        try:
            traces.append(integrate(name, time_s, heat_flow, limits, temperature_k, where=f"{path}: "))
        except MatmetaError as exc:
            report(str(exc))
    if not traces:
        raise MatmetaInputError(f"{path}: no usable DSC trace")
    fits = fit_curves([t.curve for t in traces], method=method, prior=prior, t0_s=t0_s, y_max=1.0,
                      on_warning=on_warning)  # fmt: skip
    return DSCFits(traces, fits)


@dataclasses.dataclass
class SeriesResult:
    """A temperature series: the curves' own fits, the joint Arrhenius fit and predicted half times."""

    fits: CurveFits
    series: Any
    predictions: list[tuple[float, float, float, float]]

    def rows(self) -> list[dict[str, Any]]:
        """One row per curve with the :data:`SERIES_COLUMNS` (the joint fit's values)."""
        s = self.series
        out = []
        for j, name in enumerate(s.names):
            tau = math.exp(float(s.ln_tau[j]))
            n = float(s.n[j])
            out.append(
                {
                    "curve": name, "temperature_C": float(s.temperature_k[j]) - 273.15, "n": n,
                    "n_std": float(s.n_std[j]), "t0_s": float(s.t0_s[j]), "y_max": float(s.y_max[j]),
                    "ln_tau": float(s.ln_tau[j]), "t50_s": float(s.t0_s[j]) + tau * math.log(2.0) ** (1.0 / n),
                    "residual_rms": float(s.residual[j]),
                }
            )  # fmt: skip
        return out

    def write_csv(self, path: str | Path) -> None:
        """Write :meth:`rows` plus one ``Q`` row and the predictions, atomically."""
        from matmeta.atomic import write_table

        rows = [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in self.rows()]
        s = self.series
        q = {"curve": f"Q = {s.q_kj_mol:.6g} ± {s.q_std_kj_mol:.3g} kJ/mol ({s.n_model} n)"}
        predicted = [{"curve": f"predicted t50 at {c:g} C", "t50_s": f"{t:.6g} [{lo:.6g}, {hi:.6g}]"}
                     for c, t, lo, hi in self.predictions]  # fmt: skip
        write_table(path, [*rows, q, *predicted], columns=list(SERIES_COLUMNS))


def fit_series_curves(
    curves: Sequence[Curve], method: str = "maml", n_model: str = "auto", predict_at_c: Sequence[float] = (),
    t0_s: float | None = None, y_max: float | None = None, prior: str | Path | None = None,
    on_warning: Callable[[str], None] | None = None, noise: float | None = None,
) -> SeriesResult:  # fmt: skip
    """Each curve on its own, then all jointly with Arrhenius k(T) (:func:`~matmeta.kinetics.series.fit_series`).

    Args:
        curves: one material's isothermal curves, each with a temperature.
        method: the per-curve fits' method (their results start the joint fit).
        n_model: ``auto`` (lower BIC), ``shared`` or ``per-temperature``.
        predict_at_c: temperatures (°C) at which to predict t50 with a 90 % interval.
        t0_s: a given incubation time (default: fitted for traces, 0 for readings).
        y_max: a given plateau (default: fitted for traces, 1 for readings).
        prior: prior checkpoint for the per-curve fits.
        on_warning: called with one line per odd curve.
        noise: σ of the readings for the per-curve fits (default: the prior's).
    """
    from matmeta.kinetics.api import fit_curves
    from matmeta.kinetics.series import fit_series

    fits = fit_curves(list(curves), method=method, prior=prior, noise=noise, t0_s=t0_s, y_max=y_max,
                      on_warning=on_warning)  # fmt: skip
    series = fit_series(curves, n_model=n_model, starts=fits, t0_s=t0_s, y_max=y_max)
    predictions = []
    for celsius in predict_at_c:
        if not math.isfinite(celsius) or celsius <= -273.15:
            raise MatmetaInputError(f"--predict-at {celsius}: not a temperature in °C above absolute zero")
        predictions.append((float(celsius), *series.t50(celsius + 273.15)))
    return SeriesResult(fits, series, predictions)


@dataclasses.dataclass
class Measured:
    """Everything ``matmeta jmak fit`` computed for one input file."""

    fits: CurveFits
    dsc: DSCFits | None
    series: SeriesResult | None
    errors: list[str]


def fit_file(
    points: str | Path | None = None, dsc: str | Path | None = None, by: str | None = None, method: str = "maml",
    prior: str | Path | None = None, noise: float | None = None, steps: int | None = None, observed: str = "auto",
    t0_s: float | None = None, y_max: float | None = None, limits: tuple[float, float] | None = None,
    n_model: str = "auto", predict_at_c: Sequence[float] = (), on_error: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Measured:  # fmt: skip
    """A points file / TTT table, or a DSC file, fitted per curve and, with ``by="temperature"``, as a series.

    Bad rows and traces go to ``on_error`` (and into :attr:`Measured.errors`); the good curves are fitted.

    Raises:
        MatmetaInputError: neither or both of ``points`` and ``dsc``, an unknown ``by``, no usable curve.
    """
    if (points is None) == (dsc is None):
        raise MatmetaInputError("give either a points file or --dsc TRACE.csv (one input)")
    if by not in (None, "temperature"):
        raise MatmetaInputError(f"--by {by}: only --by temperature is supported")
    errors: list[str] = []

    def report(message: str) -> None:
        errors.append(message)
        if on_error is not None:
            on_error(message)

    traces = None
    if dsc is not None:
        traces = fit_dsc_file(dsc, method, limits, t0_s, prior, on_error=report, on_warning=on_warning)
        curves, fits = [t.curve for t in traces.traces], traces.fits
    else:
        from matmeta.kinetics.api import fit_curves
        from matmeta.kinetics.data import read_curves

        curves = read_curves(points, on_error=report, warn=on_warning or (lambda _m: None))
        if not curves:
            raise MatmetaInputError(f"{points}: no curve could be read")
        fits = None if by else fit_curves(curves, method, prior, noise, steps=steps, observed=observed,
                                          t0_s=t0_s, y_max=y_max, on_warning=on_warning)  # fmt: skip
    series = None
    if by == "temperature":
        series = fit_series_curves(curves, method, n_model, predict_at_c, t0_s, y_max if dsc is None else 1.0,
                                   prior, on_warning=None if dsc is not None else on_warning, noise=noise)  # fmt: skip
        fits = series.fits
    return Measured(fits, traces, series, errors)
