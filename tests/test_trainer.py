"""MetaTrainer: determinism, resume, divergence guard, validation, early stopping, best checkpoint, logs."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from matmeta.bench.sinusoid import SinusoidTasks, mlp, mse_loss
from matmeta.checkpoint import load_checkpoint, read_metadata
from matmeta.errors import CheckpointError, RecipeError, TrainingDivergedError
from matmeta.meta import MAML, MetaTrainer, TrainerConfig
from matmeta.meta.trainer import resume_path
from matmeta.recipes import config_from_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _maml(seed: int = 0, **options) -> MAML:
    torch.manual_seed(seed)
    return MAML(mlp(16, 2), inner_lr=0.02, inner_steps=2, **options)


def _config(tmp_path, **changes) -> TrainerConfig:
    base = TrainerConfig(
        outer_steps=12,
        meta_batch_size=4,
        outer_lr=3e-3,
        val_every=4,
        val_batches=1,
        patience=None,
        seed=7,
        log_path=tmp_path / "log.jsonl",
    )
    return dataclasses.replace(base, **changes)


def _state(maml: MAML) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in maml.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    results, states = [], []
    for seed, run in ((7, "a"), (7, "b"), (8, "c")):
        maml = _maml()
        config = _config(tmp_path, seed=seed, log_path=tmp_path / f"{run}.jsonl")
        results.append(MetaTrainer(maml, mse_loss, SinusoidTasks(), config, val_source=SinusoidTasks()).fit())
        states.append(_state(maml))
    assert [h["loss"] for h in results[0].history] == [h["loss"] for h in results[1].history]
    assert results[0].val_history == results[1].val_history
    _assert_same_state(states[0], states[1])
    assert [h["loss"] for h in results[0].history] != [h["loss"] for h in results[2].history]


@pytest.mark.parametrize("rate_lr", [None, 3e-2])
def test_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path, rate_lr):
    """Meta-SGD (rates in the optimiser state too): 12 steps at once == 8 steps, then resume to 12.

    Also with the rates in an Adam param group of their own (``inner_lr_outer_lr``).
    """
    full = _maml(learn_inner_lr=True)
    config = _config(tmp_path, log_path=tmp_path / "full.jsonl", inner_lr_outer_lr=rate_lr)
    result_full = MetaTrainer(
        full, mse_loss, SinusoidTasks(), config, val_source=SinusoidTasks(), checkpoint_path=tmp_path / "full.ckpt"
    ).fit()

    part = _maml(learn_inner_lr=True)
    ckpt = tmp_path / "part.ckpt"
    first = dataclasses.replace(config, outer_steps=8, log_path=tmp_path / "part.jsonl")
    MetaTrainer(part, mse_loss, SinusoidTasks(), first, val_source=SinusoidTasks(), checkpoint_path=ckpt).fit()
    assert resume_path(ckpt).exists()
    assert read_metadata(resume_path(ckpt))["training"]["step"] == 8

    torch.manual_seed(999)  # the resumed run must not depend on the global RNG it finds
    resumed = _maml(seed=123, learn_inner_lr=True)  # other start weights: overwritten by the resume state
    second = dataclasses.replace(config, log_path=tmp_path / "part.jsonl")
    result = MetaTrainer(
        resumed, mse_loss, SinusoidTasks(), second, val_source=SinusoidTasks(), checkpoint_path=ckpt
    ).fit(resume_from=ckpt)

    assert [h["step"] for h in result.history] == [9, 10, 11, 12]
    assert [h["loss"] for h in result.history] == [h["loss"] for h in result_full.history[8:]]
    assert result.val_history == result_full.val_history[2:]
    _assert_same_state(_state(resumed), _state(full))
    full_log = [json.loads(line) for line in (tmp_path / "full.jsonl").read_text().splitlines()]
    part_log = [json.loads(line) for line in (tmp_path / "part.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in full_log]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in part_log]


def test_resume_refuses_a_missing_or_mismatching_file(tmp_path):
    config = _config(tmp_path, outer_steps=4)
    with pytest.raises(CheckpointError, match="not found"):
        MetaTrainer(_maml(), mse_loss, SinusoidTasks(), config).fit(resume_from=tmp_path / "none.ckpt")
    ckpt = tmp_path / "x.ckpt"
    MetaTrainer(_maml(), mse_loss, SinusoidTasks(), config, checkpoint_path=ckpt).fit()
    other = MAML(mlp(8, 2), inner_lr=0.02, inner_steps=2)
    with pytest.raises(CheckpointError, match="do not match"):
        MetaTrainer(other, mse_loss, SinusoidTasks(), config).fit(resume_from=ckpt)


class _PoisonedSource:
    """Sinusoid tasks whose ``bad_call``-th meta-batch carries a NaN target."""

    def __init__(self, bad_call: int) -> None:
        self.calls, self.bad_call, self.inner = 0, bad_call, SinusoidTasks()

    def sample(self, n_tasks, generator):
        self.calls += 1
        tasks = self.inner.sample(n_tasks, generator)
        if self.calls == self.bad_call:
            (xs, ys), query = tasks[0]
            ys = ys.clone()
            ys[0] = float("nan")
            tasks[0] = ((xs, ys), query)
        return tasks


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    maml = _maml()
    config = _config(tmp_path, val_every=3, outer_steps=20)
    trainer = MetaTrainer(maml, mse_loss, _PoisonedSource(bad_call=8), config, checkpoint_path=ckpt)
    with pytest.raises(TrainingDivergedError, match=r"step 8: non-finite meta-loss.*run\.ckpt \(step 6\)"):
        trainer.fit()
    tensors, metadata = load_checkpoint(ckpt)
    assert metadata["training"]["step"] == 6
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert all(torch.isfinite(p).all() for p in maml.parameters())  # no update was applied at step 8
    # the state at step 6 is the state of a clean run of 6 steps
    clean = _maml()
    MetaTrainer(clean, mse_loss, SinusoidTasks(), dataclasses.replace(config, outer_steps=6, log_path=None)).fit()
    _assert_same_state(tensors, _state(clean))
    logged = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert max(logged) == 7


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    config = _config(tmp_path, val_every=5)
    with pytest.raises(TrainingDivergedError, match="step 1: .*no checkpoint written yet"):
        MetaTrainer(_maml(), mse_loss, _PoisonedSource(bad_call=1), config, checkpoint_path=tmp_path / "c.ckpt").fit()
    assert not (tmp_path / "c.ckpt").exists()


def test_validation_is_first_order_without_outer_gradient(tmp_path):
    maml = _maml()
    trainer = MetaTrainer(maml, mse_loss, SinusoidTasks(), _config(tmp_path))
    tasks = SinusoidTasks().sample(6, torch.Generator().manual_seed(1))
    value = trainer.validate(tasks)
    assert all(p.grad is None for p in maml.parameters())
    assert maml.training  # restored
    expected = 0.0
    for support, query in tasks:  # by hand: plain gradient steps on detached copies of the weights
        weights = {n: p.detach().clone().requires_grad_(True) for n, p in maml.model.named_parameters()}
        for _ in range(maml.inner_steps):
            loss = mse_loss(lambda x, w=weights: torch.func.functional_call(maml.model, w, (x,)), support)
            grads = torch.autograd.grad(loss, list(weights.values()))
            steps = zip(weights.items(), grads, strict=True)
            weights = {n: (w - 0.02 * g).detach().requires_grad_(True) for (n, w), g in steps}
        with torch.no_grad():
            expected += mse_loss(lambda x, w=weights: torch.func.functional_call(maml.model, w, (x,)), query).item()
    assert value == pytest.approx(expected / len(tasks), rel=1e-5)


class _CountingMetric:
    """A validation metric that gets worse every time it is called (early stopping must trigger)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, forward, batch):
        self.calls += 1
        return mse_loss(forward, batch) + 100.0 * self.calls


def test_early_stopping_restores_the_best_weights(tmp_path):
    ckpt = tmp_path / "best.ckpt"
    maml = _maml()
    config = _config(tmp_path, val_every=2, patience=2, outer_steps=50)
    result = MetaTrainer(
        maml,
        mse_loss,
        SinusoidTasks(),
        config,
        val_source=SinusoidTasks(),
        checkpoint_path=ckpt,
        metadata={"kind": "test", "note": "hello"},
        val_loss_fn=_CountingMetric(),
    ).fit()
    assert result.stopped_early
    assert result.steps == 6 and result.best_step == 2
    assert [s for s, _ in result.val_history] == [2, 4, 6]
    assert result.best_val_loss == pytest.approx(result.val_history[0][1])
    tensors, metadata = load_checkpoint(ckpt)
    assert metadata["kind"] == "test" and metadata["note"] == "hello"
    assert metadata["training"]["best_step"] == 2
    assert metadata["training"]["trainer"]["patience"] == 2
    assert set(tensors) == set(maml.state_dict())
    best_two = _maml()
    MetaTrainer(best_two, mse_loss, SinusoidTasks(), dataclasses.replace(config, outer_steps=2, log_path=None)).fit()
    _assert_same_state(_state(maml), _state(best_two))  # restored into the engine
    _assert_same_state(tensors, _state(best_two))  # and written to the checkpoint
    resume_meta = read_metadata(resume_path(ckpt))
    assert resume_meta["training"]["step"] == 6 and resume_meta["bad_evals"] == 2


def test_metrics_log_has_every_step_and_every_validation(tmp_path):
    config = _config(tmp_path, outer_steps=10, val_every=4)
    result = MetaTrainer(_maml(), mse_loss, SinusoidTasks(), config, val_source=SinusoidTasks()).fit()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    vals = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    assert steps == list(range(1, 11))
    assert vals == result.val_history and [s for s, _ in vals] == [4, 8, 10]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] >= 0 for r in records if "loss" in r)


def test_inner_rates_have_an_outer_learning_rate_of_their_own(tmp_path):
    """``inner_lr_outer_lr`` moves the Meta-SGD log-rates faster; the weights' first update is unchanged.

    Adam moves every coordinate by at most ~lr per step (bias-corrected first step: exactly lr·sign(g)).
    """
    steps, outer_lr = 5, 1e-4
    start = _state(_maml(learn_inner_lr=True))
    moved, weights_after_one = {}, {}
    for rate_lr in (None, 1e-2):
        for n_steps in (1, steps):
            maml = _maml(learn_inner_lr=True)
            config = _config(
                tmp_path,
                outer_steps=n_steps,
                outer_lr=outer_lr,
                inner_lr_outer_lr=rate_lr,
                val_every=None,
                log_path=None,
            )
            MetaTrainer(maml, mse_loss, SinusoidTasks(), config).fit()
            state = _state(maml)
            rates = [k for k in state if k.startswith("log_lrs.")]
            assert rates
            if n_steps == 1:
                weights_after_one[rate_lr] = {k: v for k, v in state.items() if k.startswith("model.")}
                first_rate_step = max(float((state[k] - start[k]).abs().max()) for k in rates)
                expected = outer_lr if rate_lr is None else rate_lr
                assert first_rate_step == pytest.approx(expected, rel=1e-2)  # float32 log-rates
            else:
                moved[rate_lr] = max(float((state[k] - start[k]).abs().max()) for k in rates)
    _assert_same_state(weights_after_one[None], weights_after_one[1e-2])
    assert moved[None] <= steps * outer_lr * 1.01
    assert moved[1e-2] > 20 * moved[None]
    with pytest.raises(ValueError, match="inner_lr_outer_lr"):
        TrainerConfig(inner_lr_outer_lr=0.0)


def test_gradient_clipping_bounds_the_update(tmp_path):
    """The gradient that reaches the optimiser has norm ``grad_clip``; the log keeps the raw norm."""
    maml = _maml()
    seen = []
    original_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(torch.sqrt(sum((p.grad**2).sum() for p in maml.parameters() if p.grad is not None)).item())
        return original_step(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        config = _config(tmp_path, grad_clip=1e-3, outer_steps=3, val_every=None)
        result = MetaTrainer(maml, mse_loss, SinusoidTasks(), config).fit()
    finally:
        torch.optim.Adam.step = original_step
    assert all(h["grad_norm"] > 1e-2 for h in result.history)  # the raw norms are far above the bound
    assert seen == pytest.approx([1e-3] * 3, rel=1e-4)


def test_config_from_recipe_refuses_bad_values():
    config = config_from_dict(TrainerConfig, {"outer_steps": 5, "outer_lr": 1, "log_path": "x.jsonl"})
    assert config.outer_lr == 1.0 and str(config.log_path) == "x.jsonl"
    with pytest.raises(RecipeError, match="outer_lr"):
        config_from_dict(TrainerConfig, {"outer_lr": -1.0}, where="r.toml[trainer]")
    with pytest.raises(RecipeError, match="unknown setting"):
        config_from_dict(TrainerConfig, {"outer_stpes": 5}, where="r.toml[trainer]")
