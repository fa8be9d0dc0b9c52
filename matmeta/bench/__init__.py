"""Benchmarks for ``matmeta bench recipes/<name>.toml``: one module per benchmark with ``run(recipe, path, quick)``."""
