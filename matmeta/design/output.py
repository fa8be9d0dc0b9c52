"""What ``matmeta generate`` writes and prints: candidates.csv, relaxed + generated CIFs, the summary lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matmeta.design.deliver import DesignResult
from matmeta.design.pipeline import write_candidate_files

CSV_COLUMNS = (
    "rank",
    "formula",
    "source",
    "relax_status",
    "band_gap_ev",
    "p_metal",
    "nonmetal",
    "heat_ev_per_atom",
    "heat_stable",
    "tolerance_factor",
    "octahedral_factor",
    "bartel_tau",
    "cubic_by_tolerance",
    "stable",
    "band_gap_ev_relaxed",
    "p_metal_relaxed",
    "nonmetal_relaxed",
    "heat_ev_per_atom_relaxed",
    "stable_relaxed",
    "in_window_relaxed",
    "energy_before_ev_per_atom",
    "energy_after_ev_per_atom",
    "rmsd_ang",
    "volume_change",
    "keeps_structure",
    "keeps_structure_generated",
    "relaxed_valid",
    "relax_converged",
    "relax_steps",
    "relax_seconds",
    "relax_cpu_seconds",
    "relax_error",
    "band_gap_std_ev",
    "heat_ref_ev_per_cell",
    "heat_ref_std_ev",
    "in_window",
    "struct_valid",
    "comp_valid",
    "valid",
    "min_distance_ang",
    "volume_per_atom_ang3",
    "cif",
    "cif_generated",
    "warning",
)


def write_design(result: DesignResult, out_dir: str | Path) -> Path:
    """One CIF per candidate (the relaxed one; the generated one beside it) and ``candidates.csv``, atomically.

    Returns:
        The path of ``candidates.csv``.
    """
    files = []
    for row, generated, relaxed in zip(result.rows, result.generated, result.relaxed, strict=True):
        stem = f"{row['rank']:04d}_{row['formula']}"
        row["cif_generated"] = f"{stem}_generated.cif"
        files.append((row["cif_generated"], generated))
        row["cif"] = ""
        if relaxed is not None:
            row["cif"] = f"{stem}.cif"
            files.append((row["cif"], relaxed))
    return write_candidate_files(out_dir, result.rows, CSV_COLUMNS, files)


def funnel(result: DesignResult) -> list[tuple[str, int]]:
    """How many of the decoder's proposals survive each filter, in sequence."""
    rows = result.fill.judgement.rows
    novel = "novel (new compositions)" if result.novelty_judged else "novel (not judged: no store)"
    stages = [
        (f"proposed ({result.fill.draws} draws; {novel}, unique)", lambda r: True),
        ("structurally valid", lambda r: r["struct_valid"]),
        ("compositionally valid (SMACT)", lambda r: r["comp_valid"]),
        (f"cubic by tolerance ({_shape(result)})", lambda r: r["cubic_by_tolerance"]),
        ("predicted non-metal (the predictor's cut)", lambda r: r["nonmetal"]),
        ("gap in window", lambda r: r["in_window"]),
        (f"heat of formation <= {result.criterion.threshold_ev_per_atom:g} eV/atom", lambda r: r["heat_stable"]),
    ]
    alive, out = list(rows), []
    for name, keep in stages:
        alive = [r for r in alive if keep(r)]
        out.append((name, len(alive)))
    return out


def _shape(result: DesignResult) -> str:
    shape = result.criterion.shape
    return shape.describe() if shape is not None else "not required"


def summary_lines(result: DesignResult) -> list[str]:
    """The summary: found vs asked, what the search spent, the space, S.U.N., relaxation."""
    lo, hi = result.window
    fill = result.fill
    lines = [fill.message(result.n, result.budget)]
    proposed = len(fill.judgement.rows)
    if proposed:
        sun = sum(bool(r["valid"] and r["stable"]) for r in fill.judgement.rows)
        novel = "novel" if result.novelty_judged else "novelty not judged"
        lines.append(
            f"S.U.N. share of the decoder's proposals: {sun / proposed:.1%} "
            f"({sun} of {proposed} valid, stable, unique, {novel}; {result.criterion.describe()}, "
            "the heat cut chosen on training data after Castelli et al., the t window on CHGNet relaxations of "
            "training compositions); "
            f"{len(fill.hits)} also in the window"
        )
    if result.screen is not None:
        by = {s: sum(r["source"] == s for r in result.rows) for s in ("decoder", "decoder+screen", "screen")}
        lines.append(
            f"exhaustive screen: {len(result.screen.qualifying)} of the {result.screen.size} novel charge-neutral "
            f"ABX3 substitutions qualify for {lo:g}-{hi:g} eV ({_cubic(result.screen.judgement.rows)} of them "
            f"inside the tolerance window); returned: {by['decoder'] + by['decoder+screen']} found "
            f"by the decoder ({by['decoder+screen']} also by the screen), {by['screen']} by the screen alone"
        )
    elif result.novelty_judged:
        lines.append("exhaustive screen: not run (--no-screen)")
    else:
        lines.append("exhaustive screen: not run (no training store: pass --store out/perov.lmdb)")
    if len(result.rows) < result.n:
        lines.append(f"returned {len(result.rows)} of {result.n}: no more candidates meeting the request were found")
    relaxed = [r for r in result.rows if "relax_status" in r]
    if relaxed:
        kept = sum(r["relax_status"] in ("ok", "not converged") for r in relaxed)
        marks = sorted({r["relax_status"] for r in relaxed} - {"ok"})
        lines.append(
            f"relaxed {len(relaxed)} candidates with CHGNet: {kept} keep their structure and window; marked: "
            + (", ".join(f"{_count(relaxed, s)} {s}" for s in marks) or "none")
        )
    return lines


def _cubic(rows: list[dict[str, Any]]) -> int:
    return sum(bool(r.get("cubic_by_tolerance", True)) for r in rows)


def _count(rows: list[dict[str, Any]], status: str) -> int:
    return sum(r["relax_status"] == status for r in rows)
