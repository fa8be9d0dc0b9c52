"""``matmeta data ingest|families|download``: build graph stores, inspect families, fetch datasets."""

from __future__ import annotations

import os
from pathlib import Path

import typer

data_app = typer.Typer(help="Structure data: graph stores, families, public datasets.", no_args_is_help=True)


def default_data_root() -> Path:
    """Where downloaded datasets live: ``$MATMETA_DATA_DIR`` or ``~/.cache/matmeta/datasets``."""
    return Path(os.environ.get("MATMETA_DATA_DIR", Path.home() / ".cache" / "matmeta" / "datasets"))


def _resolve_sources(sources: list[str], data_root: Path) -> list[str]:
    """Dataset names (perovskites, mp20, carbon24) become their downloaded split CSVs."""
    from matmeta.store.download import DATASETS, dataset_files

    resolved: list[str] = []
    for source in sources:
        if source in DATASETS and not Path(source).exists():
            resolved.extend(str(p) for p in dataset_files(source, data_root))
        else:
            resolved.append(source)
    return resolved


@data_app.command("ingest")
def ingest_command(
    sources: list[str] = typer.Argument(
        ...,
        help="A CSV with a CIF column, CIF/POSCAR/extxyz files, directories or globs, or a downloaded dataset name.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Graph store directory (created or completed)."),
    target: list[str] = typer.Option([], "--target", "-t", help="Target column (repeatable)."),
    cif_column: str = typer.Option("cif", "--cif-column", help="CSV column holding the CIF text."),
    id_column: str = typer.Option(
        None, "--id-column", help="Id column (CSV, or --targets-csv); default row number/id."
    ),
    targets_csv: Path = typer.Option(None, "--targets-csv", help="Targets for structure files, keyed by file stem."),
    cutoff: float = typer.Option(6.0, "--cutoff", help="Graph cutoff radius, Å."),
    max_neighbors: int = typer.Option(12, "--max-neighbors", help="Keep at most this many nearest neighbours."),
    max_atoms: int = typer.Option(500, "--max-atoms", help="Refuse cells with more atoms."),
    ordered_approximation: bool = typer.Option(
        False, "--ordered-approximation", help="Use the majority species on partially occupied sites."
    ),
    on_isolated_atoms: str = typer.Option("error", "--on-isolated-atoms", help="error | warn | ignore."),
    allow_missing_targets: bool = typer.Option(False, "--allow-missing-targets", help="Store empty targets as NaN."),
    workers: int = typer.Option(2, "--workers", "-j", help="Worker processes."),
    limit: int = typer.Option(None, "--limit", help="Only the first N new items."),
) -> None:
    """Build (or resume) an LMDB graph store with targets and family keys."""
    from matmeta.console import print_table
    from matmeta.errors import MatmetaInputError
    from matmeta.graphs import ISOLATED_POLICIES, GraphConfig
    from matmeta.store.ingest import IngestSettings, ingest

    if on_isolated_atoms not in ISOLATED_POLICIES:
        raise MatmetaInputError(f"--on-isolated-atoms: use one of {', '.join(ISOLATED_POLICIES)}")
    try:
        config = GraphConfig(cutoff_angstrom=cutoff, max_neighbors=max_neighbors)
    except ValueError as exc:
        raise MatmetaInputError(f"graph settings: {exc}") from None
    settings = IngestSettings(
        max_atoms=max_atoms,
        ordered_approximation=ordered_approximation,
        on_isolated_atoms=on_isolated_atoms,
        allow_missing_targets=allow_missing_targets,
    )
    report = ingest(
        _resolve_sources(sources, default_data_root()),
        out,
        config,
        targets=target,
        cif_column=cif_column,
        id_column=id_column,
        targets_csv=targets_csv,
        settings=settings,
        workers=workers,
        limit=limit,
    )
    rate = report.added / report.seconds if report.seconds > 0 else 0.0
    print_table(
        f"ingest → {out}",
        ["added", "already present", "refused", "records in store", "seconds", "added/s"],
        [[report.added, report.already_present, len(report.errors), report.total, report.seconds, rate]],
    )
    if report.errors:
        raise typer.Exit(1)


@data_app.command("families")
def families_command(
    store: Path = typer.Argument(..., help="Graph store directory."),
    by: str = typer.Option(
        "prototype",
        "--by",
        help="prototype | anion_class | cation | chemsys | spacegroup | anion_set | b_site | a_site | column:<name>.",
    ),
    min_size: int = typer.Option(1, "--min-size", help="Hide families with fewer members."),
    out: Path = typer.Option(None, "--out", help="Also write the table as .csv or .json."),
) -> None:
    """Print each family with its size and target statistics."""
    from matmeta.console import print_table, warn
    from matmeta.errors import MatmetaInputError
    from matmeta.families import family_statistics
    from matmeta.store.reader import GraphStore

    graph_store = GraphStore(store)
    names = graph_store.target_names
    try:
        graph_store.family_keys(by)
    except MatmetaInputError as exc:  # some records have no key of this kind: listed as "(undefined)"
        if "undefined" not in str(exc):
            raise
        warn(str(exc))
    keys = [key or "(undefined)" for key in graph_store.family_keys(by, undefined="empty")]
    rows = family_statistics(keys, graph_store.targets, names)
    shown = [r for r in rows if int(r["size"]) >= min_size]
    columns = ["family", "size"] + [f"{n} {s}" for n in names for s in ("mean", "std")]
    table_rows = [[r["family"], r["size"], *(r[f"{n}_{s}"] for n in names for s in ("mean", "std"))] for r in shown]
    print_table(
        f"{len(shown)} families by {by} ({len(rows) - len(shown)} smaller than {min_size} hidden) in {store}",
        columns,
        table_rows,
        digits=3,
    )
    if out is not None:
        from matmeta.atomic import write_table

        write_table(out, shown, list(shown[0]) if shown else ["family", "size"])


@data_app.command("split")
def split_command(
    store: Path = typer.Argument(..., help="Graph store directory."),
    by: str = typer.Option("prototype", "--by", help="Family kind (see `matmeta data families`)."),
    min_size: int = typer.Option(30, "--min-size", help="Families with fewer members are no task."),
    fractions: tuple[float, float, float] = typer.Option((0.7, 0.15, 0.15), "--fractions", help="Train val test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
) -> None:
    """Print a seeded family-level split as the [data] lines that fix it in a recipe."""
    from matmeta.store.splits import split_as_toml, store_family_split

    split = store_family_split(store, by, min_size, fractions, seed)
    typer.echo(split_as_toml(split, by, min_size), nl=False)


@data_app.command("download")
def download_command(
    name: str = typer.Argument(..., help="perovskites | mp20 | carbon24"),
    dest: Path = typer.Option(None, "--dest", help="Data directory (default $MATMETA_DATA_DIR or ~/.cache/matmeta)."),
    from_path: Path = typer.Option(None, "--from", help="A local folder with train.csv, val.csv and test.csv."),
    force: bool = typer.Option(False, "--force", help="Fetch again even if a verified copy exists."),
) -> None:
    """Fetch a CDVAE benchmark dataset (or copy a local one) and verify it."""
    import json

    from matmeta.console import print_table
    from matmeta.store.download import MANIFEST, download

    folder = download(name, dest or default_data_root(), from_path=from_path, force=force)
    manifest = json.loads((folder / MANIFEST).read_text())
    print_table(
        f"{name} → {folder}",
        ["split", "rows", "sha256"],
        [[split, manifest["rows"][split], manifest["sha256"][split][:16] + "…"] for split in manifest["sha256"]],
    )


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the CLI."""
    app.add_typer(data_app, name="data")
