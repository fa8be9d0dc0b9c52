"""One call from curves to a table: fit, uncertainty, derived times — what ``matmeta jmak fit`` prints.

Notebooks call :func:`fit_curves` with the same arguments as the command line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from matmeta.console import report_error, warn
from matmeta.errors import MatmetaInputError
from matmeta.kinetics.data import Curve, read_curves, with_observed
from matmeta.kinetics.fit import DEFAULT_NOISE, METHODS, pad_curves
from matmeta.kinetics.results import COLUMNS, TIME_FRACTIONS, CurveFits, merge
from matmeta.kinetics.uncertainty import derived_std

__all__ = ["COLUMNS", "TIME_FRACTIONS", "CurveFits", "fit_curves", "read_curves_reporting"]

OBSERVED = ("auto", "time", "fraction")
Y_MAX_RANGE = (1e-3, 1.5)


def read_curves_reporting(points: Path, empty_message: str) -> tuple[list[Curve], list[str]]:
    """The curves of a points file or TTT table, reporting each bad row in one line (stderr) as it is met.

    Returns:
        ``(curves, error messages)``; raises ``MatmetaInputError(f"{points}: {empty_message}")`` if no curve is left.
    """
    errors: list[str] = []

    def on_error(message: str) -> None:
        errors.append(message)
        report_error(message)

    curves = read_curves(points, on_error=on_error, warn=warn)
    if not curves:
        raise MatmetaInputError(f"{points}: {empty_message}")
    return curves, errors


def fit_curves(
    curves: Sequence[Curve],
    method: str = "maml",
    prior: str | Path | None = None,
    noise: float | None = None,
    maml: Any = None,
    steps: int | None = None,
    observed: str = "auto",
    t0_s: float | None = None,
    y_max: float | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> CurveFits:
    """Fit every curve, with uncertainty and derived times (which fit each curve gets: :mod:`~matmeta.kinetics.routes`).

    Fraction readings: a measured trace (≥ :data:`~matmeta.kinetics.data.DENSE_POINTS` points) gets the
    robust fit with incubation t0 and plateau y_max; a few readings get, for ``maml``, the exact posterior
    under the prior's generating distribution with t0 under the prior (:mod:`matmeta.kinetics.posterior`),
    for ``maml-adapt`` the network's inner loop, else the classical fit (t0 = 0, y_max = 1 unless given).
    A curve whose fit fails (no finite fit with n > 0: readings that fall, never leave 0 …) is fitted
    under the prior instead, with a warning naming the curve and why its readings look odd.

    Time readings (TTT rows: ``observed == "time"``) are fitted with the log-time likelihood
    (:mod:`matmeta.kinetics.logtime`): ``maml`` is the exact posterior under the synthetic TTT
    distribution the log-time prior was meta-trained on (:mod:`matmeta.kinetics.logtime_posterior`),
    ``least-squares`` the regression of ln t on z.

    Args:
        curves: measured curves (≥ 2 points at distinct times each).
        method: ``maml`` | ``maml-adapt`` | ``least-squares`` | ``avrami``.
        prior: prior checkpoint (None: the shipped one).
        noise: measurement σ of the fractions (default: the prior's, else 0.02); for time readings
            (TTT rows) the σ of ln t (default :data:`~matmeta.kinetics.logtime.LOG_TIME_NOISE`).
        maml: an already loaded prior network: the fit is its adaptation (as ``maml-adapt``).
        steps: inner steps of the network's adaptation (default: the prior's own).
        observed: ``auto`` (as read: TTT tables and files of conventional reading levels are time
            readings, :func:`~matmeta.kinetics.data.is_reading_scheme`), ``time`` or ``fraction``.
        t0_s: a given incubation time (s) for every curve (default: fitted, or under the prior).
        y_max: a given plateau for every curve (default: fitted for traces, 1 for readings).
        on_warning: called with one line per odd curve (also kept in the result's ``notes``).

    Raises:
        MatmetaInputError: unknown method or observation, bad t0 / y_max, or no curves.
    """
    if method not in METHODS:
        raise MatmetaInputError(f"--method {method}: choose one of {', '.join(METHODS)}")
    if observed not in OBSERVED:
        raise MatmetaInputError(f"--observed {observed}: choose one of {', '.join(OBSERVED)}")
    if not curves:
        raise MatmetaInputError("no curve to fit")
    _check_given(t0_s, y_max)
    curves = list(curves) if observed == "auto" else with_observed(list(curves), observed)
    if method not in ("avrami", "maml-adapt") and all(c.observed == "time" for c in curves):
        if t0_s is not None or y_max is not None:
            raise MatmetaInputError("--t0 / --y-max: time readings (TTT rows) are fitted without them")
        time_s, fraction, mask = pad_curves(curves)
        return _fit_log_time(curves, method, prior, noise, time_s, fraction, mask)
    result = _fit_fractions(curves, method, prior, noise, maml, steps, t0_s, y_max)
    return _with_fallback(result, curves, method, prior, noise, t0_s, y_max, on_warning)


def _check_given(t0_s: float | None, y_max: float | None) -> None:
    if t0_s is not None and not (math.isfinite(t0_s) and t0_s >= 0):
        raise MatmetaInputError(f"--t0 {t0_s}: must be a finite time >= 0 s")
    if y_max is not None and not (math.isfinite(y_max) and Y_MAX_RANGE[0] <= y_max <= Y_MAX_RANGE[1]):
        raise MatmetaInputError(f"--y-max {y_max}: must be in [{Y_MAX_RANGE[0]:g}, {Y_MAX_RANGE[1]:g}]")


def _fit_fractions(
    curves: list[Curve], method: str, prior: str | Path | None, noise: float | None, maml: Any,
    steps: int | None, t0_s: float | None, y_max: float | None,
) -> CurveFits:  # fmt: skip
    """Traces and readings routed to their fits (:mod:`~matmeta.kinetics.routes`), merged in file order."""
    from matmeta.kinetics import routes

    dense = [i for i, c in enumerate(curves) if c.dense]
    sparse = [i for i, c in enumerate(curves) if not c.dense]
    parts = []
    if dense:
        parts.append((dense, routes.fit_traces([curves[i] for i in dense], method, t0_s, y_max)))
    if sparse:
        few = [curves[i] for i in sparse]
        if method == "maml" and maml is None:
            from matmeta.kinetics.posterior import load_fraction_prior

            part = routes.fit_posterior(few, load_fraction_prior(prior), noise, t0_s, y_max)
        else:
            network, noise = _network(method, prior, noise, maml)
            part = routes.fit_readings(few, method, noise, t0_s, y_max, maml=network, steps=steps)
        parts.append((sparse, part))
    return merge(parts, curves, method)


def _network(method: str, prior: str | Path | None, noise: float | None, maml: Any) -> tuple[Any, float]:
    """The prior network for ``maml``/``maml-adapt`` (loaded unless given) and the σ to use."""
    if method not in ("maml", "maml-adapt"):
        return None, DEFAULT_NOISE if noise is None else float(noise)
    if maml is None:
        from matmeta.kinetics.prior import load_prior

        maml, metadata = load_prior(prior)
        noise = float(metadata["model_config"]["noise"]) if noise is None else noise
    if hasattr(maml, "members"):
        from matmeta.errors import CheckpointError

        raise CheckpointError(f"{prior}: an ensemble prior (benchmark estimator); `jmak fit` takes a single prior")
    return maml, DEFAULT_NOISE if noise is None else float(noise)


def _with_fallback(
    result: CurveFits, curves: list[Curve], method: str, prior: str | Path | None, noise: float | None,
    t0_s: float | None, y_max: float | None, on_warning: Callable[[str], None] | None,
) -> CurveFits:  # fmt: skip
    """Refit the curves whose fit failed under the prior; warn (name and reason) for every odd curve."""
    from matmeta.kinetics.diagnose import odd_readings

    failed = [i for i in range(len(curves)) if not bool(result.fits.ok[i])]
    notes = list(result.notes) or [""] * len(curves)
    if failed:
        from matmeta.kinetics import routes
        from matmeta.kinetics.posterior import load_fraction_prior

        rescue = routes.fit_posterior([curves[i] for i in failed], load_fraction_prior(prior), noise, t0_s, y_max)
        kept = [i for i in range(len(curves)) if i not in failed]
        parts = [(kept, result.select(kept))] if kept else []
        result = merge([*parts, (failed, rescue)], curves, method)
    for i, curve in enumerate(curves):
        why = odd_readings(curve, DEFAULT_NOISE if noise is None else float(noise))
        if i in failed:
            notes[i] = "under the prior: " + (why or f"no finite {method} fit with n > 0")
            message = (f"curve {curve.name!r}: {why or 'odd readings'}; the {method} fit found no finite fit with"
                       " n > 0, so it is fitted under the prior (wide bands)")  # fmt: skip
        elif why is not None:
            notes[i] = (notes[i] + "; " if notes[i] else "") + "odd readings: " + why
            message = f"curve {curve.name!r}: the readings look odd ({why}); read its fit with care"
        else:
            continue
        if on_warning is not None:
            on_warning(message)
    result.notes = notes
    return result


def _fit_log_time(
    curves: list[Curve], method: str, prior: str | Path | None, noise: float | None, time_s: Tensor,
    fraction: Tensor, mask: Tensor,
) -> CurveFits:  # fmt: skip
    """:func:`fit_curves` for time readings: log-time likelihood, Laplace covariance, log-time residual."""
    from matmeta.kinetics.logtime import (
        LOG_TIME_NOISE,
        fit_log_time_ls,
        log_time_covariance,
        log_time_residual,
    )

    noise = LOG_TIME_NOISE if noise is None else float(noise)
    if method == "maml":
        from matmeta.kinetics.logtime_posterior import fit_log_time_posterior
        from matmeta.kinetics.ttt_prior import load_ttt_synthetic

        synth = load_ttt_synthetic(prior)
        fits, cov = fit_log_time_posterior(time_s, fraction, mask, synth.n_range, synth.n_jitter, noise)
    else:
        fits = fit_log_time_ls(time_s, fraction, mask)
        cov = log_time_covariance(fits, time_s, fraction, mask, noise)
    std = derived_std(fits.ln_k, fits.n, cov, fits.ln_t_ref, TIME_FRACTIONS)
    residual = log_time_residual(fits, time_s, fraction, mask)
    return CurveFits(curves, method, fits, cov, noise, std, residual, observed="time")
