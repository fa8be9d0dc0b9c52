"""``matmeta jmak``: fit JMAK curves from sparse points, meta-train the prior.

``jmak_app`` is module-level so other apps can add commands to it (``matmeta jmak explain``).
Heavy modules are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

jmak_app = typer.Typer(
    name="jmak",
    help="JMAK kinetics X(t) = 1 - exp(-k t^n): fit (k, n) from 2+ points with a meta-learned prior.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def run_fit(
    points: Path,
    method: str = "maml",
    prior: Path | None = None,
    noise: float | None = None,
    out: Path | None = None,
    plot: Path | None = None,
    level: float = 0.9,
    steps: int | None = None,
    observed: str = "auto",
) -> int:
    """Fit every good curve of ``points``, print the table, write outputs; returns the number of bad items."""
    from matmeta.atomic import writable_target
    from matmeta.console import print_table, report_error
    from matmeta.errors import MatmetaInputError
    from matmeta.kinetics.api import fit_curves, read_curves_reporting

    for target in (out, plot):
        if target is not None:
            writable_target(target)  # before the fit: no work for an output that cannot be written

    if not 0 < level < 1:
        raise MatmetaInputError(f"--level {level}: must be between 0 and 1")
    if noise is not None and noise <= 0:
        raise MatmetaInputError(f"--noise {noise}: must be > 0")
    curves, errors = read_curves_reporting(points, "no curve could be read")
    if steps is not None and steps < 0:
        raise MatmetaInputError(f"--steps {steps}: must be >= 0")
    result = fit_curves(curves, method=method, prior=prior, noise=noise, steps=steps, observed=observed)
    rows = result.rows()
    for row in rows:
        if not row["ok"]:
            errors.append(f"{points}: curve {row['curve']!r}: the {method} fit failed (no finite fit with n > 0)")
            report_error(errors[-1])

    def pm(value: float, std: float) -> str:
        return f"{value:.4g} ± {std:.2g}"

    print_table(
        f"JMAK fits ({method}; ± = 1σ Laplace, noise σ = {result.noise:g}"
        + (" in ln t: time readings)" if result.observed == "time" else " in X)"),
        ["curve", "pts", "k (s^-n)", "ln k", "n", "t10 (s)", "t50 (s)", "t90 (s)", "residual"],
        [
            [
                r["curve"],
                r["points"],
                f"{r['k']:.4g}",
                pm(r["ln_k"], r["ln_k_std"]),
                pm(r["n"], r["n_std"]),
                r["t10_s"],
                r["t50_s"],
                r["t90_s"],
                r["residual_rms"],
            ]
            for r in rows
            if r["ok"]
        ],
    )
    if out is not None:
        result.write_csv(out)
        typer.echo(f"fits: {out}")
    if plot is not None:
        from matmeta.kinetics.plot import plot_fits

        plot_fits(result, plot, level=level)
        typer.echo(f"plot: {plot}")
    return len(errors)


@jmak_app.command("fit")
def fit(
    points: Path = typer.Argument(..., help="CSV with curve,time_s,fraction rows (or a TTT table)."),
    method: str = typer.Option("maml", "--method", help="maml | least-squares | avrami."),
    prior: Path = typer.Option(None, "--prior", help="Prior checkpoint (default: the shipped one)."),
    noise: float = typer.Option(
        None, "--noise", help="Measurement sigma: of X, or of ln t for TTT readings (default: the prior's / 0.02)."
    ),
    out: Path = typer.Option(None, "--out", help="Write the fits as CSV."),
    plot: Path = typer.Option(None, "--plot", help="Plot data, fits and uncertainty bands (e.g. fits.png)."),
    level: float = typer.Option(0.9, "--level", help="Coverage of the plotted band."),
    steps: int = typer.Option(None, "--steps", help="Inner steps of the MAML fit (default: the prior's)."),
    observed: str = typer.Option(
        "auto", "--observed", help="auto | time (times read at set fractions, as in TTT tables) | fraction."
    ),
) -> None:
    """Fit k and n of every curve; prints k, ln k, n (± 1σ), t10/t50/t90 and the residual."""
    if run_fit(points, method, prior, noise, out, plot, level, steps, observed):
        raise typer.Exit(1)


@jmak_app.command("ttt")
def ttt(
    table: Path = typer.Argument(..., help="TTT table: phase, T (°C), t_start, t_10%, t_90%, y_max."),
    plot: Path = typer.Option(None, "--plot", help="Draw the fitted TTT diagram (e.g. ttt.png)."),
    out: Path = typer.Option(None, "--out", help="Write the per-phase fits as CSV."),
    level: float = typer.Option(0.9, "--level", help="Coverage of the plotted bands."),
) -> None:
    """Joint TTT fit per phase (n(T) smooth, C-curve rate with a nose), with posterior bands."""
    from matmeta.console import print_table, warn
    from matmeta.errors import MatmetaInputError
    from matmeta.kinetics.ttt_api import fit_ttt_table, plot_ttt

    if not 0 < level < 1:
        raise MatmetaInputError(f"--level {level}: must be between 0 and 1")
    diagram = fit_ttt_table(table, warn=warn)
    print_table(
        "TTT fits per phase (± = 1σ Laplace posterior)",
        ["phase", "T's", "n", "nose (°C)", "T_e (°C)", "Q (kJ/mol)", "start X", "scatter ln t", "read σ"],
        [
            [
                r["phase"],
                r["temperatures"],
                f"{r['n']:.3g} ± {r['n_std']:.2g}",
                f"{r['nose_C']:.4g} ± {r['nose_C_std']:.2g}",
                f"{r['Te_C']:.4g}",
                f"{r['Q_kJ_mol']:.3g}",
                f"{r['start_fraction']:.2%}",
                f"{r['scatter_s']:.2g}",
                f"{r['read_sigma']:.2g}",
            ]
            for r in diagram.table()
        ],
    )
    if out is not None:
        diagram.write_csv(out)
        typer.echo(f"fits: {out}")
    if plot is not None:
        plot_ttt(diagram, plot, level=level)
        typer.echo(f"plot: {plot}")


@jmak_app.command("meta-train")
def meta_train(
    recipe: Path = typer.Argument(..., help="Recipe TOML, e.g. recipes/jmak.toml."),
    out: Path = typer.Option(None, "--out", help="Checkpoint path (default: the recipe's)."),
    steps: int = typer.Option(None, "--steps", help="Override the number of outer steps."),
) -> None:
    """Meta-train the JMAK prior on synthetic Arrhenius families (or, for recipes/jmak_ttt.toml, the TTT prior)."""
    from matmeta.recipes import load_recipe
    from matmeta.runs import meta_train as run_meta_train

    parsed = load_recipe(recipe)
    if parsed.get("meta_train", {}).get("observation") == "log_time":
        from matmeta.kinetics.ttt_prior import meta_train_ttt_from_recipe

        path = meta_train_ttt_from_recipe(parsed, recipe, out=out, steps=steps)
    else:
        path = run_meta_train(recipe, out=out, steps=steps, app="jmak")
    typer.echo(f"checkpoint: {path}")


def register(app: typer.Typer) -> None:
    """Add the ``jmak`` command group to the CLI."""
    app.add_typer(jmak_app, name="jmak")
