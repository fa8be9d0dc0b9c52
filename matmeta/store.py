"""LMDB graph store: one record per structure; atomic, resumable ingest; versioned metadata.

Layout of the LMDB environment (a directory, e.g. ``perov.lmdb/``):

- ``b"0"``, ``b"1"``, … (integer ASCII keys): one record per structure, encoded as safetensors
  bytes (never pickles; see :mod:`matmeta.records`). Tensors: the graph fields of
  :mod:`matmeta.graphs` plus ``lattice`` (3, 3) float64, ``frac_coords`` (N, 3) float64 (the exact
  structure) and ``cif`` (the source CIF text, uint8). The safetensors header metadata ``info`` is
  JSON: ``id``, ``source``, ``families`` (kind → key, including ``column:<name>``) and
  ``family_errors`` (kind → reason).
- ``b"__meta__"``: JSON with the format version, matmeta version, graph config, target names,
  ingest settings and ``count``, the number of records. ``count`` is the progress marker: it is
  written in the same transaction as the records of each batch, so a reader or a resumed
  ingest never sees half a batch.

Readers open the environment read-only with ``lock=False``, lazily and once per process and path
(LMDB allows one handle per path and process; a handle inherited through ``fork`` is dropped in
the child), so a :class:`GraphStore` works in DataLoader workers (fork or spawn). Read
transactions are short (one record), as ``lock=False`` readers need when a writer is active.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matmeta.errors import MatmetaInputError, StoreError
from matmeta.graphs import GraphConfig
from matmeta.records import (
    GRAPH_FIELDS,
    IngestSettings,
    WorkItem,
    decode_record,
    record_info,
    star_work,
    work_chunk,
)

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from torch_geometric.data import Data

FORMAT_NAME = "matmeta-graph-store"
FORMAT_VERSION = 1
META_KEY = b"__meta__"
MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows with the data
FAMILY_KINDS = ("anion_set", "b_site", "a_site", "chemsys", "spacegroup")

# ----------------------------------------------------------------------------- reading


# LMDB allows one environment handle per path and process: read handles are shared by every
# GraphStore of this process and dropped when the process changes (fork) or a writer needs the path.
_READ_ENVS: dict[tuple[str, int], Any] = {}


def _open_env(path: Path, readonly: bool, resolved: str | None = None) -> Any:
    import lmdb

    if readonly:
        key = (resolved or str(Path(path).resolve()), os.getpid())
        env = _READ_ENVS.get(key)
        if env is None:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=512)
            _READ_ENVS[key] = env
        return env
    _close_read_env(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return lmdb.open(str(path), map_size=MAP_SIZE, readahead=False, meminit=False, max_dbs=0)


def _drop_inherited_envs() -> None:
    """In a forked child: close the handles inherited from the parent (LMDB handles must not cross fork).

    Closing only unmaps the child's copy of the file and closes the child's descriptors; the
    parent's handles are untouched. The child reopens lazily on its next read.
    """
    inherited = list(_READ_ENVS.values())
    _READ_ENVS.clear()
    for env in inherited:
        try:
            env.close()
        except Exception:  # noqa: BLE001, S110 - best effort in a fresh child
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_envs)


def _close_read_env(path: Path) -> None:
    env = _READ_ENVS.pop((str(Path(path).resolve()), os.getpid()), None)
    if env is not None:
        env.close()


def read_store_metadata(path: str | Path) -> dict[str, Any]:
    """The ``__meta__`` entry of a store, checked for format and version.

    Raises:
        StoreError: missing path, not a matmeta store, or a newer format.
    """
    path = Path(path)
    if not (path / "data.mdb").exists():
        raise StoreError(f"{path}: no graph store here (expected an LMDB directory with data.mdb)")
    with _open_env(path, readonly=True).begin() as txn:
        raw = txn.get(META_KEY)
    if raw is None:
        raise StoreError(f"{path}: not a matmeta graph store (no metadata entry)")
    return _check_metadata(path, raw)


def _check_metadata(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except ValueError:
        raise StoreError(f"{path}: corrupt store metadata") from None
    if meta.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: not a matmeta graph store (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format {version} was written by a newer matmeta "
            f"({meta.get('matmeta_version')}); this matmeta reads format ≤ {FORMAT_VERSION}"
        )
    return meta


def _config_mismatch(stored: GraphConfig, wanted: GraphConfig) -> str | None:
    if stored == wanted:
        return None
    return (
        f"built with cutoff_angstrom={stored.cutoff_angstrom:g}, max_neighbors={stored.max_neighbors}; "
        f"asked for cutoff_angstrom={wanted.cutoff_angstrom:g}, max_neighbors={wanted.max_neighbors}"
    )


try:  # a torch Dataset when torch is there (always, in matmeta's environment)
    from torch.utils.data import Dataset as _DatasetBase
except ImportError:  # pragma: no cover
    _DatasetBase = object  # type: ignore[assignment,misc]


class GraphStore(_DatasetBase):  # type: ignore[misc,valid-type]
    """Read-only view of a graph store; a ``torch.utils.data.Dataset`` of ``Data`` graphs.

    Args:
        path: The store directory.
        graph_config: If given, the store must have been built with exactly these settings.

    Raises:
        StoreError: missing or foreign store, newer format, or other graph settings.
    """

    def __init__(self, path: str | Path, graph_config: GraphConfig | None = None) -> None:
        self.path = Path(path)
        self._meta = read_store_metadata(self.path)
        self._config = GraphConfig.from_dict(self._meta["graph_config"])
        if graph_config is not None:
            mismatch = _config_mismatch(self._config, graph_config)
            if mismatch:
                raise StoreError(f"{self.path}: {mismatch}")
        self._count = int(self._meta["count"])
        self._index: dict[str, Any] | None = None
        self._resolved = str(self.path.resolve())

    # -- handles ---------------------------------------------------------------------------
    def _txn_env(self) -> Any:
        # looked up on every access: the handle is per process and shared per path (never pickled)
        return _open_env(self.path, readonly=True, resolved=self._resolved)

    def close(self) -> None:
        """Close this process's LMDB handle for the store's path (reopened on the next access)."""
        _close_read_env(self.path)

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- basic properties --------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    @property
    def metadata(self) -> dict[str, Any]:
        """The store's metadata (format, versions, graph config, targets, ingest settings, count)."""
        return dict(self._meta)

    @property
    def graph_config(self) -> GraphConfig:
        """The graph settings every record was built with."""
        return self._config

    @property
    def target_names(self) -> tuple[str, ...]:
        """Names of the columns of ``y`` / :attr:`targets`."""
        return tuple(self._meta["target_names"])

    def _raw(self, i: int) -> bytes:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"store index must be an integer, got {type(i).__name__}")
        n = self._count
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range for a store of {n}")
        with self._txn_env().begin(buffers=False) as txn:
            raw = txn.get(str(int(i)).encode("ascii"))
        if raw is None:
            raise StoreError(f"{self.path}: record {i} missing (corrupt store)")
        return raw

    def __getitem__(self, i: int) -> Data:
        """Graph ``i`` (see :mod:`matmeta.graphs` for the fields)."""
        from matmeta.graphs import arrays_to_data

        arrays, _ = decode_record(self._raw(i), GRAPH_FIELDS, with_info=False)
        return arrays_to_data(arrays)

    def record(self, i: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """All arrays and the ``info`` dict of record ``i``."""
        return decode_record(self._raw(i))

    def structure(self, i: int) -> Structure:
        """The (ordered) structure record ``i`` was built from."""
        from pymatgen.core import Lattice, Structure

        arrays, _ = decode_record(self._raw(i), ("lattice", "frac_coords", "atomic_numbers"))
        return Structure(
            Lattice(arrays["lattice"].copy()), arrays["atomic_numbers"].tolist(), arrays["frac_coords"].copy()
        )

    def cif(self, i: int) -> str:
        """The source CIF text of record ``i`` (for POSCAR/extxyz inputs: a CIF written at ingest)."""
        arrays, _ = decode_record(self._raw(i), ("cif",))
        return arrays["cif"].tobytes().decode("utf-8")

    # -- whole-store index ----------------------------------------------------------------------
    def _load_index(self) -> dict[str, Any]:
        if self._index is None:
            ids: list[str] = []
            targets = np.empty((self._count, len(self.target_names)), dtype=np.float64)
            families: list[dict[str, str]] = []
            errors: list[dict[str, str]] = []
            with self._txn_env().begin() as txn:
                for i in range(self._count):
                    raw = txn.get(str(i).encode("ascii"))
                    if raw is None:
                        raise StoreError(f"{self.path}: record {i} missing (corrupt store)")
                    arrays, info = decode_record(raw, ("y",))
                    ids.append(str(info["id"]))
                    targets[i] = arrays["y"].reshape(-1)
                    families.append(info.get("families", {}))
                    errors.append(info.get("family_errors", {}))
            self._index = {"ids": ids, "targets": targets, "families": families, "errors": errors}
        return self._index

    @property
    def ids(self) -> list[str]:
        """The id of every record, in store order."""
        return list(self._load_index()["ids"])

    @property
    def targets(self) -> np.ndarray:
        """All targets (NaN = missing).

        Shapes:
            (N, T) float64, columns as :attr:`target_names`.
        """
        return self._load_index()["targets"].copy()

    def family_kinds(self) -> list[str]:
        """The family kinds available in this store (structural kinds and ``column:<name>``)."""
        kinds = set(FAMILY_KINDS)
        for families in self._load_index()["families"][:1]:
            kinds.update(k for k in families if k.startswith("column:"))
        return sorted(kinds)

    def family_keys(self, by: str) -> list[str]:
        """The family of every record by one kind (``anion_set``, ``b_site``, …, ``column:<name>``).

        Raises:
            MatmetaInputError: an unknown kind, or records the kind does not apply to (e.g.
                ``b_site`` of a non-perovskite; the message counts them and gives the first reason).
        """
        index = self._load_index()
        keys: list[str] = []
        bad: list[str] = []
        for families, errors, rid in zip(index["families"], index["errors"], index["ids"], strict=True):
            if by in families:
                keys.append(families[by])
            elif by in errors:
                keys.append("")
                bad.append(f"id {rid}: {errors[by]}")
            else:
                raise MatmetaInputError(
                    f"{self.path}: no family kind {by!r} (available: {', '.join(self.family_kinds())})"
                )
        if bad:
            raise MatmetaInputError(f"{self.path}: {by} is undefined for {len(bad)} record(s); first: {bad[0]}")
        return keys


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
            count = int(meta["count"])
            meta["count"] = count + len(pending)
            meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with env.begin(write=True) as txn:
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
