"""``matmeta predict`` and ``matmeta finetune``: parse → :mod:`matmeta.predict.api` → render."""

from __future__ import annotations

from pathlib import Path

import typer


def predict(
    sources: list[str] = typer.Argument(..., help="Structure files, directories or globs (CIF, POSCAR, extxyz)."),
    model: Path = typer.Option(None, "--model", help="Predictor checkpoint (default: the shipped one)."),
    out: Path = typer.Option(None, "--out", help="Also write the predictions to this .csv or .json file."),
    mc_samples: int = typer.Option(None, "--mc-samples", help="MC-dropout samples for the uncertainty."),
    sensitivity: bool = typer.Option(
        False, "--sensitivity", help="Add the worst change of each property under displacements of --epsilon (PGD)."
    ),
    epsilon: float = typer.Option(0.05, "--epsilon", help="Largest displacement per atom for --sensitivity, Å."),
) -> None:
    """Predict the formation energy and band gap (with P(metal)) of crystals, with 90% intervals."""
    from matmeta.atomic import writable_target, write_table
    from matmeta.console import print_table, report_error, warn
    from matmeta.errors import MatmetaInputError
    from matmeta.predict.api import predict_files

    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise MatmetaInputError(f"{out}: --out must end in .csv or .json")
    if out is not None:
        writable_target(out)
    if sensitivity and not 0 < epsilon <= 1.0:
        raise MatmetaInputError(f"--epsilon {epsilon}: must be in (0, 1] Å")
    from matmeta.predict.calibration import legend

    predictor, rows, bad = predict_files(sources, model, mc_samples, epsilon if sensitivity else None)
    says = legend(predictor)
    energy, gap = says["energy"], says["gap"]
    recalibrated = any(r.get("p_recalibrated") for r in rows)
    note = f"; * = B site new to the model: P recalibrated, metal when > {says['new_family_metal_above']:.3f}"
    measured = predictor.measured is not None
    pbe = f"; band_gap = {gap} (no measured-level gap in this model)" if gap != "band_gap" and not measured else ""
    columns = ["structure", "formula", f"{energy} {says['energy_unit']}", f"{gap} eV", "p_metal"]
    print_table(
        f"predictions ({predictor.path.name if predictor.path else 'model'}; \\[lo, hi] = 90% interval, "
        f"metal when p_metal > {says['metal_above']:.3f}{note if recalibrated else ''}{pbe})",
        [*columns, *(["band_gap eV (measured level)"] if measured else []), "out of domain"],
        [
            (
                r["name"],
                r["formula"],
                f"{r[energy]:.3f} {_interval(r[f'{energy}_lo'], r[f'{energy}_hi'], 3)}",
                _gap_cell(r, gap),
                f"{r['p_metal']:.3f}{'*' if r.get('p_recalibrated') else ''}",
                *([_gap_cell(r, "band_gap")] if measured else []),
                r["out_of_domain"] or "",
            )
            for r in rows
        ],
    )
    for row in rows:
        if row["warning"]:
            warn(f"{row['name']}: {row['warning']}")
    if out is not None:
        write_table(out, rows, list(rows[0]) if rows else ["name"])
        typer.echo(f"wrote {len(rows)} predictions to {out}")
    for message in bad:
        report_error(message)
    if bad:
        raise typer.Exit(1)


def finetune(
    support: Path = typer.Option(..., "--support", help="CSV of labelled structures of one family."),
    target: str = typer.Option(
        ...,
        "--target",
        help="The model's target: formation_energy_per_atom (eV/atom) or band_gap_pbe (eV); "
        "heat_ref (eV/cell) or band_gap with --model perovskites.",
    ),
    out: Path = typer.Option(..., "--out", help="Where to write the adapted checkpoint."),
    model: Path = typer.Option(None, "--model", help="Start from this checkpoint (default: the shipped one)."),
    value_column: str = typer.Option(None, "--value-column", help="Column with the values (default: TARGET)."),
    path_column: str = typer.Option("path", "--path-column", help="Column with structure file paths."),
    cif_column: str = typer.Option("cif", "--cif-column", help="Column with CIF text."),
    steps: int = typer.Option(None, "--steps", help="Inner steps (default: the meta-learned number)."),
    yes: bool = typer.Option(False, "--yes", help="Run even above the ceiling of 100 support rows."),
    match_store: Path = typer.Option(
        None, "--match-store", help="Graph store whose lowest-energy structure of a formula-only row is used."
    ),
    robust: bool = typer.Option(
        False,
        "--robust",
        help="Adapt with the robust loss (drift under 0.05 Å PGD displacements penalised); "
        "best with --model mp-robust.",
    ),
) -> None:
    """Adapt the predictor to 1-50 measured structures (best of five candidates by leave-one-out)."""
    from matmeta.atomic import writable_target
    from matmeta.console import print_table, report_error
    from matmeta.predict.api import adapt

    writable_target(out)
    adapted, report, bad = adapt(
        support,
        target,
        model,
        value_column,
        path_column,
        cif_column,
        steps,
        yes=yes,
        match_store=match_store,
        robust=robust,
    )
    print_table(
        f"leave-one-out on {report.n_support} support structures ({report.steps} inner steps; lowest is kept)",
        ["candidate", f"MAE {report.unit}", "kept"],
        [(kind, mae, "✓" if kind == report.kept else "") for kind, mae in report.loo_mae.items()],
    )
    typer.echo(report.message())
    adapted.save(out)
    typer.echo(f"checkpoint: {out} (kept: {report.kept})")
    for message in bad:
        report_error(message)
    if bad:
        raise typer.Exit(1)


def _interval(lo: float | None, hi: float | None, digits: int) -> str:
    return "" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _gap_cell(row: dict, gap: str) -> str:
    """The reported gap with its interval (the checkpoint's all-structure interval where it has one)."""
    lo, hi = (row.get(f"{gap}_lo"), row.get(f"{gap}_hi")) if row.get(f"{gap}_hi") is not None else (None, None)
    if row[gap] == 0.0:
        return "metal (0)" + (f" [0, {hi:.2f}]" if hi else "")
    if lo is None:
        lo, hi = row["gap_lo"], row["gap_hi"]
    return f"{row[gap]:.2f} {_interval(lo, hi, 2)}"


def register(app: typer.Typer) -> None:
    """Add ``predict`` and ``finetune`` to the CLI."""
    app.command("predict")(predict)
    app.command("finetune")(finetune)
