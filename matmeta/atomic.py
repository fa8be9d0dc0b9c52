"""Write outputs atomically: a temp file beside the target, then ``os.replace``.

A target that cannot be written (``/proc/...``, a read-only mount, a file where a folder is
needed) gives one ``MatmetaInputError("<path>: cannot write (<reason>)")``, never a traceback.
"""

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

from matmeta.errors import MatmetaInputError


def _cannot_write(target: Path, exc: OSError) -> MatmetaInputError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename:
        reason = f"{exc.filename} is a file, not a folder"
    return MatmetaInputError(f"{target}: cannot write ({reason})")


def writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) if needed and check that files can be made in it.

    Call it before long work whose results go there, so nothing is computed for an output that
    cannot be written.

    Raises:
        MatmetaInputError: ``"<folder>: cannot write (<reason>)"``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(folder, exc) from None
    if not folder.is_dir():
        raise MatmetaInputError(f"{folder}: cannot write (it is a file, not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".matmeta-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _cannot_write(folder, exc) from None
    return folder


def writable_target(target: str | Path) -> Path:
    """Check up front that ``target`` (a file) can be written atomically: its folder is writable, it is no folder.

    Raises:
        MatmetaInputError: ``"<target>: cannot write (<reason>)"``.
    """
    target = Path(target)
    if target.is_dir():
        raise MatmetaInputError(f"{target}: cannot write (it is a folder, not a file)")
    try:
        writable_dir(target.parent)
    except MatmetaInputError:
        raise MatmetaInputError(f"{target}: cannot write (folder {target.parent} is not writable)") from None
    return target


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target``.

    A crash or exception leaves ``target`` as it was (nothing half-written).

    Raises:
        MatmetaInputError: the target cannot be written (any ``OSError`` while writing it).
    """
    target = Path(target)
    if target.is_dir():
        raise MatmetaInputError(f"{target}: cannot write (it is a folder, not a file)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, target)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    finally:
        try:
            tmp_path.unlink(missing_ok=True)
        except OSError:
            pass


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
