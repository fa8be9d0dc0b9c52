"""One call from a TTT table to fitted phases, their CSV and the diagram — what ``matmeta jmak ttt`` does."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch

from matmeta.errors import MatmetaInputError
from matmeta.kinetics.data import START_FRACTION, TTTRow, is_ttt_table, load_ttt
from matmeta.kinetics.ttt import MIN_TEMPERATURES, PhaseFit, fit_phase

CSV_COLUMNS = (
    "phase", "temperatures", "n", "n_std", "n_slope_per_100K", "nose_C", "nose_C_std", "Te_C", "Te_C_std", "q",
    "Q_kJ_mol", "start_fraction", "scatter_s", "scatter_n", "read_sigma",
)  # fmt: skip
LINE_FRACTIONS = (START_FRACTION, 0.5, 0.9)


@dataclasses.dataclass
class TTTDiagram:
    """The joint fits of every phase of a table (phases with too few temperatures are skipped)."""

    rows: list[TTTRow]
    fits: dict[str, PhaseFit]

    def table(self) -> list[dict[str, float | str]]:
        """One dict per phase with :data:`CSV_COLUMNS`."""
        out = []
        for phase, fit in self.fits.items():
            count = sum(r.phase == phase for r in self.rows)
            out.append({"phase": phase, "temperatures": count, **fit.summary()})
        return out

    def write_csv(self, path: str | Path) -> None:
        """Write :meth:`table` (atomically)."""
        import csv

        from matmeta.atomic import atomic_path

        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            for row in self.table():
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def fit_ttt_table(path: str | Path, warn: Callable[[str], None]) -> TTTDiagram:
    """Load and clean a TTT table, then fit every phase jointly (:func:`matmeta.kinetics.ttt.fit_phase`).

    Raises:
        MatmetaInputError: not a TTT table, unreadable, or no phase has enough clean temperatures.
    """
    path = Path(path)
    if path.exists() and not is_ttt_table(path):
        raise MatmetaInputError(f"{path}: not a TTT table (need columns phase, T (°C), t_start, t_10%, t_90%, y_max)")
    rows = load_ttt(path, warn=warn)
    fits = {}
    for phase in dict.fromkeys(r.phase for r in rows):
        mine = [r for r in rows if r.phase == phase]
        if len({r.temperature_c for r in mine}) < MIN_TEMPERATURES:
            warn(f"{path}: phase {phase}: {len(mine)} clean temperature(s), fewer than {MIN_TEMPERATURES}; not fitted")
            continue
        fits[phase] = fit_phase(mine)
    if not fits:
        raise MatmetaInputError(f"{path}: no phase with at least {MIN_TEMPERATURES} clean temperatures to fit")
    return TTTDiagram(rows, fits)


def plot_ttt(diagram: TTTDiagram, path: str | Path, level: float = 0.9) -> Path:
    """The TTT diagram: start / 50 % / 90 % lines with central ``level`` bands over the readings.

    Log time on x, temperature on y (the metallurgists' picture); one colour per phase; the start
    line is drawn at the phase's fitted start fraction. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matmeta.atomic import atomic_path

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 6.0))
    styles = {START_FRACTION: ("-", "o"), 0.5: ("--", None), 0.9: (":", "s")}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (phase, fit) in enumerate(diagram.fits.items()):
        colour = colours[i % len(colours)]
        mine = [r for r in diagram.rows if r.phase == phase]
        temps = torch.linspace(min(r.temperature_c for r in mine), max(r.temperature_c for r in mine), 160)
        start = fit.summary()["start_fraction"]
        for fraction in LINE_FRACTIONS:
            centre, lo, hi = fit.line(temps, fraction, level)
            name = f"start ({start:.2%})" if fraction == START_FRACTION else f"{fraction:.0%}"
            line, marker = styles[fraction]
            ax.fill_betweenx(temps, lo.exp(), hi.exp(), color=colour, alpha=0.18, linewidth=0)
            ax.plot(centre.exp(), temps, line, color=colour, label=f"{phase} {name}")
            if marker is not None:
                times = [r.t_start if fraction == START_FRACTION else r.t_90 for r in mine]
                ax.plot(times, [r.temperature_c for r in mine], marker, color=colour, ms=3.5, mfc="none")
        ax.plot([r.t_10 for r in mine], [r.temperature_c for r in mine], "^", color=colour, ms=3.5, mfc="none")
        nose = fit.summary()["nose_C"]
        if min(r.temperature_c for r in mine) <= nose <= max(r.temperature_c for r in mine):
            ax.axhline(nose, color=colour, lw=0.6, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("temperature (°C)")
    ax.set_title(f"TTT diagram: joint JMAK fit per phase ({level:.0%} bands; o start, ^ 10 %, □ 90 % readings)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def predict_held_out(fit: PhaseFit, row: TTTRow, which: tuple[int, ...] = (0, 1), fraction: float = 0.9) -> float:
    """The time (s) at ``fraction`` for ``row`` from its readings ``which`` (0 start, 1: 10 %, 2: 90 %)."""
    times = (row.t_start, row.t_10, row.t_90)
    return math.exp(fit.predict(row.temperature_c, {i: times[i] for i in which}, fraction))
