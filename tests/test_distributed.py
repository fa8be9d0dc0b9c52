"""Distributed meta-training: 2 gloo processes on localhost give the parameters of 1 process."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from matmeta.bench.sinusoid import SinusoidTasks, mlp, mse_loss
from matmeta.meta import MAML, MetaTrainer, TrainerConfig, TrainResult
from matmeta.meta.distributed import DistInfo, shard, shard_bounds

STEPS = 5
# (meta-batch size, Meta-SGD): 5 tasks split 3 + 2 (uneven), and 1 task (rank 1 has none)
RUNS = ((5, True), (1, False))
# The wait for the workers is event-driven: it ends when they exit (or at once, with its traceback, when one
# fails). Only a real hang (a deadlocked collective) runs into this generous bound; a slow machine does not.
HANG_S = 1800.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shard_bounds_cover_every_task_once():
    assert [shard_bounds(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]
    for n in range(0, 12):
        for world in (1, 2, 3, 4):
            parts = [shard_bounds(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1
    assert shard(list("abcde"), DistInfo(rank=1, world_size=2)) == ["d", "e"]


def _train(run: int, out: Path, rank: int) -> tuple[MetaTrainer, TrainResult]:
    meta_batch, meta_sgd = RUNS[run]
    torch.manual_seed(100 + rank)  # different start on each rank: rank 0's weights must be broadcast
    maml = MAML(mlp(16, 2), inner_lr=0.02, inner_steps=2, learn_inner_lr=meta_sgd)
    config = TrainerConfig(
        outer_steps=STEPS,
        meta_batch_size=meta_batch,
        outer_lr=1e-2,
        val_every=2,
        val_batches=1,
        patience=None,
        seed=11,
        log_path=out / f"log{run}-rank{rank}.jsonl",
    )
    trainer = MetaTrainer(
        maml,
        mse_loss,
        SinusoidTasks(),
        config,
        val_source=SinusoidTasks(),
        checkpoint_path=out / f"ckpt{run}-rank{rank}.ckpt",
        progress=False,
    )
    result = trainer.fit()
    return trainer, result


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    out_dir = Path(out)
    try:
        for run in range(len(RUNS)):
            trainer, result = _train(run, out_dir, rank)
            assert trainer.info.world_size == world_size and trainer.info.rank == rank
            state = {k: v.contiguous() for k, v in trainer.maml.state_dict().items()}
            save_file(state, str(out_dir / f"state{run}-rank{rank}.safetensors"))
            (out_dir / f"result{run}-rank{rank}.json").write_text(
                json.dumps({"val": result.val_history, "loss": [h["loss"] for h in result.history]})
            )
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(context: mp.ProcessContext) -> None:
    """Wait on the workers' exits (process sentinels, no polling); a failed worker raises at once."""
    hang = time.monotonic() + HANG_S
    while not context.join(timeout=max(hang - time.monotonic(), 0.0)):  # returns at every worker's exit
        if time.monotonic() >= hang:
            for process in context.processes:
                process.kill()
            pytest.fail(f"distributed workers hung: still running after {HANG_S:.0f} s")


def test_two_processes_match_one_process(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    context = mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    _join(context)

    for run in range(len(RUNS)):
        single_dir = tmp_path / "single"
        single_dir.mkdir(exist_ok=True)
        torch.manual_seed(100)
        start = MAML(mlp(16, 2), learn_inner_lr=RUNS[run][1]).state_dict()
        trainer, result = _train(run, single_dir, rank=0)
        assert (trainer.maml.state_dict()["model.0.weight"] - start["model.0.weight"]).abs().max() > 1e-3  # it trained
        # single process: seed 100; the 2-process run started rank 0 from seed 100 and broadcast it
        expected = trainer.maml.state_dict()
        rank0 = load_file(str(tmp_path / f"state{run}-rank0.safetensors"))
        rank1 = load_file(str(tmp_path / f"state{run}-rank1.safetensors"))
        assert rank0.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(rank0[key], rank1[key]), key  # ranks agree exactly
            torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6)
        two = json.loads((tmp_path / f"result{run}-rank0.json").read_text())
        assert [s for s, _ in two["val"]] == [s for s, _ in result.val_history] == [2, 4, 5]
        torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor([h["loss"] for h in result.history]))
        torch.testing.assert_close(
            torch.tensor([v for _, v in two["val"]]), torch.tensor([v for _, v in result.val_history])
        )
        # only rank 0 writes checkpoints and logs
        assert (tmp_path / f"ckpt{run}-rank0.ckpt").exists() and (tmp_path / f"log{run}-rank0.jsonl").exists()
        assert not (tmp_path / f"ckpt{run}-rank1.ckpt").exists()
        assert not (tmp_path / f"log{run}-rank1.jsonl").exists()
