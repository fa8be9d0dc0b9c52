"""``serve``, ``join`` and ``simulate``: the federation as real processes over Flower's gRPC transport."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matmeta.federate.config import FederatedRecipe
from matmeta.federate.errors import FederationError
from matmeta.federate.server import STATE_FILE, Coordinator, open_state

__all__ = ["FederationError", "free_port", "join_lab", "load_federated_recipe", "serve_recipe", "simulate"]


def load_federated_recipe(path: str | Path) -> tuple[FederatedRecipe, dict[str, Any]]:
    """The typed recipe and its raw dict."""
    from matmeta.recipes import load_recipe

    raw = load_recipe(path)
    return FederatedRecipe.from_recipe(raw, str(path)), raw


def serve_recipe(recipe_path: str | Path, address: str = "127.0.0.1:18080", resume: bool = True) -> dict[str, Any]:
    """Coordinate the federation described by the recipe; write the final predictor checkpoint.

    Returns:
        ``{"checkpoint", "rounds", "epsilon"}`` (ε None without differential privacy).
    """
    from matmeta.federate.export import export_predictor
    from matmeta.federate.flower import serve
    from matmeta.federate.lab import model_instructions
    from matmeta.federate.tasks import new_model_state

    recipe, raw = load_federated_recipe(recipe_path)
    cfg = recipe.federate
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state = open_state(new_model_state(recipe.model, recipe.maml_settings(), cfg.seed), work, resume)
    if state.round:
        print(f"resuming from {work / STATE_FILE} after round {state.round}", flush=True)
    coordinator = Coordinator(
        cfg,
        state,
        stats_phase=True,
        state_path=work / STATE_FILE,
        log=lambda m: print(m, flush=True),
        static=model_instructions(recipe),
    )
    serve(coordinator, address, cfg.min_labs, cfg.wait_s, cfg.round_timeout_s)
    if coordinator.phase != "done":
        raise FederationError(f"{address}: server stopped after round {state.round} of {cfg.rounds}")
    out = export_predictor(recipe, state, cfg.out, raw)
    eps = coordinator.privacy_budget()
    if eps is not None:
        print(f"privacy budget: (ε = {eps:.3g}, δ = {cfg.dp_delta:g}) after {state.round} rounds", flush=True)
    return {"checkpoint": out, "rounds": state.round, "epsilon": eps}


def join_lab(
    server: str,
    store: str | Path,
    family_by: str = "b_site",
    only: Sequence[str] | None = None,
    min_family_size: int = 30,
    seed: int = 0,
    max_wait_s: float = 300.0,
) -> None:
    """Join the federation at ``server`` with the lab's own store (blocking until the server ends)."""
    from matmeta.federate.flower import join
    from matmeta.federate.lab import LabHandler
    from matmeta.federate.tasks import load_lab

    lab = load_lab(store, family_by, list(only) if only else None, min_family_size)
    print(f"lab ready: {len(lab.families)} {family_by} families (they stay here)", flush=True)
    join(LabHandler(lab, seed), server, max_wait_s)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def simulate(
    recipe_path: str | Path,
    labs: int,
    store: str | Path,
    held_out: int = 1,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Run the federation on this machine: one server and ``labs`` lab processes over 127.0.0.1.

    The store's families are split over the labs by chemistry (:func:`matmeta.federate.labs.split_labs`);
    each lab process is told only its own families. Every process is bounded by ``timeout_s``.

    Raises:
        FederationError: a process failed or ran out of time (its log tail is in the message).
    """
    from matmeta.federate.labs import split_labs
    from matmeta.federate.tasks import load_lab

    recipe, _ = load_federated_recipe(recipe_path)
    data = recipe.data
    families = load_lab(store, data.family_by, None, data.min_family_size).families
    splits = split_labs(families, labs, held_out, recipe.federate.seed)
    address = f"127.0.0.1:{free_port()}"
    work = Path(recipe.federate.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "matmeta.cli", "federate"]
    procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(name: str, args: list[str]) -> None:
        log = work / f"{name}.log"
        handle = log.open("w")
        procs.append((name, subprocess.Popen(base + args, stdout=handle, stderr=subprocess.STDOUT, env=env), log))

    start("server", ["serve", "--recipe", str(recipe_path), "--address", address])
    for i, split in enumerate(splits):
        start(
            f"lab{i}",
            [
                "join",
                "--server",
                address,
                "--store",
                str(store),
                "--families",
                data.family_by,
                "--only",
                ",".join(split.train),
                "--seed",
                str(recipe.federate.seed + 101 * (i + 1)),
            ],
        )
    return _wait(procs, timeout_s) | {"labs": [s.train for s in splits], "held_out": [s.held_out for s in splits]}


def _wait(procs: list[tuple[str, subprocess.Popen, Path]], timeout_s: float) -> dict[str, Any]:
    """Wait for the server's exit (then the labs'), no polling; kill everything left at the deadline."""
    deadline = time.monotonic() + timeout_s
    server = procs[0][1]
    try:
        server.wait(timeout=max(deadline - time.monotonic(), 0.0))  # returns when the server exits
        for _, proc, _ in procs[1:]:
            proc.wait(timeout=max(1.0, min(60.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    name, proc, log = procs[0]
    if proc.returncode != 0:
        tail = log.read_text()[-800:] if log.exists() else ""
        raise FederationError(f"federated server exited with {proc.returncode}; log {log}:\n{tail}")
    return {"server_log": str(log), "returncodes": {n: p.returncode for n, p, _ in procs}}
