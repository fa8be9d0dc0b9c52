"""The ``matmeta`` command line: parse, call the library, print.

Heavy modules (torch, torch_geometric, pymatgen) are imported inside the commands so that
``matmeta --help`` answers at once. Each app's commands live in ``matmeta/commands/<app>.py``
and are added here by its ``register(app)``; command modules never import each other.
"""

from __future__ import annotations

import os
import sys

import typer

from matmeta.commands import bench, data, design, explain, federate, inspect, jmak, predict, train
from matmeta.errors import MatmetaError

app = typer.Typer(
    name="matmeta",
    help="Meta-learned models for materials discovery from a handful of measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _module in (train, bench, jmak, explain, predict, data, design, federate, inspect):
    _module.register(app)
jmak.jmak_app.command("explain")(explain.jmak_explain)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the matmeta version and exit."),
) -> None:
    if version:
        from matmeta import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit code.

    Process-wide settings are made here, once: spglib's own stderr messages on failed symmetry
    searches are silenced (matmeta reports those itself, per structure).
    """
    os.environ.setdefault("SPGLIB_WARNING", "OFF")
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
