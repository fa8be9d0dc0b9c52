"""One call from curves to a table: fit, uncertainty, derived times — what ``matmeta jmak fit`` prints.

Notebooks call :func:`fit_curves` with the same arguments as the command line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matmeta.console import report_error, warn
from matmeta.errors import MatmetaInputError
from matmeta.kinetics.data import Curve, read_curves, with_observed
from matmeta.kinetics.fit import (
    DEFAULT_NOISE,
    METHODS,
    Fits,
    fit_avrami,
    fit_least_squares,
    fit_maml,
    make_batch,
    pad_curves,
)
from matmeta.kinetics.uncertainty import derived_std, fraction_band, laplace_covariance

TIME_FRACTIONS = (0.1, 0.5, 0.9)
OBSERVED = ("auto", "time", "fraction")
COLUMNS = (
    "curve", "method", "points", "k", "ln_k", "ln_k_std", "n", "n_std",
    "t10_s", "t50_s", "t90_s", "ln_t50_std", "residual_rms", "ok",
)  # fmt: skip


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


@dataclasses.dataclass
class CurveFits:
    """Fits of several curves with their Laplace uncertainty.

    Shapes:
        ``cov``: ``(B, 2, 2)`` covariance of (ln k, n) in normalised time; ``residual``: ``(B,)``.
    """

    curves: list[Curve]
    method: str
    fits: Fits
    cov: Tensor
    noise: float
    std: dict[str, Tensor]
    residual: Tensor
    observed: str = "fraction"

    def rows(self) -> list[dict[str, Any]]:
        """One dict per curve with the :data:`COLUMNS`."""
        ln_k = self.fits.physical_ln_k()
        times = {p: self.fits.ln_time_at(p).exp() for p in TIME_FRACTIONS}
        out = []
        for i, curve in enumerate(self.curves):
            out.append(
                {
                    "curve": curve.name,
                    "method": self.method,
                    "points": len(curve.time_s),
                    "k": math.exp(float(ln_k[i])) if float(ln_k[i]) < 700 else math.inf,
                    "ln_k": float(ln_k[i]),
                    "ln_k_std": float(self.std["ln_k"][i]),
                    "n": float(self.fits.n[i]),
                    "n_std": float(self.std["n"][i]),
                    "t10_s": float(times[0.1][i]),
                    "t50_s": float(times[0.5][i]),
                    "t90_s": float(times[0.9][i]),
                    "ln_t50_std": float(self.std["ln_t_0.5"][i]),
                    "residual_rms": float(self.residual[i]),
                    "ok": bool(self.fits.ok[i]),
                }
            )
        return out

    def band(self, time_s: Tensor, level: float = 0.9) -> tuple[Tensor, Tensor]:
        """Central ``level`` band of X at ``time_s`` (s). Shapes: ``(B, Q)`` → two ``(B, Q)``."""
        log_t = time_s.to(torch.float64).log() - self.fits.ln_t_ref[:, None]
        return fraction_band(self.fits.ln_k, self.fits.n, self.cov, log_t, level)

    def write_csv(self, path: str | Path) -> None:
        """Write :meth:`rows` as CSV, atomically."""
        import csv

        from matmeta.atomic import atomic_path

        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
            writer.writeheader()
            for row in self.rows():
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def fit_curves(
    curves: Sequence[Curve],
    method: str = "maml",
    prior: str | Path | None = None,
    noise: float | None = None,
    maml: Any = None,
    steps: int | None = None,
    observed: str = "auto",
) -> CurveFits:
    """Fit every curve (batched), with Laplace uncertainty and derived times.

    Curves of time readings (TTT rows: ``observed == "time"``) are fitted with the log-time
    likelihood (:mod:`matmeta.kinetics.logtime`): ``maml`` is the exact posterior under the synthetic
    TTT distribution the log-time prior was meta-trained on (default: the shipped TTT prior;
    :mod:`matmeta.kinetics.logtime_posterior`), ``least-squares`` the regression of ln t on z.

    Args:
        curves: measured curves (≥ 2 points at distinct times each).
        method: ``maml`` | ``least-squares`` | ``avrami``.
        prior: prior checkpoint for ``maml`` (None: the shipped one).
        noise: measurement σ of the fractions (default: the prior's, else 0.02); for time readings
            (TTT rows) the σ of ln t (default :data:`~matmeta.kinetics.logtime.LOG_TIME_NOISE`).
        maml: an already loaded prior (skips loading ``prior``).
        steps: inner steps of the ``maml`` fit (default: the prior's own).
        observed: ``auto`` (as read: TTT tables and files of conventional reading levels are time
            readings, :func:`~matmeta.kinetics.data.is_reading_scheme`), ``time`` or ``fraction``.

    Raises:
        MatmetaInputError: unknown method or observation, or no curves.
    """
    if method not in METHODS:
        raise MatmetaInputError(f"--method {method}: choose one of {', '.join(METHODS)}")
    if observed not in OBSERVED:
        raise MatmetaInputError(f"--observed {observed}: choose one of {', '.join(OBSERVED)}")
    if not curves:
        raise MatmetaInputError("no curve to fit")
    curves = list(curves) if observed == "auto" else with_observed(list(curves), observed)
    time_s, fraction, mask = pad_curves(curves)
    if method != "avrami" and all(c.observed == "time" for c in curves):
        return _fit_log_time(curves, method, prior, noise, time_s, fraction, mask)
    prior_prec = None
    if method == "maml":
        if maml is None:
            from matmeta.kinetics.prior import load_prior

            maml, metadata = load_prior(prior)
            noise = float(metadata["model_config"]["noise"]) if noise is None else noise
        if hasattr(maml, "members"):
            from matmeta.errors import CheckpointError

            raise CheckpointError(f"{prior}: an ensemble prior (benchmark estimator); `jmak fit` takes a single prior")
        noise = DEFAULT_NOISE if noise is None else noise
        fits = fit_maml(maml, time_s, fraction, mask, noise, steps=steps)
        prior_prec = maml.model.prior_precision().detach().double()
    elif method == "avrami":
        fits = fit_avrami(time_s, fraction, mask)
    else:
        fits = fit_least_squares(time_s, fraction, mask)
    noise = DEFAULT_NOISE if noise is None else float(noise)
    batch, _ = make_batch(time_s, fraction, mask, noise, fits.ln_t_ref)
    log_t = batch["log_t"].double()
    cov = laplace_covariance(fits.ln_k, fits.n, log_t, mask, noise, prior_prec)
    std = derived_std(fits.ln_k, fits.n, cov, fits.ln_t_ref, TIME_FRACTIONS)
    residual = ((fits.predict(time_s) - fraction) ** 2 * mask).sum(1).div(mask.sum(1)).sqrt()
    return CurveFits(curves, method, fits, cov, noise, std, residual)


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
