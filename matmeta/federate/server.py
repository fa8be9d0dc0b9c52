"""The coordinator: what each round asks of the labs, and what the server does with the answers.

Transport-free: the Flower strategy (:mod:`matmeta.federate.flower`) and the in-process
benchmark driver call the same two methods, ``instructions()`` and ``finish_round()``. After every
round the state is written to ``work_dir/server_state.ckpt``; a restarted server resumes there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.federate.aggregate import RoundReport, ServerState, Update, average, clip_
from matmeta.federate.config import FederateConfig, pretrain_lr
from matmeta.federate.privacy import epsilon, noise_

STATE_FILE = "server_state.ckpt"


class Coordinator:
    """Drives the rounds.

    Args:
        config: the ``[federate]`` settings.
        state: the server state (fresh or resumed).
        stats_phase: ask the labs for normalisation statistics before the first training round.
        state_path: where the state is written after every round (None: not written).
        log: where one line per round goes.
        static: settings sent with every round (model, engine and episode settings).
    """

    def __init__(
        self,
        config: FederateConfig,
        state: ServerState,
        stats_phase: bool = False,
        state_path: Path | None = None,
        log: Callable[[str], None] = print,
        static: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.static = dict(static or {})
        self.state = state
        self.stats_phase = stats_phase
        self.state_path = state_path
        self.log = log
        self.noise_generator = torch.Generator().manual_seed(config.seed + 7919 + state.round)
        self.reports: list[RoundReport] = []

    @property
    def phase(self) -> str:
        """``stats`` (once, first), ``train``, or ``done``."""
        if self.stats_phase and "stats" not in self.state.extra:
            return "stats"
        return "train" if self.state.round < self.config.rounds else "done"

    def rounds_left(self) -> int:
        """Transport rounds still to run (the stats round included)."""
        return max(self.config.rounds - self.state.round, 0) + (1 if self.phase == "stats" else 0)

    def instructions(self) -> dict[str, Any]:
        """The configuration every lab gets this round (numbers and the algorithm's name only)."""
        cfg = self.config
        out: dict[str, Any] = dict(self.static)
        out |= {"phase": self.phase, "round": self.state.round + 1, "algorithm": cfg.algorithm}
        out |= {
            "local_steps": cfg.local_steps,
            "meta_batch_size": cfg.meta_batch_size,
            "batch_size": cfg.batch_size,
            "client_optimizer": cfg.client_optimizer,
            "client_lr": cfg.client_lr,
            "dp_clip": -1.0 if cfg.dp_clip is None else cfg.dp_clip,
            "proximal_mu": 0.0,
        }
        if self.state.round < cfg.pretrain_rounds:  # supervised FedAvg rounds first
            out |= {"algorithm": "fedavg", "local_steps": cfg.pretrain_local_steps, "client_optimizer": "adam"}
            out |= {"client_lr": pretrain_lr(cfg, self.state.round), "proximal_mu": cfg.pretrain_proximal_mu}
        for key, value in (self.state.extra.get("stats") or {}).items():
            out[f"stats.{key}"] = float(value)
        return out

    def finish_round(self, updates: list[Update], dropped: list[str]) -> RoundReport:
        """Aggregate one round's replies, step, save; labs that failed are named in the report."""
        if self.phase == "stats":
            return self._finish_stats(updates, dropped)
        cfg, state = self.config, self.state
        report = RoundReport(state.round + 1, dropped=list(dropped))
        report.bytes_up = int(sum(sum(np.asarray(a).nbytes for a in u.arrays) for u in updates))
        max_norm = cfg.max_update_norm if cfg.dp_clip is None else min(cfg.max_update_norm, cfg.dp_clip * 1.001)
        mean = average(updates, state, max_norm, report)
        if mean is None:
            self.log(report.message() + "; weights kept")
        else:
            if cfg.dp_clip is not None and cfg.dp_noise > 0:
                noise_(mean, cfg.dp_clip, cfg.dp_noise, len(report.accepted), self.noise_generator)
            report.update_norm = clip_(mean, cfg.grad_clip)
            if state.round < cfg.pretrain_rounds:  # FedAvg (lr 1: the mean of the labs' local models)
                state.apply(mean, "avg", cfg.pretrain_server_lr, momentum=cfg.pretrain_server_momentum)
            else:
                state.apply(mean, cfg.server_optimizer, cfg.server_lr, cfg.rate_lr)
            self.log(report.message())
        state.round += 1
        state.history.append(
            {
                "round": state.round,
                "accepted": len(report.accepted),
                "rejected": len(report.rejected),
                "dropped": len(report.dropped),
                "loss": None if math.isnan(report.loss) else report.loss,
                "bytes_up": report.bytes_up,
            }
        )
        self._save()
        self.reports.append(report)
        return report

    def _finish_stats(self, updates: list[Update], dropped: list[str]) -> RoundReport:
        from matmeta.federate.lab import combine_stats

        report = RoundReport(0, dropped=list(dropped))
        good = [u for u in updates if all(np.isfinite(a).all() for a in u.arrays) and len(u.arrays) == 2]
        report.accepted = [u.client for u in good]
        report.rejected = {u.client: "malformed statistics" for u in updates if u not in good}
        if not good:
            self.log("statistics round: no usable answer; asking again")
            return report
        stats, elements = combine_stats([u.arrays for u in good])
        self.state.extra["stats"] = stats
        self.state.extra["elements"] = elements
        self.log(f"statistics round: {len(good)} lab(s) answered; targets normalised with their pooled moments")
        self._save()
        return report

    def _save(self) -> None:
        if self.state_path is not None:
            self.state.save(self.state_path)

    def privacy_budget(self) -> float | None:
        """ε of the rounds run so far (None without differential privacy)."""
        cfg = self.config
        if cfg.dp_clip is None:
            return None
        return epsilon(self.state.round, cfg.dp_noise, cfg.dp_delta)


def open_state(initial: dict[str, torch.Tensor], work_dir: Path | None, resume: bool = True) -> ServerState:
    """The server state: resumed from ``work_dir/server_state.ckpt`` when it exists, else ``initial``."""
    from matmeta.federate.messages import state_names

    names = state_names(initial)
    if work_dir is not None and resume and (Path(work_dir) / STATE_FILE).exists():
        return ServerState.load(Path(work_dir) / STATE_FILE, names)
    return ServerState(initial, names)
