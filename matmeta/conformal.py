"""Split-conformal prediction intervals and the metal/non-metal decision threshold.

Split conformal (Vovk et al. 2005; Lei et al., JASA 113, 1094, 2018): on calibration points not
used in training, take the absolute residuals ``s_i = |y_i − ŷ_i|`` (per atom for extensive
targets); the interval ``ŷ ± q`` with ``q`` the ⌈(n+1)·level⌉-th smallest ``s_i`` covers a new
exchangeable point with probability ≥ ``level``. Here the calibration points are the predictor's
VALIDATION families (zero-shot and after adaptation), so coverage holds for new families to the
extent that families are exchangeable.

With a per-point difficulty ``σ(x)`` the score is normalised, ``s_i = |y_i − ŷ_i| / σ(x_i)``, and the
interval is ``ŷ ± q·σ(x)`` (locally adaptive conformal; Lei et al. 2018, sec. 5.2): same guarantee,
wider where σ is larger. :func:`family_held_out_coverage` measures how a calibration transfers to a
family it has not seen (leave-one-family-out).

The metal/non-metal threshold is chosen on the same validation families for balanced accuracy;
:func:`roc_auc` and :func:`classification_metrics` score it. :func:`fit_platt` recalibrates the
probability itself (Platt, "Probabilistic outputs for support vector machines", 1999), and
:func:`brier_score` / :func:`expected_calibration_error` measure how well it is calibrated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def conformal_quantile(scores: Sequence[float] | np.ndarray, level: float = 0.9) -> float:
    """The split-conformal half-width: the ⌈(n+1)·level⌉-th smallest finite score.

    Returns ``inf`` when there are too few scores for that rank (n < level / (1 − level)).

    Shapes:
        scores: (n,) → scalar.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.sort(np.asarray(scores, dtype=float)[np.isfinite(np.asarray(scores, dtype=float))])
    rank = math.ceil((values.size + 1) * level)
    if values.size == 0 or rank > values.size:
        return math.inf
    return float(values[rank - 1])


def mondrian_quantiles(
    scores: Sequence[float] | np.ndarray, groups: Sequence[bool] | np.ndarray, level: float = 0.9
) -> dict[str, float]:
    """Split-conformal half-widths per group (Mondrian conformal; Vovk et al. 2005, ch. 4).

    Coverage then holds within each group (e.g. structures called non-metal vs called metal),
    not only on average. A group with too few scores for its rank gets the pooled half-width.

    Shapes:
        scores, groups: (n,) → ``{"true": q, "false": q, "pooled": q}``.
    """
    scores, groups = np.asarray(scores, dtype=float), np.asarray(groups, dtype=bool)
    pooled = conformal_quantile(scores, level)
    out = {"pooled": pooled}
    for name, mask in (("true", groups), ("false", ~groups)):
        own = conformal_quantile(scores[mask], level)
        out[name] = own if np.isfinite(own) else pooled
    return out


def family_held_out_coverage(
    scores: np.ndarray, groups: np.ndarray, families: np.ndarray, level: float = 0.9
) -> dict[str, float]:
    """Coverage of Mondrian split-conformal quantiles on each family when calibrated on the OTHER families.

    Family-grouped cross-conformal (leave-one-family-out): for every family, the per-group
    quantiles of the other families' ``scores`` (:func:`mondrian_quantiles`) decide whether its own
    scores are covered. This is how a calibration is expected to transfer to a NEW family, not
    only to new points of known ones.

    Returns:
        ``{"all": covered fraction over all points, <family>: covered fraction of that family}``
        (``"all"`` is NaN without finite scores).

    Shapes:
        scores, groups, families: (n,) → dict.
    """
    scores, groups, families = np.asarray(scores, float), np.asarray(groups, bool), np.asarray(families)
    keep = np.isfinite(scores)
    scores, groups, families = scores[keep], groups[keep], families[keep]
    if scores.size == 0:
        return {"all": math.nan}
    hits = np.zeros(scores.size, dtype=bool)
    out = {}
    for family in np.unique(families):
        own = families == family
        widths = mondrian_quantiles(scores[~own], groups[~own], level)
        hits[own] = scores[own] <= np.where(groups[own], widths["true"], widths["false"])
        out[str(family)] = float(hits[own].mean())
    return {"all": float(hits.mean()), **out}


def coverage(prediction: np.ndarray, truth: np.ndarray, half_width: float | np.ndarray) -> float:
    """Fraction of ``truth`` inside ``prediction ± half_width`` (NaN truths ignored).

    Shapes:
        prediction, truth: (n,); half_width: scalar or (n,) → scalar.
    """
    prediction, truth = np.asarray(prediction, float), np.asarray(truth, float)
    ok = np.isfinite(truth)
    if not ok.any():
        return math.nan
    inside = np.abs(prediction - truth) <= np.broadcast_to(half_width, prediction.shape)
    return float(inside[ok].mean())


def balanced_threshold(p_nonmetal: np.ndarray, is_nonmetal: np.ndarray, min_precision: float = 0.0) -> float:
    """The P(non-metal) cut with the highest balanced accuracy, among cuts with precision ≥ ``min_precision``.

    Candidates are the midpoints between sorted distinct scores, so the result does not depend
    on a grid; ties go to the middle of the best run. When no cut reaches ``min_precision`` the
    floor is dropped. Returns 0.5 when one class is missing.

    Shapes:
        p_nonmetal, is_nonmetal: (n,) → scalar.
    """
    p = np.asarray(p_nonmetal, dtype=float)
    positive = np.asarray(is_nonmetal, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    distinct = np.unique(p)
    cuts = np.concatenate(([distinct[0] - 1e-9], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1e-9]))
    order = np.argsort(p)
    sorted_p, sorted_pos = p[order], positive[order]
    below = np.searchsorted(sorted_p, cuts, side="left")  # points with p < cut are called metal
    pos_below = np.concatenate(([0], np.cumsum(sorted_pos)))[below]
    neg_below = below - pos_below
    balanced = ((n_pos - pos_below) / n_pos + neg_below / n_neg) / 2
    called = len(p) - below
    precision = np.where(called > 0, (n_pos - pos_below) / np.maximum(called, 1), 0.0)
    allowed = precision >= min_precision
    if allowed.any():
        balanced = np.where(allowed, balanced, -1.0)
    best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    return float(np.clip(cuts[best[len(best) // 2]], 1e-6, 1 - 1e-6))


def classification_metrics(p_nonmetal: np.ndarray, is_nonmetal: np.ndarray, threshold: float) -> dict[str, float]:
    """Recall, precision and balanced accuracy of "non-metal" at ``threshold`` on P(non-metal).

    Shapes:
        p_nonmetal, is_nonmetal: (n,) → dict of scalars.
    """
    called = np.asarray(p_nonmetal, float) >= threshold
    truth = np.asarray(is_nonmetal, bool)
    tp = float((called & truth).sum())
    recall = tp / truth.sum() if truth.any() else math.nan
    precision = tp / called.sum() if called.any() else math.nan
    specificity = float((~called & ~truth).sum()) / (~truth).sum() if (~truth).any() else math.nan
    return {"recall": recall, "precision": precision, "balanced_accuracy": (recall + specificity) / 2}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, float), 1e-7, 1.0 - 1e-7)  # float32 P rounds to 1 near logits of 16
    return np.log(q / (1.0 - q))


def fit_platt(p: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` of ``P_cal = sigmoid(a · logit(p) + b)`` (Platt scaling on a probability).

    Shapes:
        p, positive: (n,) → (a, b).
    """
    from scipy.optimize import minimize

    x, y = _logit(p), np.asarray(positive, float)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * x + theta[1]
        q = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
        return float(np.sum(np.logaddexp(0.0, z) - y * z)), np.array([np.sum((q - y) * x), np.sum(q - y)])

    result = minimize(loss_and_grad, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1])


def platt(p: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """``sigmoid(a · logit(p) + b)``: probabilities recalibrated with :func:`fit_platt`'s ``(a, b)``."""
    return 1.0 / (1.0 + np.exp(-np.clip(a * _logit(p) + b, -60, 60)))


def brier_score(p: np.ndarray, positive: np.ndarray) -> float:
    """Mean squared difference between the probability and the 0/1 outcome."""
    return float(np.mean((np.asarray(p, float) - np.asarray(positive, float)) ** 2))


def expected_calibration_error(p: np.ndarray, positive: np.ndarray, bins: int = 10) -> float:
    """Share-weighted mean |mean probability − observed frequency| over ``bins`` equal-width bins of ``p``."""
    p, y = np.asarray(p, float), np.asarray(positive, float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return float(total)
