"""What an ingest will do: one work item per structure, with its id, targets and CSV family columns.

Reads the sources (a CSV with a CIF column, or structure files, folders and globs with an optional
targets CSV), checks the columns and labels, and returns the work items and the one-line errors of
the rows it refused. Nothing is parsed as a crystal here; the workers do that (:mod:`matmeta.store.records`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matmeta.errors import MatmetaInputError
from matmeta.store.records import WorkItem


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
    if math.isnan(number):
        if allow_missing:
            return number
        raise MatmetaInputError(f"{where}: target {name} is NaN")
    if not math.isfinite(number):
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
    targets = tuple(targets)
    if isinstance(sources, (str, Path)):
        sources = [sources]
    sources = list(sources)
    if sources and all(str(source).lower().endswith(".csv") for source in sources):
        return _csv_items(sources, targets, cif_column, id_column, allow_missing_targets)
    return _file_items(sources, targets, id_column, targets_csv, allow_missing_targets)


def _csv_items(
    sources: list[str | Path], targets: tuple[str, ...], cif_column: str, id_column: str | None, allow_missing: bool
) -> tuple[list[WorkItem], list[str]]:
    """Work items from CSV tables with a CIF column (ids unique across the tables)."""
    from matmeta.io import read_csv

    items: list[WorkItem] = []
    errors: list[str] = []
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
                y = tuple(_parse_target(row[t], where, t, allow_missing) for t in targets)
            except MatmetaInputError as exc:
                errors.append(str(exc))
                continue
            items.append(WorkItem(rid, where, "cif_text", row[cif_column], y, _column_families(row, used)))
    return items, errors


def _file_items(
    sources: list[str | Path],
    targets: tuple[str, ...],
    id_column: str | None,
    targets_csv: str | Path | None,
    allow_missing: bool,
) -> tuple[list[WorkItem], list[str]]:
    """Work items from structure files, with targets and family columns from ``targets_csv`` by file stem."""
    from matmeta.io import expand_sources

    errors: list[str] = []
    table: dict[str, tuple[tuple[float, ...] | None, tuple[tuple[str, str], ...], str]] = {}
    if targets_csv is not None:
        table = _targets_table(targets_csv, id_column or "id", targets, allow_missing, errors)
    elif targets:
        raise MatmetaInputError("targets for structure files need a targets CSV keyed by file stem (--targets-csv)")
    items: list[WorkItem] = []
    for path in expand_sources(sources):
        rid = path.stem
        y_row: tuple[float, ...] = ()
        columns: tuple[tuple[str, str], ...] = ()
        if targets_csv is not None:
            if rid not in table:
                if not allow_missing or not targets:
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


def _targets_table(
    targets_csv: str | Path, key: str, targets: tuple[str, ...], allow_missing: bool, errors: list[str]
) -> dict[str, tuple[tuple[float, ...] | None, tuple[tuple[str, str], ...], str]]:
    """Each id → (targets, or None when a label was bad, family columns, where); bad rows go to ``errors``."""
    from matmeta.io import read_csv

    table: dict[str, tuple[tuple[float, ...] | None, tuple[tuple[str, str], ...], str]] = {}
    _, rows = read_csv(targets_csv, [key, *targets])
    for number, row in enumerate(rows, start=1):
        where = f"{targets_csv} row {number}"
        rid = row[key].strip()
        if rid in table:
            errors.append(f"{where}: duplicate id {rid!r} (first at row {table[rid][2].rsplit(' ', 1)[-1]})")
            continue
        try:
            y: tuple[float, ...] | None = tuple(_parse_target(row[t], where, t, allow_missing) for t in targets)
        except MatmetaInputError as exc:
            errors.append(str(exc))
            y = None
        table[rid] = (y, _column_families(row, {key, *targets}), where)
    return table
