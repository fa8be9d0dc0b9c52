"""Adapters from each app to the model-agnostic influence mathematics of :mod:`matmeta.explain.influence`.

:func:`explain_structures` (crystal predictor) and :func:`explain_curve` (JMAK prior) connect an app's
pieces — support items, ``collate``, ``per_example_loss`` and the query — to
:func:`~matmeta.explain.influence.explain_adaptation`; :func:`explain_support_file` and
:func:`explain_points_file` are what ``matmeta explain`` and ``matmeta jmak explain`` call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.errors import MatmetaInputError
from matmeta.explain.influence import explain_adaptation
from matmeta.explain.report import Explanation
from matmeta.io import read_structures
from matmeta.kinetics import fit as jmak_fit
from matmeta.kinetics.api import read_curves_reporting
from matmeta.kinetics.prior import load_prior
from matmeta.models.gnn import collate
from matmeta.models.jmak import log_time_at_fraction
from matmeta.predict.data import GAP, per_example_loss
from matmeta.predict.predictor import Predictor
from matmeta.predict.support import read_support


def explain_structures(
    predictor: Any,
    support: Sequence[Any],
    values: Sequence[float],
    queries: Sequence[Any],
    target: str = "formation_energy_per_atom",
    support_names: Sequence[str] | None = None,
    query_names: Sequence[str] | None = None,
    steps: int | None = None,
    first_order: bool = False,
    batched_loo: bool = True,
) -> Explanation:
    """Influence of each labelled support structure on the adapted prediction of each query structure.

    The adaptation is the one ``matmeta finetune`` does: the engine's inner loop on the support set,
    whose loss is the mean of :func:`matmeta.predictor_data.per_example_loss` over structures labelled
    with ``target`` only.

    Args:
        predictor: a loaded :class:`matmeta.predict.Predictor`.
        support: n ≥ 2 pymatgen structures of one family.
        values: their measured ``target``, in its unit (eV/atom, eV/cell or eV: part of the name).
        queries: structures whose adapted prediction is explained.
        target: one of the predictor's target names (``formation_energy_per_atom``, ``band_gap_pbe``, ...).
        support_names: labels of the support structures (default ``support 1`` …).
        query_names: labels of the query structures.
        steps: inner steps (default: the checkpoint's).
        first_order: first-order (no Hessian) estimate instead of the full one.
        batched_loo: run the leave-one-out adaptations as one vmapped program (exact here: a
            structure's loss does not depend on the other structures).

    Returns:
        A :class:`matmeta.explain.Explanation` (query outputs in the target's unit).

    Raises:
        MatmetaInputError: an unknown target, fewer than 2 support structures or an invalid value.
    """
    role = predictor.check_target(target)
    names = list(support_names) if support_names is not None else [f"support {i + 1}" for i in range(len(support))]
    values_arr = np.asarray(values, dtype=float)
    if len(support) < 2 or len(support) != len(values_arr):
        raise MatmetaInputError(f"support set: need ≥ 2 structures with one value each, got {len(support)}")
    for name, value in zip(names, values_arr, strict=True):
        if not math.isfinite(value) or (role == GAP and value < 0):
            raise MatmetaInputError(f"{name}: {target} value {value} is not a valid measurement")
    items = predictor.support_items(support, values_arr, target)

    query_graphs, _ = predictor.graphs(queries)
    nan_y = torch.full((3,), math.nan)
    query_batch = collate([(*g, nan_y) for g in query_graphs])

    def query_fn(forward: Any) -> torch.Tensor:
        return predictor.target_values(forward(*query_batch.inputs()), query_batch, target)

    return explain_adaptation(
        predictor.maml,
        items,
        collate,
        per_example_loss,
        query_fn,
        support_names=names,
        query_names=query_names,
        steps=steps,
        first_order=first_order,
        batched_loo=batched_loo,
    )


def explain_curve(
    maml: Any,
    time_s: Sequence[float],
    fraction: Sequence[float],
    noise: float,
    name: str = "curve",
    support_names: Sequence[str] | None = None,
    steps: int | None = None,
) -> Explanation:
    """Influence of each measured point of one curve on its fitted t50 (s), the JMAK prior adapted by MAML.

    Every adaptation (with all points and each leave-one-out one) works in the same normalised time,
    ``t_ref`` = geometric mean of all the curve's times, so the explanations compare like with like.

    Args:
        maml: the MAML-wrapped JMAK prior (:func:`matmeta.kinetics.prior.load_prior`).
        time_s: the curve's measurement times (s), at least 2.
        fraction: the transformed fraction at each time.
        noise: measurement σ that weights the prior (the prior's own).
        name: the curve, for the table.
        support_names: labels of the points.
        steps: inner steps (default: the prior's).

    Returns:
        A :class:`matmeta.explain.Explanation` with one query output, ``t50`` in seconds.
    """
    items = [(float(t), float(x)) for t, x in zip(time_s, fraction, strict=True)]
    ln_t_ref = sum(math.log(t) for t, _ in items) / len(items)
    fixed_collate = functools.partial(jmak_fit.collate, t_ref=math.exp(ln_t_ref), noise=noise)

    def t50(forward: Any) -> torch.Tensor:
        params = forward.params
        return torch.exp(log_time_at_fraction(params["ln_k"], params["n"], 0.5) + ln_t_ref).reshape(1)

    names = support_names or [f"t={t:.4g}s X={x:.3g}" for t, x in items]
    return explain_adaptation(
        maml,
        items,
        fixed_collate,
        jmak_fit.per_example_loss,
        t50,
        support_names=names,
        query_names=[f"{name} t50"],
        steps=steps,
    )


def explain_support_file(
    support: Path,
    queries: Sequence[str],
    model: Path | None = None,
    target: str = "formation_energy_per_atom",
    value_column: str | None = None,
    path_column: str = "path",
    cif_column: str = "cif",
    steps: int | None = None,
    first_order: bool = False,
) -> tuple[Explanation, list[str]]:
    """``matmeta explain``: read the support CSV and the query structures, load the predictor, explain.

    Returns:
        The explanation and one message per bad support row or query input (those are skipped).

    Raises:
        MatmetaInputError: unknown target, no readable query (named, before the support is read), or fewer
            than 2 usable support structures.
    """
    predictor = Predictor.load(model)
    predictor.check_target(target)  # before any structure is read
    named, bad_queries = read_structures(list(queries))  # before the support: no work for an unusable query
    if not named:
        raise MatmetaInputError(no_readable_query(queries, bad_queries))
    names, structures, values, bad = read_support(support, target, value_column, path_column, cif_column)
    bad += bad_queries
    if len(structures) < 2:
        raise MatmetaInputError(f"{support}: {len(structures)} usable support structure(s); explain needs ≥ 2")
    query_names = [name for name, _ in named]
    queries_ = [structure for _, structure in named]
    explanation = explain_structures(
        predictor, structures, values, queries_, target, names, query_names, steps, first_order
    )
    return explanation, bad


def no_readable_query(queries: Sequence[str], bad: Sequence[str]) -> str:
    """The one-line refusal of ``--query`` inputs none of which gave a structure: each input, the first reason."""
    shown = ", ".join(str(q) for q in list(queries)[:3]) + (f" and {len(queries) - 3} more" if len(queries) > 3 else "")
    reason = f" ({bad[0]}{f'; {len(bad) - 1} more unreadable' if len(bad) > 1 else ''})" if bad else ""
    return f"--query {shown or '(none)'}: no readable structure{reason}"


def explain_points_file(
    points: Path, prior: Path | None = None, noise: float | None = None, steps: int | None = None
) -> tuple[list[Explanation], list[str]]:
    """``matmeta jmak explain``: one explanation of t50 per curve of a points file (bad rows reported, skipped)."""
    if noise is not None and noise <= 0:
        raise MatmetaInputError(f"--noise {noise}: must be > 0")
    curves, errors = read_curves_reporting(points, "no curve with at least 2 valid points")
    maml, metadata = load_prior(prior)
    sigma = float(noise if noise is not None else metadata.get("model_config", {}).get("noise", 0.02))
    explanations = []
    for curve in curves:
        rows = curve.rows if len(curve.rows) == len(curve.time_s) else [None] * len(curve.time_s)
        names = [
            (f"row {r}: " if r is not None else "") + f"t={t:.4g}s X={x:.3g}"
            for r, t, x in zip(rows, curve.time_s, curve.fraction, strict=True)
        ]
        explanations.append(explain_curve(maml, curve.time_s, curve.fraction, sigma, curve.name, names, steps))
    return explanations, errors
