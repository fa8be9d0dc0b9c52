"""The outer loop of meta-training: sample meta-batches, meta-update, validate, checkpoint, resume.

Reason for its size (~500 lines): one class whose state (optimiser, RNGs, best weights, log) the
checkpoint and resume files must capture together; split, that state would be passed around piecemeal.

One ``MetaTrainer`` trains any ``MAML``-wrapped model from any ``EpisodeSource``:

* outer optimiser Adam on ``maml.parameters()`` (model weights and, with Meta-SGD, the inner rates);
* gradient clipping by global norm; a non-finite meta-loss or gradient stops training with
  ``TrainingDivergedError`` naming the step, before the update, so the files on disk stay the
  last good checkpoint;
* validation on held-out families every ``val_every`` steps on a fixed set of validation tasks,
  with first-order adaptation and no outer gradient; early stopping after ``patience``
  validations without improvement; the best weights are written to ``checkpoint_path`` and
  restored into ``maml`` at the end;
* resume: ``<checkpoint>.resume`` (safetensors) holds the current weights, the Adam state, the
  step, the sampler and torch RNG states, so a resumed run gives the same numbers as an
  uninterrupted one;
* on CPU, freed large blocks stay in the malloc heap (``matmeta.meta.perf``), which saves the
  page faults of the per-task fast weights;
* one ``seed`` drives everything (sampler generator and torch's global RNG): same seed, same
  numbers on CPU;
* under ``torchrun --nproc_per_node=N`` the tasks of each meta-batch are sharded over the ranks
  and the meta-gradients all-reduced (see ``matmeta.meta.distributed``); only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from matmeta.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from matmeta.errors import CheckpointError, MatmetaError, TrainingDivergedError
from matmeta.meta import distributed
from matmeta.meta.maml import MAML, LossFn, Task

RESUME_SUFFIX = ".resume"


@dataclass(frozen=True)
class TrainerConfig:
    """Settings of the outer loop (a recipe's ``[trainer]`` section).

    Args:
        outer_steps: meta-updates in total (a resumed run continues up to this number).
        meta_batch_size: tasks per meta-update (summed over all ranks).
        outer_lr: Adam learning rate of the meta-parameters.
        inner_lr_outer_lr: Adam learning rate of the Meta-SGD inner rates (``maml.log_lrs``), a
            param group of its own; None: ``outer_lr``. The rates are stored as logarithms, so
            with one small ``outer_lr`` they barely move; a larger value here lets them learn.
        shape_outer_lr: Adam learning rate of the activation-shape parameters (names ending
            ``shape_coefficients``, :mod:`matmeta.models.activations`), a param group of its own; None: ``outer_lr``.
        grad_clip: maximum global norm of the meta-gradient; None: no clipping.
        val_every: validate (and write checkpoints) every this many steps; None or 0: at the end only.
        val_batches: validation uses ``val_batches * meta_batch_size`` fixed held-out tasks.
        patience: stop after this many validations without improvement; None or 0: never.
        seed: seeds the task sampler and torch's global RNG.
        log_path: JSONL metrics log (one object per step and per validation); None: no log.
        tune_allocator: on CPU, keep freed large blocks in the malloc heap
            (``matmeta.meta.perf.tune_cpu_allocator``; ~15–25% less CPU time per meta-step).
        zero_shot_weight: add this weight times the query loss of the unadapted start to the outer loss (and to
            the validation loss that early stopping reads): the start must also predict well before adaptation.
            0 is plain MAML, free to move everything adaptation can put back (a family's energy offset).
    """

    outer_steps: int = 1000
    meta_batch_size: int = 16
    outer_lr: float = 1e-3
    inner_lr_outer_lr: float | None = None
    shape_outer_lr: float | None = None
    grad_clip: float | None = 10.0
    val_every: int | None = 100
    val_batches: int = 4
    patience: int | None = 10
    seed: int = 0
    log_path: Path | None = None
    tune_allocator: bool = True
    zero_shot_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.outer_steps < 0 or self.meta_batch_size < 1 or self.val_batches < 1:
            raise ValueError("outer_steps must be >= 0, meta_batch_size and val_batches >= 1")
        if not self.outer_lr > 0 or (self.grad_clip is not None and not self.grad_clip > 0):
            raise ValueError(f"outer_lr and grad_clip must be > 0, got {self.outer_lr}, {self.grad_clip}")
        for name in ("inner_lr_outer_lr", "shape_outer_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")


class EpisodeSource(Protocol):
    """Anything that draws meta-learning tasks; all its randomness must come from ``generator``."""

    def sample(self, n_tasks: int, generator: torch.Generator) -> list[Task]:
        """``n_tasks`` tasks ``(support, query)``, each a batch the loss function understands."""
        ...


@dataclass
class TrainResult:
    """What ``MetaTrainer.fit`` did.

    Attributes:
        steps: the last outer step completed.
        best_step: step of the best validation loss (the last step when there is no validation).
        best_val_loss: best mean post-adaptation query loss on validation tasks (None: no validation).
        stopped_early: True when patience ran out.
        checkpoint_path: the best checkpoint (None when no path was given).
        history: one dict per outer step of this call (``step``, ``loss``, ``grad_norm``).
        val_history: ``(step, val_loss)`` of each validation of this call.
    """

    steps: int
    best_step: int
    best_val_loss: float | None
    stopped_early: bool
    checkpoint_path: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[tuple[int, float]] = field(default_factory=list)


def resume_path(checkpoint_path: str | Path) -> Path:
    """The resume file beside a checkpoint (``<ckpt>.resume``)."""
    path = Path(checkpoint_path)
    return path if path.name.endswith(RESUME_SUFFIX) else path.with_name(path.name + RESUME_SUFFIX)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move a task's tensors (any pytree of tensors, or objects with ``.to``) to ``device``."""
    if device.type == "cpu":
        return batch
    from torch.utils._pytree import tree_map

    return tree_map(lambda x: x.to(device) if hasattr(x, "to") else x, batch)


def _state(maml: MAML) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in maml.state_dict().items()}


class MetaTrainer:
    """Outer loop of MAML meta-training (see the module docstring).

    Args:
        maml: the engine wrapping the model; its ``state_dict()`` is what checkpoints hold
            (``model.<param>``, ``log_lrs.<name>``).
        loss_fn: ``loss_fn(forward, batch) -> scalar``, used for support and query sets.
        train_source: draws training tasks (``EpisodeSource``).
        config: the ``TrainerConfig``.
        val_source: draws validation tasks from held-out families; None: no validation (the
            checkpoint then holds the latest weights).
        checkpoint_path: where the best weights go (safetensors); the resume state goes to
            ``<checkpoint_path>.resume``. None: nothing is written.
        metadata: JSON metadata stored in the checkpoint (the app's ``kind``, model config, ...).
        val_loss_fn: loss on validation query sets (default ``loss_fn``).
        progress: show a rich progress bar (default: when stderr is a terminal).
    """

    def __init__(
        self,
        maml: MAML,
        loss_fn: LossFn,
        train_source: EpisodeSource,
        config: TrainerConfig,
        val_source: EpisodeSource | None = None,
        checkpoint_path: str | Path | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        val_loss_fn: LossFn | None = None,
        progress: bool | None = None,
    ) -> None:
        self.maml = maml
        self.loss_fn = loss_fn
        self.val_loss_fn = val_loss_fn or loss_fn
        self.train_source = train_source
        self.val_source = val_source
        self.config = config
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.metadata = dict(metadata or {})
        try:
            json.dumps(self.metadata)
        except TypeError as exc:
            raise CheckpointError(f"{checkpoint_path}: checkpoint metadata is not JSON-serialisable ({exc})") from None
        self.show_progress = progress
        self.info = distributed.DistInfo()

    # ------------------------------------------------------------------ public
    def fit(self, resume_from: str | Path | None = None) -> TrainResult:
        """Meta-train up to ``config.outer_steps``; resume from ``<ckpt>.resume`` when given.

        Returns:
            A ``TrainResult``; ``maml`` holds the best validation weights afterwards.

        Raises:
            TrainingDivergedError: a non-finite meta-loss or meta-gradient (the step is named;
                the checkpoint on disk is the last good one).
            CheckpointError: an unreadable or mismatching resume file.
        """
        cfg = self.config
        self.info = distributed.init_from_env()
        if self.info.device.type == "cuda":  # nccl: each rank computes on its own GPU
            self.maml.to(self.info.device)
        if cfg.tune_allocator and all(p.device.type == "cpu" for p in self.maml.parameters()):
            from matmeta.meta.perf import tune_cpu_allocator

            tune_cpu_allocator()
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        params = [p for p in self.maml.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(self._param_groups(), lr=cfg.outer_lr, fused=True)
        self._step, self._best_val, self._best_step, self._bad_evals = 0, math.inf, 0, 0
        self._last_saved: int | None = None
        if resume_from is not None:
            self._best_state = _state(self.maml)
            self._load_resume(Path(resume_from), optimizer, generator)
        else:
            distributed.broadcast_module(self.maml, self.info)
            self._best_state = _state(self.maml)
        self._prepare_log(truncate_after=self._step if resume_from is not None else None)
        val_tasks = self._validation_tasks()
        result = TrainResult(self._step, self._best_step, None, False, self.checkpoint_path)
        device = next(iter(params)).device if params else torch.device("cpu")
        eval_every = cfg.val_every or cfg.outer_steps

        with self._progress() as bar:
            task_id = bar.add_task("meta-train", total=cfg.outer_steps, completed=self._step)
            while self._step < cfg.outer_steps:
                step = self._step + 1
                start = time.perf_counter()
                tasks = self.train_source.sample(cfg.meta_batch_size, generator)
                loss, grad_norm = self._meta_step(tasks, optimizer, params, step, device)
                self._step = step
                record = {"step": step, "loss": loss, "grad_norm": grad_norm, "time_s": time.perf_counter() - start}
                result.history.append(record)
                self._log(record)
                bar.update(task_id, advance=1, description=f"meta-train loss {loss:.4g}")
                if step % eval_every == 0 or step == cfg.outer_steps:
                    stop = self._evaluate_and_save(val_tasks, optimizer, generator, device, result)
                    if stop:
                        result.stopped_early = True
                        break

        self.maml.load_state_dict(self._best_state)
        self.maml.train()
        result.steps = self._step
        result.best_step = self._best_step
        result.best_val_loss = None if not val_tasks or math.isinf(self._best_val) else self._best_val
        return result

    def _param_groups(self) -> list[dict[str, Any]]:
        """Adam param groups: weights at ``outer_lr``, Meta-SGD rates at ``inner_lr_outer_lr``, shapes at theirs.

        One group (the order of ``maml.parameters()``) when neither rate is set, so resume files written
        before these options still load.
        """
        from matmeta.models.activations import is_shape_parameter

        cfg = self.config
        trainable = [p for p in self.maml.parameters() if p.requires_grad]
        if cfg.inner_lr_outer_lr is None and cfg.shape_outer_lr is None:
            return [{"params": trainable}]
        rate_ids = {id(p) for p in self.maml.log_lrs.values()} if cfg.inner_lr_outer_lr is not None else set()
        shape_ids = set()
        if cfg.shape_outer_lr is not None:
            shape_ids = {id(p) for n, p in self.maml.named_parameters() if is_shape_parameter(n)}
        groups: list[dict[str, Any]] = [{"params": [p for p in trainable if id(p) not in rate_ids | shape_ids]}]
        for ids, lr in ((rate_ids, cfg.inner_lr_outer_lr), (shape_ids, cfg.shape_outer_lr)):
            chosen = [p for p in trainable if id(p) in ids]
            if chosen:
                groups.append({"params": chosen, "lr": lr})
        return groups

    # ------------------------------------------------------------------ steps
    def _meta_step(
        self, tasks: Sequence[Task], optimizer: torch.optim.Optimizer, params: list[Tensor], step: int, device: Any
    ) -> tuple[float, float]:
        """One outer update; returns (mean meta-loss over all tasks, pre-clip gradient norm)."""
        local = distributed.shard(tasks, self.info)
        optimizer.zero_grad(set_to_none=True)
        self.maml.train()
        if local:
            moved = [_to_device(t, device) for t in local]
            loss = self.maml.meta_loss(moved, self.loss_fn)
            if self.config.zero_shot_weight:
                loss = loss + self.config.zero_shot_weight * self._zero_shot_loss(moved, self.loss_fn)
            loss.backward()
            local_sum = loss.detach() * len(local)
        else:
            local_sum = torch.zeros((), device=device)
        distributed.all_reduce_gradients(params, len(local) / len(tasks), self.info)
        total = float(distributed.all_reduce_sum(local_sum, self.info)) / len(tasks)
        clip = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grads = [p for p in params if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, clip)) if grads else 0.0
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            what = "meta-loss" if not math.isfinite(total) else "meta-gradient"
            value = total if not math.isfinite(total) else grad_norm
            kept = (
                f"last good checkpoint: {self.checkpoint_path} (step {self._last_saved})"
                if self._last_saved is not None
                else "no checkpoint written yet"
            )
            raise TrainingDivergedError(
                f"meta-training diverged at step {step}: non-finite {what} ({value}); {kept}; "
                "lower outer_lr/inner_lr or set grad_clip"
            )
        optimizer.step()
        return total, grad_norm

    def _zero_shot_loss(self, tasks: Sequence[Task], loss_fn: LossFn) -> Tensor:
        """Mean query loss of the unadapted start over ``tasks``."""
        forward = self.maml.functional()
        return torch.stack([loss_fn(forward, query) for _, query in tasks]).mean()

    def _validation_tasks(self) -> list[Task]:
        """A fixed set of held-out tasks, drawn once from a generator of its own."""
        if self.val_source is None:
            return []
        generator = torch.Generator().manual_seed(self.config.seed + 1_000_003)
        tasks: list[Task] = []
        for _ in range(self.config.val_batches):
            tasks.extend(self.val_source.sample(self.config.meta_batch_size, generator))
        return tasks

    def validate(self, tasks: Sequence[Task]) -> float:
        """Mean post-adaptation query loss on ``tasks`` (first-order adaptation, no outer gradient)."""
        if not tasks:
            raise MatmetaError("validate needs at least one task")
        device = next(iter(self.maml.parameters())).device
        was_training = self.maml.training
        self.maml.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)
        size = self.config.meta_batch_size
        try:
            for begin in range(0, len(tasks), size):
                local = distributed.shard(tasks[begin : begin + size], self.info)
                if not local:
                    continue
                with torch.no_grad():
                    moved = [_to_device(t, device) for t in local]
                    loss = self.maml.meta_loss(moved, self.loss_fn, query_loss_fn=self.val_loss_fn)
                    if self.config.zero_shot_weight:
                        loss = loss + self.config.zero_shot_weight * self._zero_shot_loss(moved, self.val_loss_fn)
                total = total + loss.detach().double() * len(local)
        finally:
            self.maml.train(was_training)
        return float(distributed.all_reduce_sum(total, self.info)) / len(tasks)

    def _evaluate_and_save(
        self,
        val_tasks: list[Task],
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        device: Any,
        result: TrainResult,
    ) -> bool:
        """Validate, keep the best weights, write checkpoints; True when patience has run out."""
        step = self._step
        improved = True
        if val_tasks:
            val_loss = self.validate(val_tasks)
            improved = val_loss < self._best_val
            if not math.isfinite(val_loss):
                improved = False
            result.val_history.append((step, val_loss))
            self._log({"step": step, "val_loss": val_loss, "best": improved})
            if improved:
                self._best_val, self._bad_evals = val_loss, 0
            else:
                self._bad_evals += 1
        if improved:
            self._best_step = step
            self._best_state = _state(self.maml)
            self._save_best()
        self._save_resume(optimizer, generator)
        patience = self.config.patience
        return bool(val_tasks) and bool(patience) and self._bad_evals >= patience

    # ------------------------------------------------------------------ files
    def _training_metadata(self) -> dict[str, Any]:
        from matmeta.recipes import config_to_dict

        maml = self.maml
        return {
            "step": self._step,
            "best_step": self._best_step,
            "best_val_loss": None if math.isinf(self._best_val) else self._best_val,
            "trainer": config_to_dict(self.config),
            "maml": {
                "inner_lr": maml.inner_lr,
                "inner_steps": maml.inner_steps,
                "first_order": maml.first_order,
                "learn_inner_lr": maml.learn_inner_lr,
                "adapt_names": list(maml.adapt_names),
            },
        }

    def _save_best(self) -> None:
        if self.checkpoint_path is None or not self.info.is_main:
            return
        meta = {**self.metadata, "training": self._training_metadata()}
        save_checkpoint(self.checkpoint_path, self._best_state, meta)

    def _save_resume(self, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        if self.checkpoint_path is None:
            return
        self._last_saved = self._step
        if not self.info.is_main:
            return
        tensors = {f"state.{k}": v for k, v in _state(self.maml).items()}
        opt = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in opt["state"].items():
            for key, value in entry.items():
                if isinstance(value, Tensor):
                    tensors[f"optim.{index}.{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        tensors["rng.sampler"] = generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "kind": "resume",
            "training": self._training_metadata(),
            "bad_evals": self._bad_evals,
            "best_val_raw": self._best_val if math.isfinite(self._best_val) else None,
            "last_saved": self._last_saved,
            "param_groups": opt["param_groups"],
            "optim_scalars": scalars,
        }
        save_checkpoint(resume_path(self.checkpoint_path), tensors, meta)

    def _load_resume(self, path: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        rpath = resume_path(path)
        tensors, meta = load_checkpoint(rpath)
        if meta.get("kind") != "resume":
            raise CheckpointError(f"{rpath}: not a resume file (kind={meta.get('kind')!r})")
        state = {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}
        load_state_strict(self.maml, state, rpath)
        groups = meta["param_groups"]
        for group in groups:
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        opt_state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                opt_state.setdefault(int(index), {})[name] = value
        for index, entry in meta.get("optim_scalars", {}).items():
            opt_state.setdefault(int(index), {}).update(entry)
        try:
            optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{rpath}: optimizer state does not match this model ({exc})") from None
        generator.set_state(tensors["rng.sampler"])
        torch.set_rng_state(tensors["rng.torch"])
        training = meta["training"]
        self._step = int(training["step"])
        self._best_step = int(training["best_step"])
        self._best_val = math.inf if meta.get("best_val_raw") is None else float(meta["best_val_raw"])
        self._bad_evals = int(meta["bad_evals"])
        self._last_saved = meta.get("last_saved")
        best_file = rpath.with_name(rpath.name[: -len(RESUME_SUFFIX)])
        if best_file.exists():
            best, _ = load_checkpoint(best_file)
            self._best_state = {k: v.to(self._best_state[k].device) for k, v in best.items()}
        else:
            self._best_state = _state(self.maml)

    # ------------------------------------------------------------------ log / progress
    def _prepare_log(self, truncate_after: int | None) -> None:
        path = self.config.log_path
        if path is None or not self.info.is_main:
            return
        from matmeta.atomic import write_text_atomic

        keep: list[str] = []
        if truncate_after is not None and Path(path).exists():
            for line in Path(path).read_text().splitlines():
                try:
                    if int(json.loads(line)["step"]) <= truncate_after:
                        keep.append(line)
                except (ValueError, KeyError, TypeError):
                    continue
        write_text_atomic(path, "".join(line + "\n" for line in keep))

    def _log(self, record: dict[str, Any]) -> None:
        path = self.config.log_path
        if path is None or not self.info.is_main:
            return
        with Path(path).open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _progress(self) -> Any:
        from matmeta.console import progress

        if not self.info.is_main:
            return progress(disable=True)
        return progress(disable=None if self.show_progress is None else not self.show_progress)


__all__ = [
    "EpisodeSource",
    "MetaTrainer",
    "TrainResult",
    "TrainerConfig",
    "resume_path",
]
