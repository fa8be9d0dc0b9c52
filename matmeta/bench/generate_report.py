"""The report side of ``matmeta bench recipes/generate.toml``: the goal tables and the structural-criterion check.

``cfg`` is the bench's :class:`matmeta.bench.generate.GenerateBenchConfig`; ``rows`` its table rows (:data:`COLUMNS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = [
    "method",
    "target eV",
    "returned",
    "space qualifying",
    "draws",
    "pred. calls",
    "hits/draw",
    "hits/call",
    "S.U.N.",
    "relaxed",
    "RMSD mean A",
    "RMSD median A",
    "keeps structure",
    "in window after",
    "CPU s/relax",
    "search s/cand.",
]


def criterion_check(cfg: Any, root: Path, ctx: dict) -> None:
    """Relax (or read the cached) training samples and print how well the structural criterion predicts them."""
    from matmeta.console import print_table, progress
    from matmeta.design.cubic_labels import KEPT_RMSD_ANG, label_report, label_samples, merged_labels

    shape = ctx["criterion"].shape
    if cfg.label_per_family <= 0 or shape is None:
        return
    store = cfg.store if cfg.store.is_absolute() else root / cfg.store
    sizes = (cfg.label_per_family, cfg.label_t_n, cfg.label_per_family_more, cfg.label_t_n_more)
    samples = label_samples(sizes, tuple(cfg.label_t_range), cfg.seed)
    with progress() as bar:
        task = bar.add_task("relaxing training samples (CHGNet)", total=None)
        labels = merged_labels(ctx["generator"], store, samples, root / "out", lambda: bar.advance(task))
    kept = sum(bool(r["kept"]) for r in labels)
    print_table(
        f"structural criterion on TRAINING compositions: {len(labels)} relaxed ({'; '.join(s.key for s in samples)};"
        f" out/{', '.join(s.file_name for s in samples)}), {kept} kept (connectivity and RMSD <= {KEPT_RMSD_ANG:g} A)",
        ["criterion", "inside", "kept inside", "precision", "recall (with t)", "recall (all)", "bal. acc."],
        label_report(labels, shape),
        digits=3,
    )


def goals(rows: list[list[Any]], cfg: Any) -> None:
    """The goal tables: fill where >= n qualify, RMSD, structure kept, relaxation time; decoder vs random."""
    from matmeta.console import print_table

    col = {c: i for i, c in enumerate(COLUMNS)}
    by = {(r[0], r[1]): r for r in rows}
    out, double = [], []
    for target in cfg.targets:
        if ("generate (decoder+screen)", target) in by:
            both, dec = by[("generate (decoder+screen)", target)], by[("meta-decoder fill", target)]
            qualifying, returned = both[col["space qualifying"]], both[col["returned"]]
            goal = ("yes" if returned >= 0.95 * cfg.n else "no") if qualifying >= cfg.n else f"n/a ({qualifying} < n)"
            relax = [by[(m, target)][col[c]] for m in cfg.relax_methods for c in ("RMSD median A", "keeps structure")]
            out.append([target, qualifying, returned, goal, dec[col["returned"]], *relax])
        if ("A2BB'X6: random", target) in by:
            ours, rand = (
                by[("A2BB'X6: decoder pairs", target)][col["hits/call"]],
                by[("A2BB'X6: random", target)][col["hits/call"]],
            )
            ratio = ours / rand if rand > 0 else (float("inf") if ours > 0 else float("nan"))
            double.append([target, ours, rand, ratio, "yes" if ratio >= 5 else "no"])
    if out:
        print_table(
            "goals: fill >= 95 % where >= n qualify; median RMSD <= 0.1 A; >= 90 % keep their structure",
            ["target eV", "space qualifying", "returned", "fill goal", "decoder alone"]
            + [f"{m}: {c}" for m in cfg.relax_methods for c in ("RMSD med.", "keeps")],
            out,
            digits=3,
        )
    if double:
        print_table(
            f"goal: A2BB'X6 hits per predictor call, decoder pairs >= 5x random "
            f"({cfg.double_calls} calls or {cfg.double_max_draws} draws each)",
            ["target eV", "decoder pairs", "random", "ratio", "goal met"],
            double,
            digits=3,
        )


def digest(path: Path | None) -> str:
    """File name and the first 8 hex digits of its SHA-256 (which checkpoint gave the numbers)."""
    from matmeta.store.download import sha256

    return "?" if path is None else f"{Path(path).name}#{sha256(Path(path))[:8]}"
