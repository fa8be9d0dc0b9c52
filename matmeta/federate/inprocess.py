"""The federation's rounds without a transport: the same coordinator and lab handlers, called in turn.

For experiments (``matmeta bench recipes/federated.toml``): identical maths to the Flower run,
one process, labs answering one after another. Bytes are the array payloads that would travel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from matmeta.federate.aggregate import Update
from matmeta.federate.messages import payload_bytes
from matmeta.federate.server import Coordinator


@dataclass
class Traffic:
    """Bytes that crossed the (virtual) wire, per lab and round, in each direction."""

    down: list[int] = field(default_factory=list)
    up: list[int] = field(default_factory=list)


def run_in_process(
    coordinator: Coordinator,
    handlers: Sequence[Callable],
    on_round: Callable[[int], None] | None = None,
    max_rounds: int = 10_000,
) -> Traffic:
    """Run the remaining rounds with ``handlers`` as the labs; ``on_round(r)`` after each training round."""
    from matmeta.console import progress

    traffic = Traffic()
    with progress() as bar:
        task = bar.add_task("federated rounds", total=coordinator.rounds_left())
        for _ in range(max_rounds):
            phase = coordinator.phase
            if phase == "done":
                break
            _one_round(coordinator, handlers, phase, traffic)
            bar.update(task, advance=1)
            if phase == "train" and on_round is not None:
                on_round(coordinator.state.round)
    return traffic


def _one_round(coordinator: Coordinator, handlers: Sequence[Callable], phase: str, traffic: Traffic) -> None:
    """Every lab answers the current instructions in turn; the coordinator finishes the round."""
    arrays = coordinator.state.arrays()
    config = coordinator.instructions()
    updates = []
    for i, handler in enumerate(handlers):
        out, n, metrics = handler(arrays, config)
        updates.append(Update(f"lab {i}", out, int(n), dict(metrics)))
        if phase == "train":
            traffic.down.append(payload_bytes(arrays))
            traffic.up.append(payload_bytes(out))
    coordinator.finish_round(updates, [])
