"""``matmeta inspect MODEL``: what a meta-learned predictor learned, per layer; parse → library → table."""

from __future__ import annotations

from pathlib import Path

import typer


def inspect(
    model: str = typer.Argument("mp", help="Predictor checkpoint: a path, or a shipped name (mp, perovskites)."),
    store: Path = typer.Option(None, "--store", help="Graph store to sample its training families' tasks from."),
    tasks: int = typer.Option(8, "--tasks", help="Support sets sampled from the store."),
    k: int = typer.Option(10, "--k", help="Structures per support set."),
    out: Path = typer.Option(None, "--out", help="Also write the table as .csv or .json."),
) -> None:
    """Weight scales against Xavier / Kaiming, learned inner rates; with --store: curvature, step sizes, saturation."""
    from matmeta.atomic import writable_target, write_table
    from matmeta.console import print_table
    from matmeta.predict.inspection import inspect_predictor

    if out is not None:
        writable_target(out)
    result = inspect_predictor(model, store, tasks, k)
    rows = result["tensors"]
    columns = ["tensor", "shape", "std", "xavier", "std/xavier", "rate_mean", "kappa", "step", "rate_kappa"]
    print_table(
        f"{result['checkpoint']}: scales, learned inner rates"
        + (f", curvature on {tasks} tasks of k = {k} (κ = gᵀHg/‖g‖², step = ‖α⊙g‖/‖θ‖)" if store else ""),
        columns, [[r.get(c, "") for c in columns] for r in rows], digits=3,
    )  # fmt: skip
    if store is not None:
        print_table("saturated pre-activations (SiLU x < -4, sigmoid |x| > 4)", ["module", "share"],
                    sorted(result["saturation"].items()), digits=3)  # fmt: skip
        link = result["curvature_link"]
        typer.echo(f"scale / Xavier vs curvature across {link['n']} weight matrices: Spearman {link['spearman']:.3f} "
                   f"(p = {link['p_value']:.3g})")  # fmt: skip
    if out is not None:
        write_table(out, rows, columns)


def register(app: typer.Typer) -> None:
    """Add ``inspect`` to the CLI."""
    app.command("inspect")(inspect)
