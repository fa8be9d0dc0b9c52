"""``matmeta bench RECIPE``: run a benchmark recipe; baselines side by side, one table."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

BENCHMARKS = ("ingest", "engine", "fewshot", "jmak", "generate", "explain", "federated")


def run_bench(recipe_path: Path, quick: bool = False) -> None:
    """Run the benchmark named by the recipe's ``[bench] name`` (module ``matmeta.bench.<name>``)."""
    from matmeta.errors import RecipeError
    from matmeta.recipes import load_recipe

    recipe = load_recipe(recipe_path)
    name = recipe.get("bench", {}).get("name")
    if name not in BENCHMARKS:
        raise RecipeError(f"{recipe_path}: [bench] name must be one of {', '.join(BENCHMARKS)}, got {name!r}")
    importlib.import_module(f"matmeta.bench.{name}").run(recipe, Path(recipe_path), quick=quick)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the CLI."""

    @app.command("bench")
    def bench(
        recipe: Path = typer.Argument(..., help="Benchmark recipe, e.g. recipes/engine.toml."),
        quick: bool = typer.Option(False, "--quick", help="A small, fast run (smoke test); numbers not for reporting."),
    ) -> None:
        """Run a benchmark and print its table."""
        run_bench(recipe, quick=quick)
