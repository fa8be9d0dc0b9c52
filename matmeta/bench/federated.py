"""Federated meta-learning benchmark (``matmeta bench recipes/federated.toml``), one table.

The perovskite training B-site families are split over ``n_labs`` simulated labs by chemistry
(non-IID, :func:`matmeta.federate.labs.split_labs`); each lab keeps ``held_out`` of its families
back. Every start begins with the recipe's supervised pretraining rounds (FedAvg across the
labs; alone for local-only; pooled for centralised). Four ways to get a start, all with the
recipe's (small) model and the same local compute:

1. local-only: each lab meta-trains alone (a one-lab federation, same rounds and steps);
2. FedAvg + fine-tune: supervised federated averaging, then Adam fine-tuning on the support set
   (its learning rate chosen on the validation families);
3. federated meta-learning: the recipe's algorithm, chosen among FOMAML / Meta-SGD / Reptile on
   the validation families (short runs);
4. centralised meta-learning: one learner on all training families pooled, the federation's
   total local steps (the upper bound).

Each lab is scored on its own held-out families, and everyone on the shared test families, at
k = 5 / 10: heat_ref MAE (eV/cell) ± 95% CI over episodes. Also: bytes per lab per round (up + down), rounds
to converge (first validation check within 2% of the best), bytes each of federated and FedAvg +
fine-tune needs to reach (a) the federated best and (b) FedAvg's best validation MAE (FedAvg runs
``fedavg_rounds_factor`` x the rounds for this, and is scored after the common count), wall time.
In-process rounds (same maths as the Flower run, :mod:`matmeta.federate.inprocess`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.bench.fewshot import adam_finetune, make_episodes, predict_outputs


@dataclasses.dataclass(frozen=True)
class FederatedBenchConfig:
    """The ``[bench]`` section of ``recipes/federated.toml`` (see the recipe for the meaning of each key)."""

    name: str = "federated"
    federated_recipe: Path = Path("recipes/federated_perovskites.toml")
    store: Path = Path("out/perov.lmdb")
    min_family_size: int = 50
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    n_labs: int = 4
    held_out: int = 2
    algorithms: tuple[str, ...] = ("fomaml", "metasgd", "reptile")
    selection_rounds: int = 6
    rounds: int = 20
    eval_every: int = 4
    fedavg_rounds_factor: float = 3.0
    ks: tuple[int, ...] = (5, 10)
    episodes_per_family: int = 6
    val_episodes_per_family: int = 3
    query_size: int = 20
    finetune_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    pretrain_rounds: int | None = None
    seed: int = 0
    out_dir: Path = Path("out/bench/federated")


def run(recipe: dict, recipe_path: Path, quick: bool) -> None:
    """``matmeta bench`` entry point."""
    from matmeta.recipes import config_from_dict

    torch.set_num_threads(1)  # process setting, made here: the benchmark is single-threaded
    config = config_from_dict(FederatedBenchConfig, recipe.get("bench"), f"{recipe_path} [bench]")
    if quick:
        config = dataclasses.replace(
            config,
            selection_rounds=1,
            rounds=2,
            eval_every=1,
            episodes_per_family=1,
            val_episodes_per_family=1,
            algorithms=config.algorithms[:2],
            pretrain_rounds=1,
            fedavg_rounds_factor=1.0,
        )
    run_benchmark(config)


class Setup:
    """Data, labs, recipe and the fixed evaluation episodes of one benchmark run."""

    def __init__(self, config: FederatedBenchConfig) -> None:
        from matmeta.federate.labs import split_labs
        from matmeta.federate.run import load_federated_recipe
        from matmeta.federate.tasks import load_lab
        from matmeta.tasks import split_families

        self.config = config
        self.recipe, _ = load_federated_recipe(config.federated_recipe)
        if config.pretrain_rounds is not None:
            federate = dataclasses.replace(self.recipe.federate, pretrain_rounds=config.pretrain_rounds)
            self.recipe = dataclasses.replace(self.recipe, federate=federate)
        self.data = load_lab(config.store, self.recipe.data.family_by, None, config.min_family_size)
        table = self.data.table
        self.split = split_families(table.families, config.split_fractions, config.split_seed, config.min_family_size)
        self.labs = split_labs(self.split.train, config.n_labs, config.held_out, config.seed)
        q, s = config.query_size, config.seed
        self.val = {
            k: make_episodes(table, self.split.val, k, config.val_episodes_per_family, q, s + 1) for k in config.ks
        }
        self.test = {
            k: make_episodes(table, self.split.test, k, config.episodes_per_family, q, s + 2) for k in config.ks
        }
        self.held = [
            {k: make_episodes(table, lab.held_out, k, config.episodes_per_family, q, s + 3 + i) for k in config.ks}
            for i, lab in enumerate(self.labs)
        ]


def _federate(
    setup: Setup,
    lab_families: list[tuple[str, ...]],
    algorithm: str,
    rounds: int,
    local_steps: int,
    curve: list | None = None,
    finetune_lr: float | None = None,
    start: Any = None,
    pretrain_steps: int | None = None,
    kept: dict[int, Any] | None = None,
) -> tuple[Any, Any]:
    """Train one start by an in-process federation of ``lab_families``; returns (coordinator, traffic).

    One learner alone (local-only, centralised) takes plain steps: the server's step sizes are
    for averaging several labs and are set to 1 (its local model is the new start). ``kept``:
    a copy of the server state after each round named in its keys is stored there.
    """
    from matmeta.federate.aggregate import ServerState
    from matmeta.federate.inprocess import run_in_process
    from matmeta.federate.lab import LabHandler, model_instructions
    from matmeta.federate.server import Coordinator, open_state
    from matmeta.federate.tasks import lab_subset, new_model_state

    base = setup.recipe.federate
    cfg = dataclasses.replace(
        base,
        algorithm=algorithm,
        rounds=rounds,
        local_steps=local_steps,
        min_labs=1,
        pretrain_local_steps=pretrain_steps or base.pretrain_local_steps,
    )
    if len(lab_families) == 1:
        plain = {"server_lr": 1.0, "rate_lr": None, "pretrain_server_lr": 1.0, "pretrain_server_momentum": 0.0,
                 "pretrain_proximal_mu": 0.0}  # fmt: skip
        cfg = dataclasses.replace(cfg, server_optimizer="avg", **plain)
    recipe = dataclasses.replace(setup.recipe, federate=cfg)
    state = open_state(new_model_state(recipe.model, recipe.maml_settings(), cfg.seed), None)
    if start is not None:  # continue from a shared (pretrained) start; Meta-SGD rates start at inner_lr
        fresh = state
        state = ServerState({n: start.params.get(n, fresh.params[n]) for n in fresh.names}, fresh.names)
        state.round, state.extra, state.history = start.round, copy.deepcopy(start.extra), list(start.history)
    coordinator = Coordinator(cfg, state, stats_phase=True, log=lambda m: None, static=model_instructions(recipe))
    handlers = [
        LabHandler(lab_subset(setup.data, fams), seed=cfg.seed + 101 * (i + 1)) for i, fams in enumerate(lab_families)
    ]

    def on_round(r: int) -> None:
        if kept is not None and r in kept:
            kept[r] = copy.deepcopy(coordinator.state)
        if (
            curve is not None
            and r >= cfg.pretrain_rounds
            and ((r - cfg.pretrain_rounds) % setup.config.eval_every == 0 or r == rounds)
        ):
            k = max(setup.config.ks)
            curve.append((r, _mae(setup, recipe, coordinator.state, setup.val[k], finetune_lr)[0]))

    traffic = run_in_process(coordinator, handlers, on_round)
    return coordinator, traffic


def _mae(setup: Setup, recipe: Any, state: Any, episodes: list, finetune_lr: float | None) -> tuple[float, float]:
    """Heat MAE (eV/cell) mean ± 95% CI over ``episodes``: meta-adaptation, or Adam fine-tuning at ``finetune_lr``."""
    from matmeta.federate.export import predictor_state
    from matmeta.federate.tasks import TargetStats, loss_fn, mean_ci95

    table = setup.data.table
    stats = TargetStats(**state.extra["stats"])
    table.y = stats.encode(table.energy, table.band_gap, table.n_atoms)
    maml = predictor_state(recipe, state)
    steps = maml.inner_steps
    maes = []
    for _, support, query in episodes:
        if finetune_lr is None:
            fast = maml.adapt(table.batch(support), loss_fn)
            out = predict_outputs(maml.functional(fast), table, query)
        else:
            out = predict_outputs(adam_finetune(maml.model, table, support, steps, finetune_lr), table, query)
        heat = stats.decode_heat(out[:, 0], torch.as_tensor(table.n_atoms[query], dtype=torch.float32)).numpy()
        maes.append(float(np.mean(np.abs(heat - table.energy[query]))))
    return mean_ci95(maes)


def _rounds_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated round whose validation MAE is ≤ ``target`` (None: never)."""
    return next((r for r, m in curve if m <= target), None)


def run_benchmark(config: FederatedBenchConfig) -> dict[str, Any]:
    """Run every method, print the table and write ``results.json`` (see the module docstring)."""
    from matmeta.console import console

    setup = Setup(config)
    rec = setup.recipe.federate
    k_top = max(config.ks)
    console.print(
        "labs (train | held out): "
        + "; ".join(f"{i}: {','.join(lab.train)} | {','.join(lab.held_out)}" for i, lab in enumerate(setup.labs))
    )
    labs = [lab.train for lab in setup.labs]

    pre_rounds, steps, n = rec.pretrain_rounds, rec.local_steps, len(labs)
    total = pre_rounds + config.rounds

    # 0. the shared start: federated supervised pretraining (FedAvg rounds), computed once
    clock = time.perf_counter()
    pre, _ = _federate(setup, labs, "fedavg", pre_rounds, steps)
    pre_wall = time.perf_counter() - clock

    # 1. choose the meta-learning algorithm on the validation families (short runs from the start)
    selection = {}
    for algorithm in config.algorithms:
        coord, _ = _federate(setup, labs, algorithm, pre_rounds + config.selection_rounds, steps, start=pre.state)
        recipe = dataclasses.replace(setup.recipe, federate=coord.config)
        selection[algorithm] = _mae(setup, recipe, coord.state, setup.val[k_top], None)[0]
    chosen = min(selection, key=selection.get)
    console.print(f"validation heat MAE k={k_top} after {config.selection_rounds} rounds: {selection}; chosen {chosen}")

    # 2. FedAvg: pick the fine-tuning lr on validation families after a short run
    coord, _ = _federate(setup, labs, "fedavg", pre_rounds + config.selection_rounds, steps, start=pre.state)
    lr_scores = {lr: _mae(setup, setup.recipe, coord.state, setup.val[k_top], lr)[0] for lr in config.finetune_lrs}
    ft_lr = min(lr_scores, key=lr_scores.get)
    console.print(f"FedAvg fine-tune lr on validation: {lr_scores}; chosen {ft_lr}")

    results: dict[str, Any] = {
        "labs": [dataclasses.asdict(lab) for lab in setup.labs],
        "selection": selection,
        "finetune_lr": ft_lr,
        "pretrain_rounds": pre_rounds,
    }
    methods: dict[str, dict[str, Any]] = {}
    meta_recipe = dataclasses.replace(setup.recipe, federate=dataclasses.replace(rec, algorithm=chosen))
    fedavg_recipe = dataclasses.replace(setup.recipe, federate=dataclasses.replace(rec, algorithm="fedavg"))
    # FedAvg runs fedavg_rounds_factor x longer for the bytes goal; it is scored after `total` rounds like the rest
    avg_total = max(total, math.ceil(config.fedavg_rounds_factor * total))
    results["fedavg_rounds"] = avg_total
    console.print(f"FedAvg + fine-tune runs {avg_total} rounds (bytes goal) and is scored after {total}")
    for name, algorithm, recipe, lr, rounds in (
        ("FedAvg + fine-tune", "fedavg", fedavg_recipe, ft_lr, avg_total),
        (f"federated {chosen}", chosen, meta_recipe, None, total),
    ):
        curve: list = []
        kept: dict[int, Any] = {total: None}
        clock = time.perf_counter()
        coord, traffic = _federate(setup, labs, algorithm, rounds, steps, curve, lr, start=pre.state, kept=kept)
        wall = time.perf_counter() - clock + pre_wall
        methods[name] = _method([kept[total]] * n, recipe, lr, curve, traffic, wall)
    clock = time.perf_counter()
    local_states = [_federate(setup, [fams], chosen, total, steps)[0].state for fams in labs]
    methods["local-only"] = _method(local_states, meta_recipe, None, [], None, time.perf_counter() - clock)
    clock = time.perf_counter()
    pooled = tuple(f for fams in labs for f in fams)
    coord, _ = _federate(setup, [pooled], chosen, total, steps * n, pretrain_steps=rec.pretrain_local_steps * n)
    methods["centralised"] = _method([coord.state] * n, meta_recipe, None, [], None, time.perf_counter() - clock)
    return _score_and_report(setup, methods, results, chosen)


def _method(states: list, recipe: Any, lr: float | None, curve: list, traffic: Any, wall_s: float) -> dict[str, Any]:
    """One method's trained start(s) and what it cost."""
    per_lab = (traffic.up[0] + traffic.down[0]) if traffic is not None and traffic.up else 0
    return {"states": states, "recipe": recipe, "lr": lr, "curve": curve, "bytes_round": per_lab, "wall_s": wall_s}


def _score_and_report(setup: Setup, methods: dict, results: dict, chosen: str) -> dict[str, Any]:
    """Score every method on held-out and test families; print the table; write results.json."""
    from matmeta.atomic import write_text_atomic
    from matmeta.console import console, print_table

    config = setup.config
    rows, table = [], {}
    for name, m in methods.items():
        for k in config.ks:
            per_lab = [
                _mae(setup, m["recipe"], m["states"][i], setup.held[i][k], m["lr"]) for i in range(len(setup.labs))
            ]
            scored = {id(s): _mae(setup, m["recipe"], s, setup.test[k], m["lr"]) for s in m["states"]}  # once each
            test = [scored[id(s)] for s in m["states"]]
            test_mean = float(np.mean([t[0] for t in test]))
            test_ci = float(np.mean([t[1] for t in test]))
            table[(name, k)] = {"labs": per_lab, "test": (test_mean, test_ci)}
            curve = m["curve"]
            best = min((v for _, v in curve), default=None)
            conv = _rounds_to(curve, best * 1.02) if best is not None else None
            rows.append(
                [
                    name,
                    k,
                    *[f"{a:.3f} ± {b:.3f}" for a, b in per_lab],
                    f"{test_mean:.3f} ± {test_ci:.3f}",
                    m["bytes_round"] if m["bytes_round"] else "0 (no wire)",
                    conv if conv is not None else "-",
                    f"{m['wall_s']:.0f}",
                ]
            )
    labs_cols = [f"lab {i} held-out" for i in range(len(setup.labs))]
    print_table(
        "federated meta-learning, heat_ref MAE eV/cell (± 95% CI)",
        ["method", "k", *labs_cols, "test (shared)", "bytes/lab/round", "rounds to converge", "wall s"],
        rows,
    )
    fed, fedavg = f"federated {chosen}", "FedAvg + fine-tune"
    k = max(config.ks)
    goals = _goals(setup, methods, table, fed, fedavg, k)
    for line in goals["lines"]:
        console.print(line)
    results["table"] = {f"{n}|k={kk}": v for (n, kk), v in table.items()}
    results["curves"] = {n: m["curve"] for n, m in methods.items()}
    results["goals"] = goals
    results["wall_s"] = {n: m["wall_s"] for n, m in methods.items()}
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(results, indent=1, default=str))
    return results


def _goals(setup: Setup, methods: dict, table: dict, fed: str, fedavg: str, k: int) -> dict[str, Any]:
    """The issue's three goals, each with the numbers behind it.

    Bytes for "the same MAE" are per lab, both directions, counted from round 1 (the shared
    pretraining rounds included) up to the first validation check (k = ``k``) at or below a
    target MAE, in two ways: (a) the target is federated meta-learning's best validation MAE;
    (b) the target is FedAvg + fine-tune's own best. A method that never gets there is reported
    as not reaching it within its rounds, i.e. needing more than the bytes of all of them.
    """
    n = len(setup.labs)
    f_test, c_test = table[(fed, k)]["test"][0], table[("centralised", k)]["test"][0]
    within = f_test <= 1.10 * c_test
    better = [table[(fed, k)]["labs"][i][0] <= 0.8 * table[("local-only", k)]["labs"][i][0] for i in range(n)]
    lines = [
        f"goal 1 (k={k}): federated test MAE {f_test:.3f} vs centralised {c_test:.3f} "
        f"(ratio {f_test / c_test:.3f}; within 10%: {'MET' if within else 'NOT MET'})",
        f"goal 2 (k={k}): federated ≥ 20% better than local-only on every lab's held-out families: "
        f"{'MET' if all(better) else 'NOT MET'} (per lab: {better})",
    ]
    out: dict[str, Any] = {"within_10pct": within, "better_than_local": better, "bytes": {}}
    for label, target_of in (("a: federated best", fed), ("b: FedAvg best", fedavg)):
        target = min(v for _, v in methods[target_of]["curve"])
        need = {name: _bytes_to(methods[name], target) for name in (fed, fedavg)}
        verdict = _third(need[fed], need[fedavg])
        out["bytes"][label] = {"target_mae": target, **{name: need[name] for name in need}, "verdict": verdict}
        lines.append(
            f"goal 3 ({label} validation MAE {target:.4f}): bytes per lab: federated {_bytes_text(need[fed])}, "
            f"FedAvg + fine-tune {_bytes_text(need[fedavg])}; federated ≤ 1/3: {verdict}"
        )
    out["lines"] = lines
    return out


def _bytes_to(method: dict[str, Any], target: float) -> dict[str, Any]:
    """Rounds and bytes (per lab) until ``method``'s validation MAE first is ≤ ``target`` (``reached`` False: never)."""
    curve, per_round = method["curve"], method["bytes_round"]
    r = _rounds_to(curve, target)
    last = max(rr for rr, _ in curve)
    return {"reached": r is not None, "round": r or last, "bytes": (r or last) * per_round}


def _bytes_text(need: dict[str, Any]) -> str:
    """``123 (round 4)`` or ``does not reach it within 25 rounds (> 123 bytes)``."""
    if need["reached"]:
        return f"{need['bytes']:,} (round {need['round']})"
    return f"does not reach it within {need['round']} rounds (> {need['bytes']:,})"


def _third(fed: dict[str, Any], avg: dict[str, Any]) -> str:
    """MET / NOT MET / UNDECIDED for 'federated needs ≤ 1/3 of FedAvg's bytes' (FedAvg never there: a bound)."""
    if not fed["reached"]:
        return "NOT MET (federated does not reach it)"
    if avg["reached"]:
        return "MET" if 3 * fed["bytes"] <= avg["bytes"] else "NOT MET"
    if 3 * fed["bytes"] <= avg["bytes"]:
        return "MET (FedAvg needs more than all its rounds)"
    return "UNDECIDED (FedAvg does not reach it within its rounds; ratio only bounded)"
