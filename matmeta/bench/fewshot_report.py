"""The few-shot benchmark's tables, plots and summary (``bench/fewshot.py`` scores; this module reports).

Takes the prepared setup and the per-episode results of ``bench/fewshot.run_benchmark`` and prints
one table per question (heat MAE by method and k, band-gap classification and MAE, interval coverage,
the lab leave-one-out candidates, MC-dropout calibration, the random-split MAE against matbench and
the speed of ``predict``/``finetune``), then writes ``results.csv``, ``summary.json`` and two plots.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.bench.fewshot_baselines import random_split
from matmeta.bench.fewshot_gap import family_coverage_rows
from matmeta.predict.data import GraphTable, mean_ci95

HEAT_METHODS = ("MAML", "fine-tune", "recalibrated", "zero-shot", "scratch", "mean", "MAML (no adaptation)")
GAP_METHODS = ("MAML", "fine-tune", "recalibrated", "zero-shot", "mean", "MAML (no adaptation)")


def report(config: Any, setup: Any, results: Any, quick: bool) -> dict[str, Any]:
    """Print every table, write CSV, summary and plots; return the summary."""
    from matmeta.atomic import write_text_atomic
    from matmeta.console import console, print_table

    ks = list(config.ks)
    k_ref = 10 if 10 in ks else ks[0]
    csv_rows, ratio = heat_table(results.scores, ks, k_ref, setup, config)
    gap_rows = gap_tables(results.gaps, ks, k_ref)
    cov, lab = interval_tables(results.gaps, results.coverage, setup.predictor, quick)
    random_mae = random_split(setup.table, setup.model_config, setup.recipe.pretrain.lr, config.random_split_epochs,
                              config.seed, setup.out_dir, quick)  # fmt: skip
    print_random_split(random_mae)
    speed = throughput(setup.predictor, setup.table, setup.test_f, config, setup.out_dir, setup.checkpoint)
    print_table("speed (this machine, CPU)", ["measurement", "value"], list(speed.items()))
    summary = {
        "test_families": list(setup.test_f), "val_families": list(setup.val_f), "finetune_lr": setup.best_lr,
        "lr_scan": setup.lr_scan, "inner_steps": setup.steps,
        "heat_mae": {f"{m}@k={k}": mean_ci95(results.scores[(m, k)].heat_mae) for m in HEAT_METHODS for k in ks},
        "ratios_k10": ratio, "gap": [list(r) for r in gap_rows], "coverage90": cov,
        "conformal_coverage90": results.gaps.coverage_rows(), "lab_loo": lab,
        "gap_coverage_by_family": family_coverage_rows(results.gaps), "nonmetal_cut": results.gaps.cut,
        "p_nonmetal_calibration": results.gaps.probability_rows(),
        "random_split_mae": random_mae[0], "speed": speed, "checkpoint": str(setup.checkpoint), "quick": quick,
    }  # fmt: skip
    out_dir = setup.out_dir
    write_text_atomic(out_dir / "results.csv", "\n".join(csv_rows) + "\n")
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    plots(results.scores, HEAT_METHODS, ks, k_ref, out_dir)
    console.print(f"wrote {out_dir}/results.csv, summary.json, mae_vs_k.png, parity_k{k_ref}.png")
    return summary


def heat_table(scores: dict, ks: Sequence[int], k_ref: int, setup: Any, config: Any) -> tuple[list[str], dict]:
    """heat_ref MAE ± 95% CI by method and k, and MAML's ratios to the baselines at ``k_ref``; (CSV rows, ratios)."""
    from matmeta.console import console, print_table

    rows, csv_rows = [], ["method,k,heat_mae_ev_per_cell,ci95,episodes"]
    for method in HEAT_METHODS:
        cells = [method]
        for k in ks:
            mean, half = mean_ci95(scores[(method, k)].heat_mae)
            cells.append(f"{mean:.4f} ± {half:.4f}")
            csv_rows.append(f"{method},{k},{mean:.6f},{half:.6f},{len(scores[(method, k)].heat_mae)}")
        rows.append(cells)
    print_table(
        f"heat_ref MAE (eV/cell) ± 95% CI on {len(setup.test_f)} test families "
        f"({config.episodes_per_family} episodes/family, query {config.query_size}, {setup.steps} adaptation steps)",
        ["method", *[f"k={k}" for k in ks]],
        rows,
    )
    ratio = {
        m: float(np.mean(scores[("MAML", k_ref)].heat_mae) / np.mean(scores[(m, k_ref)].heat_mae))
        for m in ("fine-tune", "zero-shot", "mean", "recalibrated")
    }
    console.print(
        f"MAML / fine-tune at k={k_ref}: {ratio['fine-tune']:.3f} (goal ≤ 0.85); MAML / zero-shot: "
        f"{ratio['zero-shot']:.3f} (goal ≤ 0.70); MAML / support mean: {ratio['mean']:.3f}; "
        f"MAML / recalibrated: {ratio['recalibrated']:.3f}"
    )
    return csv_rows, ratio


def gap_tables(gaps: Any, ks: Sequence[int], k_ref: int) -> list:
    """Band-gap classification and MAE by method and k, and MAML's few-shot gap ratio; the table's rows."""
    from matmeta.console import console, print_table

    gap_rows = gaps.gap_rows(list(GAP_METHODS), list(ks))
    print_table(
        f"band gap on test-family queries (non-metal = P(non-metal) ≥ {gaps.cut:.3f}, the shipped threshold; "
        "MAE of the final gap, 0 when called metal, eV)",
        ["method", "k", "ROC-AUC", "recall", "precision", "bal. acc.", "MAE non-metals", "MAE all"],
        gap_rows,
    )
    by = {(r[0], r[1]): r for r in gap_rows}
    if ("MAML", k_ref) in by:
        base = min(by[("MAML (no adaptation)", k_ref)][7], by[("mean", k_ref)][7])
        ratio_gap = by[("MAML", k_ref)][7] / base if base > 0 else math.nan
        console.print(
            f"band gap k={k_ref}: MAML MAE (all) / better of zero-shot and support mean: {ratio_gap:.3f} (goal ≤ 0.70)"
        )
    print_table(
        "P(non-metal) of MAML (no adaptation) on the test families, all k: how well calibrated (lower is better)",
        ["probability", "Brier score", "expected calibration error (10 bins)", "queries"],
        gaps.probability_rows(),
    )
    return gap_rows


def interval_tables(gaps: Any, coverage: dict, predictor: Any, quick: bool) -> tuple[dict[str, float], list]:
    """Conformal coverage, the lab leave-one-out candidates and MC-dropout coverage; (MC coverage, lab rows)."""
    from matmeta.bench.fewshot_gap import lab_rows
    from matmeta.console import print_table

    print_table(
        "split-conformal 90% intervals (calibrated on validation families): coverage on test families",
        ["interval", "coverage", "points", "mean half-width (eV, gap)"],
        gaps.coverage_rows(),
    )
    print_table(
        "band gap of non-metals: 90% interval coverage by test family",
        ["family", "zero-shot", "points", "adapted", "points"],
        family_coverage_rows(gaps),
    )
    lab = [] if quick else lab_rows(predictor)
    if lab:
        print_table("data/lab_perovskites.csv: leave-one-out MAE of each finetune candidate (eV)",
                    ["candidate", "LOO MAE eV", ""], lab)  # fmt: skip
    cov = {
        name: float(np.mean(np.concatenate(v))) if v and np.concatenate(v).size else math.nan
        for name, v in coverage.items()
    }
    counts = {name: int(sum(len(x) for x in v)) for name, v in coverage.items()}
    print_table(
        "MC-dropout calibration: fraction of true values inside ± Z90·σ (test families)",
        ["prediction", "coverage", "points"],
        [
            ("heat_ref, MAML adapted (all k)", cov["heat_adapted"], counts["heat_adapted"]),
            ("band gap of non-metals, MAML adapted", cov["gap_adapted"], counts["gap_adapted"]),
            ("heat_ref, shipped model zero-shot", cov["heat_zero"], counts["heat_zero"]),
        ],  # MC-dropout ± Z90·σ (scaled on validation families), for comparison with the conformal intervals
    )
    return cov, lab


def print_random_split(random_mae: tuple[float, int]) -> None:
    """The pooled network's random-split MAE beside the matbench_perovskites leaderboard."""
    from matmeta.console import print_table

    print_table(
        "heat_ref MAE on a random 80/20 split of all perovskites (pooled network) vs matbench_perovskites",
        ["model", "MAE eV/cell", "training structures"],
        [
            ("CrystalGNN pooled (ours)", random_mae[0], random_mae[1]),
            ("ALIGNN (matbench leaderboard)", 0.029, "~15k (5-fold CV)"),
            ("MEGNet (matbench leaderboard)", 0.035, "~15k (5-fold CV)"),
            ("CGCNN (matbench leaderboard)", 0.045, "~15k (5-fold CV)"),
        ],
    )


def throughput(
    predictor: Any, table: GraphTable, families: Sequence[str], config: Any, out_dir: Path, checkpoint: Path
) -> dict[str, str]:
    """Predict throughput from CIF files and from the store; wall time of ``matmeta finetune`` on 10 structures."""
    from matmeta.io import read_structure_file, structure_to_cif, write_cif
    from matmeta.predict.data import ensure_store
    from matmeta.store.reader import GraphStore

    recipe_store = GraphStore(ensure_store(_recipe_data(config)))
    n = min(config.throughput_structures, len(recipe_store))
    cif_dir = out_dir / "throughput_cifs"
    cif_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_cif(recipe_store.structure(i), cif_dir / f"s{i:05d}.cif") for i in range(n)]
    start = time.perf_counter()
    structures = [read_structure_file(p)[0][1] for p in paths]
    predictor.predict_structures(structures)
    cif_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    from matmeta.predict.data import graph_from_data

    identity = predictor.model.config.node_features == "embedding"
    graphs = [graph_from_data(recipe_store[i], unknown_to=predictor.elements_seen if identity else None)
              for i in range(n)]  # fmt: skip
    predictor.predict_graphs(graphs)
    store_rate = n / (time.perf_counter() - start)
    # matmeta finetune on 10 structures of a test family, as a user runs it (process start-up included)
    members = [i for i, f in enumerate(table.families) if f == families[0]][:10]
    support = out_dir / "finetune_support.csv"
    with support.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "cif", "heat_ref"])
        for i in members:
            writer.writerow([table.ids[i], structure_to_cif(recipe_store.structure(i)), table.energy[i]])
    command = [sys.executable, "-m", "matmeta.cli", "finetune", "--support", str(support), "--target", "heat_ref",
               "--out", str(out_dir / "finetune_bench.ckpt"), "--model", str(checkpoint)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    status = "" if done.returncode == 0 else f" (FAILED: {done.stderr.strip().splitlines()[-1:]})"
    return {
        f"predict from CIF files ({n} structures, parse + graph + predict)": f"{cif_rate:.1f} structures/s",
        f"predict from the graph store ({n} structures)": f"{store_rate:.1f} structures/s",
        "matmeta finetune on 10 structures (wall, incl. start-up and LOO)": f"{wall:.1f} s{status} (goal < 10 s)",
    }


def _recipe_data(config: Any) -> Any:
    from matmeta.predict.config import PredictorRecipe
    from matmeta.recipes import load_recipe

    return PredictorRecipe.from_recipe(load_recipe(config.predictor_recipe), str(config.predictor_recipe)).data


def _recipe_data(config: Any) -> Any:
    from matmeta.predict.config import PredictorRecipe
    from matmeta.recipes import load_recipe

    return PredictorRecipe.from_recipe(load_recipe(config.predictor_recipe), str(config.predictor_recipe)).data


def plots(scores: dict, methods: Sequence[str], ks: Sequence[int], k_ref: int, out_dir: Path) -> None:
    """MAE vs k (one line per method) and a parity plot at ``k_ref``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in methods:
        values = [mean_ci95(scores[(method, k)].heat_mae) for k in ks]
        ax.errorbar(list(ks), [v[0] for v in values], yerr=[v[1] for v in values], marker="o", capsize=3, label=method)
    ax.set_xlabel("support structures k")
    ax.set_ylabel("heat_ref MAE on query (eV/cell)")
    ax.set_title("few-shot on unseen B-site families")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "mae_vs_k.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    for ax, method in zip(axes, ("MAML", "fine-tune", "zero-shot"), strict=True):
        s = scores[(method, k_ref)]
        truth, pred = np.concatenate(s.heat_true), np.concatenate(s.heat_pred)
        ax.scatter(truth, pred, s=4, alpha=0.4)
        lo, hi = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_title(f"{method}, k={k_ref}: MAE {np.mean(np.abs(truth - pred)):.3f}")
        ax.set_xlabel("DFT heat_ref (eV/cell)")
    axes[0].set_ylabel("predicted (eV/cell)")
    fig.tight_layout()
    fig.savefig(out_dir / f"parity_k{k_ref}.png", dpi=120)
    plt.close(fig)
