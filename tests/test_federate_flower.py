"""Federated meta-learning over Flower's real gRPC transport on 127.0.0.1 (server in this thread, labs in threads)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading

import flwr  # noqa: E402, F401  (make env installs it: a missing flwr fails here instead of skipping)
import numpy as np
import pytest
import torch

from matmeta.bench.sinusoid import SinusoidTasks, mlp, mse_loss  # noqa: E402
from matmeta.federate.config import FederateConfig  # noqa: E402
from matmeta.federate.local import LocalLearner  # noqa: E402
from matmeta.federate.messages import METRIC_KEYS, state_names  # noqa: E402
from matmeta.federate.server import Coordinator, open_state  # noqa: E402
from matmeta.meta.maml import MAML  # noqa: E402
from matmeta.meta.trainer import MetaTrainer, TrainerConfig  # noqa: E402

STEPS, BATCH = 6, 4
# One bound for every wait below (labs connecting, the server waiting for them, a round, the labs ending).
# All waits are event-driven: they end when the event happens (the server listens, a lab connects or answers,
# a thread ends), so only a real hang runs into this bound; nothing polls a port or sleeps.
TIMEOUT_S = 120.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(coordinator: Coordinator, handlers: list, audit=None) -> None:
    """Server in this thread, one Flower client thread per handler, all on 127.0.0.1.

    The labs wait on the server's ``on_listening`` event, so each connects at its first attempt (no port
    polling, no retry back-off): checked through ``wait_for_server``, which each lab calls once.
    """
    from matmeta.federate import flower

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    address = f"127.0.0.1:{_port()}"
    listening = threading.Event()
    seen_listening: list[bool] = []

    def lab(handler) -> None:
        assert listening.wait(TIMEOUT_S), "the server never listened"
        flower.join(handler, address, max_wait_s=TIMEOUT_S)

    def first_probe(address: str, max_wait_s: float) -> None:
        seen_listening.append(listening.is_set())
        probe(address, max_wait_s)

    probe = flower.wait_for_server
    threads = [threading.Thread(target=lab, args=(h,), daemon=True) for h in handlers]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flower, "wait_for_server", first_probe)
        for t in threads:
            t.start()
        flower.serve(
            coordinator, address, len(handlers), wait_s=TIMEOUT_S, round_timeout_s=TIMEOUT_S, audit=audit,
            on_listening=listening.set,
        )  # fmt: skip
        for t in threads:
            t.join(timeout=TIMEOUT_S)
    assert not any(t.is_alive() for t in threads)  # the server's end reached every lab still there
    assert seen_listening == [True] * len(handlers)  # every lab started once the server listened


class FixedTasks:
    """An episode source that returns the given tasks of step ``i`` at its i-th call."""

    def __init__(self, per_step):
        self.per_step, self.calls = per_step, 0

    def sample(self, n_tasks, generator):
        tasks = self.per_step[self.calls]
        self.calls += 1
        assert len(tasks) == n_tasks
        return tasks


def test_two_labs_on_localhost_reach_the_centralised_trainers_weights():
    tasks = [
        SinusoidTasks(k_support=5, k_query=5).sample(BATCH, torch.Generator().manual_seed(s)) for s in range(STEPS)
    ]
    torch.manual_seed(0)
    model = mlp(width=16)
    init = {k: v.clone() for k, v in model.state_dict().items()}

    central = MAML(model, inner_lr=0.05, inner_steps=2, first_order=True)
    cfg = TrainerConfig(
        outer_steps=STEPS,
        meta_batch_size=BATCH,
        outer_lr=0.01,
        grad_clip=None,
        val_every=None,
        patience=None,
        tune_allocator=False,
    )
    MetaTrainer(central, mse_loss, FixedTasks(tasks), cfg, progress=False).fit()

    def lab(half):
        net = mlp(width=16)
        maml = MAML(net, inner_lr=0.05, inner_steps=2, first_order=True)
        source = FixedTasks([t[half * 2 : half * 2 + 2] for t in tasks])
        names = state_names(maml.state_dict())
        learner = LocalLearner(maml, mse_loss, source, "fomaml", names)

        def handler(arrays, config):
            r = learner.update(arrays, int(config["round"]), 1, "sgd", 1.0, 2)
            return r.arrays, r.n_examples, r.metrics

        return handler

    fed_cfg = FederateConfig(
        rounds=STEPS,
        local_steps=1,
        meta_batch_size=2,
        client_optimizer="sgd",
        client_lr=1.0,
        server_optimizer="adam",
        server_lr=0.01,
        min_labs=2,
    )
    init_state = {f"model.{k}": v for k, v in init.items()}
    coordinator = Coordinator(fed_cfg, open_state(init_state, None), log=lambda m: None)
    _run(coordinator, [lab(0), lab(1)])
    assert coordinator.state.round == STEPS
    assert all(len(r.accepted) == 2 for r in coordinator.reports)
    moved = 0.0
    for name, value in central.state_dict().items():
        torch.testing.assert_close(coordinator.state.params[name], value, rtol=1e-4, atol=1e-5)
        moved += float((value - init_state[name]).abs().max())
    assert moved > 1e-3  # training did move the weights


def _secret_lab(seed: int):
    """A tiny predictor lab with recognisable family names, ids and labels."""
    from matmeta.federate.tasks import GraphTable, LabData
    from matmeta.graphs import GraphConfig

    rng = np.random.default_rng(seed)
    graphs, families, ids = [], [], []
    for i in range(40):
        n = 5
        z = torch.as_tensor(rng.choice([8, 22, 38, 56], size=n), dtype=torch.long)
        src, dst = np.meshgrid(np.arange(n), np.arange(n))
        keep = src != dst
        edges = torch.as_tensor(np.stack([src[keep], dst[keep]]), dtype=torch.long)
        dist = torch.as_tensor(rng.uniform(1.8, 4.0, size=edges.shape[1]), dtype=torch.float32)
        graphs.append((z, edges, dist))
        families.append(f"SECRETFAMILY{seed}{i % 2}")
        ids.append(f"secret-structure-{seed}-{i:03d}")
    heat = rng.normal(-5.0, 1.0, size=40) * 5
    gap = np.where(rng.random(40) < 0.5, 0.0, rng.uniform(0.5, 4.0, size=40))
    table = GraphTable(graphs, torch.empty(0), heat, gap, families, ids)
    return LabData(table, sorted(set(families)), GraphConfig(cutoff_angstrom=6.0))


def test_message_audit_no_structure_label_or_family_name_reaches_the_server():
    from matmeta.federate.config import FederatedRecipe
    from matmeta.federate.lab import LabHandler, model_instructions
    from matmeta.federate.tasks import new_model_state

    recipe = FederatedRecipe.from_recipe(
        {
            "federate": {"rounds": 2, "local_steps": 1, "meta_batch_size": 2},
            "model": {"hidden": 8, "layers": 1},
            "maml": {"inner_steps": 1},
            "episodes": {"k_support": [3], "k_query": 3},
        }
    )
    labs = [_secret_lab(1), _secret_lab(2)]
    secrets = [f for lab in labs for f in lab.families] + [i for lab in labs for i in lab.table.ids]
    labels = np.concatenate(
        [np.concatenate([lab.table.energy, lab.table.band_gap[lab.table.band_gap > 0]]) for lab in labs]
    )
    received: list[dict] = []
    state = open_state(new_model_state(recipe.model, recipe.maml_settings(), 0), None)
    coordinator = Coordinator(
        recipe.federate, state, stats_phase=True, log=lambda m: None, static=model_instructions(recipe)
    )
    _run(coordinator, [LabHandler(lab, seed=i) for i, lab in enumerate(labs)], audit=received.append)

    assert coordinator.phase == "done" and len(received) == 2 * 3  # statistics round + 2 training rounds, 2 labs
    for message in received:
        blob = b"".join(message["tensors"])
        for secret in secrets:
            assert secret.encode() not in blob
        for value in labels:
            assert struct.pack("<d", value) not in blob and struct.pack("<f", value) not in blob
        assert set(message["metrics"]) <= set(METRIC_KEYS)
        assert all(isinstance(v, (int, float)) for v in message["metrics"].values())
        assert isinstance(message["num_examples"], int)
    assert "stats" in coordinator.state.extra and coordinator.state.extra["elements"] == [8, 22, 38, 56]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the lab crashes on purpose
def test_a_lab_that_fails_mid_round_is_dropped_and_the_federation_finishes():
    shapes = {"w": torch.zeros(3)}

    def good(arrays, config):
        return [np.full(3, 0.1, np.float32)], 1, {"loss": 1.0}

    def flaky(arrays, config):
        if int(config["round"]) == 2:
            raise RuntimeError("lab crashed")
        return [np.full(3, 0.3, np.float32)], 1, {"loss": 2.0}

    def poisoned(arrays, config):
        return [np.full(3, np.nan, np.float32)], 1, {"loss": 0.0}

    cfg = FederateConfig(rounds=3, server_optimizer="avg", server_lr=1.0, min_labs=3)
    coordinator = Coordinator(cfg, open_state(shapes, None), log=lambda m: None)
    _run(coordinator, [good, flaky, poisoned])  # round 1 waits for all 3 labs; round 3 not for the crashed one
    assert coordinator.state.round == 3
    reports = coordinator.reports
    assert all("NaN" in " ".join(r.rejected.values()) for r in reports)
    assert len(reports[1].accepted) == 1 and (len(reports[1].dropped) == 1 or len(reports[1].rejected) == 2)
    assert len(reports[2].accepted) == 1  # the crashed lab is gone; the round runs with who is left
    # round 1 averages 0.1 and 0.3; rounds 2 and 3 take the good lab only: −(0.2 + 0.1 + 0.1)
    np.testing.assert_allclose(coordinator.state.params["w"].numpy(), np.full(3, -0.4), rtol=1e-5)


def test_a_server_without_labs_stops_with_a_reason_instead_of_skipping_rounds():
    from matmeta.federate.errors import FederationError
    from matmeta.federate.flower import serve

    cfg = FederateConfig(rounds=2, min_labs=1)
    coordinator = Coordinator(cfg, open_state({"w": torch.zeros(3)}, None), log=lambda m: None)

    def mine(*_):
        return None

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(FederationError, match="no lab connected within 1 s"):
            serve(coordinator, f"127.0.0.1:{_port()}", 1, wait_s=1.0, round_timeout_s=5.0)
        # Flower's server swaps in its own exit handlers; serve puts the process's own back
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert coordinator.state.round == 0 and coordinator.reports == []


def test_the_server_says_when_it_listens_and_simulate_waits_for_the_exit_not_a_clock(tmp_path):
    import subprocess
    import sys

    from matmeta.federate.flower import MetaStrategy
    from matmeta.federate.run import _wait

    coordinator = Coordinator(FederateConfig(rounds=1), open_state({"w": torch.zeros(3)}, None), log=lambda m: None)
    called: list[int] = []
    strategy = MetaStrategy(coordinator, 1, 1.0, on_listening=lambda: called.append(1))
    strategy.initialize_parameters(None)  # what Flower calls right after its gRPC server started
    assert called == [1]
    log = tmp_path / "server.log"
    log.write_text("")
    code = "import sys; sys.stdin.read(); sys.exit(0)"  # exits as soon as its stdin closes: an event, no clock
    server = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    lab = subprocess.Popen([sys.executable, "-c", "pass"])
    server.stdin.close()
    result = _wait([("server", server, log), ("lab0", lab, log)], timeout_s=TIMEOUT_S)
    assert result["returncodes"] == {"server": 0, "lab0": 0}


def test_a_lab_waits_for_the_server_to_listen_and_gives_up_with_a_reason():
    from matmeta.federate.errors import FederationError
    from matmeta.federate.flower import wait_for_server

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        wait_for_server(f"127.0.0.1:{listening.getsockname()[1]}", max_wait_s=5.0)  # returns: it listens
    with pytest.raises(FederationError, match="no federated server listening within 0.3 s"):
        wait_for_server(f"127.0.0.1:{_port()}", max_wait_s=0.3)
    with pytest.raises(FederationError, match="cannot reach the federated server"):
        wait_for_server("no-such-host.invalid:18080", max_wait_s=60.0)  # not waited out
