"""``matmeta meta-train RECIPE``: dispatch a recipe to the app that trains it."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

# recipe [meta_train] app = "<name>"  ->  "module:function(recipe: dict, recipe_path: Path, **overrides)"
TRAINERS = {
    "predictor": "matmeta.predict:meta_train_from_recipe",
    "generator": "matmeta.design_train:meta_train_from_recipe",
    "jmak": "matmeta.kinetics.prior:meta_train_from_recipe",
}


def run_meta_train(recipe_path: Path, out: Path | None = None, steps: int | None = None) -> Path:
    """Meta-train whatever the recipe describes; returns the checkpoint path."""
    from matmeta.errors import RecipeError
    from matmeta.recipes import load_recipe

    recipe = load_recipe(recipe_path)
    app_name = recipe.get("meta_train", {}).get("app")
    if app_name not in TRAINERS:
        raise RecipeError(f"{recipe_path}: [meta_train] app must be one of {', '.join(TRAINERS)}, got {app_name!r}")
    module_name, func_name = TRAINERS[app_name].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return func(recipe, Path(recipe_path), out=out, steps=steps)


def register(app: typer.Typer) -> None:
    """Add ``meta-train`` to the CLI."""

    @app.command("meta-train")
    def meta_train(
        recipe: Path = typer.Argument(..., help="Recipe TOML with a [meta_train] section."),
        out: Path = typer.Option(None, "--out", help="Checkpoint path (default: the recipe's)."),
        steps: int = typer.Option(None, "--steps", help="Override the number of outer steps."),
    ) -> None:
        """Meta-train a model (predictor, generator or JMAK prior) from a recipe."""
        path = run_meta_train(recipe, out=out, steps=steps)
        from matmeta.meta.distributed import current

        if current().is_main:  # under torchrun only rank 0 writes and reports
            typer.echo(f"checkpoint: {path}")
