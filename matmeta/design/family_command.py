"""The family branch of ``matmeta generate`` (``--prototype NAME`` / ``--family-examples DIR``): parse, run, render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def generate_in_family(
    band_gap: str,
    half_width: float,
    n: int,
    prototype: str | None,
    examples: list[tuple[str, Any]] | None,
    fidelity: str,
    seed: int,
    temperature: float,
    relax: bool,
    max_draws: int,
    max_predictor_calls: int,
    decoder: Path | None,
    model: Path | None,
    out: Path | None,
    top: int,
) -> None:
    """Parse, load, design, render, write (the options are ``generate``'s)."""
    from matmeta.console import progress
    from matmeta.design.family_design import FamilyRequest
    from matmeta.design.family_run import (
        design,
        examples_family,
        load_judges,
        load_store_families,
        store_family,
        write_family_result,
    )  # fmt: skip
    from matmeta.design.request import parse_gap_window
    from matmeta.errors import MatmetaInputError

    if fidelity not in ("measured", "pbe"):
        raise MatmetaInputError(f"--fidelity {fidelity!r}: measured or pbe")
    if n < 1:
        raise MatmetaInputError(f"-n {n}: must be >= 1")
    window = parse_gap_window(band_gap, half_width)
    request = FamilyRequest(
        window, n=n, fidelity=fidelity, max_draws=max_draws, max_predictor_calls=max_predictor_calls, relax=relax
    )
    decoder_, predictor, hull, reference = load_judges(model, decoder)
    if prototype is not None:
        table, store = load_store_families(decoder_, predictor)
        context = store_family(table, store, prototype, seed)
    else:
        context = examples_family([s for _, s in examples or []])
    with progress() as bar:
        result = design(context, request, decoder_, predictor, hull, reference, seed, temperature, bar)
    _render(result, window, fidelity, top, context.source)
    if out is not None:
        path = write_family_result(result, out)
        typer.echo(f"wrote {path} and {len(result.rows)} generated CIFs (relaxed ones beside them)")


def _render(result: Any, window: tuple[float, float], fidelity: str, top: int, source: str) -> None:
    from matmeta.console import print_table

    c = result.counts
    typer.echo(
        f"{result.family} (adapted on {source}): {c['hits']} of the request filled from {c['drawn']} draws, "
        f"{c['scored']} predictor calls, {result.cpu_seconds:.1f} CPU s"
    )
    columns = [
        "rank",
        "formula",
        "gap",
        "E_hull pred",
        "gap relaxed",
        "E_hull CHGNet",
        "prototype kept",
        "RMSD (A)",
        "S.U.N.",
    ]
    rows = [
        [r["rank"], r["formula"], r["band_gap_ev"], r["e_above_hull_pred"], r.get("band_gap_ev_relaxed", "-"),
         r.get("e_above_hull_chgnet", "-"), r.get("prototype_kept", "-"), r.get("rmsd_ang", "-"), r.get("sun", "-")]
        for r in result.rows[: max(top, 0)]
    ]  # fmt: skip
    lo, hi = window
    print_table(
        f"candidates, {fidelity} gap {lo:g}-{hi:g} eV (predictor and CHGNet, not DFT; E_hull in eV/atom)",
        columns,
        rows,
        digits=3,
    )
    if result.rows and "kept" in result.rows[0]:
        kept = sum(r["kept"] for r in result.rows)
        sun = sum(r["sun"] for r in result.rows)
        total = len(result.rows)
        typer.echo(f"after relaxation: {kept} of {total} keep prototype and window; S.U.N. {sun} of {total}")
