"""Tables of the measured-gap benchmark: every method by k, the goal ratios at k = 10, per family."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METHODS = ("zero-shot", "adapted", "finetune", "fine-tune (Adam)", "PBE", "PBE + linear", "support mean",
           "composition peer")  # fmt: skip
COLUMNS = ["method", "k", "n", "non-metals", "MAE non-metals eV", "MAE all eV", "metal ROC-AUC", "90% coverage"]


def report(config: Any, scores: dict, test: list[str], quick: bool, extra: dict | None = None) -> dict[str, Any]:
    """Print the tables and write ``summary.json``; returns the summary."""
    from matmeta.atomic import write_text_atomic
    from matmeta.console import print_table

    summary: dict[str, Any] = {"test_families": test, "by_k": {}, **(extra or {})}
    if extra:
        print(f"fine-tune (Adam) learning rate chosen on validation families: {extra['fine_tune_lr']:g} "
              f"(non-metal MAE by lr: {extra['fine_tune_lr_scan']})")  # fmt: skip
    table = []
    for k in config.ks:
        summary["by_k"][str(k)] = {}
        for method in METHODS:
            scored = scores[(method, k)]
            if not scored.truth:
                continue
            m = scored.metrics()
            summary["by_k"][str(k)][method] = m
            table.append([method, k, m["n"], m["n_nonmetal"], m["mae_nonmetal"], m["mae_all"], m["metal_auc"],
                          m["coverage"]])  # fmt: skip
    print_table(f"measured band gaps on {len(test)} test families ({config.episodes_per_family} episodes per family "
                f"and k)", COLUMNS, table, digits=4)  # fmt: skip
    k_ref = "10" if "10" in summary["by_k"] else str(config.ks[0])
    ref = summary["by_k"].get(k_ref, {})
    ratios = []
    for ours in ("adapted", "finetune"):
        for other in ("composition peer", "PBE + linear", "zero-shot", "fine-tune (Adam)"):
            if ours in ref and other in ref and ref[other]["mae_nonmetal"] > 0:
                ratios.append([f"{ours} / {other}", ref[ours]["mae_nonmetal"] / ref[other]["mae_nonmetal"]])
    summary["ratios_k" + k_ref] = {name: value for name, value in ratios}
    print_table(f"non-metal MAE ratios at k = {k_ref}", ["ratio", "value"], ratios, digits=3)
    family_rows = []
    for family in test:
        row: list[Any] = [family]
        for method in ("zero-shot", "adapted", "finetune", "PBE + linear", "composition peer"):
            scored = scores.get((method, int(k_ref)))
            if scored is None or family not in scored.family:
                row.append(float("nan"))
                continue
            row.append(scored.metrics(family)["mae_nonmetal"])
        n = scores[("zero-shot", int(k_ref))].metrics(family)["n_nonmetal"] if family in scores[
            ("zero-shot", int(k_ref))].family else 0  # fmt: skip
        family_rows.append([*row, n])
    print_table(f"non-metal MAE by test family at k = {k_ref} (eV)",
                ["family", "zero-shot", "adapted", "finetune", "PBE + linear", "composition peer", "non-metals"],
                family_rows, digits=3)  # fmt: skip
    summary["per_family"] = family_rows
    out = Path(config.out_dir) / "summary.json"
    write_text_atomic(out, json.dumps(summary, indent=2, default=float))
    print(f"summary: {out}{' (quick run: numbers mean nothing)' if quick else ''}")
    return summary
