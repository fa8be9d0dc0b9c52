"""A recipe to the code that runs it: ``[meta_train] app`` to an app's trainer, ``[bench] name`` to a benchmark.

Explicit imports, one per entry, inside the functions (each app's modules load only when its recipe runs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from matmeta.errors import RecipeError
from matmeta.recipes import load_recipe

TRAINERS = ("predictor", "generator", "family_generator", "jmak", "measured_gap")
BENCHMARKS = (
    "ingest", "engine", "fewshot", "fewshot_mp", "fewshot_expt_gap", "jmak", "jmak_real", "generate",
    "generate_families", "explain", "federated", "robust",
)  # fmt: skip


def _trainer(app_name: str) -> Callable[..., Path]:
    if app_name == "predictor":
        from matmeta.predict.train import meta_train_from_recipe
    elif app_name == "generator":
        from matmeta.design.train import meta_train_from_recipe
    elif app_name == "family_generator":
        from matmeta.design.family_train import meta_train_from_recipe
    elif app_name == "measured_gap":
        from matmeta.predict.measured_train import meta_train_measured as meta_train_from_recipe
    else:
        from matmeta.kinetics.prior import meta_train_from_recipe
    return meta_train_from_recipe


def _benchmark(name: str) -> Callable[..., None]:
    if name == "ingest":
        from matmeta.bench.ingest import run
    elif name == "engine":
        from matmeta.bench.engine import run
    elif name == "fewshot":
        from matmeta.bench.fewshot import run
    elif name == "fewshot_mp":
        from matmeta.bench.fewshot_mp import run
    elif name == "fewshot_expt_gap":
        from matmeta.bench.fewshot_expt_gap import run
    elif name == "jmak":
        from matmeta.bench.jmak import run
    elif name == "jmak_real":
        from matmeta.bench.jmak_real import run
    elif name == "generate":
        from matmeta.bench.generate import run
    elif name == "generate_families":
        from matmeta.bench.generate_families import run
    elif name == "federated":
        from matmeta.bench.federated import run
    elif name == "robust":
        from matmeta.bench.robust import run
    else:
        from matmeta.bench.explain import run
    return run


def meta_train(recipe_path: Path, out: Path | None = None, steps: int | None = None, app: str | None = None) -> Path:
    """Meta-train whatever the recipe describes; returns the checkpoint path.

    Args:
        recipe_path: a TOML recipe with a ``[meta_train]`` section.
        out: checkpoint path (default: the recipe's).
        steps: override of the number of outer steps.
        app: if given, the recipe must be for this app (``matmeta jmak meta-train`` passes ``"jmak"``).
    """
    recipe = load_recipe(recipe_path)
    app_name = recipe.get("meta_train", {}).get("app")
    if app is not None and app_name != app:
        raise RecipeError(f"{recipe_path}: [meta_train] app must be {app!r} here, got {app_name!r}")
    if app_name not in TRAINERS:
        raise RecipeError(f"{recipe_path}: [meta_train] app must be one of {', '.join(TRAINERS)}, got {app_name!r}")
    return _trainer(app_name)(recipe, Path(recipe_path), out=out, steps=steps)


def bench(recipe_path: Path, quick: bool = False) -> None:
    """Run the benchmark named by the recipe's ``[bench] name`` (module ``matmeta.bench.<name>``)."""
    recipe: dict[str, Any] = load_recipe(recipe_path)
    name = recipe.get("bench", {}).get("name")
    if name not in BENCHMARKS:
        raise RecipeError(f"{recipe_path}: [bench] name must be one of {', '.join(BENCHMARKS)}, got {name!r}")
    _benchmark(name)(recipe, Path(recipe_path), quick=quick)
