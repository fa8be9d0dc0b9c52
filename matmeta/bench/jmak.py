"""``matmeta bench recipes/jmak.toml``: the JMAK prior against classical fits, side by side.

1. Held-out synthetic families (never seen in meta-training: drawn from their own seed), with
   2, 3, 5 and 10 points per curve: the MAML prior vs the Avrami linearisation vs scipy
   ``curve_fit`` started from the linearisation. Curve RMSE is measured against the true curve on
   64 log-spaced times spanning X = 1–99 %; statistics are over the successful fits, failures
   (no fit, non-finite, n ≤ 0) are counted separately. fits/s: MAML and Avrami run batched on
   ``speed_curves`` curves; curve_fit (started from the Avrami line) is timed on the benchmark
   curves (one call per curve); each rate is the best of ``repeats`` timings, on ``threads``
   torch threads. Two rates are printed: per wall-clock second and per CPU-second of this
   process — on a shared machine the wall rate also measures the other users' load; the CPU
   rate does not. At ``limit_points`` the exact grid posterior under the generating distribution
   (the information limit) gets a row, and so does a prior meta-trained on that distribution
   (``limit_prior``, recipes/jmak_2pt_ensemble.toml: five such priors trained jointly, their adapted
   curves averaged, :mod:`matmeta.kinetics.ensemble`), the MAML row the limit is compared with.
2. TTT table, leave-one-phase-out: each clean row gives (t_start, 1 %) and (t_10, 10 %); t_90
   is predicted. MAML: the synthetic prior, and that prior meta-fine-tuned (same engine and
   trainer) on the rows of the other phases; classical: the two-point Avrami line and curve_fit.
   The TTT fractions are nominal (1 %, 10 %) and the times are read off a diagram, so the fits
   assume a small fraction noise ``ttt_noise`` (a ±5 % error in time moves X by ≈ 0.002 at 1 % and
   ≈ 0.015 at 10 % for n ≈ 3; 0.005 sits between), not the 2 % of the synthetic curves.
   The log-time methods (:mod:`matmeta.kinetics.ttt_eval`) are added to the same table.
3. TTT table, leave-one-temperature-out within each phase (:mod:`matmeta.kinetics.ttt_eval`):
   classical two-point solve, per-curve TTT prior, phase-adapted prior, joint TTT fit; and the
   goal check (best matmeta method ≤ classical on every phase, ≤ 0.5x on average; plain fit
   ≤ classical on every phase).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.kinetics.fit import fit_avrami, fit_least_squares, fit_maml, make_batch
from matmeta.kinetics.synthetic import SyntheticConfig, make_corpus, true_fraction, truth_grid

METHOD_NAMES = {"maml": "MAML", "avrami": "Avrami", "curve_fit": "curve_fit"}
LIMIT_NAME = "information limit"
MATCHED_NAME = "MAML (prior of this distribution)"


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """The ``[bench]`` section of recipes/jmak.toml (besides ``name``).

    Attributes:
        prior: prior checkpoint (empty: the shipped default).
        points: points per curve to compare.
        families, curves_per_family: size of the held-out synthetic set per point count.
        seed: seed of the held-out set (training draws from the trainer's own generator).
        n_range, log10_t50_range, noise, window: held-out family distribution (issue #5's protocol).
        speed_curves: batch size for the batched fits/s measurement.
        ttt_csv: TTT table, relative to the shared data directory.
        ttt_steps, ttt_lr: meta-fine-tuning of the prior on the other phases' rows.
        ttt_noise: fraction noise σ assumed for TTT readings (the fraction-likelihood MAML rows).
        ttt_loto_stride: hold out every k-th temperature of a phase (1: all).
        limit_points: point counts that get an information-limit row (exact grid posterior).
        limit_prior: a prior meta-trained on this benchmark's distribution at those point counts
            (recipes/jmak_2pt_ensemble.toml; empty: none): its own MAML row, the one compared with the limit.
        repeats: timings per batched rate (the best is reported).
        threads: torch threads (1: a one-core comparison, like scipy's single-threaded curve_fit).
        out_dir: where CSV tables go.
    """

    prior: str = ""
    points: tuple[int, ...] = (2, 3, 5, 10)
    families: int = 500
    curves_per_family: int = 4
    seed: int = 20261126
    n_range: tuple[float, float] = (1.0, 3.5)
    log10_t50_range: tuple[float, float] = (0.0, 4.0)
    noise: float = 0.02
    window: tuple[float, float] = (0.3, 2.5)
    speed_curves: int = 200_000
    ttt_csv: str = "jmak/ttt_steel.csv"
    ttt_steps: int = 150
    ttt_lr: float = 0.02
    ttt_noise: float = 0.005
    ttt_loto_stride: int = 1
    limit_points: tuple[int, ...] = (2,)
    limit_prior: str = ""
    repeats: int = 3
    threads: int = 1
    out_dir: str = "out/bench/jmak"


def _stats(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.median(values)), float(np.percentile(values, 90))


def _evaluate(fits: Any, corpus: Any) -> dict[str, Any]:
    grid = truth_grid(corpus.ln_k, corpus.n)
    rmse = (fits.predict(grid) - true_fraction(corpus.ln_k, corpus.n, grid)).pow(2).mean(1).sqrt()
    t50_err = (fits.ln_time_at(0.5) - corpus.ln_t50).exp().sub(1).abs()
    ok = fits.ok.numpy()
    return {"rmse": rmse.numpy()[ok], "t50": t50_err.numpy()[ok], "failures": int((~ok).sum())}


def _run_method(method: str, maml: Any, corpus: Any, noise: float) -> Any:
    if method == "maml":
        return fit_maml(maml, corpus.time_s, corpus.fraction, corpus.mask, noise)
    if method == "avrami":
        return fit_avrami(corpus.time_s, corpus.fraction, corpus.mask)
    return fit_least_squares(corpus.time_s, corpus.fraction, corpus.mask)


def _timed(fn: Any, repeats: int = 1) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds of this process) over ``repeats`` calls."""
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(max(1, repeats)):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, max(best_cpu, 1e-9)


def synthetic_table(
    cfg: BenchConfig, maml: Any, prior_noise: float, quick: bool, matched: Any = None
) -> list[list[Any]]:
    """Rows (method, points, median/p90 RMSE, median/p90 t50 error, failures, fits/s)."""
    from matmeta.console import progress

    synth = SyntheticConfig(
        n_range=cfg.n_range, n_jitter=0.0, log10_t50_range=cfg.log10_t50_range, noise=cfg.noise, window=cfg.window
    )
    families = 4 if quick else cfg.families
    speed = 256 if quick else cfg.speed_curves
    repeats = 1 if quick else cfg.repeats
    rows = []
    with progress() as bar:
        task = bar.add_task("jmak bench (synthetic)", total=len(cfg.points) * 3)
        for points in cfg.points:
            corpus = make_corpus(families, cfg.curves_per_family, synth, seed=cfg.seed + points, points=points)
            big = make_corpus(
                speed // cfg.curves_per_family, cfg.curves_per_family, synth, seed=cfg.seed, points=points
            )
            for method in ("maml", "avrami", "curve_fit"):
                fits = _run_method(method, maml, corpus, prior_noise)
                timed = corpus if method == "curve_fit" else big
                if method != "curve_fit":
                    _run_method(method, maml, big, prior_noise)  # warm-up
                wall, cpu = _timed(lambda m=method, c=timed: _run_method(m, maml, c, prior_noise), repeats)
                result = _evaluate(fits, corpus)
                rows.append(
                    [
                        METHOD_NAMES[method],
                        points,
                        *_stats(result["rmse"]),
                        *_stats(result["t50"]),
                        result["failures"],
                        len(timed) / wall,
                        len(timed) / cpu,
                    ]
                )
                bar.advance(task)
            if points in cfg.limit_points:
                if matched is not None:  # the prior meta-trained on this very distribution
                    result = _evaluate(_run_method("maml", matched, corpus, prior_noise), corpus)
                    nan = float("nan")
                    rows.append([MATCHED_NAME, points, *_stats(result["rmse"]), *_stats(result["t50"]),
                                 result["failures"], nan, nan])  # fmt: skip
                rows.append(_limit_row(corpus, synth, points))
    return rows


def _limit_row(corpus: Any, synth: SyntheticConfig, points: int) -> list[Any]:
    """The exact grid posterior under the generating distribution (:mod:`matmeta.kinetics.infolimit`)."""
    from matmeta.kinetics.infolimit import grid_posterior_predict

    grid = truth_grid(corpus.ln_k, corpus.n)
    pred = grid_posterior_predict(corpus, synth)
    rmse = (pred - true_fraction(corpus.ln_k, corpus.n, grid)).pow(2).mean(1).sqrt().numpy()
    nan = float("nan")
    return [LIMIT_NAME, points, *_stats(rmse), nan, nan, 0, nan, nan]


def _ttt_tasks(rows: list[Any], noise: float) -> list[tuple[dict, dict]]:
    """(support: start + 10 % points, query: all three points) per row, in the support's normalised time."""
    from matmeta.kinetics.data import TTT_FRACTIONS

    times = torch.tensor([[r.t_start, r.t_10, r.t_90] for r in rows], dtype=torch.float64)
    fracs = torch.tensor([list(TTT_FRACTIONS)] * len(rows), dtype=torch.float64)
    ones = torch.ones_like(times)
    support, ln_ref = make_batch(times[:, :2], fracs[:, :2], ones[:, :2], noise)
    query, _ = make_batch(times, fracs, ones, 0.0, ln_ref)
    return [({k: v[i] for k, v in support.items()}, {k: v[i] for k, v in query.items()}) for i in range(len(rows))]


class _ListEpisodes:
    """``EpisodeSource`` drawing (with replacement) from a fixed list of tasks."""

    def __init__(self, tasks: list[tuple[dict, dict]]) -> None:
        self.tasks = tasks

    def sample(self, n_tasks: int, generator: torch.Generator) -> list[tuple[dict, dict]]:
        index = torch.randint(len(self.tasks), (n_tasks,), generator=generator)
        return [self.tasks[int(i)] for i in index]


def ttt_table(cfg: BenchConfig, prior_path: Path | None, data_dir: Path, quick: bool) -> list[list[Any]]:
    """Leave-one-phase-out t_90 prediction rows (held-out phase, method, curves, median/p90 error, failures)."""
    from matmeta.kinetics.data import load_ttt
    from matmeta.kinetics.prior import load_prior
    from matmeta.meta.trainer import MetaTrainer, TrainerConfig

    rows = load_ttt(data_dir / cfg.ttt_csv, warn=lambda _msg: None)
    phases = sorted({r.phase for r in rows})
    out = []
    for held in phases:
        test = [r for r in rows if r.phase == held]
        train = [r for r in rows if r.phase != held]
        times = torch.tensor([[r.t_start, r.t_10] for r in test], dtype=torch.float64)
        fracs = torch.tensor([[0.01, 0.10]] * len(test), dtype=torch.float64)
        mask = torch.ones_like(times)
        t90 = torch.tensor([r.t_90 for r in test], dtype=torch.float64)
        maml, _ = load_prior(prior_path)
        noise = cfg.ttt_noise
        results = {"MAML prior (synthetic)": fit_maml(maml, times, fracs, mask, noise)}
        tuned_cfg = TrainerConfig(
            outer_steps=2 if quick else cfg.ttt_steps,
            meta_batch_size=32,
            outer_lr=cfg.ttt_lr,
            val_every=None,
            patience=None,
            seed=cfg.seed,
            grad_clip=1.0,
        )
        MetaTrainer(maml, meta_loss_fn(), _ListEpisodes(_ttt_tasks(train, noise)), tuned_cfg, progress=False).fit()
        results["MAML prior + other phases"] = fit_maml(maml, times, fracs, mask, noise)
        results[METHOD_NAMES["avrami"]] = fit_avrami(times, fracs, mask)
        results[METHOD_NAMES["curve_fit"]] = fit_least_squares(times, fracs, mask)
        for name, fits in results.items():
            err = (fits.ln_time_at(0.9).exp() / t90 - 1).abs().numpy()[fits.ok.numpy()]
            out.append([held, name, len(test), *_stats(err), int((~fits.ok).sum())])
    from matmeta.kinetics.ttt_eval import leave_one_phase_out

    for held, errors in leave_one_phase_out(rows).items():
        out += [[held, f"{name} (log-time)", len(e), *_stats(e), 0] for name, e in errors.items()]
    return out


def loto_table(cfg: BenchConfig, data_dir: Path, quick: bool) -> tuple[list[list[Any]], list[list[Any]]]:
    """Leave-one-temperature-out rows (phase, method, curves, median, p90, ratio to classical) and goal rows."""
    from matmeta.console import progress
    from matmeta.kinetics.data import load_ttt
    from matmeta.kinetics.ttt_eval import CLASSICAL, PER_CURVE, leave_one_temperature_out

    rows = load_ttt(data_dir / cfg.ttt_csv, warn=lambda _msg: None)
    stride = 25 if quick else cfg.ttt_loto_stride
    with progress() as bar:
        task = bar.add_task("jmak bench (TTT leave-one-temperature-out)", total=len(rows[::stride]) + 3)
        results = leave_one_temperature_out(rows, stride=stride, advance=lambda: bar.advance(task))
    table, ratios, plain_ok, best_ok = [], [], [], []
    for phase, errors in results.items():
        classical = float(np.median(errors[CLASSICAL]))
        medians = {name: float(np.median(e)) for name, e in errors.items()}
        for name, e in errors.items():
            table.append([phase, name, len(e), *_stats(e), medians[name] / classical])
        best = min(v for k, v in medians.items() if k != CLASSICAL)
        ratios.append(best / classical)
        best_ok.append(best <= classical)
        plain_ok.append(medians[PER_CURVE] <= classical)
    mean_ratio = float(np.mean(ratios))
    goals = [
        ["best matmeta <= classical on every phase", ", ".join(f"{r:.2f}x" for r in ratios),
         "met" if all(best_ok) else "NOT met"],
        ["best matmeta <= 0.5x classical on average", f"{mean_ratio:.2f}x", "met" if mean_ratio <= 0.5 else "NOT met"],
        ["plain fit (per-curve prior) <= classical on every phase",
         ", ".join(f"{r[0]} {r[5]:.2f}x" for r in table if r[1] == PER_CURVE), "met" if all(plain_ok) else "NOT met"],
    ]  # fmt: skip
    return table, goals


def meta_loss_fn() -> Any:
    """The JMAK loss (imported lazily so this module stays light)."""
    from matmeta.kinetics.fit import loss_fn

    return loss_fn


def _write_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> None:
    import csv

    from matmeta.atomic import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def run(recipe: dict[str, Any], recipe_path: Path, quick: bool) -> None:
    """Run both parts and print their tables (and the goal check); CSVs go to ``out_dir``."""
    from matmeta.recipes import config_from_dict

    section = {k: v for k, v in recipe.get("bench", {}).items() if k != "name"}
    cfg = config_from_dict(BenchConfig, section, where=f"{recipe_path}[bench]")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        _run(cfg, recipe_path, quick)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, recipe_path: Path, quick: bool) -> None:
    """The benchmark proper (``run`` sets the thread count around it)."""
    from matmeta.console import print_table
    from matmeta.kinetics.prior import load_prior

    prior_path = Path(cfg.prior) if cfg.prior else None
    maml, meta = load_prior(prior_path)
    noise = float(meta["model_config"]["noise"])
    torch.manual_seed(cfg.seed)

    columns = [
        "method", "points", "RMSE median", "RMSE p90", "t50 err median", "t50 err p90", "failures", "fits/s",
        "fits/CPU-s",
    ]  # fmt: skip
    matched = load_prior(Path(cfg.limit_prior))[0] if cfg.limit_prior else None
    synth_rows = synthetic_table(cfg, maml, noise, quick, matched)
    title = (
        f"JMAK fits, held-out synthetic families ({cfg.families * cfg.curves_per_family} curves per row; "
        f"t50 over {cfg.log10_t50_range[1] - cfg.log10_t50_range[0]:g} decades, n {cfg.n_range[0]:g}–"
        f"{cfg.n_range[1]:g}, noise {cfg.noise:g}, times {cfg.window[0]:g}–{cfg.window[1]:g}×t50)"
    )
    print_table(title, columns, synth_rows)
    goal_rows = []
    for points, factor in ((3, 0.9), (2, 0.5)):
        by = {r[0]: r for r in synth_rows if r[1] == points}
        if not by:
            continue
        ours, classical = by[METHOD_NAMES["maml"]], by[METHOD_NAMES["curve_fit"]]
        ratio = ours[3] / classical[3]
        met = ratio <= factor and ours[6] == 0
        goal_rows.append(
            [points, ours[3], f"curve_fit {classical[3]:.4g}", ratio, f"<= {factor}", "met" if met else "NOT met"]
        )
    for points in cfg.limit_points:
        by = {r[0]: r for r in synth_rows if r[1] == points}
        if LIMIT_NAME in by:
            ours = by.get(MATCHED_NAME, by[METHOD_NAMES["maml"]])
            ratio = ours[3] / by[LIMIT_NAME][3]
            verdict = ("met" if ratio <= 1.1 else "NOT met") + f" ({ours[0]})"
            goal_rows.append([points, ours[3], f"limit {by[LIMIT_NAME][3]:.4g}", ratio, "<= 1.1", verdict])
    rate = min(r[8] for r in synth_rows if r[0] == METHOD_NAMES["maml"])  # the limit row has no rate
    wall_rate = min(r[7] for r in synth_rows if r[0] == METHOD_NAMES["maml"])
    verdict = f"{rate:.0f} per CPU-s ({wall_rate:.0f}/s wall): " + ("met" if rate >= 5e4 else "NOT met")
    goal_rows.append(["all", "", "", "", ">= 50000 fits/s", verdict])
    columns_goal = ["points", "MAML p90", "reference p90", "ratio", "goal", "verdict"]
    print_table("JMAK goals (p90 RMSE, MAML / curve_fit or / information limit)", columns_goal, goal_rows)

    data_dir = Path(os.environ.get("MATMETA_SHARED_DATA", "../shared/data"))  # read at the command level only
    ttt_rows: list[list[Any]] = []
    if (data_dir / cfg.ttt_csv).exists():
        ttt_rows = ttt_table(cfg, prior_path, data_dir, quick)
        print_table(
            "TTT steel, leave-one-phase-out: t_90 from (t_start = 1 %, t_10 = 10 %), |relative error|",
            ["held-out phase", "method", "curves", "t90 err median", "t90 err p90", "failures"],
            ttt_rows,
        )
        loto_rows, loto_goals = loto_table(cfg, data_dir, quick)
        print_table(
            "TTT steel, leave-one-temperature-out within each phase: t_90 from (t_start, t_10), |relative error|",
            ["phase", "method", "curves", "t90 err median", "t90 err p90", "median / classical"],
            loto_rows,
        )
        print_table("TTT goals (median t90 error)", ["goal", "value", "verdict"], loto_goals)
        _write_csv(
            Path(cfg.out_dir) / "ttt_loto.csv",
            ["phase", "method", "curves", "t90_err_median", "t90_err_p90", "ratio_to_classical"],
            loto_rows,
        )
    else:
        from matmeta.console import warn

        warn(f"{data_dir / cfg.ttt_csv}: not found (set MATMETA_SHARED_DATA); TTT part skipped")
    out_dir = Path(cfg.out_dir)
    _write_csv(out_dir / "synthetic.csv", columns, synth_rows)
    if ttt_rows:
        _write_csv(
            out_dir / "ttt.csv", ["phase", "method", "curves", "t90_err_median", "t90_err_p90", "failures"], ttt_rows
        )
