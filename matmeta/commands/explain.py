"""``matmeta explain`` and ``matmeta jmak explain``: which support measurements steered an adaptation.

Parse → one call of :mod:`matmeta.explain.adapters` → render. ``jmak_explain`` is attached to the
``jmak`` group by :mod:`matmeta.cli`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer


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
    for name in explanation.flagged:
        console.print(f"check this measurement: {name} (its leave-one-out error is far above the others')")
    seconds = explanation.seconds
    console.print(
        f"exact leave-one-out {seconds.get('loo', math.nan):.3g} s, through the inner loop "
        f"{seconds.get('approx', math.nan):.3g} s",
        style="dim",
    )


def explain(
    support: Path = typer.Option(..., "--support", help="CSV of labelled structures of one family."),
    query: list[str] = typer.Option(..., "--query", help="Structure file, directory or glob (repeatable)."),
    model: Path = typer.Option(None, "--model", help="Predictor checkpoint (default: the shipped one)."),
    target: str = typer.Option(
        "formation_energy_per_atom",
        "--target",
        help="The model's target: formation_energy_per_atom (eV/atom) or band_gap_pbe (eV); heat_ref / band_gap "
        "with --model perovskites.",
    ),
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
    from matmeta.atomic import writable_target
    from matmeta.console import report_error
    from matmeta.explain.adapters import explain_support_file
    from matmeta.explain.plot import plot_explanation
    from matmeta.predict.support import UNIT_OF

    for target_path in (out, plot):
        if target_path is not None:
            writable_target(target_path)  # before any work: no explanation for an output that cannot be written
    explanation, bad = explain_support_file(
        support, query, model, target, value_column, path_column, cif_column, steps, first_order
    )
    for message in bad:
        report_error(message)
    _print_explanation(explanation, UNIT_OF.get(target, "eV"), top)
    if out is not None:
        explanation.to_csv(out)
        typer.echo(f"influences: {out}")
    if plot is not None:
        plot_explanation(explanation, plot, unit=UNIT_OF.get(target, "eV"))
        typer.echo(f"plot: {plot}")
    if bad:
        raise typer.Exit(1)


def jmak_explain(
    points: Path = typer.Argument(..., help="CSV with curve,time_s,fraction rows (or a TTT table)."),
    prior: Path = typer.Option(None, "--prior", help="Prior checkpoint (default: the shipped one)."),
    noise: float = typer.Option(None, "--noise", help="Measurement sigma of the fractions (default: the prior's)."),
    steps: int = typer.Option(None, "--steps", help="Inner steps (default: the prior's)."),
    out: Path = typer.Option(None, "--out", help="Write every influence as CSV."),
    plot: Path = typer.Option(None, "--plot", help="Bar chart per curve (png/pdf/svg)."),
) -> None:
    """Rank each curve's timepoints by their influence on its fitted t50 (the meta-learned prior, adapted)."""
    from matmeta.atomic import writable_target
    from matmeta.explain.adapters import explain_points_file
    from matmeta.explain.plot import plot_explanation
    from matmeta.explain.report import Table

    for target_path in (out, plot):
        if target_path is not None:
            writable_target(target_path)
    explanations, errors = explain_points_file(points, prior, noise, steps)
    for explanation in explanations:
        _print_explanation(explanation, "s", top=len(explanation.support_names))
    if out is not None:
        Table([row for e in explanations for row in e.influence]).to_csv(out)
        typer.echo(f"influences: {out}")
    if plot is not None:
        plot_explanation(explanations, plot, unit="s")
        typer.echo(f"plot: {plot}")
    if errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``explain`` to the CLI."""
    app.command("explain")(explain)
