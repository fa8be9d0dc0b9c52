"""Ingest into the LMDB graph store: atomic, resumable, idempotent.

The layout of the store (records, ``__meta__``, the ``count`` progress marker) and how readers open it
are described in :mod:`matmeta.store.reader`. Records of a batch and the new ``count`` are written in one
transaction, so a reader or a resumed ingest never sees half a batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matmeta.errors import StoreError
from matmeta.graphs import GraphConfig
from matmeta.store.plan import plan_items
from matmeta.store.pool import default_signals, worker_pool  # noqa: F401 - default_signals: re-exported
from matmeta.store.reader import (
    FAMILY_KINDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    META_KEY,
    _check_metadata,
    _config_mismatch,
    _open_env,
)
from matmeta.store.records import (
    IngestSettings,
    WorkItem,
    record_info,
    star_work,
    work_chunk,
)

# ----------------------------------------------------------------------------- ingest


@dataclass
class IngestReport:
    """What an ingest did."""

    path: Path
    added: int = 0
    already_present: int = 0
    errors: list[str] = field(default_factory=list)
    total: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no input was refused."""
        return not self.errors


def _new_metadata(config: GraphConfig, targets: Sequence[str], settings: IngestSettings) -> dict[str, Any]:
    from matmeta import __version__

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "matmeta_version": __version__,
        "graph_config": config.to_dict(),
        "target_names": list(targets),
        "ingest_settings": {
            "max_atoms": settings.max_atoms,
            "ordered_approximation": settings.ordered_approximation,
            "on_isolated_atoms": settings.on_isolated_atoms,
            "allow_missing_targets": settings.allow_missing_targets,
        },
        "family_kinds": list(FAMILY_KINDS),
        "count": 0,
        "created": now,
        "updated": now,
    }


def _existing_ids(env: Any, count: int) -> set[str]:
    ids = set()
    with env.begin() as txn:
        for i in range(count):
            raw = txn.get(str(i).encode("ascii"))
            if raw is not None:
                ids.add(str(record_info(raw)["id"]))
    return ids


def _claim(txn: Any, count: int, pending: list[tuple[str, bytes]], report: IngestReport) -> int:
    """The store's count now (inside a write txn); drops from ``pending`` ids another ingest stored since ``count``."""
    stored = int(json.loads(txn.get(META_KEY))["count"])
    others = {str(record_info(txn.get(str(i).encode("ascii")))["id"]) for i in range(count, stored)}
    kept = [item for item in pending if item[0] not in others]
    report.already_present += len(pending) - len(kept)
    pending[:] = kept
    return stored


def ingest(
    sources: str | Path | Sequence[str | Path],
    out_path: str | Path,
    config: GraphConfig | None = None,
    targets: Sequence[str] = (),
    *,
    cif_column: str = "cif",
    id_column: str | None = None,
    targets_csv: str | Path | None = None,
    settings: IngestSettings | None = None,
    workers: int = 2,
    batch_size: int = 256,
    chunk_size: int = 16,
    limit: int | None = None,
    show_progress: bool | None = None,
    on_error: Any = None,
    on_batch: Any = None,
    start_method: str | None = None,
) -> IngestReport:
    """Build or complete a graph store from structure sources.

    Reason for its length: the argument list below; the body is plan -> open the store -> build and write.

    Ingest is resumable and idempotent: records whose id is already in the store are skipped, so
    rerunning after an interruption completes the store without duplicates, and rerunning a
    finished ingest adds nothing. Each batch of records is written in one LMDB transaction
    together with the new ``count``. Bad inputs are reported one line each (``on_error``, by
    default :func:`matmeta.console.report_error`) and listed in the report; good ones are stored.

    Args:
        sources: A CSV with a CIF column, or structure files / directories / globs.
        out_path: The store directory (created if missing).
        config: Graph settings (default ``GraphConfig()``); must match an existing store.
        targets: Target column names (must match an existing store).
        cif_column: CSV column with the CIF text.
        id_column: CSV column with record ids (default: the 1-based row number); for structure
            files, the id column of ``targets_csv`` (default ``id``).
        targets_csv: Targets for structure files, keyed by file stem.
        settings: Validation settings (see :class:`IngestSettings`).
        workers: Worker processes; 1 runs in this process.
        batch_size: Records per write transaction.
        chunk_size: Items per task sent to a worker.
        limit: Only the first ``limit`` items (after skipping those already stored).
        show_progress: Force the progress bar on or off (default: when stderr is a terminal).
        on_error: Called with each error line.
        on_batch: Called with the store's record count after each committed batch.
        start_method: ``"fork"`` (default where available: workers share the modules this process
            imported, no start-up cost), ``"forkserver"`` or ``"spawn"`` (workers import
            :mod:`matmeta.records` afresh; everything they run is importable and picklable).

    Returns:
        An :class:`IngestReport`.

    Raises:
        MatmetaInputError: an unusable whole input (missing file, missing column).
        StoreError: the existing store has other graph settings, other targets, or a newer format.
    """
    from matmeta.console import report_error

    started = time.perf_counter()
    config = config or GraphConfig()
    settings = settings or IngestSettings()
    out_path = Path(out_path)
    on_error = on_error or report_error
    targets = tuple(targets)

    items, errors = plan_items(
        sources,
        targets,
        cif_column=cif_column,
        id_column=id_column,
        targets_csv=targets_csv,
        allow_missing_targets=settings.allow_missing_targets,
    )
    for message in errors:
        on_error(message)

    env = _open_store(out_path)
    try:
        meta, present, is_new = _store_state(env, out_path, config, targets, settings)
        todo = [item for item in items if item.id not in present]
        report = IngestReport(out_path, already_present=len(items) - len(todo), errors=list(errors))
        if limit is not None:
            todo = todo[: max(0, limit)]
        if is_new:
            with env.begin(write=True) as txn:
                txn.put(META_KEY, json.dumps(meta).encode())
        writer = _BatchWriter(env, meta, report, present, batch_size, on_error, on_batch)
        chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
        _build_and_write(chunks, config, settings, writer, workers, start_method, show_progress)
        report.total = int(meta["count"])
    finally:
        env.close()
    report.seconds = time.perf_counter() - started
    return report


def _build_and_write(
    chunks: list[list[WorkItem]],
    config: GraphConfig,
    settings: IngestSettings,
    writer: _BatchWriter,
    workers: int,
    start_method: str | None,
    show_progress: bool | None,
) -> None:
    """Build the records of every chunk (in this process or a worker pool) and hand them to ``writer``."""
    from matmeta.console import progress

    config_dict = config.to_dict()
    settings_dict = {k: getattr(settings, k) for k in IngestSettings.__dataclass_fields__}
    pool = None
    if workers > 1 and len(chunks) > 1:
        pool = worker_pool(min(workers, len(chunks)), start_method)  # before the progress thread starts
    try:
        with progress(disable=None if show_progress is None else not show_progress) as bar:
            task = bar.add_task("ingest", total=sum(len(c) for c in chunks))
            if pool is None:
                for chunk in chunks:
                    writer.consume(work_chunk(chunk, config_dict, settings_dict))
                    bar.advance(task, len(chunk))
            else:
                jobs = ((chunk, config_dict, settings_dict) for chunk in chunks)
                for chunk, results in zip(chunks, pool.imap(star_work, jobs), strict=True):
                    writer.consume(results)
                    bar.advance(task, len(chunk))
            writer.flush()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _open_store(out_path: Path) -> Any:
    """The store's LMDB environment for writing (created when missing); refuses a folder that is not a store."""
    if out_path.exists() and not out_path.is_dir():
        raise StoreError(f"{out_path}: exists and is not a folder (a graph store is a folder)")
    if out_path.exists() and not (out_path / "data.mdb").exists() and any(out_path.iterdir()):
        raise StoreError(f"{out_path}: exists and is not a graph store")
    return _open_env(out_path, readonly=False)


def _store_state(
    env: Any, out_path: Path, config: GraphConfig, targets: tuple[str, ...], settings: IngestSettings
) -> tuple[dict[str, Any], set[str], bool]:
    """(metadata, ids already stored, whether the store is new); an existing store must match the settings."""
    with env.begin() as txn:
        raw_meta = txn.get(META_KEY)
    if raw_meta is None:
        return _new_metadata(config, targets, settings), set(), True
    meta = _check_metadata(out_path, raw_meta)
    mismatch = _config_mismatch(GraphConfig.from_dict(meta["graph_config"]), config)
    if mismatch:
        raise StoreError(f"{out_path}: {mismatch}; ingest into a new store")
    if tuple(meta["target_names"]) != targets:
        raise StoreError(
            f"{out_path}: store targets are {', '.join(meta['target_names']) or 'none'}; "
            f"this ingest gives {', '.join(targets) or 'none'}"
        )
    return meta, _existing_ids(env, int(meta["count"])), False


class _BatchWriter:
    """Collects the workers' records and commits them in batches, each with the new ``count``, in one transaction."""

    def __init__(
        self, env: Any, meta: dict[str, Any], report: IngestReport, present: set[str], batch_size: int,
        on_error: Any, on_batch: Any,
    ) -> None:  # fmt: skip
        self.env, self.meta, self.report, self.present = env, meta, report, present
        self.batch_size, self.on_error, self.on_batch = batch_size, on_error, on_batch
        self.pending: list[tuple[str, bytes]] = []
        self.seen = set(present)

    def flush(self) -> None:
        """Write the pending records (LMDB serialises writers; another ingest may have added records)."""
        if not self.pending:
            return
        meta = self.meta
        with self.env.begin(write=True) as txn:
            count = _claim(txn, int(meta["count"]), self.pending, self.report)
            meta["count"] = count + len(self.pending)
            meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for offset, (_, blob) in enumerate(self.pending):
                txn.put(str(count + offset).encode("ascii"), blob)
            txn.put(META_KEY, json.dumps(meta).encode())
        self.report.added += len(self.pending)
        self.pending.clear()
        if self.on_batch is not None:
            self.on_batch(int(meta["count"]))

    def consume(self, results: list[tuple[list[tuple[str, bytes, list[str]]], str | None]]) -> None:
        """Take one chunk's results: report errors, skip stored or duplicate ids, flush full batches."""
        from matmeta.console import warn

        for records, error in results:
            if error is not None:
                self.report.errors.append(error)
                self.on_error(error)
                continue
            for rid, blob, warnings in records:
                for message in warnings:
                    warn(message)
                if rid in self.present:  # e.g. a frame of a multi-frame file stored by an interrupted run
                    self.report.already_present += 1
                    continue
                if rid in self.seen:
                    message = f"{rid}: duplicate id (already stored)"
                    self.report.errors.append(message)
                    self.on_error(message)
                    continue
                self.seen.add(rid)
                self.pending.append((rid, blob))
            if len(self.pending) >= self.batch_size:
                self.flush()
