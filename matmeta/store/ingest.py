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
from typing import TYPE_CHECKING, Any

import numpy as np

from matmeta.errors import MatmetaInputError, StoreError
from matmeta.graphs import GraphConfig
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

if TYPE_CHECKING:
    pass

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


def _parse_target(text: str, where: str, name: str, allow_missing: bool) -> float:
    value = text.strip()
    if value == "" or value.lower() in ("nan", "na", "null", "none"):
        if allow_missing:
            return float("nan")
        raise MatmetaInputError(f"{where}: target {name} is missing/NaN")
    try:
        number = float(value)
    except ValueError:
        raise MatmetaInputError(f"{where}: target {name}={value!r} is not a number") from None
    if np.isnan(number):
        if allow_missing:
            return number
        raise MatmetaInputError(f"{where}: target {name} is NaN")
    if not np.isfinite(number):
        raise MatmetaInputError(f"{where}: target {name}={value} is not finite")
    return number


def _column_families(row: dict[str, str], used: set[str]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v.strip()[:200]) for k, v in row.items() if k and k not in used)


def plan_items(
    sources: str | Path | Sequence[str | Path],
    targets: Sequence[str] = (),
    *,
    cif_column: str = "cif",
    id_column: str | None = None,
    targets_csv: str | Path | None = None,
    allow_missing_targets: bool = False,
) -> tuple[list[WorkItem], list[str]]:
    """Turn the sources into work items; rows with bad targets or duplicate ids become error lines.

    ``.csv`` sources are tables with a CIF column (ids must be unique across them); anything else
    names structure files (files, directories, globs), with targets from ``targets_csv`` keyed by
    file stem.

    Raises:
        MatmetaInputError: a problem with a whole input (missing file or column).
    """
    from matmeta.io import expand_sources, read_csv

    targets = tuple(targets)
    if isinstance(sources, (str, Path)):
        sources = [sources]
    sources = list(sources)
    items: list[WorkItem] = []
    errors: list[str] = []
    if sources and all(str(source).lower().endswith(".csv") for source in sources):
        required = [cif_column, *([id_column] if id_column else []), *targets]
        used = {cif_column, *targets, *([id_column] if id_column else [])}
        first_row: dict[str, str] = {}
        for source in sources:
            csv_path = Path(source)
            _, rows = read_csv(csv_path, required)
            for number, row in enumerate(rows, start=1):
                where = f"{csv_path} row {number}"
                rid = row[id_column].strip() if id_column else (str(number) if len(sources) == 1 else where)
                if id_column and not rid:
                    errors.append(f"{where}: empty id in column {id_column}")
                    continue
                if rid in first_row:
                    errors.append(f"{where}: duplicate id {rid!r} (first at {first_row[rid]})")
                    continue
                first_row[rid] = f"row {number}" if len(sources) == 1 else where
                try:
                    y = tuple(_parse_target(row[t], where, t, allow_missing_targets) for t in targets)
                except MatmetaInputError as exc:
                    errors.append(str(exc))
                    continue
                items.append(WorkItem(rid, where, "cif_text", row[cif_column], y, _column_families(row, used)))
        return items, errors

    table: dict[str, tuple[tuple[float, ...] | None, tuple[tuple[str, str], ...], str]] = {}
    if targets_csv is not None:
        key = id_column or "id"
        _, rows = read_csv(targets_csv, [key, *targets])
        for number, row in enumerate(rows, start=1):
            where = f"{targets_csv} row {number}"
            rid = row[key].strip()
            if rid in table:
                errors.append(f"{where}: duplicate id {rid!r} (first at row {table[rid][2].rsplit(' ', 1)[-1]})")
                continue
            try:
                y: tuple[float, ...] | None = tuple(
                    _parse_target(row[t], where, t, allow_missing_targets) for t in targets
                )
            except MatmetaInputError as exc:
                errors.append(str(exc))
                y = None
            table[rid] = (y, _column_families(row, {key, *targets}), where)
    elif targets:
        raise MatmetaInputError("targets for structure files need a targets CSV keyed by file stem (--targets-csv)")
    for path in expand_sources(sources):
        rid = path.stem
        y_row: tuple[float, ...] = ()
        columns: tuple[tuple[str, str], ...] = ()
        if targets_csv is not None:
            if rid not in table:
                if not allow_missing_targets or not targets:
                    errors.append(f"{path}: no row with id {rid!r} in {targets_csv}")
                    continue
                y_row = tuple(float("nan") for _ in targets)
            else:
                y_found, columns, _ = table[rid]
                if y_found is None:
                    continue  # its bad target was reported with the CSV row
                y_row = y_found
        items.append(WorkItem(rid, str(path), "file", str(path), y_row, columns))
    return items, errors


def _worker_pool(processes: int, start_method: str | None) -> Any:
    """A process pool for :func:`matmeta.records.work_chunk`.

    With ``fork`` the heavy modules the workers need are imported here first, once, and the
    children inherit them; with ``spawn``/``forkserver`` each worker imports them itself.
    """
    import multiprocessing

    method = start_method or ("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    if method == "fork":
        import pymatgen.core  # noqa: F401 - inherited by the forked workers
        import pymatgen.optimization.neighbors  # noqa: F401
        import spglib  # noqa: F401

        import matmeta.families  # noqa: F401
        import matmeta.io  # noqa: F401
    return multiprocessing.get_context(method).Pool(processes=processes)


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
    from matmeta.console import progress, report_error, warn

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

    if out_path.exists() and not out_path.is_dir():
        raise StoreError(f"{out_path}: exists and is not a folder (a graph store is a folder)")
    if out_path.exists() and not (out_path / "data.mdb").exists() and any(out_path.iterdir()):
        raise StoreError(f"{out_path}: exists and is not a graph store")
    env = _open_env(out_path, readonly=False)
    try:
        with env.begin() as txn:
            raw_meta = txn.get(META_KEY)
        if raw_meta is None:
            meta = _new_metadata(config, targets, settings)
            present: set[str] = set()
        else:
            meta = _check_metadata(out_path, raw_meta)
            mismatch = _config_mismatch(GraphConfig.from_dict(meta["graph_config"]), config)
            if mismatch:
                raise StoreError(f"{out_path}: {mismatch}; ingest into a new store")
            if tuple(meta["target_names"]) != targets:
                raise StoreError(
                    f"{out_path}: store targets are {', '.join(meta['target_names']) or 'none'}; "
                    f"this ingest gives {', '.join(targets) or 'none'}"
                )
            present = _existing_ids(env, int(meta["count"]))
        todo = [item for item in items if item.id not in present]
        report = IngestReport(out_path, already_present=len(items) - len(todo), errors=list(errors))
        if limit is not None:
            todo = todo[: max(0, limit)]
        if raw_meta is None:
            with env.begin(write=True) as txn:
                txn.put(META_KEY, json.dumps(meta).encode())

        chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
        config_dict = config.to_dict()
        settings_dict = {k: getattr(settings, k) for k in IngestSettings.__dataclass_fields__}
        pending: list[tuple[str, bytes]] = []
        seen = set(present)

        def flush() -> None:
            if not pending:
                return
            with env.begin(write=True) as txn:  # LMDB serialises writers; another ingest may have added records
                count = _claim(txn, int(meta["count"]), pending, report)
                meta["count"] = count + len(pending)
                meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                for offset, (_, blob) in enumerate(pending):
                    txn.put(str(count + offset).encode("ascii"), blob)
                txn.put(META_KEY, json.dumps(meta).encode())
            report.added += len(pending)
            pending.clear()
            if on_batch is not None:
                on_batch(int(meta["count"]))

        def consume(results: list[tuple[list[tuple[str, bytes, list[str]]], str | None]]) -> None:
            for records, error in results:
                if error is not None:
                    report.errors.append(error)
                    on_error(error)
                    continue
                for rid, blob, warnings in records:
                    for message in warnings:
                        warn(message)
                    if rid in present:  # e.g. a frame of a multi-frame file stored by an interrupted run
                        report.already_present += 1
                        continue
                    if rid in seen:
                        message = f"{rid}: duplicate id (already stored)"
                        report.errors.append(message)
                        on_error(message)
                        continue
                    seen.add(rid)
                    pending.append((rid, blob))
                if len(pending) >= batch_size:
                    flush()

        pool = None
        if workers > 1 and len(chunks) > 1:
            pool = _worker_pool(min(workers, len(chunks)), start_method)  # before the progress thread starts
        try:
            with progress(disable=None if show_progress is None else not show_progress) as bar:
                task = bar.add_task("ingest", total=len(todo))
                if pool is None:
                    for chunk in chunks:
                        consume(work_chunk(chunk, config_dict, settings_dict))
                        bar.advance(task, len(chunk))
                else:
                    jobs = ((chunk, config_dict, settings_dict) for chunk in chunks)
                    for chunk, results in zip(chunks, pool.imap(star_work, jobs), strict=True):
                        consume(results)
                        bar.advance(task, len(chunk))
                flush()
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        report.total = int(meta["count"])
    finally:
        env.close()
    report.seconds = time.perf_counter() - started
    return report
