"""``matmeta predict`` and ``matmeta finetune``: the predictor app on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def read_structures(sources: list[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """``(name, Structure)`` for every readable structure in ``sources``, and one message per bad input."""
    from matmeta.errors import MatmetaInputError
    from matmeta.io import expand_sources, read_structure_file

    good: list[tuple[str, Any]] = []
    bad: list[str] = []
    for source in sources:
        try:
            paths = expand_sources(source)
        except MatmetaInputError as exc:
            bad.append(str(exc))
            continue
        for path in paths:
            try:
                good.extend(read_structure_file(path))
            except MatmetaInputError as exc:
                bad.append(str(exc))
    return good, bad


def predict_rows(predictor: Any, named: list[tuple[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Predictions for named structures; structures that cannot become graphs are reported, not fatal."""
    from matmeta.errors import MatmetaInputError

    graphs, warnings, names, formulas, domains, bad = [], [], [], [], [], []
    for name, structure in named:
        try:
            (graph,), (warning,) = predictor.graphs([structure])
        except MatmetaInputError as exc:
            bad.append(f"{name}: {exc}")
            continue
        graphs.append(graph)
        warnings.append(warning)
        names.append(name)
        formulas.append(structure.composition.reduced_formula)
        domains.append(predictor.out_of_domain(structure))
    rows = predictor.predict_graphs(graphs) if graphs else []
    out = [
        {"name": n, "formula": f, **row, "out_of_domain": d, "warning": w}
        for n, f, row, d, w in zip(names, formulas, rows, domains, warnings, strict=True)
    ]
    return out, bad


def _interval(lo: float | None, hi: float | None, digits: int) -> str:
    return "" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _gap_cell(row: dict[str, Any]) -> str:
    if row["band_gap"] == 0.0:
        return "metal (0)"
    return f"{row['band_gap']:.2f} {_interval(row['gap_lo'], row['gap_hi'], 2)}"


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """Write prediction rows as CSV or JSON (by suffix), atomically."""
    import csv
    import io
    import json

    from matmeta.atomic import write_text_atomic
    from matmeta.errors import MatmetaInputError

    suffix = out.suffix.lower()
    if suffix == ".json":
        write_text_atomic(out, json.dumps(rows, indent=2) + "\n")
    elif suffix == ".csv":
        buffer = io.StringIO()
        columns = list(rows[0]) if rows else ["name"]
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
        write_text_atomic(out, buffer.getvalue())
    else:
        raise MatmetaInputError(f"{out}: --out must end in .csv or .json")


def read_support(
    csv_path: Path, target: str, value_column: str | None, path_column: str, cif_column: str
) -> tuple[list[str], list[Any], list[float], list[str]]:
    """Names, structures and values of a support CSV (a path or a CIF-text column, and the value)."""
    import math

    from matmeta.errors import MatmetaInputError
    from matmeta.io import parse_cif, read_csv, read_structure_file

    value_column = value_column or target
    columns, rows = read_csv(csv_path, required=(value_column,))
    if path_column not in columns and cif_column not in columns:
        raise MatmetaInputError(
            f"{csv_path}: needs a {path_column!r} or {cif_column!r} column (has {', '.join(columns)}); "
            "see --path-column / --cif-column"
        )
    names, structures, values, bad = [], [], [], []
    for number, row in enumerate(rows, start=1):
        where = f"{csv_path} row {number}"
        try:
            try:
                value = float(row[value_column])
            except ValueError:
                raise MatmetaInputError(f"{where}: {value_column} {row[value_column]!r} is not a number") from None
            if not math.isfinite(value):
                raise MatmetaInputError(f"{where}: {value_column} is {value}")
            if path_column in columns and row[path_column].strip():
                path = Path(row[path_column].strip())
                path = path if path.is_absolute() else csv_path.parent / path
                structure = read_structure_file(path)[0][1]
                name = row.get("name") or path.stem
            elif cif_column in columns and row[cif_column].strip():
                structure = parse_cif(row[cif_column], where)
                name = row.get("name") or f"row {number}"
            else:
                raise MatmetaInputError(f"{where}: empty {path_column!r} and {cif_column!r}")
        except MatmetaInputError as exc:
            bad.append(str(exc))
            continue
        names.append(name)
        structures.append(structure)
        values.append(value)
    return names, structures, values, bad


def register(app: typer.Typer) -> None:
    """Add ``predict`` and ``finetune`` to the CLI."""

    @app.command("predict")
    def predict(
        sources: list[str] = typer.Argument(..., help="Structure files, directories or globs (CIF, POSCAR, extxyz)."),
        model: Path = typer.Option(None, "--model", help="Predictor checkpoint (default: the shipped one)."),
        out: Path = typer.Option(None, "--out", help="Also write the predictions to this .csv or .json file."),
        mc_samples: int = typer.Option(None, "--mc-samples", help="MC-dropout samples for the uncertainty."),
    ) -> None:
        """Predict heat of formation (eV/cell) and band gap (eV, with P(metal)) with uncertainties."""
        from matmeta.console import print_table, report_error, warn
        from matmeta.predict import Predictor

        predictor = Predictor.load(model)
        if mc_samples is not None:
            predictor.uncertainty["mc_samples"] = mc_samples
        named, bad = read_structures(sources)
        predictor_rows, bad_graphs = predict_rows(predictor, named) if named else ([], [])
        bad += bad_graphs
        print_table(
            f"predictions ({predictor.path.name if predictor.path else 'model'}; \\[lo, hi] = 90% interval, "
            f"non-metal when P(non-metal) ≥ {predictor.nonmetal_cut:.2f})",
            ["structure", "formula", "heat_ref eV/cell", "band gap eV", "P(non-metal)", "out of domain"],
            [
                (
                    r["name"],
                    r["formula"],
                    f"{r['heat_ref']:.3f} {_interval(r['heat_ref_lo'], r['heat_ref_hi'], 3)}",
                    _gap_cell(r),
                    f"{1.0 - r['p_metal']:.2f}",
                    r["out_of_domain"] or "",
                )
                for r in predictor_rows
            ],
        )
        for row in predictor_rows:
            if row["warning"]:
                warn(f"{row['name']}: {row['warning']}")
        if out is not None:
            write_rows(predictor_rows, out)
            typer.echo(f"wrote {len(predictor_rows)} predictions to {out}")
        for message in bad:
            report_error(message)
        if bad:
            raise typer.Exit(1)

    @app.command("finetune")
    def finetune(
        support: Path = typer.Option(..., "--support", help="CSV of labelled structures of one family."),
        target: str = typer.Option(..., "--target", help="heat_ref (eV/cell) or band_gap (eV)."),
        out: Path = typer.Option(..., "--out", help="Where to write the adapted checkpoint."),
        model: Path = typer.Option(None, "--model", help="Start from this checkpoint (default: the shipped one)."),
        value_column: str = typer.Option(None, "--value-column", help="Column with the values (default: TARGET)."),
        path_column: str = typer.Option("path", "--path-column", help="Column with structure file paths."),
        cif_column: str = typer.Option("cif", "--cif-column", help="Column with CIF text."),
        steps: int = typer.Option(None, "--steps", help="Inner steps (default: the meta-learned number)."),
    ) -> None:
        """Adapt the predictor to 1-50 measured structures (best of four candidates by leave-one-out)."""
        from matmeta.console import print_table, report_error, warn
        from matmeta.errors import MatmetaInputError
        from matmeta.predict import Predictor

        predictor = Predictor.load(model)
        names, structures, values, bad = read_support(support, target, value_column, path_column, cif_column)
        if not structures:
            for message in bad:
                report_error(message)
            raise MatmetaInputError(f"{support}: no usable labelled structure")
        if len(structures) > 50:
            warn(f"{support}: {len(structures)} structures; finetune is meant for 1-50 (leave-one-out gets slower)")
        adapted, report = predictor.finetune(structures, values, target, steps=steps, names=names)
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
