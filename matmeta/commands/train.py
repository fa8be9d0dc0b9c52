"""``matmeta meta-train RECIPE``: the recipe's app trains; parse → :func:`matmeta.runs.meta_train` → report."""

from __future__ import annotations

from pathlib import Path

import typer


def meta_train(
    recipe: Path = typer.Argument(..., help="Recipe TOML with a \\[meta_train] section."),
    out: Path = typer.Option(None, "--out", help="Checkpoint path (default: the recipe's)."),
    steps: int = typer.Option(None, "--steps", help="Override the number of outer steps."),
) -> None:
    """Meta-train a model (predictor, generator or JMAK prior) from a recipe."""
    from matmeta.meta.distributed import current
    from matmeta.runs import meta_train as run_meta_train

    path = run_meta_train(recipe, out=out, steps=steps)
    if current().is_main:  # under torchrun only rank 0 writes and reports
        typer.echo(f"checkpoint: {path}")


def calibrate(
    recipe: Path = typer.Argument(..., help="The predictor's recipe TOML (its split, settings and checkpoint)."),
    model: Path = typer.Option(None, "--model", help="Predictor checkpoint to recalibrate (default: the recipe's)."),
    folds: int = typer.Option(None, "--folds", help="Family folds of the training families (default: the recipe's)."),
    fold: int = typer.Option(None, "--fold", help="Compute only this fold (0-based), e.g. to run folds in parallel."),
    checkpoint: Path = typer.Option(None, "--checkpoint", hidden=True, help="Deprecated: --model."),
) -> None:
    """Calibrate a predictor's gap intervals across families (out-of-fold residuals of the training families)."""
    from matmeta.guards import renamed
    from matmeta.predict.cross_calibrate import cross_calibrate, run_fold

    model = renamed("--checkpoint", "--model", checkpoint, model)

    if fold is not None:
        parts = run_fold(recipe, fold, folds)
        nonmetals = int(parts.zero["nonmetal"].sum())
        typer.echo(f"fold {fold}: {len(parts.zero['gap'])} structures, {nonmetals} non-metals; residuals cached")
        return
    result = cross_calibrate(recipe, model, folds, on_fold=lambda i: typer.echo(f"fold {i} ready"))
    zero, adapted = result["conformal"]["zero_shot"], result["conformal"]["adapted"]["10"]
    typer.echo(
        f"gap intervals from {zero['n_gap']} zero-shot / {adapted['n_gap']} adapted non-metal residuals of "
        f"{len(result['cross_family']['families']) + len(result['calibrated_on'])} families; leave-one-family-out "
        f"coverage {zero['held_out_family_coverage_scaled']:.3f} / {adapted['held_out_family_coverage_scaled']:.3f}"
    )


def register(app: typer.Typer) -> None:
    """Add ``meta-train`` and ``calibrate`` to the CLI."""
    app.command("meta-train")(meta_train)
    app.command("calibrate")(calibrate)
