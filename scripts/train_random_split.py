"""Train (or reuse) the random 80/10/10-split network of `matmeta bench recipes/fewshot_mp.toml` ahead of the bench.

The bench trains it itself when its cache is missing; this script lets the ~90-minute training run in the
background beside the meta-training (`OMP_NUM_THREADS=1 python scripts/train_random_split.py`).
"""

from pathlib import Path

from matmeta.bench.fewshot_mp import FewshotMPConfig
from matmeta.bench.fewshot_mp_setup import random_split_model
from matmeta.predict.config import PredictorRecipe
from matmeta.predict.data import ensure_store, load_table
from matmeta.recipes import config_from_dict, load_recipe

bench = config_from_dict(FewshotMPConfig, load_recipe(Path("recipes/fewshot_mp.toml"))["bench"], "fewshot_mp")
recipe = PredictorRecipe.from_recipe(load_recipe(bench.predictor_recipe), str(bench.predictor_recipe))
table, _ = load_table(ensure_store(recipe.data), recipe.data)
random_split_model(table, recipe, bench.seed, bench.out_dir)
