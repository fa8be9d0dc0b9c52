"""Fits of several curves with their uncertainty, as one table: what ``matmeta jmak fit`` prints and writes.

Every curve's fit is X(t) = y_max·(1 − exp(−k·(t − t0)ⁿ)) (t0 = 0 and y_max = 1 unless fitted or
given). Uncertainty comes in one of two forms per curve: a Laplace covariance of (ln k, n) (the
classical fits and the network's adaptation, t0 and y_max fixed: the band is exact in z), or draws of
(ln k, n, t0, y_max) (posterior fits and robust trace fits: the band is their pointwise quantiles).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matmeta.kinetics.data import Curve
from matmeta.kinetics.fit import Fits
from matmeta.kinetics.uncertainty import fraction_band, quantile
from matmeta.models.jmak import fraction_from_z

TIME_FRACTIONS = (0.1, 0.5, 0.9)
INTERVAL_LEVEL = 0.9
COLUMNS = (
    "curve", "method", "points", "k", "ln_k", "ln_k_std", "n", "n_std",
    "t10_s", "t50_s", "t90_s", "ln_t50_std", "residual_rms", "ok",
    "t0_s", "t0_std", "y_max", "y_max_std", "ln_t90_std", "t90_lo_s", "t90_hi_s", "fit",
)  # fmt: skip


@dataclasses.dataclass
class CurveFits:
    """Fits of B curves.

    Attributes:
        ln_times: the reported ln t_p (s) per fraction p (default: the fitted curve's own).
        intervals: central :data:`INTERVAL_LEVEL` intervals of ln t_p (default: ln t_p ± q·std).
        samples: draws of (ln k normalised, n, t0 (s), y_max); NaN rows for curves without draws.
        notes: per curve, how it was fitted (``"posterior"``, ``"robust trace"``, a fallback's reason …).

    Shapes:
        ``cov``: ``(B, 2, 2)`` covariance of (ln k, n) in normalised time; ``residual``: ``(B,)``;
        ``std`` values ``(B,)``; ``samples``: ``(B, S, 4)``.
    """

    curves: list[Curve]
    method: str
    fits: Fits
    cov: Tensor
    noise: float
    std: dict[str, Tensor]
    residual: Tensor
    observed: str = "fraction"
    ln_times: dict[float, Tensor] | None = None
    intervals: dict[float, tuple[Tensor, Tensor]] | None = None
    samples: Tensor | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def ln_time(self, fraction: float) -> Tensor:
        """Reported ln t (s) at ``fraction`` of the final amount. Shapes: ``(B,)``."""
        if self.ln_times is not None and fraction in self.ln_times:
            return self.ln_times[fraction]
        return self.fits.ln_time_at(fraction)

    def interval(self, fraction: float, level: float = INTERVAL_LEVEL) -> tuple[Tensor, Tensor]:
        """Central ``level`` interval of ln t_p (s): the stored one at the default level, else ± q·std."""
        if level == INTERVAL_LEVEL and self.intervals is not None and fraction in self.intervals:
            return self.intervals[fraction]
        centre = self.ln_time(fraction)
        half = quantile(level) * self.std[f"ln_t_{fraction:g}"]
        return centre - half, centre + half

    def rows(self) -> list[dict[str, Any]]:
        """One dict per curve with the :data:`COLUMNS`."""
        ln_k = self.fits.physical_ln_k()
        times = {p: self.ln_time(p).exp() for p in TIME_FRACTIONS}
        lo90, hi90 = self.interval(0.9)
        zeros = torch.zeros_like(self.fits.n)
        out = []
        for i, curve in enumerate(self.curves):
            out.append(
                {
                    "curve": curve.name,
                    "method": self.method,
                    "points": len(curve.time_s),
                    "k": _exp(float(ln_k[i])),
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
                    "t0_s": float(self.fits.t0[i]),
                    "t0_std": float(self.std.get("t0_s", zeros)[i]),
                    "y_max": float(self.fits.top[i]),
                    "y_max_std": float(self.std.get("y_max", zeros)[i]),
                    "ln_t90_std": float(self.std["ln_t_0.9"][i]),
                    "t90_lo_s": _exp(float(lo90[i])),
                    "t90_hi_s": _exp(float(hi90[i])),
                    "fit": self.notes[i] if i < len(self.notes) else "",
                }
            )
        return out

    def band(self, time_s: Tensor, level: float = 0.9) -> tuple[Tensor, Tensor]:
        """Central ``level`` band of the measured fraction at ``time_s`` (s). Shapes: ``(B, Q)`` → two ``(B, Q)``."""
        log_t = time_s.to(torch.float64).log() - self.fits.ln_t_ref[:, None]
        lo, hi = fraction_band(self.fits.ln_k, self.fits.n, self.cov, log_t, level)
        lo, hi = lo * self.fits.top[:, None], hi * self.fits.top[:, None]
        if self.samples is None:
            return lo, hi
        drawn = torch.isfinite(self.samples[:, 0, 0])
        if bool(drawn.any()):
            q_lo, q_hi = sample_band(self.samples[drawn], self.fits.ln_t_ref[drawn], time_s[drawn], level)
            lo, hi = lo.clone(), hi.clone()
            lo[drawn], hi[drawn] = q_lo, q_hi
        return lo, hi

    def median_curve(self, time_s: Tensor) -> Tensor:
        """The plotted curve: pointwise median of the draws where there are draws, else the fit. Shapes: ``(B, Q)``."""
        pred = self.fits.predict(time_s)
        if self.samples is None:
            return pred
        drawn = torch.isfinite(self.samples[:, 0, 0])
        if bool(drawn.any()):
            pred = pred.clone()
            pred[drawn] = sample_band(self.samples[drawn], self.fits.ln_t_ref[drawn], time_s[drawn], 0.0)[0]
        return pred

    def write_csv(self, path: str | Path) -> None:
        """Write :meth:`rows` as CSV, atomically."""
        import csv

        from matmeta.atomic import atomic_path

        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
            writer.writeheader()
            for row in self.rows():
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def select(self, index: list[int]) -> CurveFits:
        """The curves at ``index`` as a CurveFits of their own (same method and noise)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        f = self.fits
        pick = lambda v: None if v is None else v[idx]  # noqa: E731
        fits = Fits(f.ln_k[idx], f.n[idx], f.ln_t_ref[idx], f.ok[idx], pick(f.t0_s), pick(f.y_max))
        return dataclasses.replace(
            self,
            curves=[self.curves[i] for i in index],
            fits=fits,
            cov=self.cov[idx],
            std={k: v[idx] for k, v in self.std.items()},
            residual=self.residual[idx],
            ln_times=None if self.ln_times is None else {p: v[idx] for p, v in self.ln_times.items()},
            intervals=None if self.intervals is None else {p: (a[idx], b[idx]) for p, (a, b) in self.intervals.items()},
            samples=pick(self.samples),
            notes=[self.notes[i] for i in index] if self.notes else [],
        )


def _exp(value: float) -> float:
    """The exponential, without overflow (inf beyond e^700)."""
    return math.exp(value) if value < 700 else math.inf


def sample_band(samples: Tensor, ln_t_ref: Tensor, time_s: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """Pointwise central ``level`` quantiles of y·F(ln k + n·(ln(t − t0) − ln t_ref)) over the draws.

    Shapes:
        samples ``(B, S, 4)``, ln_t_ref ``(B,)``, time_s ``(B, Q)`` → two ``(B, Q)``.
    """
    ln_k, n, t0, y = (samples[..., i, None] for i in range(4))
    shifted = time_s.to(torch.float64)[:, None, :] - t0
    after = shifted > 0
    log_t = torch.where(after, shifted, torch.ones_like(shifted)).log() - ln_t_ref[:, None, None]
    x = torch.where(after, fraction_from_z(ln_k + n * log_t), torch.zeros_like(shifted)) * y
    qs = torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=x.dtype)
    q = torch.quantile(x, qs, dim=1)
    return q[0], q[1]


def merge(parts: list[tuple[list[int], CurveFits]], curves: list[Curve], method: str) -> CurveFits:
    """Fits of disjoint subsets of ``curves`` (index lists) → one CurveFits in the curves' order."""
    b = len(curves)
    order = [i for index, _ in parts for i in index]
    inverse = torch.empty(b, dtype=torch.long)
    inverse[torch.as_tensor(order, dtype=torch.long)] = torch.arange(b)

    def cat(get: Any) -> Tensor:
        return torch.cat([get(p) for _, p in parts])[inverse]

    fits = Fits(
        cat(lambda p: p.fits.ln_k), cat(lambda p: p.fits.n), cat(lambda p: p.fits.ln_t_ref), cat(lambda p: p.fits.ok),
        cat(lambda p: p.fits.t0), cat(lambda p: p.fits.top),
    )  # fmt: skip
    keys = set.intersection(*(set(p.std) for _, p in parts))
    zero = {k for _, p in parts for k in p.std} - keys  # e.g. t0_s where only some parts fit it
    std = {k: cat(lambda p, k=k: p.std[k]) for k in keys}
    std |= {k: cat(lambda p, k=k: p.std.get(k, torch.zeros_like(p.fits.n))) for k in zero}
    ln_times = {q: cat(lambda p, q=q: p.ln_time(q)) for q in TIME_FRACTIONS}
    intervals = {
        q: (cat(lambda p, q=q: p.interval(q)[0]), cat(lambda p, q=q: p.interval(q)[1])) for q in TIME_FRACTIONS
    }
    samples = None
    if any(p.samples is not None for _, p in parts):
        s = max(p.samples.shape[1] for _, p in parts if p.samples is not None)
        samples = cat(lambda p: p.samples if p.samples is not None and p.samples.shape[1] == s
                      else torch.full((len(p.curves), s, 4), math.nan, dtype=torch.float64))  # fmt: skip
    notes = [n for _, p in parts for n in (p.notes or [""] * len(p.curves))]
    notes = [notes[int(j)] for j in inverse]
    observed = parts[0][1].observed
    return CurveFits(curves, method, fits, cat(lambda p: p.cov), parts[0][1].noise, std, cat(lambda p: p.residual),
                     observed, ln_times, intervals, samples, notes)  # fmt: skip
