"""Flower adapters: the server strategy and the lab client around the transport-free coordinator.

Uses the gRPC transport that ships in ``flwr`` (``flwr.compat.server.app.start_server`` /
``flwr.compat.client.app.start_client``: one long-running server process and one process per lab).
Imported only by :mod:`matmeta.federate.run` and tests (``flwr`` is heavy).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from flwr.client import NumPyClient
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy

from matmeta.federate.aggregate import Update
from matmeta.federate.messages import clean_metrics
from matmeta.federate.server import Coordinator

Audit = Callable[[dict[str, Any]], None]


class MetaStrategy(Strategy):
    """Every connected lab trains every round; the coordinator checks, averages and steps.

    Waiting is event-driven: the first round starts as soon as ``min_labs`` labs are connected
    (at most ``wait_s`` later, then with whoever is there). Later rounds start at once with the
    labs still connected: a lab that dropped out is not waited for (one that reconnects takes
    part again from the next round). A round never starts without a lab: with none connected
    after ``wait_s`` the server stops (``stopped`` says why) instead of skipping rounds.

    Args:
        coordinator: the server's round logic and state.
        min_labs: labs to wait for before the first round.
        wait_s: longest wait for them (and for any lab at all, later).
        audit: called with every reply the server receives (raw tensors bytes, metrics, count).
        log: where the server's waiting notes go.
        on_listening: called once the gRPC server listens (an event for labs in the same process to wait on,
            instead of polling the port).
    """

    def __init__(
        self,
        coordinator: Coordinator,
        min_labs: int,
        wait_s: float,
        audit: Audit | None = None,
        log: Callable[[str], None] | None = None,
        on_listening: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.coordinator = coordinator
        self.min_labs = min_labs
        self.wait_s = wait_s
        self.audit = audit
        self.log = log or coordinator.log
        self.on_listening = on_listening
        self.stopped: str | None = None
        self._asked: list[str] = []

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        """The shared weights at the start (fresh or resumed).

        Flower's ``start_server`` asks for them right after its gRPC server has started listening, so this is
        where ``on_listening`` is called.
        """
        if self.on_listening is not None:
            self.on_listening()
        return ndarrays_to_parameters(self.coordinator.state.arrays())

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        """Send the current weights and this round's instructions to every connected lab."""
        if self.coordinator.phase == "done" or self.stopped is not None:
            return []  # Flower ends its remaining rounds at once
        wanted = 1 if self._asked else self.min_labs
        timeout = max(1, math.ceil(self.wait_s))
        if not client_manager.wait_for(wanted, timeout=timeout) and not self._asked:
            self.log(f"{client_manager.num_available()} of {wanted} lab(s) connected after {timeout} s; starting")
        clients = list(client_manager.all().values())
        if not clients:
            self.stopped = f"no lab connected within {timeout} s (before round {self.coordinator.state.round + 1})"
            self.log(self.stopped)
            return []
        self._asked = [c.cid for c in clients]
        ins = FitIns(ndarrays_to_parameters(self.coordinator.state.arrays()), self.coordinator.instructions())
        return [(c, ins) for c in clients]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Parameters | None, dict]:
        """Check and average the replies; labs that did not answer are reported as dropped."""
        updates = []
        for proxy, res in results:
            if self.audit is not None:
                self.audit(
                    {
                        "tensors": list(res.parameters.tensors),
                        "tensor_type": res.parameters.tensor_type,
                        "metrics": dict(res.metrics),
                        "num_examples": res.num_examples,
                    }
                )
            try:
                arrays = [np.asarray(a) for a in parameters_to_ndarrays(res.parameters)]
            except Exception:  # noqa: BLE001 - an undecodable reply is an empty (rejected) update
                arrays = []
            updates.append(Update(f"client {proxy.cid[:8]}", arrays, int(res.num_examples), clean_metrics(res.metrics)))
        answered = {proxy.cid for proxy, _ in results}
        dropped = [f"client {cid[:8]}" for cid in self._asked if cid not in answered]
        self.coordinator.finish_round(updates, dropped)
        return ndarrays_to_parameters(self.coordinator.state.arrays()), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        """No federated evaluation (labs evaluate their own adapted models)."""
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        """Nothing to aggregate."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict] | None:
        """No server-side evaluation (the server holds no data)."""
        return None


class LabClient(NumPyClient):
    """A lab behind Flower's client API: ``fit`` hands the round to ``handler``."""

    def __init__(
        self, handler: Callable[[list[np.ndarray], dict[str, Any]], tuple[list[np.ndarray], int, dict]]
    ) -> None:
        self.handler = handler

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """The lab holds no weights of its own between rounds."""
        return []

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        """One round's update."""
        return self.handler(list(parameters), dict(config))


def serve(
    coordinator: Coordinator,
    address: str,
    min_labs: int,
    wait_s: float,
    round_timeout_s: float,
    audit: Audit | None = None,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Run the Flower server until the coordinator's rounds are done (blocking).

    ``on_listening`` is called once the server accepts labs (e.g. ``threading.Event.set``).

    Raises:
        FederationError: no lab was connected when a round was due (after ``wait_s``).
    """
    from flwr.compat.server.app import start_server
    from flwr.server import ServerConfig

    from matmeta.federate.errors import FederationError

    rounds = coordinator.rounds_left()
    if rounds <= 0:
        return
    strategy = MetaStrategy(coordinator, min_labs, wait_s, audit, on_listening=on_listening)
    with _signal_handlers_kept():
        start_server(
            server_address=address,
            config=ServerConfig(num_rounds=rounds, round_timeout=round_timeout_s),
            strategy=strategy,
        )
    if strategy.stopped is not None:
        raise FederationError(f"{address}: {strategy.stopped}")


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Restore the SIGINT / SIGTERM / SIGQUIT handlers that Flower's ``start_server`` replaces.

    Flower installs its own "graceful exit" handlers and never removes them. In a process that goes on
    after the server (a notebook, a test run, an application calling :func:`serve`), they would outlive the
    server; a process forked later (an ingest's worker pool) would answer the SIGTERM that should stop it
    with Flower's exit path instead (:func:`matmeta.store.pool.default_signals`).
    """
    import signal

    names = [name for name in ("SIGINT", "SIGTERM", "SIGQUIT") if hasattr(signal, name)]
    saved = {name: signal.getsignal(getattr(signal, name)) for name in names}
    try:
        yield
    finally:
        for name, handler in saved.items():
            if handler is not None:  # None: installed outside Python, cannot be put back from here
                signal.signal(getattr(signal, name), handler)


def wait_for_server(address: str, max_wait_s: float) -> None:
    """Block until ``address`` (``host:port``) accepts TCP connections, checking with a growing interval.

    Flower's gRPC-bidi client gives up at once when no server listens yet, so a lab started
    before the server waits here instead. A lab in another process has no event to wait on, hence the
    probe; one in the server's own process waits on :func:`serve`'s ``on_listening`` instead, and its
    first probe here succeeds.

    Only "not there yet" (refused, reset, timed out, host unreachable) is waited out; any other
    socket error (a bad host name, no file descriptors left) is raised at once.

    Raises:
        FederationError: nothing listens there within ``max_wait_s``, or the address cannot be reached.
    """
    import errno
    import socket
    import time

    from matmeta.federate.errors import FederationError

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + max_wait_s
    pause = 0.05
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as error:
            transient = isinstance(error, ConnectionError | TimeoutError) or error.errno in (
                errno.EHOSTUNREACH,
                errno.ENETUNREACH,
            )
            if not transient:
                raise FederationError(f"{address}: cannot reach the federated server ({error})") from None
            if time.monotonic() + pause > deadline:
                raise FederationError(f"{address}: no federated server listening within {max_wait_s:g} s") from None
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def join(handler: Callable, address: str, max_wait_s: float = 300.0) -> None:
    """Connect a lab to the server at ``address`` and answer rounds until the server ends (blocking).

    Raises:
        FederationError: no server listens at ``address`` within ``max_wait_s``.
    """
    from flwr.compat.client.app import start_client

    wait_for_server(address, max_wait_s)
    start_client(
        server_address=address,
        client=LabClient(handler).to_client(),
        insecure=True,
        max_wait_time=max_wait_s,
        max_retries=1000,
    )
