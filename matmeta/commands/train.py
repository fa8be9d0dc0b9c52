"""``matmeta meta-train RECIPE``: the recipe's app trains; parse → :func:`matmeta.runs.meta_train` → report."""

from __future__ import annotations

from pathlib import Path

import typer


def meta_train(
    recipe: Path = typer.Argument(..., help="Recipe TOML with a [meta_train] section."),
    out: Path = typer.Option(None, "--out", help="Checkpoint path (default: the recipe's)."),
    steps: int = typer.Option(None, "--steps", help="Override the number of outer steps."),
) -> None:
    """Meta-train a model (predictor, generator or JMAK prior) from a recipe."""
    from matmeta.meta.distributed import current
    from matmeta.runs import meta_train as run_meta_train

    path = run_meta_train(recipe, out=out, steps=steps)
    if current().is_main:  # under torchrun only rank 0 writes and reports
        typer.echo(f"checkpoint: {path}")


def register(app: typer.Typer) -> None:
    """Add ``meta-train`` to the CLI."""
    app.command("meta-train")(meta_train)
