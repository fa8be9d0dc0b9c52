"""Write outputs atomically: a temp file beside the target, then ``os.replace``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target``.

    A crash or exception leaves ``target`` as it was (nothing half-written).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def _csv_cell(value: Any) -> Any:
    """A CSV cell: floats at full precision (``repr``), None as empty."""
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else value


def write_table(target: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write rows atomically as CSV, or as JSON when ``target`` ends in ``.json``; the one table writer.

    Args:
        target: ``*.csv`` (or any other suffix: CSV) or ``*.json``.
        rows: one mapping per row.
        columns: CSV column order (default: the keys of the first row).
    """
    target = Path(target)
    if target.suffix.lower() == ".json":
        write_text_atomic(target, json.dumps([dict(row) for row in rows], indent=2) + "\n")
        return target
    columns = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    write_text_atomic(target, buffer.getvalue())
    return target
