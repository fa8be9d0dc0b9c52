"""Tables of the Materials Project few-shot benchmark: overall, by k, per family, random split, throughput, goals."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ["method", "k", "n", "energy MAE eV/atom", "gap MAE eV (all)", "gap MAE eV (non-metals)",
           "metal ROC-AUC", "energy 90% coverage", "gap 90% coverage"]  # fmt: skip


def _cells(name: str, k: Any, m: dict[str, float]) -> list[Any]:
    return [name, k, m["n"], m["energy_mae"], m["gap_mae"], m["gap_mae_nonmetal"], m["metal_auc"],
            m["energy_coverage"], m["gap_coverage"]]  # fmt: skip


def report(
    config: Any,
    setup: Any,
    zero_shot: dict[str, Any],
    by_k: dict[int, dict[str, Any]],
    random_row: dict[str, Any] | None,
    quick: bool,
) -> dict[str, Any]:
    """Print every table and write ``summary.json`` / ``per_family.csv``; returns the summary."""
    from matmeta.atomic import write_table
    from matmeta.console import print_table

    summary: dict[str, Any] = {"checkpoint": str(setup.checkpoint), "test_families": setup.test_families,
                               "fine_tune_lr": setup.best_lr, "fine_tune_lr_scan": setup.lr_scan}  # fmt: skip
    zero = {name: p.metrics() for name, p in zero_shot.items()}
    summary["zero_shot"] = zero
    print_table(
        f"zero-shot on every structure of the {len(setup.test_families)} test prototypes",
        COLUMNS, [_cells(name, "-", m) for name, m in zero.items()], digits=4,
    )  # fmt: skip
    episodes = {k: {name: p.metrics() for name, p in methods.items()} for k, methods in by_k.items()}
    summary["episodes"] = {str(k): v for k, v in episodes.items()}
    print_table(
        f"few-shot episodes on the test prototypes ({config.episodes_per_family} per family and k, "
        f"{config.query_size} query structures; fine-tune lr {setup.best_lr:g}, chosen on validation)",
        COLUMNS, [_cells(name, k, m) for k, methods in episodes.items() for name, m in methods.items()], digits=4,
    )  # fmt: skip
    summary["ratios"] = ratio_rows(episodes)
    print_table("ratios (energy MAE; gap MAE over all structures)", ["k", "ratio", "energy", "gap"],
                [[k, name, e, g] for k, name, e, g in summary["ratios"]], digits=3)  # fmt: skip
    family_rows = per_family_rows(zero_shot["MAML (no adaptation)"], by_k)
    write_table(Path(setup.out_dir) / "per_family.csv", family_rows)
    print_table(
        "per test family (zero-shot: the shipped model on every member; MAML / fine-tune at k = 10)",
        list(family_rows[0]) if family_rows else ["family"], [list(r.values()) for r in family_rows], digits=3,
    )  # fmt: skip
    if random_row is not None:
        summary["random_split"] = random_row
        print_table(
            f"random 80/10/10 split of all structures (pooled network, {random_row['n_train']} training structures)",
            COLUMNS, [_cells(f"pooled, {name}", "-", random_row[name]) for name in ("validation", "test")],
            digits=4,
        )  # fmt: skip
    summary["throughput"] = throughput(setup, config.throughput_structures)
    print_table("predict end to end (CIF files → CSV rows)", ["structures", "seconds", "structures/s"],
                [[summary["throughput"]["n"], summary["throughput"]["seconds"],
                  summary["throughput"]["per_second"]]], digits=4)  # fmt: skip
    path = write_summary(setup.out_dir, summary)
    print(f"summary: {path}{' (quick run: numbers mean nothing)' if quick else ''}")
    return summary


def ratio_rows(episodes: dict[int, dict[str, dict[str, float]]]) -> list[tuple[int, str, float, float]]:
    """MAML / fine-tune and adapted / zero-shot at every k, for the energy and the gap (all structures)."""
    rows = []
    for k, m in episodes.items():
        for name, a, b in (("MAML / fine-tune", "MAML", "fine-tune"), ("MAML / zero-shot", "MAML", "zero-shot"),
                           ("fine-tune / zero-shot", "fine-tune", "zero-shot")):  # fmt: skip
            rows.append(
                (k, name, _ratio(m[a]["energy_mae"], m[b]["energy_mae"]), _ratio(m[a]["gap_mae"], m[b]["gap_mae"]))
            )
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def per_family_rows(zero: Any, by_k: dict[int, dict[str, Any]], k_ref: int = 10) -> list[dict[str, Any]]:
    """One row per test family: zero-shot metrics on all members, MAML and fine-tune energy MAE at ``k_ref``."""
    families = sorted(set(zero.family))
    methods = by_k.get(k_ref) or (next(iter(by_k.values())) if by_k else {})
    rows = []
    for family in families:
        mask = np.asarray(zero.family) == family
        m = zero.metrics(mask)
        row = {"family": family, "n": m["n"], "zero-shot energy": m["energy_mae"], "zero-shot gap": m["gap_mae"],
               "energy cov.": m["energy_coverage"], "gap cov.": m["gap_coverage"]}  # fmt: skip
        for name in ("MAML", "fine-tune"):
            if name in methods and methods[name].family:
                row[f"{name} energy"] = methods[name].metrics(np.asarray(methods[name].family) == family)["energy_mae"]
        rows.append(row)
    return rows


def throughput(setup: Any, n: int) -> dict[str, float]:
    """``predict_files`` on ``n`` test-family CIFs written to a temporary folder: wall time, structures per second."""
    import tempfile

    from matmeta.predict.api import predict_files
    from matmeta.store.reader import GraphStore

    store = GraphStore(setup.recipe.data.store)
    ids = store.ids
    indices = setup.test_indices[:n] if len(setup.test_indices) >= n else np.arange(min(n, len(store)))
    with tempfile.TemporaryDirectory() as folder:
        for i in indices:
            (Path(folder) / f"{ids[int(i)]}.cif").write_text(store.cif(int(i)))
        start = time.perf_counter()
        _, rows, _ = predict_files([folder], setup.checkpoint)
        seconds = time.perf_counter() - start
    return {"n": len(rows), "seconds": seconds, "per_second": len(rows) / seconds if seconds > 0 else float("nan")}


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """``summary.json`` (atomic)."""
    import json

    from matmeta.atomic import write_text_atomic

    path = Path(out_dir) / "summary.json"
    write_text_atomic(path, json.dumps(summary, indent=2, default=float))
    return path
