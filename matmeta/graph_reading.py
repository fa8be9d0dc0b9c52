"""Structure files read and turned into graph arrays, in worker processes when the batch is large.

Parsing a CIF and building its neighbour list cost ~2.5 ms a structure in Python, three times the
network's share of a prediction; both are per-file work that two processes split cleanly. A worker
returns the ``Structure`` (pickled, ~0.2 ms a round trip) with its graph arrays, so the caller keeps
everything it had from :func:`matmeta.io.read_structures`, in the same order, with the same messages.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.errors import MatmetaInputError

# below this many files a pool's start-up (~50 ms) and pickling outweigh what it saves
MIN_PARALLEL_FILES = 256
GraphArrays = tuple[np.ndarray, np.ndarray, np.ndarray]
# (name, Structure, its graph arrays, or the one-line reason it has none)
ReadGraph = tuple[str, Any, "GraphArrays | str"]


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def read_graphs(
    sources: Sequence[str | Path], graph_config: Any, workers: int | None = None
) -> tuple[list[ReadGraph], list[str]]:
    """Every readable structure of ``sources`` (files, folders, globs) with its graph arrays.

    Args:
        sources: as :func:`matmeta.io.read_structures` takes them.
        graph_config: the checkpoint's :class:`matmeta.graphs.GraphConfig`.
        workers: processes (None: the available cores, 1 below ``MIN_PARALLEL_FILES`` files).

    Returns:
        ``(name, Structure, (atomic_numbers, edge_index, edge_dist) or the reason no graph could be built)``
        per structure in file order, and one message per file that could not be read.
    """
    from matmeta.io import expand_each

    items = expand_each(sources)
    paths = [item for item in items if not isinstance(item, str)]
    if workers is None:
        workers = available_cores() if len(paths) >= MIN_PARALLEL_FILES else 1
    read = functools.partial(_read_file_graphs, graph_config=graph_config)
    if workers > 1 and len(paths) > 1:
        from matmeta.store.pool import worker_pool

        with worker_pool(min(workers, len(paths)), None) as pool:
            results = list(pool.imap(read, paths, chunksize=max(1, min(64, len(paths) // (8 * workers)))))
    else:
        results = [read(path) for path in paths]
    by_path = iter(results)
    good: list[ReadGraph] = []
    bad: list[str] = []
    for item in items:  # messages in the order the inputs were given, as read_structures reports them
        result = item if isinstance(item, str) else next(by_path)
        if isinstance(result, str):
            bad.append(result)
        else:
            good.extend(result)
    return good, bad


def _read_file_graphs(path: Path, graph_config: Any) -> list[ReadGraph] | str:
    """One file's structures with their graph arrays, or the message why the file cannot be read."""
    from matmeta.graphs import structure_graph_arrays
    from matmeta.io import read_structure_file

    try:
        named = read_structure_file(path)
    except MatmetaInputError as exc:
        return str(exc)
    out: list[ReadGraph] = []
    for name, structure in named:
        try:
            arrays, _ = structure_graph_arrays(structure, graph_config, on_isolated_atoms="error")
        except MatmetaInputError as exc:
            out.append((name, structure, str(exc)))
            continue
        graph = (arrays["atomic_numbers"], arrays["edge_index"], arrays["edge_dist"])
        out.append((name, structure, graph))
    return out
