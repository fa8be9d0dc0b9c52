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
    points: Path | None,
    method: str = "maml",
    prior: Path | None = None,
    noise: float | None = None,
    out: Path | None = None,
    plot: Path | None = None,
    level: float = 0.9,
    steps: int | None = None,
    observed: str = "auto",
    t0: float | None = None,
    y_max: float | None = None,
    dsc: Path | None = None,
    baseline: str | None = None,
    by: str | None = None,
    n_model: str = "auto",
    predict_at: list[float] | None = None,
) -> int:
    """Fit every good curve (points, TTT table or DSC traces), print tables, write outputs; returns the bad items."""
    from matmeta.atomic import writable_target
    from matmeta.console import report_error, warn
    from matmeta.errors import MatmetaInputError
    from matmeta.kinetics.measured_api import fit_file

    for target in (out, plot):
        if target is not None:
            writable_target(target)  # before the fit: no work for an output that cannot be written

    if not 0 < level < 1:
        raise MatmetaInputError(f"--level {level}: must be between 0 and 1")
    if noise is not None and noise <= 0:
        raise MatmetaInputError(f"--noise {noise}: must be > 0")
    if steps is not None and steps < 0:
        raise MatmetaInputError(f"--steps {steps}: must be >= 0")
    limits = _limits(baseline)
    result = fit_file(points, dsc, by, method, prior, noise, steps, observed, t0, y_max, limits, n_model,
                      predict_at or (), on_error=report_error, on_warning=warn)  # fmt: skip
    errors = list(result.errors)
    for row in result.fits.rows():
        if not row["ok"]:
            source = points or dsc
            errors.append(f"{source}: curve {row['curve']!r}: the {method} fit failed (no finite fit with n > 0)")
            report_error(errors[-1])
    if result.dsc is not None:
        _print_traces(result.dsc)
    _print_fits(result.fits, method)
    if result.series is not None:
        _print_series(result.series)
    if out is not None:
        result.fits.write_csv(out)
        typer.echo(f"fits: {out}")
        if result.series is not None:
            series_out = out.with_name(out.stem + "_series" + (out.suffix or ".csv"))
            result.series.write_csv(series_out)
            typer.echo(f"series: {series_out}")
    if plot is not None:
        _plot(result, plot, level)
        typer.echo(f"plot: {plot}")
    return len(errors)


def _limits(baseline: str | None) -> tuple[float, float] | None:
    """``--baseline T1,T2`` → (T1, T2) in s."""
    if baseline is None:
        return None
    from matmeta.errors import MatmetaInputError

    try:
        lo, hi = (float(v) for v in baseline.split(","))
    except ValueError:
        raise MatmetaInputError(f"--baseline {baseline}: give two times in s, e.g. --baseline 60,900") from None
    if not lo < hi:
        raise MatmetaInputError(f"--baseline {baseline}: the start must come before the end")
    return lo, hi


def _print_fits(result: object, method: str) -> None:
    from matmeta.console import print_table

    rows = result.rows()
    incubation = any(r["t0_s"] > 0 or abs(r["y_max"] - 1) > 1e-12 for r in rows)

    def pm(value: float, std: float) -> str:
        return f"{value:.4g} ± {std:.2g}"

    columns = ["curve", "pts", "k (s^-n)", "ln k", "n", "t10 (s)", "t50 (s)", "t90 (s)", "90% t90 (s)", "residual"]
    columns += ["t0 (s)", "y_max", "fit"] if incubation else ["fit"]
    table = []
    for r in rows:
        if not r["ok"]:
            continue
        line = [r["curve"], r["points"], f"{r['k']:.4g}", pm(r["ln_k"], r["ln_k_std"]), pm(r["n"], r["n_std"]),
                r["t10_s"], r["t50_s"], r["t90_s"], f"{r['t90_lo_s']:.4g}–{r['t90_hi_s']:.4g}",
                r["residual_rms"]]  # fmt: skip
        if incubation:
            line += [pm(r["t0_s"], r["t0_std"]), pm(r["y_max"], r["y_max_std"])]
        table.append([*line, r["fit"]])
    if result.observed == "time":
        where = f"noise σ = {result.noise:g} in ln t: time readings"
    else:
        dense = [c.dense for c in result.curves]
        where = ", ".join(
            ([f"readings' noise σ = {result.noise:g} in X"] if not all(dense) else [])
            + (["traces: robust fit, σ from their residuals"] if any(dense) else [])
        )
    print_table(f"JMAK fits ({method}; ± = 1σ, {where})", columns, table)


def _print_traces(dsc: object) -> None:
    from matmeta.console import print_table

    print_table(
        "DSC traces: linear baseline between the limits, X = normalised running integral",
        ["trace", "points", "t_start (s)", "t_end (s)", "limits", "peak"],
        [[t.name, len(t.time_s), t.limits[0], t.limits[1], "detected" if t.detected else "given",
          "positive" if t.sign > 0 else "negative"] for t in dsc.traces],
    )  # fmt: skip


def _print_series(result: object) -> None:
    from matmeta.console import print_table

    s = result.series
    print_table(
        f"Temperature series, joint fit: Q = {s.q_kj_mol:.4g} ± {s.q_std_kj_mol:.2g} kJ/mol (rate 1/τ = k^(1/n)); "
        f"n {s.n_model} (BIC " + ", ".join(f"{m} {v:.1f}" for m, v in s.bic.items()) + ")",
        ["curve", "T (°C)", "n", "t0 (s)", "y_max", "t50 (s)", "residual"],
        [[r["curve"], r["temperature_C"], f"{r['n']:.4g} ± {r['n_std']:.2g}", r["t0_s"], r["y_max"], r["t50_s"],
          r["residual_rms"]] for r in result.rows()],
    )  # fmt: skip
    if result.predictions:
        print_table(
            "Predicted half time at temperatures not measured (90 % interval)",
            ["T (°C)", "t50 (s)", "90 % interval (s)"],
            [[c, t, f"{lo:.4g}–{hi:.4g}"] for c, t, lo, hi in result.predictions],
        )


def _plot(result: object, plot: Path, level: float) -> None:
    if result.series is not None:
        from matmeta.kinetics.plot_measured import plot_series

        plot_series(result.series, plot)
    elif result.dsc is not None:
        from matmeta.kinetics.plot_measured import plot_dsc

        plot_dsc(result.dsc, plot, level=level)
    else:
        from matmeta.kinetics.plot import plot_fits

        plot_fits(result.fits, plot, level=level)


@jmak_app.command("fit")
def fit(
    points: Path = typer.Argument(None, help="CSV of curve,time_s,fraction rows (+ temperature_C) or a TTT table."),
    method: str = typer.Option("maml", "--method", help="maml (the prior) | maml-adapt | least-squares | avrami."),
    prior: Path = typer.Option(None, "--prior", help="Prior checkpoint (default: the shipped one)."),
    noise: float = typer.Option(
        None, "--noise", help="Measurement sigma: of X, or of ln t for TTT readings (default: the prior's / 0.02)."
    ),
    out: Path = typer.Option(None, "--out", help="Write the fits as CSV (a series also to <out>_series.csv)."),
    plot: Path = typer.Option(None, "--plot", help="Plot data, fits, bands (DSC: trace, baseline; series: Arrhenius)."),
    level: float = typer.Option(0.9, "--level", help="Coverage of the plotted band."),
    steps: int = typer.Option(None, "--steps", help="Inner steps of the network's adaptation (maml-adapt)."),
    observed: str = typer.Option(
        "auto", "--observed", help="auto | time (times read at set fractions, as in TTT tables) | fraction."
    ),
    t0: float = typer.Option(None, "--t0", help="Incubation time t0 (s) of every curve (default: fitted / prior's)."),
    y_max: float = typer.Option(None, "--y-max", help="Fraction the curves top out at (default: traces fitted, 1)."),
    dsc: Path = typer.Option(None, "--dsc", help="Isothermal DSC trace(s): CSV of time_s, heat_flow (optional curve)."),
    baseline: str = typer.Option(None, "--baseline", help="DSC baseline limits t_start,t_end (s; default: detected)."),
    by: str = typer.Option(None, "--by", help="temperature: fit the curves jointly with Arrhenius k(T) and Q."),
    n_model: str = typer.Option("auto", "--n-model", help="With --by: auto (BIC) | shared | per-temperature."),
    predict_at: list[float] = typer.Option(None, "--predict-at", help="With --by: predict t50 at this T (°C)."),
) -> None:
    """Fit k and n (and t0, y_max) of every curve; prints k, ln k, n (± 1σ), t10/t50/t90, the t90 interval."""
    if run_fit(points, method, prior, noise, out, plot, level, steps, observed, t0, y_max, dsc, baseline, by, n_model,
               predict_at):  # fmt: skip
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
