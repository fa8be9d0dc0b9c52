"""``matmeta bench RECIPE``: run a benchmark recipe; baselines side by side, one table."""

from __future__ import annotations

from pathlib import Path

import typer


def bench(
    recipe: Path = typer.Argument(..., help="Benchmark recipe, e.g. recipes/engine.toml."),
    quick: bool = typer.Option(False, "--quick", help="A small, fast run (smoke test); numbers not for reporting."),
) -> None:
    """Run a benchmark and print its table."""
    from matmeta.runs import bench as run_bench

    run_bench(recipe, quick=quick)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the CLI."""
    app.command("bench")(bench)
