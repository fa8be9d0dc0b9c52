"""Fit JMAK curves from sparse points, in batches: the MAML prior, least squares, Avrami linearisation.

All three work in *normalised* time: each curve's times are divided by their geometric mean
t_ref, so ln k and n start on the same scale whether a curve lives at milliseconds or months and
no initial guess is needed. Results are mapped back to seconds at the end.

* :func:`fit_maml` (``jmak fit --method maml-adapt``; the default ``maml`` of ``jmak fit`` for a few
  fraction readings is, since issue 29, the exact posterior of :mod:`matmeta.kinetics.posterior`,
  because this inner loop's Gaussian, trained on readings taken around t50, loses to least squares on
  real curves): the meta-learned initialisation, inner rates (Meta-SGD) and Gaussian prior of
  :class:`matmeta.models.jmak.JMAK`, adapted to every curve at once — the engine's
  ``MAML.adapt`` runs on fast weights of shape ``(B, 1)``, so the B curves take one tensor
  program (the per-curve losses are summed, so each curve's gradient is its own).
* ``least-squares``: scipy ``curve_fit`` (Levenberg–Marquardt) started from the linearisation.
* ``avrami``: linear regression of ln(−ln(1 − X)) on ln t over the points with 0 < X < 1.

Known limit of ``maml``: the inner loop is a fixed number of gradient steps on the squared error
in X, and where every point sits at X ≲ 5 % (dX/dz ≈ X) those steps move the parameters little —
the prior then dominates although the data are precise. TTT readings (times at fixed fractions)
are therefore not fitted here but with the log-time likelihood of :mod:`matmeta.kinetics.logtime`
(``fit_curves`` does so for curves with ``observed == "time"``).

The loss is the mean over a curve's points of :func:`per_example_loss`; :func:`collate` turns
one curve's (time, fraction) items into a batch (both are what ``matmeta.explain`` uses).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.models.jmak import fraction_from_z, z_from_fraction

DEFAULT_NOISE = 0.02
METHODS = ("maml", "maml-adapt", "least-squares", "avrami")
Batch = dict[str, Tensor]


def per_example_loss(forward: Callable[..., Any], batch: Batch) -> Tensor:
    """Squared error of each point plus its share of the prior penalty (0 for padding).

    ``mean(per_example_loss) = (Σ_i r_i² + 2σ²·penalty) / P``, i.e. 2σ²/P times the negative log
    posterior of the curve under Gaussian noise σ (``batch["noise_var"] = σ²``). A query batch has
    ``noise_var = 0``: a plain mean squared error.

    Shapes:
        batch: ``log_t``, ``x``, ``mask`` of shape ``(..., P)``, ``noise_var`` of shape ``(..., 1)``.
        returns ``(..., P)``.
    """
    pred, penalty = forward(batch["log_t"])
    mask = batch["mask"]
    count = mask.sum(-1, keepdim=True).clamp(min=1.0)
    return ((pred - batch["x"]) ** 2 + 2.0 * batch["noise_var"] * penalty / count) * mask


def loss_fn(forward: Callable[..., Any], batch: Batch) -> Tensor:
    """Mean of :func:`per_example_loss` over each curve's points, summed over curves (scalar).

    For one curve (a MAML task) this is its mean loss; for a ``(B, P)`` batch the sum makes each
    curve's gradient exactly its own mean-loss gradient.
    """
    per = per_example_loss(forward, batch)
    count = batch["mask"].sum(-1).clamp(min=1.0)
    return (per.sum(-1) / count).sum()


def make_batch(
    time_s: Tensor, fraction: Tensor, mask: Tensor, noise: float = DEFAULT_NOISE, ln_t_ref: Tensor | None = None
) -> tuple[Batch, Tensor]:
    """Normalise times and build the loss batch.

    Args:
        time_s: measured times (s) of padded curves (padding: any positive value).
        fraction: measured fractions.
        mask: 1 for real points, 0 for padding.
        noise: σ for the prior weight; 0 gives a plain mean squared error.
        ln_t_ref: reference ln time per curve (default: mean ln t of the real points).

    Returns:
        ``(batch, ln_t_ref)``; batch tensors are float32.

    Shapes:
        time_s, fraction, mask: ``(..., P)``; ln_t_ref: ``(...)``.
    """
    mask = mask.to(torch.float64)
    log_t = torch.log(torch.where(mask > 0, time_s.to(torch.float64), torch.ones_like(mask)))
    if ln_t_ref is None:
        ln_t_ref = (log_t * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    batch = {
        "log_t": ((log_t - ln_t_ref[..., None]) * mask).float(),
        "x": (fraction.to(torch.float64) * mask).float(),
        "mask": mask.float(),
        "noise_var": torch.full((*mask.shape[:-1], 1), float(noise) ** 2),
    }
    return batch, ln_t_ref.to(torch.float64)


def collate(items: Sequence[tuple[float, float]], t_ref: float | None = None, noise: float = DEFAULT_NOISE) -> Batch:
    """One curve's ``(time_s, fraction)`` items → a loss batch (times normalised by ``t_ref``).

    Args:
        items: the points of one curve.
        t_ref: reference time (s); default: the geometric mean of the items' times.
        noise: σ of the measurements (weights the prior); 0 → plain MSE.

    Shapes:
        returns ``log_t``, ``x``, ``mask`` of shape ``(P,)`` and ``noise_var`` of shape ``(1,)``.
    """
    times = torch.tensor([float(t) for t, _ in items], dtype=torch.float64)
    fracs = torch.tensor([float(x) for _, x in items], dtype=torch.float64)
    ref = None if t_ref is None else torch.tensor(math.log(t_ref), dtype=torch.float64)
    batch, _ = make_batch(times, fracs, torch.ones_like(times), noise, ref)
    return batch


@dataclasses.dataclass
class Fits:
    """Fitted parameters of B curves (normalised time) and whether each fit succeeded.

    The curve is X(t) = y_max·(1 − exp(−k·(t − t0)ⁿ)) for t > t0 (0 before): ``ln_k`` and ``n`` are
    those of the shifted time t − t0, normalised by t_ref (``ln_t_ref``); ``t0_s`` (incubation, s)
    and ``y_max`` (the fraction it tops out at) default to 0 and 1, the plain JMAK curve.

    Shapes:
        all ``(B,)``; ``ok`` is bool.
    """

    ln_k: Tensor
    n: Tensor
    ln_t_ref: Tensor
    ok: Tensor
    t0_s: Tensor | None = None
    y_max: Tensor | None = None

    @property
    def t0(self) -> Tensor:
        """Incubation time t0 (s) of every curve (zeros when none was fitted or given)."""
        return torch.zeros_like(self.n) if self.t0_s is None else self.t0_s.to(self.n.dtype)

    @property
    def top(self) -> Tensor:
        """The fraction y_max each curve tops out at (ones when none was fitted or given)."""
        return torch.ones_like(self.n) if self.y_max is None else self.y_max.to(self.n.dtype)

    def physical_ln_k(self) -> Tensor:
        """Ln k in s⁻ⁿ (of the shifted time t − t0)."""
        return self.ln_k - self.n * self.ln_t_ref

    def ln_time_at(self, fraction: float) -> Tensor:
        """Ln t (s) at which the fitted curve reaches ``fraction`` of its final amount (X / y_max)."""
        shifted = (math.log(-math.log1p(-fraction)) - self.ln_k) / self.n + self.ln_t_ref
        if self.t0_s is None:
            return shifted
        return torch.logaddexp(shifted, self.t0.clamp(min=1e-300).log())

    def predict(self, time_s: Tensor) -> Tensor:
        """Measured-scale X (y_max·X) at ``time_s`` (s). Shapes: ``(B, Q)`` → ``(B, Q)``."""
        time_s = time_s.to(torch.float64)
        if self.t0_s is None and self.y_max is None:
            log_t = time_s.log() - self.ln_t_ref[:, None]
            return fraction_from_z(self.ln_k[:, None] + self.n[:, None] * log_t)
        shifted = time_s - self.t0[:, None]
        log_t = torch.where(shifted > 0, shifted, torch.ones_like(shifted)).log() - self.ln_t_ref[:, None]
        x = fraction_from_z(self.ln_k[:, None] + self.n[:, None] * log_t)
        return torch.where(shifted > 0, x, torch.zeros_like(x)) * self.top[:, None]


def _checked(ln_k: Tensor, n: Tensor, ln_t_ref: Tensor, ok: Tensor | None = None) -> Fits:
    ln_k, n = ln_k.to(torch.float64), n.to(torch.float64)
    good = torch.isfinite(ln_k) & torch.isfinite(n) & (n > 1e-3)
    if ok is not None:
        good &= ok
    # failed fits keep finite placeholders (never NaN downstream): X = 1/2 at t_ref, n = 1
    return Fits(torch.where(good, ln_k, math.log(math.log(2))), torch.where(good, n, 1.0), ln_t_ref, good)


def fit_maml(
    maml: torch.nn.Module,
    time_s: Tensor,
    fraction: Tensor,
    mask: Tensor,
    noise: float = DEFAULT_NOISE,
    steps: int | None = None,
) -> Any:
    """Adapt the meta-learned JMAK prior to every curve at once (no per-curve loop).

    Args:
        maml: a :class:`matmeta.meta.maml.MAML` wrapping :class:`matmeta.models.jmak.JMAK`.
        time_s: measured times (s).
        fraction: measured fractions.
        mask: 1 for real points, 0 for padding.
        noise: measurement σ (weights the meta-learned prior against the data).
        steps: inner steps (default: the prior's own).

    Shapes:
        time_s, fraction, mask: ``(B, P)``.

    Returns:
        :class:`Fits`; for an :class:`~matmeta.kinetics.ensemble.EnsembleMAML`, the members' fits as an
        :class:`~matmeta.kinetics.ensemble.EnsembleFits` (the curve is the mean of theirs).
    """
    if hasattr(maml, "members"):
        from matmeta.kinetics.ensemble import EnsembleFits

        return EnsembleFits([fit_maml(m, time_s, fraction, mask, noise, steps) for m in maml.members])
    batch, ln_t_ref = make_batch(time_s, fraction, mask, noise)
    b = batch["x"].shape[0]
    was_training = maml.training
    maml.eval()
    start = {
        name: p.detach().reshape(1, 1).expand(b, 1).clone()
        for name, p in maml.meta_parameters().items()
        if name in maml.adapt_names
    }
    fast = maml.adapt(batch, loss_fn, steps=steps, params=start)
    maml.train(was_training)
    return _checked(fast["ln_k"][:, 0], fast["n"][:, 0], ln_t_ref)


def fit_avrami(time_s: Tensor, fraction: Tensor, mask: Tensor, clip: float | None = None) -> Fits:
    """Avrami linearisation: least-squares line of ln(−ln(1 − X)) against ln t, for all curves at once.

    Args:
        time_s: measured times (s).
        fraction: measured fractions.
        mask: 1 for real points, 0 for padding.
        clip: None → use only points with 0 < X < 1 (classical practice; fewer than two such points
            at distinct times is a failed fit); a float ε → clip X to [ε, 1 − ε] and use every point.

    Shapes:
        time_s, fraction, mask: ``(B, P)``.
    """
    batch, ln_t_ref = make_batch(time_s, fraction, mask, 0.0)
    x = fraction.to(torch.float64)
    lt = batch["log_t"].to(torch.float64)
    w = batch["mask"].to(torch.float64)
    if clip is None:
        w = w * ((x > 0) & (x < 1)).to(torch.float64)
        y = z_from_fraction(x, 1e-12)
    else:
        y = z_from_fraction(x, clip)
    count = w.sum(1)
    mean_t = (w * lt).sum(1) / count.clamp(min=1)
    mean_y = (w * y).sum(1) / count.clamp(min=1)
    dt = (lt - mean_t[:, None]) * w
    sxx = (dt * dt).sum(1)
    n = (dt * (y - mean_y[:, None])).sum(1) / sxx.clamp(min=1e-300)
    ln_k = mean_y - n * mean_t
    return _checked(ln_k, n, ln_t_ref, (count >= 2) & (sxx > 1e-12))


def jmak_normalised(log_t: np.ndarray, ln_k: float, n: float) -> np.ndarray:
    """X at normalised log time (numpy, for scipy)."""
    return -np.expm1(-np.exp(np.clip(ln_k + n * log_t, -30.0, 30.0)))


def fit_least_squares(time_s: Tensor, fraction: Tensor, mask: Tensor, max_evals: int = 2000) -> Fits:
    """Scipy ``curve_fit`` per curve, started from the (clipped) Avrami linearisation.

    This is the strongest classical practice; it is a Python loop over curves (scipy has no batch).

    Shapes:
        time_s, fraction, mask: ``(B, P)``.
    """
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    start = fit_avrami(time_s, fraction, mask, clip=1e-3)
    batch, ln_t_ref = make_batch(time_s, fraction, mask, 0.0)
    lt = batch["log_t"].to(torch.float64).numpy()
    x = fraction.to(torch.float64).numpy()
    m = batch["mask"].numpy() > 0
    b = lt.shape[0]
    ln_k, n, ok = np.zeros(b), np.ones(b), np.zeros(b, dtype=bool)
    for i in range(b):
        p0 = [float(start.ln_k[i]), float(start.n[i])]
        try:
            with warnings.catch_warnings():  # scipy's own covariance is not used (see uncertainty.py)
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, _ = curve_fit(jmak_normalised, lt[i, m[i]], x[i, m[i]], p0=p0, maxfev=max_evals)
        except (RuntimeError, ValueError, np.linalg.LinAlgError, TypeError):
            continue
        ln_k[i], n[i], ok[i] = popt[0], popt[1], True
    return _checked(torch.from_numpy(ln_k), torch.from_numpy(n), ln_t_ref, torch.from_numpy(ok))


def pad_curves(curves: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor]:
    """Curves with ``time_s``/``fraction`` arrays → padded ``(time_s, fraction, mask)``, each ``(B, P)``."""
    p = max(len(c.time_s) for c in curves)
    b = len(curves)
    time_s = torch.ones(b, p, dtype=torch.float64)
    fraction = torch.zeros(b, p, dtype=torch.float64)
    mask = torch.zeros(b, p, dtype=torch.float64)
    for i, c in enumerate(curves):
        k = len(c.time_s)
        time_s[i, :k] = torch.as_tensor(np.asarray(c.time_s, dtype=float))
        fraction[i, :k] = torch.as_tensor(np.asarray(c.fraction, dtype=float))
        mask[i, :k] = 1.0
    return time_s, fraction, mask
