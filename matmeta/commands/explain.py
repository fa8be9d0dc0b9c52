"""``matmeta explain`` and ``matmeta jmak explain``: which support measurements steered an adaptation.

The functions :func:`explain_structures` (crystal predictor) and :func:`explain_curve` (JMAK fit)
connect each app's pieces — support items, ``collate``, ``per_example_loss`` and the query — to the
model-agnostic :func:`matmeta.explain.explain_adaptation`; notebooks can call them directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

TARGETS = ("heat_ref", "band_gap")


# --------------------------------------------------------------------------------------------------
# Library side (heavy imports inside)
# --------------------------------------------------------------------------------------------------


def explain_structures(
    predictor: Any,
    support: Sequence[Any],
    values: Sequence[float],
    queries: Sequence[Any],
    target: str = "heat_ref",
    support_names: Sequence[str] | None = None,
    query_names: Sequence[str] | None = None,
    steps: int | None = None,
    first_order: bool = False,
    batched_loo: bool = True,
) -> Any:
    """Influence of each labelled support structure on the adapted prediction of each query structure.

    The adaptation is the one ``matmeta finetune`` does: the engine's inner loop on the support set,
    whose loss is the mean of :func:`matmeta.predictor_data.per_example_loss` over structures labelled
    with ``target`` only.

    Args:
        predictor: a loaded :class:`matmeta.predict.Predictor`.
        support: n ≥ 2 pymatgen structures of one family.
        values: their measured ``target`` (eV/cell for heat_ref, eV for band_gap).
        queries: structures whose adapted prediction is explained.
        target: ``heat_ref`` or ``band_gap``.
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
    import numpy as np
    import torch

    from matmeta.errors import MatmetaInputError
    from matmeta.explain import explain_adaptation
    from matmeta.models.gnn import collate
    from matmeta.predictor_data import per_example_loss

    if target not in TARGETS:
        raise MatmetaInputError(f"--target {target!r}: the predictor explains {', '.join(TARGETS)}")
    names = list(support_names) if support_names is not None else [f"support {i + 1}" for i in range(len(support))]
    values_arr = np.asarray(values, dtype=float)
    if len(support) < 2 or len(support) != len(values_arr):
        raise MatmetaInputError(f"support set: need ≥ 2 structures with one value each, got {len(support)}")
    for name, value in zip(names, values_arr, strict=True):
        if not math.isfinite(value) or (target == "band_gap" and value < 0):
            raise MatmetaInputError(f"{name}: {target} value {value} is not a valid measurement")
    graphs, _ = predictor.graphs(support)
    n_atoms = np.array([g[0].shape[0] for g in graphs], dtype=float)
    nan = np.full(len(graphs), np.nan)
    heat, gap = (values_arr, nan) if target == "heat_ref" else (nan, values_arr)
    y = predictor.stats.encode(heat, gap, n_atoms)
    items = [(*g, y[i]) for i, g in enumerate(graphs)]

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
) -> Any:
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
    import functools

    import torch

    from matmeta.explain import explain_adaptation
    from matmeta.kinetics.fit import collate, per_example_loss
    from matmeta.models.jmak import log_time_at_fraction

    items = [(float(t), float(x)) for t, x in zip(time_s, fraction, strict=True)]
    ln_t_ref = sum(math.log(t) for t, _ in items) / len(items)
    fixed_collate = functools.partial(collate, t_ref=math.exp(ln_t_ref), noise=noise)

    def t50(forward: Any) -> torch.Tensor:
        params = forward.params
        return torch.exp(log_time_at_fraction(params["ln_k"], params["n"], 0.5) + ln_t_ref).reshape(1)

    names = support_names or [f"t={t:.4g}s X={x:.3g}" for t, x in items]
    return explain_adaptation(
        maml, items, fixed_collate, per_example_loss, t50, support_names=names, query_names=[f"{name} t50"], steps=steps
    )


def _print_explanation(explanation: Any, unit: str, top: int) -> None:
    from matmeta.console import console, print_table

    for j, query in enumerate(explanation.query_names):
        rows = [r for r in explanation.influence if r.query == query][:top]
        rho = explanation.spearman[j]
        print_table(
            f"{query}: adapted {explanation.predictions[j]:.4g} {unit}; Spearman(LOO, approx) = {rho:.3f}",
            ["rank", "support point", f"LOO influence ({unit})", f"approx ({unit})", "own LOO loss", "z", "flag"],
            [
                [
                    r.rank,
                    r.support,
                    r.influence_loo,
                    r.influence_approx,
                    r.support_loo_loss,
                    r.support_z,
                    "CHECK" if r.check else "",
                ]
                for r in rows
            ],  # fmt: skip
        )
    if explanation.flagged:
        for name in explanation.flagged:
            console.print(f"check this measurement: {name} (its leave-one-out error is far above the others')")
    seconds = explanation.seconds
    console.print(
        f"exact leave-one-out {seconds.get('loo', math.nan):.3g} s, through the inner loop "
        f"{seconds.get('approx', math.nan):.3g} s",
        style="dim",
    )


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add ``explain`` to the CLI and ``explain`` to the ``jmak`` group."""
    from matmeta.commands.jmak import jmak_app
    from matmeta.kinetics.api import read_curves_reporting

    @app.command("explain")
    def explain(
        support: Path = typer.Option(..., "--support", help="CSV of labelled structures of one family."),
        query: list[str] = typer.Option(..., "--query", help="Structure file, directory or glob (repeatable)."),
        model: Path = typer.Option(None, "--model", help="Predictor checkpoint (default: the shipped one)."),
        target: str = typer.Option("heat_ref", "--target", help="heat_ref (eV/cell) or band_gap (eV)."),
        value_column: str = typer.Option(None, "--value-column", help="Column with the values (default: TARGET)."),
        path_column: str = typer.Option("path", "--path-column", help="Column with structure file paths."),
        cif_column: str = typer.Option("cif", "--cif-column", help="Column with CIF text."),
        steps: int = typer.Option(None, "--steps", help="Inner steps (default: the meta-learned number)."),
        first_order: bool = typer.Option(False, "--first-order", help="First-order (no Hessian) approximation."),
        top: int = typer.Option(20, "--top", help="Rows printed per query."),
        out: Path = typer.Option(None, "--out", help="Write every influence as CSV."),
        plot: Path = typer.Option(None, "--plot", help="Bar chart per query (png/pdf/svg)."),
    ) -> None:
        """Rank the support measurements by their influence on each query's adapted prediction."""
        from matmeta.commands.predict import read_structures, read_support
        from matmeta.console import report_error
        from matmeta.errors import MatmetaInputError
        from matmeta.explain import plot_explanation
        from matmeta.predict import Predictor
        from matmeta.predictor_data import UNITS

        if target not in TARGETS:
            raise MatmetaInputError(f"--target {target!r}: choose {' or '.join(TARGETS)}")
        names, structures, values, bad = read_support(support, target, value_column, path_column, cif_column)
        named, bad_queries = read_structures(query)
        bad += bad_queries
        for message in bad:
            report_error(message)
        if len(structures) < 2:
            raise MatmetaInputError(f"{support}: {len(structures)} usable support structure(s); explain needs ≥ 2")
        if not named:
            raise MatmetaInputError("--query: no readable structure")
        predictor = Predictor.load(model)
        explanation = explain_structures(
            predictor,
            structures,
            values,
            [structure for _, structure in named],
            target,
            names,
            [name for name, _ in named],
            steps,
            first_order,
        )
        _print_explanation(explanation, UNITS[target], top)
        if out is not None:
            explanation.to_csv(out)
            typer.echo(f"influences: {out}")
        if plot is not None:
            plot_explanation(explanation, plot, unit=UNITS[target])
            typer.echo(f"plot: {plot}")
        if bad:
            raise typer.Exit(1)

    @jmak_app.command("explain")
    def jmak_explain(
        points: Path = typer.Argument(..., help="CSV with curve,time_s,fraction rows (or a TTT table)."),
        prior: Path = typer.Option(None, "--prior", help="Prior checkpoint (default: the shipped one)."),
        noise: float = typer.Option(None, "--noise", help="Measurement sigma of the fractions (default: the prior's)."),
        steps: int = typer.Option(None, "--steps", help="Inner steps (default: the prior's)."),
        out: Path = typer.Option(None, "--out", help="Write every influence as CSV."),
        plot: Path = typer.Option(None, "--plot", help="Bar chart per curve (png/pdf/svg)."),
    ) -> None:
        """Rank each curve's timepoints by their influence on its fitted t50 (the meta-learned prior, adapted)."""
        from matmeta.errors import MatmetaInputError
        from matmeta.explain import Table, plot_explanation
        from matmeta.kinetics.prior import load_prior

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
            explanation = explain_curve(maml, curve.time_s, curve.fraction, sigma, curve.name, names, steps)
            _print_explanation(explanation, "s", top=len(names))
            explanations.append(explanation)
        if out is not None:
            Table([row for e in explanations for row in e.influence]).to_csv(out)
            typer.echo(f"influences: {out}")
        if plot is not None:
            plot_explanation(explanations, plot, unit="s")
            typer.echo(f"plot: {plot}")
        if errors:
            raise typer.Exit(1)
