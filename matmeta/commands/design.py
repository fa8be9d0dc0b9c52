"""``matmeta generate``: crystals meeting a band-gap request - filled, screened, relaxed and ranked.

Two decoders: ``--prototype NAME`` (or ``--family-examples`` of any structure type other than the 5-atom
cubic ABX3 cell) designs in a real prototype family with the family decoder (:mod:`matmeta.design.family_run`);
otherwise the cubic ABX3 decoder runs (:mod:`matmeta.design.deliver`).
"""

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
    gap_half_width: float = typer.Option(
        None, "--gap-half-width", help="Half-width (eV) of the window around a single --band-gap value [default: 0.3]."
    ),
    n: int = typer.Option(
        None, "-n", "--n", help="Candidates wanted (all meeting the request) [default: 200; 20 in a family]."
    ),
    prototype: str = typer.Option(
        None, "--prototype", help="Design in this prototype family of the Materials Project store (e.g. ABC3_62_bccd)."
    ),
    fidelity: str = typer.Option(
        "measured", "--fidelity", help="Family decoder: the gap the window is on: measured (measured-level) or pbe."
    ),
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
        help="Never return a composition of the training store (needs the store); --keep-known allows them.",
    ),
    distinct: bool = typer.Option(
        True,
        "--distinct/--allow-repeats",
        help="Deprecated: --allow-repeats is refused with a one-line error (the fill loop returns each "
        "composition once; a repeat is never a new hit).",
    ),
    max_draws: int = typer.Option(50_000, "--max-draws", help="Budget: decoder draws at most."),
    max_predictor_calls: int = typer.Option(
        10_000, "--max-predictor-calls", help="Budget: structures scored by the predictor at most."
    ),
    screen: bool = typer.Option(
        True, "--screen/--no-screen", help="Also screen the enumerable ABX3 substitution space (needs the store)."
    ),
    relax: bool = typer.Option(True, "--relax/--no-relax", help="Relax every returned candidate with CHGNet."),
    cubic_window: bool = typer.Option(
        True,
        "--cubic-window/--no-cubic-window",
        help="Stable also needs the tolerance factor in the window chosen for cubic stability; "
        "--no-cubic-window: predicted heat of formation alone.",
    ),
    generator: Path = typer.Option(None, "--generator", help="Generator checkpoint (default: the shipped one)."),
    model: Path = typer.Option(None, "--model", help="Predictor checkpoint (default: the shipped one)."),
    store: Path = typer.Option(
        None, "--store", help="Training store for novelty and the screen (default: the checkpoint's, when present)."
    ),
    top: int = typer.Option(10, "--top", help="Rows of the ranked table to print."),
    yes: bool = typer.Option(False, "--yes", help="Run even above the ceiling of 5000 candidates."),
    tolerance: float = typer.Option(None, "--tolerance", hidden=True, help="Deprecated: --gap-half-width."),
    checkpoint: Path = typer.Option(None, "--checkpoint", hidden=True, help="Deprecated: --generator."),
    predictor: Path = typer.Option(None, "--predictor", hidden=True, help="Deprecated: --model."),
) -> None:
    """Generate up to n candidate crystals meeting a band-gap request: fill, screen, relax, rank, write.

    Reason for its length: the option declarations; the body is parse -> run_design -> render.
    """
    from matmeta.console import progress, report_error
    from matmeta.design.deliver import run_design
    from matmeta.design.request import DesignRequest, read_family_examples
    from matmeta.guards import renamed

    gap_half_width = renamed("--tolerance", "--gap-half-width", tolerance, gap_half_width, default=0.3)
    generator = renamed("--checkpoint", "--generator", checkpoint, generator)
    model = renamed("--predictor", "--model", predictor, model)
    examples, bad = None, []
    if family_examples is not None:
        examples, bad = read_family_examples(family_examples)
        for message in bad:
            report_error(message)
    if prototype is not None or (examples and not _cubic_abx3([s for _, s in examples])):
        from matmeta.design.family_command import generate_in_family
        from matmeta.errors import MatmetaInputError

        if elements or exclude_elements or guidance:
            raise MatmetaInputError(
                "--elements / --exclude-elements / --guidance: cubic ABX3 decoder only, not in a family"
            )

        generate_in_family(band_gap, gap_half_width, n or 20, prototype, examples, fidelity, seed, temperature, relax,
                           max_draws, max_predictor_calls, generator, model, out, top)  # fmt: skip
        if bad:
            raise typer.Exit(1)
        return
    n = 200 if n is None else n
    request = DesignRequest(
        band_gap=band_gap,
        gap_half_width=gap_half_width,
        n=n,
        seed=seed,
        elements=_split_elements(elements),
        exclude=_split_elements(exclude_elements),
        guidance=guidance,
        temperature=temperature,
        novel_only=novel_only,
        distinct=distinct,
        max_draws=max_draws,
        max_predictor_calls=max_predictor_calls,
        screen=screen,
        relax=relax,
        cubic_window=cubic_window,
        yes=yes,
    )
    with progress() as bar:
        result = run_design(request, examples, generator=generator, model=model, store=store, progress=bar, out_dir=out)
    _render(result, seed, top)
    if out is not None:
        from matmeta.design.output import write_design

        path = write_design(result, out)
        typer.echo(f"wrote {path}, {sum(1 for r in result.rows if r['cif'])} relaxed CIFs and the generated ones")
    if bad:
        raise typer.Exit(1)


def _cubic_abx3(structures: list) -> bool:
    """All 5-atom cubic ABX3 cells (the cubic decoder's domain)."""
    from matmeta.prototypes import prototype

    return all(len(s) == 5 and prototype(s).startswith("ABC3_221") for s in structures)


def _render(result, seed: int, top: int) -> None:  # noqa: ANN001 - a DesignResult, imported lazily
    from matmeta.console import print_table
    from matmeta.design.output import funnel, summary_lines

    lo, hi = result.window
    stages = funnel(result)
    total = max(stages[0][1], 1)
    print_table(
        f"matmeta generate: band gap {lo:g}-{hi:g} eV, decoder proposals (seed {seed})",
        ["filter", "candidates", "% of proposed"],
        [(name, count, 100.0 * count / total) for name, count in stages],
        digits=3,
    )
    relaxed = any("relax_status" in r for r in result.rows)
    columns = ["rank", "formula", "source", "gap (eV)", "p_metal", "heat (eV/atom)", "t"]
    if relaxed:
        columns += ["gap relaxed", "RMSD (A)", "dV/V", "status"]
    rows = []
    for r in result.rows[: max(top, 0)]:
        row = [r["rank"], r["formula"], r["source"], r["band_gap_ev"], r["p_metal"], r["heat_ev_per_atom"]]
        row.append(r.get("tolerance_factor", "-"))
        if relaxed:
            row += [r.get("band_gap_ev_relaxed", "-"), r["rmsd_ang"], r["volume_change"], r["relax_status"]]
        rows.append(row)
    print_table("best candidates (predictions by the crystal-GNN predictor, not DFT)", columns, rows, digits=3)
    for line in summary_lines(result):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the CLI."""
    app.command("generate")(generate_cmd)
