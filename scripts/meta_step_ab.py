"""A/B of the predictor's meta-training step in one process: per-task loop vs padded vmap (CPU and wall time).

    python scripts/meta_step_ab.py [RECIPE] [ROUNDS]

The shipped checkpoint's network and engine settings (second order, Meta-SGD per-element rates,
the recipe's inner steps), the recipe's training episodes (meta-batch, k_support, k_query), dropout
on as in training. Each round times one meta-step (meta-loss + backward) of each path on the same
freshly sampled meta-batch; medians over the rounds. Ratios within this one process are what count
on a shared machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch


def main(recipe_path: Path, rounds: int) -> None:
    """Print the median meta-step time of both paths and their ratio."""
    import tomllib

    from matmeta.meta.perf import tune_cpu_allocator
    from matmeta.predict.config import PredictorRecipe
    from matmeta.predict.data import load_table, loss_fn
    from matmeta.predict.predictor import Predictor
    from matmeta.tasks import FamilyEpisodes

    torch.set_num_threads(1)
    tune_cpu_allocator()
    recipe = PredictorRecipe.from_recipe(tomllib.loads(recipe_path.read_text()), str(recipe_path))
    predictor = Predictor.load()
    maml = predictor.maml
    maml.inner_steps = recipe.maml.inner_steps
    table, _ = load_table(Path(recipe.data.store), recipe.data, predictor.stats)
    source = FamilyEpisodes(
        table, predictor.metadata["families"]["train"], recipe.episodes.k_support, recipe.episodes.k_query, 0
    )
    generator = torch.Generator().manual_seed(0)
    maml.train()
    times: dict[str, list[tuple[float, float]]] = {"loop": [], "padded vmap": []}
    for round_ in range(rounds + 1):
        tasks = source.sample(recipe.trainer.meta_batch_size, generator)
        for name, vectorize in (("loop", False), ("padded vmap", None)):
            maml.zero_grad(set_to_none=True)
            wall, cpu = time.perf_counter(), time.process_time()
            maml.meta_loss(tasks, loss_fn, vectorize=vectorize).backward()
            if round_:  # round 0 warms up
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    for name, values in times.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(
            f"{name:12s} meta-step: median wall {1000 * wall:.0f} ms, median CPU {1000 * cpu:.0f} ms ({rounds} rounds)"
        )
    ratio_wall = statistics.median(v[0] for v in times["loop"]) / statistics.median(v[0] for v in times["padded vmap"])
    ratio_cpu = statistics.median(v[1] for v in times["loop"]) / statistics.median(v[1] for v in times["padded vmap"])
    print(f"loop / padded vmap: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x CPU")


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "recipes/perovskites.toml"),
        int(sys.argv[2]) if len(sys.argv) > 2 else 21,
    )
