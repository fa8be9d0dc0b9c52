"""Symmetry family keys of a store's records (space group, prototype): computed on first use, kept beside them.

A spglib search costs ~2 ms per 20-atom cell, ten times the rest of a record, so ingest leaves these keys
out (:func:`matmeta.families.all_family_keys_of` with ``symmetry=False``) and the first reader that asks
for one computes them for every record, in a process pool, and writes them to ``symmetry_keys.json`` in
the store folder (temp file + rename). The file covers the store's first ``n`` records and carries the
sha256 of their ids; a resumed ingest only appends records, so the next reader computes the new ones and
extends it. A store in a read-only folder keeps its keys in memory for the process.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

CACHE_NAME = "symmetry_keys.json"
CACHE_VERSION = 1
KEYS = ("spacegroup", "prototype", "prototype_signature")
_CHUNK = 64


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def read_cache(folder: Path, ids: list[str]) -> dict[str, list[str]]:
    """The cached keys of the first records (empty lists when there is no valid cache)."""
    from matmeta.prototypes import SYMPREC_STORE

    empty: dict[str, list[str]] = {key: [] for key in KEYS}
    try:
        cached = json.loads((folder / CACHE_NAME).read_text())
        n = int(cached["n"])
        if cached["version"] != CACHE_VERSION or cached["symprec"] != SYMPREC_STORE or n > len(ids):
            return empty
        if cached["ids_sha256"] != _ids_digest(ids[:n]) or any(len(cached[key]) != n for key in KEYS):
            return empty
        return {key: [str(v) for v in cached[key]] for key in KEYS}
    except (OSError, ValueError, KeyError, TypeError):
        return empty


def _keys_of_chunk(cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[dict[str, str]]:
    """Worker: the symmetry keys of each cell (top level, so it pickles under ``spawn``)."""
    from matmeta.prototypes import symmetry_keys_of

    return [symmetry_keys_of(lattice, frac, numbers) for lattice, frac, numbers in cells]


def compute_keys(
    cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]], workers: int = 2, show_progress: bool | None = None
) -> list[dict[str, str]]:
    """The symmetry keys of ``cells`` (lattice, fractional coordinates, atomic numbers), in order."""
    from matmeta.console import progress
    from matmeta.store.pool import worker_pool

    chunks = [cells[i : i + _CHUNK] for i in range(0, len(cells), _CHUNK)]
    out: list[dict[str, str]] = []
    pool = worker_pool(min(workers, len(chunks)), None) if workers > 1 and len(chunks) > 1 else None
    try:
        with progress(disable=None if show_progress is None else not show_progress) as bar:
            task = bar.add_task("symmetry keys (spglib)", total=len(cells))
            results = pool.imap(_keys_of_chunk, chunks) if pool is not None else map(_keys_of_chunk, chunks)
            for chunk, keys in zip(chunks, results, strict=True):
                out.extend(keys)
                bar.advance(task, len(chunk))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return out


def symmetry_keys(store: Any, ids: list[str], workers: int = 2) -> dict[str, list[str]]:
    """Every record's ``spacegroup``, ``prototype`` and ``prototype_signature`` (cached; see the module doc).

    Args:
        store: a :class:`matmeta.store.reader.GraphStore`.
        ids: the ids of its records, in order.
        workers: processes for the records not cached yet.
    """
    from matmeta.atomic import write_text_atomic
    from matmeta.errors import MatmetaInputError
    from matmeta.prototypes import SYMPREC_STORE
    from matmeta.store.records import decode_record

    folder = Path(store.path)
    keys = read_cache(folder, ids)
    done = len(keys["prototype"])
    if done == len(ids):
        return keys
    cells = []
    for i in range(done, len(ids)):
        arrays, _ = decode_record(store._raw(i), ("lattice", "frac_coords", "atomic_numbers"), with_info=False)
        cells.append((arrays["lattice"], arrays["frac_coords"], arrays["atomic_numbers"]))
    for found in compute_keys(cells, workers):
        for key in KEYS:
            keys[key].append(found[key])
    entry = {"version": CACHE_VERSION, "symprec": SYMPREC_STORE, "n": len(ids), "ids_sha256": _ids_digest(ids)}
    try:
        write_text_atomic(folder / CACHE_NAME, json.dumps({**entry, **keys}))
    except (OSError, MatmetaInputError):  # a read-only store: the keys live in this process only
        pass
    return keys
