"""One rich console for progress bars and result tables (stdout for results, stderr for progress)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Piped output (logs, CI) gets room for wide tables instead of rich's 80-column default.
_PIPED_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(width=_PIPED_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() or "COLUMNS" in os.environ else 160)


def progress(disable: bool | None = None) -> Progress:
    """A progress bar on stderr; hidden when stderr is not a terminal unless ``disable=False``."""
    if disable is None:
        disable = not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=disable,
        transient=False,
    )


def format_cell(value: Any, digits: int = 4) -> str:
    """Numbers to a compact string; everything else ``str``."""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.3e}"
    return "" if value is None else str(value)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 4) -> None:
    """Print a result table to stdout."""
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(format_cell(v, digits) for v in row))
    console.print(table)


def warn(message: str) -> None:
    """One warning line on stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def report_error(message: str) -> None:
    """One error line on stderr (for bad items in a batch that otherwise goes on)."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def timed(phases: dict[str, float] | None, name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``phases[name]`` (seconds); nothing when ``phases`` is None."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start


def format_phases(phases: dict[str, float]) -> str:
    """``"pooled pretraining 92.1 s, meta-training 61.0 s (total 153.1 s)"``."""
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())
    return f"{parts} (total {sum(phases.values()):.1f} s)"
