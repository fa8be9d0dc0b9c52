"""What ``matmeta generate`` is asked for, checked once: the gap window, n, temperature, family examples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matmeta.atomic import writable_dir
from matmeta.console import warn
from matmeta.errors import MatmetaInputError
from matmeta.guards import finite_number, within_ceiling
from matmeta.io import expand_sources, read_structure_file

#: Candidates sampled without ``--yes``; above it the request is refused with its estimate.
MAX_CANDIDATES = 5000
#: Requests above this many candidates say their estimate before starting.
ESTIMATE_ABOVE = 1000
#: Worst case measured on 1 CPU core: ``-n 100000 --elements Ba,Ti,O`` took ~40 min (rejection redraws).
WORST_SECONDS_PER_CANDIDATE = 0.025
#: The rejection sampler's draw budget per candidate (``Generator.sample_distinct``).
MAX_DRAWS_PER_CANDIDATE = 50
TEMPERATURE_RANGE = (1e-2, 1e2)
MAX_GUIDANCE = 50.0


def parse_gap_window(band_gap: str | float, half_width: float = 0.3) -> tuple[float, float]:
    """``"2.0"`` with a half-width (``--gap-half-width``), or ``"1.5:2.5"``, as a window (lo, hi) in eV."""
    text = str(band_gap).strip()
    try:
        if ":" in text:
            lo_s, hi_s = text.split(":", 1)
            lo, hi = float(lo_s), float(hi_s)
        else:
            centre = float(text)
            if half_width < 0:
                raise MatmetaInputError(f"--gap-half-width {half_width}: must be >= 0")
            lo, hi = centre - half_width, centre + half_width
    except ValueError:
        raise MatmetaInputError(f"--band-gap {text!r}: expected a number (2.0) or a window (1.5:2.5) in eV") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise MatmetaInputError(f"--band-gap {text!r}: the window must be finite with low <= high")
    if hi < 0:
        raise MatmetaInputError(f"--band-gap {text!r}: a band gap cannot be negative")
    return max(lo, 0.0), hi


def check_request(n: int, window: tuple[float, float], gap_range: tuple[float, float]) -> None:
    """Refuse requests that cannot be met, with one line: nothing to generate, a gap out of reach."""
    if n < 1:
        raise MatmetaInputError(f"-n {n}: nothing to generate; ask for at least one candidate")
    lo, hi = window
    if lo > gap_range[1] or hi < gap_range[0]:
        raise MatmetaInputError(
            f"--band-gap {lo:g}:{hi:g} eV: outside what the decoder was trained on "
            f"({gap_range[0]:g}–{gap_range[1]:.2f} eV); no candidate can be steered there"
        )


def check_temperature(temperature: float) -> None:
    """Refuse a species temperature that is not a finite positive number, with one line."""
    lo, hi = TEMPERATURE_RANGE
    if not (math.isfinite(temperature) and lo <= temperature <= hi):
        raise MatmetaInputError(
            f"--temperature {temperature:g}: must be a finite number > 0 (1 = no change; allowed {lo:g}-{hi:g})"
        )


def estimate(n: int) -> str:
    """The up-front cost of sampling ``n`` candidates, in words."""
    minutes = n * WORST_SECONDS_PER_CANDIDATE / 60
    return f"up to {MAX_DRAWS_PER_CANDIDATE * n:,} decoder draws, about {minutes:.1f} min at worst on one core"


def check_options(request: DesignRequest, out_dir: str | Path | None = None) -> None:
    """Refuse a request whose options are unusable, with one line; above the ceiling only with ``yes``.

    Checks: finite ``--guidance`` in [0, 50] and ``--gap-half-width`` >= 0, a temperature in range,
    ``--elements`` / ``--exclude-elements`` that name at least one element when given,
    ``n`` <= :data:`MAX_CANDIDATES` unless ``request.yes``, and a writable ``out_dir`` (when given).

    Raises:
        MatmetaInputError: a bad option.
        WorkLimitError: ``n`` above the ceiling without ``yes``.
    """
    finite_number("--guidance", request.guidance, low=0.0, high=MAX_GUIDANCE)
    finite_number("--gap-half-width", request.gap_half_width, low=0.0)
    check_temperature(request.temperature)
    for flag, group in (("--elements", request.elements), ("--exclude-elements", request.exclude)):
        if group is not None and not [sym for sym in group if str(sym).strip()]:
            raise MatmetaInputError(f"{flag}: empty; name at least one element (e.g. Ba,Ti,O) or leave the option out")
    if not request.yes:
        within_ceiling(f"-n {request.n}", request.n, MAX_CANDIDATES, "--yes", estimate(request.n))
    if out_dir is not None:
        writable_dir(out_dir)
    if request.n > ESTIMATE_ABOVE:
        warn(f"-n {request.n}: {estimate(request.n)}")


def target_gaps(n: int, window: tuple[float, float], gap_range: tuple[float, float], seed: int) -> Tensor:
    """Condition values: uniform over the window clipped to the trained range (the centre for a point).

    Shapes:
        -> (n,).
    """
    lo, hi = max(window[0], gap_range[0]), min(window[1], gap_range[1])
    gen = torch.Generator().manual_seed(seed + 7919)
    return lo + (hi - lo) * torch.rand(n, generator=gen)


@dataclass(frozen=True)
class DesignRequest:
    """What ``matmeta generate`` is asked for (CLI flags; a notebook can build one directly).

    Attributes:
        band_gap: a value ("2.0") or a window ("1.5:2.5"), eV.
        gap_half_width: half-width of the window around a single ``band_gap`` value, eV (not the
            Goldschmidt tolerance factor, which the stability criterion uses).
        n: candidates to sample.
        seed: the one seed.
        elements: allowed elements (None: all).
        exclude: forbidden elements.
        guidance: classifier-free guidance weight.
        temperature: species softmax temperature.
        novel_only: never propose a training composition (when the store is available).
        distinct: never propose a composition twice.
        max_draws: the fill loop's decoder-draw budget.
        max_predictor_calls: the fill loop's predictor-call budget.
        screen: also screen the enumerable substitution space exhaustively (needs the store).
        relax: relax every returned candidate with CHGNet.
        cubic_window: stability also needs the tolerance factor in the window chosen for cubic
            stability (:mod:`matmeta.design.tolerance`); False: the heat criterion alone.
        yes: accept ``n`` above :data:`MAX_CANDIDATES`.
        tolerance: deprecated spelling of ``gap_half_width`` (kept for one release; warns).
    """

    band_gap: str = "2.0"
    gap_half_width: float = 0.3
    n: int = 200
    seed: int = 0
    elements: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    guidance: float = 0.0
    temperature: float = 1.0
    novel_only: bool = True
    distinct: bool = True
    max_draws: int = 50_000
    max_predictor_calls: int = 10_000
    screen: bool = True
    cubic_window: bool = True
    relax: bool = True
    yes: bool = False
    tolerance: float | None = None

    def __post_init__(self) -> None:
        if self.tolerance is not None:
            import warnings

            warnings.warn("tolerance= is deprecated: use gap_half_width=", DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "gap_half_width", float(self.tolerance))
            object.__setattr__(self, "tolerance", None)


MIN_FAMILY_EXAMPLES = 3
ADVISED_FAMILY_EXAMPLES = 10


def read_family_examples(folder: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    """``(name, structure)`` of every readable example in ``folder`` and one message per unreadable file.

    Raises:
        MatmetaInputError: fewer than 3 readable examples (adapting needs at least 3).
    """
    examples: list[tuple[str, Any]] = []
    bad: list[str] = []
    for path in expand_sources(folder):
        try:
            examples.extend(read_structure_file(path))
        except MatmetaInputError as exc:
            bad.append(str(exc))
    if len(examples) < MIN_FAMILY_EXAMPLES:
        raise MatmetaInputError(
            f"{folder}: {len(examples)} readable example(s); adapting needs at least {MIN_FAMILY_EXAMPLES} "
            f"(3-{ADVISED_FAMILY_EXAMPLES} advised)"
        )
    if len(examples) > ADVISED_FAMILY_EXAMPLES:
        warn(f"{folder}: {len(examples)} examples; the decoder was meta-trained to adapt from 5")
    return examples, bad
