"""The ``matmeta`` command line: parse, call the library, print.

Heavy modules (torch, torch_geometric, pymatgen) are imported inside commands so that
``matmeta --help`` answers at once. Each app registers its commands from
``matmeta/commands/<app>.py`` through a ``register(app)`` function.
"""

from __future__ import annotations

import importlib
import sys

import typer

from matmeta.errors import MatmetaError

COMMAND_MODULES = ("train", "bench", "jmak", "explain", "predict", "data", "design", "federate")

app = typer.Typer(
    name="matmeta",
    help="Meta-learned models for materials discovery from a handful of measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"matmeta.commands.{_name}").register(app)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the matmeta version and exit."),
) -> None:
    if version:
        from matmeta import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit code."""
    try:
        app()
    except MatmetaError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
