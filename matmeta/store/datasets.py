"""The shared development datasets: where they live and building their graph stores on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matmeta.errors import StoreError

PEROVSKITES_CSV = "perovskites/perovskites.csv"
PEROVSKITE_TARGETS = ("heat_ref", "ind_gap", "dir_gap")


def shared_data_dir() -> Path:
    """``$MATMETA_SHARED_DATA`` or ``../shared/data`` (read by commands and recipes, never at import)."""
    return Path(os.environ.get("MATMETA_SHARED_DATA", "../shared/data"))


def ensure_store(
    store: str | Path,
    source_csv: str = PEROVSKITES_CSV,
    graph_config: Any = None,
    targets: tuple[str, ...] = PEROVSKITE_TARGETS,
    id_column: str = "material_id",
) -> Path:
    """The store path; ingested from the shared CSV ``source_csv`` when it does not exist yet."""
    store = Path(store)
    if store.exists():
        return store
    from matmeta.graphs import GraphConfig
    from matmeta.store.ingest import ingest

    csv = shared_data_dir() / source_csv
    if not csv.exists():
        raise StoreError(f"{store}: store missing and its source {csv} not found (set MATMETA_SHARED_DATA)")
    ingest([csv], store, graph_config or GraphConfig(), targets=targets, id_column=id_column)
    return store
