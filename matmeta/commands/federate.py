"""``matmeta federate serve|join|simulate``: federated meta-learning across labs over Flower."""

from __future__ import annotations

import os
from pathlib import Path

import typer

federate_app = typer.Typer(
    help="Federated meta-learning: labs share updates, never measurements.", no_args_is_help=True
)


def _quiet_flower() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # offline machines: no telemetry calls


@federate_app.command("serve")
def serve_command(
    recipe: Path = typer.Option(..., "--recipe", help="Federated recipe, e.g. recipes/federated_perovskites.toml."),
    address: str = typer.Option("127.0.0.1:18080", "--address", help="HOST:PORT to listen on."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore the round checkpoint and start from round 0."),
) -> None:
    """Coordinate the federation; write the shared predictor checkpoint at the end."""
    _quiet_flower()
    from matmeta.federate.run import serve_recipe

    result = serve_recipe(recipe, address, resume=not fresh)
    typer.echo(f"shared checkpoint after {result['rounds']} rounds: {result['checkpoint']}")


@federate_app.command("join")
def join_command(
    server: str = typer.Option(..., "--server", help="HOST:PORT of the federation server."),
    store: Path = typer.Option(..., "--store", help="This lab's graph store (LMDB)."),
    families: str = typer.Option("b_site", "--families", help="Family key the lab's tasks are drawn by."),
    only: str = typer.Option("", "--only", help="Comma-separated families to use (default: all large enough)."),
    min_family_size: int = typer.Option(30, "--min-family-size", help="Smallest family used."),
    seed: int = typer.Option(0, "--seed", help="This lab's sampling seed."),
) -> None:
    """Join a federation with this lab's own store (its structures and labels never leave)."""
    _quiet_flower()
    from matmeta.federate.run import join_lab

    chosen = [f for f in only.split(",") if f] or None
    join_lab(server, store, families, chosen, min_family_size, seed)
    typer.echo("federation finished")


@federate_app.command("simulate")
def simulate_command(
    recipe: Path = typer.Option(..., "--recipe", help="Federated recipe."),
    labs: int = typer.Option(4, "--labs", help="Simulated labs (separate processes over 127.0.0.1)."),
    store: Path = typer.Option(Path("out/perov.lmdb"), "--store", help="Store whose families are split over the labs."),
    timeout_s: float = typer.Option(3600.0, "--timeout", help="Longest run in seconds; everything is stopped then."),
) -> None:
    """Run server and labs as local processes (families split non-IID by chemistry)."""
    _quiet_flower()
    from matmeta.federate.run import simulate

    result = simulate(recipe, labs, store, timeout_s=timeout_s)
    for i, (train, held) in enumerate(zip(result["labs"], result["held_out"], strict=True)):
        typer.echo(f"lab {i}: trains on {', '.join(train)}; held out {', '.join(held)}")
    typer.echo(f"server log: {result['server_log']}")


def register(app: typer.Typer) -> None:
    """Add ``federate`` to the CLI."""
    app.add_typer(federate_app, name="federate")
