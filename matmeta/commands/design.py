"""``matmeta generate``: propose ABX3 crystals for a target band gap, judged and ranked."""

from __future__ import annotations

from pathlib import Path

import typer


def _split_elements(values: list[str] | None) -> list[str] | None:
    """Comma/space-separated symbols; ``[]`` when the option was given empty (the library refuses it)."""
    if not values:
        return None
    return [tok.strip() for value in values for tok in value.replace(" ", ",").split(",") if tok.strip()]


def generate_cmd(
    band_gap: str = typer.Option(..., "--band-gap", help="Target gap in eV (2.0) or a window (1.5:2.5)."),
    tolerance: float = typer.Option(0.3, "--tolerance", help="Half-width of the window around a single value (eV)."),
    n: int = typer.Option(200, "-n", "--n", help="Candidates to sample."),
    out: Path = typer.Option(None, "--out", help="Folder for CIFs and candidates.csv (default: print only)."),
    family_examples: Path = typer.Option(
        None, "--family-examples", help="Folder of 3-10 CIFs of a chemistry to adapt the decoder to first."
    ),
    elements: list[str] = typer.Option(None, "--elements", help="Only these elements (comma-separated)."),
    exclude_elements: list[str] = typer.Option(None, "--exclude-elements", help="Never these elements."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same candidates)."),
    guidance: float = typer.Option(
        0.0, "--guidance", help="Classifier-free guidance weight (0: plain conditioning; >0: harder, less diverse)."
    ),
    temperature: float = typer.Option(
        1.0,
        "--temperature",
        help="Species softmax temperature (1: the decoder's distribution; >1: more unique/novel, fewer hits).",
    ),
    novel_only: bool = typer.Option(
        True,
        "--novel-only/--keep-known",
        help="Redraw candidates whose composition is in the training store (needs the store).",
    ),
    distinct: bool = typer.Option(
        True, "--distinct/--allow-repeats", help="Redraw candidates whose composition was already proposed."
    ),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Generator checkpoint (default: the shipped one)."),
    predictor: Path = typer.Option(None, "--predictor", help="Predictor checkpoint (default: the shipped one)."),
    store: Path = typer.Option(
        None, "--store", help="Training store for novelty (default: the checkpoint's, when present)."
    ),
    top: int = typer.Option(10, "--top", help="Rows of the ranked table to print."),
    yes: bool = typer.Option(False, "--yes", help="Run even above the ceiling of 5000 candidates."),
) -> None:
    """Generate candidate crystals for a band gap: sample, check validity, score, rank, write."""
    from matmeta.console import print_table, report_error
    from matmeta.design.pipeline import run_generate
    from matmeta.design.request import DesignRequest, read_family_examples

    examples, bad = None, []
    if family_examples is not None:
        examples, bad = read_family_examples(family_examples)
        for message in bad:
            report_error(message)
    request = DesignRequest(
        band_gap=band_gap,
        tolerance=tolerance,
        n=n,
        seed=seed,
        elements=_split_elements(elements),
        exclude=_split_elements(exclude_elements),
        guidance=guidance,
        temperature=temperature,
        novel_only=novel_only,
        distinct=distinct,
        yes=yes,
    )
    result = run_generate(request, examples, checkpoint=checkpoint, predictor=predictor, store=store, out_dir=out)
    lo, hi = result.window
    total = result.counts[0][1]
    if result.draws > total:
        typer.echo(
            f"{total} candidates from {result.draws} decoder draws: draws repeating a candidate"
            + (f" or matching one of {result.excluded} training compositions" if result.excluded else "")
            + " were redrawn (--keep-known / --allow-repeats to keep them)"
        )
    print_table(
        f"matmeta generate: band gap {lo:g}-{hi:g} eV, {total} sampled (seed {seed})",
        ["filter", "candidates", "% of sampled"],
        [(name, count, 100.0 * count / total) for name, count in result.counts],
        digits=3,
    )
    ranked = sorted(result.rows, key=lambda r: r["rank"])[: max(top, 0)]
    print_table(
        "best candidates",
        ["rank", "formula", "gap (eV)", "p_metal", "heat_ref (eV/cell)", "valid", "unique", "novel", "in window"],
        [
            (
                r["rank"],
                r["formula"],
                r["band_gap_ev"],
                r["p_metal"],
                r["heat_ref_ev_per_cell"],
                r["valid"],
                r["unique"],
                "-" if r["novel"] is None else r["novel"],
                r["in_window"],
            )
            for r in ranked
        ],
        digits=3,
    )
    landed = result.counts[-1][1]
    typer.echo(
        f"{landed} of {total} sampled candidates ({100.0 * landed / total:.1f}%) pass every filter above "
        f"(valid, unique, novel where judged, non-metal) and are predicted in the {lo:g}-{hi:g} eV window "
        "(predictions by the crystal-GNN predictor, not DFT)."
    )
    if out is not None:
        from matmeta.design.pipeline import write_candidates

        path = write_candidates(result, out)
        typer.echo(f"wrote {path} and {sum(1 for r in result.rows if r['cif'])} CIF files")
    if bad:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the CLI."""
    app.command("generate")(generate_cmd)
