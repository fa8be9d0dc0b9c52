"""Real-data evaluation on a TTT table: t_90 from (t_start, t_10), per phase, four methods.

* **leave-one-temperature-out** (within a phase): the support is the phase's other temperatures
  (all three readings), the query the held-out temperature's t_90 from its t_start and t_10.
* **leave-one-phase-out**: the support is the other phases' rows.

Methods: the classical fit (exact two-point solve: the log-time line through both readings, the
same as curve_fit through two points), the per-curve prior (the exact posterior under the synthetic
distribution of the shipped TTT prior, what plain ``matmeta jmak fit`` does), the phase-adapted
prior (:func:`phase_prior` from the support) and the joint TTT fit of the support
(:func:`fit_phase`; leave-one-temperature-out only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from matmeta.kinetics.data import TTT_FRACTIONS, TTTRow
from matmeta.kinetics.logtime import LOG_TIME_NOISE, fit_log_time_ls, fit_log_time_map
from matmeta.kinetics.logtime_posterior import fit_log_time_posterior
from matmeta.kinetics.ttt_prior import load_ttt_prior, load_ttt_synthetic, phase_prior

CLASSICAL = "classical (two-point solve)"
PER_CURVE = "per-curve prior"
PHASE_PRIOR = "phase-adapted prior"
JOINT = "joint TTT fit"


def _two_readings(rows: Sequence[TTTRow], start: float | Sequence[float] = TTT_FRACTIONS[0]) -> tuple:
    time_s = torch.tensor([[r.t_start, r.t_10] for r in rows], dtype=torch.float64)
    starts = torch.as_tensor(start, dtype=torch.float64).expand(len(rows))
    frac = torch.stack([starts, torch.full_like(starts, TTT_FRACTIONS[1])], 1)
    return time_s, frac, torch.ones_like(time_s)


def _rel_err(ln_t90: torch.Tensor, rows: Sequence[TTTRow]) -> np.ndarray:
    t90 = torch.tensor([r.t_90 for r in rows], dtype=torch.float64)
    return (ln_t90.exp() / t90 - 1).abs().numpy()


def per_row_errors(rows: Sequence[TTTRow], prior: str | None = None) -> dict[str, np.ndarray]:
    """Errors of the methods that use nothing but each row's two readings (classical, per-curve prior).

    The per-curve prior is what plain ``matmeta jmak fit`` does with time readings: the exact posterior
    under the synthetic TTT distribution of the prior (:mod:`matmeta.kinetics.logtime_posterior`).
    """
    synth = load_ttt_synthetic(prior)
    time_s, frac, mask = _two_readings(rows)
    classical = fit_log_time_ls(time_s, frac, mask)
    prior_fit, _ = fit_log_time_posterior(time_s, frac, mask, synth.n_range, synth.n_jitter, LOG_TIME_NOISE)
    return {CLASSICAL: _rel_err(classical.ln_time_at(0.9), rows), PER_CURVE: _rel_err(prior_fit.ln_time_at(0.9), rows)}


def _phase_prior_error(row: TTTRow, support: list[TTTRow], mean: torch.Tensor, prec: torch.Tensor) -> float:
    adapted = phase_prior(mean, prec, support)
    time_s, frac, mask = _two_readings([row], adapted.start_fraction)
    fits, _ = fit_log_time_map(time_s, frac, mask, adapted.mean, adapted.prec)
    return float(_rel_err(fits.ln_time_at(0.9), [row])[0])


def leave_one_temperature_out(
    rows: Sequence[TTTRow],
    prior: str | None = None,
    stride: int = 1,
    joint: bool = True,
    advance: Callable[[], None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """``{phase: {method: |relative error of t_90|}}``, held-out rows every ``stride``-th of each phase."""
    from matmeta.kinetics.ttt import fit_phase
    from matmeta.kinetics.ttt_api import predict_held_out

    mean, prec = load_ttt_prior(prior)
    n_prior = (float(mean[1]), float(torch.linalg.inv(prec)[1, 1].sqrt()))
    out = {}
    for phase in dict.fromkeys(r.phase for r in rows):
        mine = [r for r in rows if r.phase == phase]
        held = mine[::stride]
        errors = per_row_errors(held, prior)
        errors[PHASE_PRIOR] = np.array(
            [_phase_prior_error(r, [s for s in mine if s is not r], mean, prec) for r in held]
        )
        if joint:
            joint_err = []
            for r in held:
                fit = fit_phase([s for s in mine if s is not r], n_prior)
                joint_err.append(abs(predict_held_out(fit, r) / r.t_90 - 1))
                if advance is not None:
                    advance()
            errors[JOINT] = np.array(joint_err)
        out[phase] = errors
    return out


def leave_one_phase_out(rows: Sequence[TTTRow], prior: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{phase: {method: errors}}`` with the other phases' rows as the support of the phase-adapted prior."""
    mean, prec = load_ttt_prior(prior)
    out = {}
    for phase in dict.fromkeys(r.phase for r in rows):
        mine = [r for r in rows if r.phase == phase]
        others = [r for r in rows if r.phase != phase]
        errors = per_row_errors(mine, prior)
        errors[PHASE_PRIOR] = np.array([_phase_prior_error(r, others, mean, prec) for r in mine])
        out[phase] = errors
    return out
