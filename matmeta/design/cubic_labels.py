"""Ground truth for the structural criterion: which TRAINING compositions stay cubic under CHGNet.

One job: relax a seeded sample of training-family compositions with exactly the production path of
``matmeta generate`` (snapped to the ideal cubic prototype, :mod:`matmeta.design.symmetry`; seeded
0.02 Å rattle, CHGNet, BFGS α = 25: :class:`matmeta.design.relax.RelaxSettings` defaults) and label
each one ``kept`` = keeps its perovskite connectivity AND RMSD generated → relaxed ≤ ``KEPT_RMSD_ANG``.
Only training families are sampled (never a benchmark candidate), ``per_family`` compositions from each
(all of a family with fewer), so that every B-site family is represented.

The labels are cached as CSV (``out/cubic_labels.csv``; not committed) and recomputed when the file is
missing or was made with other settings: :func:`cubic_labels`. The tolerance window of
:mod:`matmeta.design.tolerance` was chosen on these labels (:func:`matmeta.design.tolerance.choose_window`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KEPT_RMSD_ANG = 0.1
LABEL_COLUMNS = (
    "formula",
    "family",
    "a_site",
    "b_site",
    "anions",
    "sample",
    "rmsd_ang",
    "keeps_structure",
    "relax_converged",
    "relax_steps",
    "relax_cpu_seconds",
    "relax_error",
    "kept",
)


@dataclass(frozen=True)
class LabelSample:
    """Which training compositions to relax.

    Attributes:
        per_family: this many from every training family (all of a smaller one), or
        t_range: when set instead, ``n`` drawn uniformly from the training compositions with t in this range
            (the region where a window can lie; a per-family sample has few compositions with a t near 1).
        n: see ``t_range``.
        seed: the sample's seed.
    """

    per_family: int = 6
    t_range: tuple[float, float] | None = None
    n: int = 0
    seed: int = 0

    @property
    def key(self) -> str:
        """The sample in words (the cache's ``sample`` column and file name)."""
        if self.t_range is None:
            return f"{self.per_family} per family, seed {self.seed}"
        return f"{self.n} with {self.t_range[0]:g} <= t <= {self.t_range[1]:g}, seed {self.seed}"

    @property
    def file_name(self) -> str:
        """The cache file name under out/."""
        if self.t_range is None:
            return f"cubic_labels_pf{self.per_family}_s{self.seed}.csv"
        return f"cubic_labels_t{self.t_range[0]:g}-{self.t_range[1]:g}_n{self.n}_s{self.seed}.csv"


def _tolerance(structure: Any) -> float:
    from matmeta.design.tolerance import factors, site_roles

    a, b, x = site_roles(structure)
    return factors(tuple(a), tuple(b), tuple(x))["tolerance_factor"]


def training_sample(generator: Any, store: str | Path, sample: LabelSample) -> list[tuple[str, Any]]:
    """``(family, snapped training structure)`` of the sample (:class:`LabelSample`), seeded, family order sorted."""
    from matmeta.design.screen import canonical_structures
    from matmeta.store.reader import GraphStore

    meta = generator.metadata
    graphs = GraphStore(store)
    families = graphs.family_keys(meta["family_by"])
    train = sorted(set(meta["families"]["train"]))
    in_train = set(train)
    rng = np.random.default_rng(sample.seed)
    out: list[tuple[str, Any]] = []
    if sample.t_range is not None:
        members = [i for i, f in enumerate(families) if f in in_train]
        cells = canonical_structures([graphs.structure(i) for i in members], generator.elements, snap=True)
        lo, hi = sample.t_range
        inside = [k for k, c in enumerate(cells) if lo <= _tolerance(c) <= hi]
        pick = sorted(int(k) for k in rng.permutation(inside)[: sample.n])
        return [(families[members[k]], cells[k]) for k in pick]
    for fam in train:
        members = [i for i, f in enumerate(families) if f == fam]
        pick = sorted(int(i) for i in rng.permutation(members)[: sample.per_family])
        cells = canonical_structures([graphs.structure(i) for i in pick], generator.elements, snap=True)
        out.extend((fam, c) for c in cells)
    return out


def _read(path: Path, sample: LabelSample) -> list[dict[str, Any]] | None:
    """The cached labels when they were made with this sample, else None."""
    if not path.exists():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or any(r["sample"] != sample.key for r in rows):
        return None
    for r in rows:
        r["rmsd_ang"] = float(r["rmsd_ang"]) if r["rmsd_ang"] not in ("", "nan") else float("nan")
        for key in ("keeps_structure", "relax_converged", "kept"):
            r[key] = r[key] == "True"
        r["relax_steps"] = int(r["relax_steps"])
        r["relax_cpu_seconds"] = float(r["relax_cpu_seconds"])
    return rows


def cubic_labels(
    generator: Any,
    store: str | Path,
    sample: LabelSample,
    cache_dir: str | Path = "out",
    relaxer: Any | None = None,
    on_done: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Kept / not kept under the production relaxation for a training sample (module docstring), cached.

    Args:
        generator: the decoder (its metadata names the training families and the store's family key).
        store: the training store.
        sample: which compositions (the rattle seeds are the relaxer's, ``seed + i`` for the i-th).
        cache_dir: the folder of the CSV (``sample.file_name``) the labels are read from when it holds this
            sample, else written to.
        relaxer: ``relax_all(structures, on_done) -> (relaxed, rows)`` (default: CHGNet, production settings).
        on_done: called after each relaxation (a progress bar).

    Returns:
        One row per sampled composition (``LABEL_COLUMNS``).
    """
    from matmeta.atomic import write_table
    from matmeta.design.relax import Relaxer

    cache = Path(cache_dir) / sample.file_name
    cached = _read(cache, sample)
    if cached is not None:
        return cached
    chosen = training_sample(generator, store, sample)
    _, outcomes = (relaxer or Relaxer()).relax_all([s for _, s in chosen], on_done)
    rows = []
    for (fam, s), o in zip(chosen, outcomes, strict=True):
        kept = bool(o["keeps_structure"] and np.isfinite(o["rmsd_ang"]) and o["rmsd_ang"] <= KEPT_RMSD_ANG)
        row = {"formula": s.composition.reduced_formula, "family": fam, "sample": sample.key}
        symbols = [site.specie.symbol for site in s]
        row.update(a_site=symbols[0], b_site=symbols[1], anions=" ".join(symbols[2:]))
        row.update({k: o.get(k, "") for k in LABEL_COLUMNS[6:12]})
        row["kept"] = kept
        rows.append(row)
    write_table(cache, rows, LABEL_COLUMNS)
    return rows


def label_samples(sizes: tuple[int, int, int, int], t_range: tuple[float, float], seed: int) -> list[LabelSample]:
    """The benchmark's samples: (per family, in ``t_range``, more per family, more in ``t_range``), size 0 = none.

    Their seeds are ``seed`` + 0, 1, 3 and 2 (the order in which they were added).
    """
    kinds = zip(sizes, (None, t_range, None, t_range), (0, 1, 3, 2), strict=True)  # size, t range or None, seed + k
    return [
        LabelSample(n, seed=seed + k) if r is None else LabelSample(t_range=r, n=n, seed=seed + k)
        for n, r, k in kinds
        if n > 0
    ]


def merged_labels(
    generator: Any, store: str | Path, samples: list[LabelSample], cache_dir: str | Path, on_done: Callable[[], None]
) -> list[dict[str, Any]]:
    """Labels of ``samples`` in order (:func:`cubic_labels`); a formula labelled in an earlier sample counts once."""
    labels: list[dict[str, Any]] = []
    seen: set[str] = set()
    for sample in samples:
        rows = cubic_labels(generator, store, sample, cache_dir, on_done=on_done)
        labels += [r for r in rows if r["formula"] not in seen]
        seen.update(r["formula"] for r in rows)
    return labels


def label_factors(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """t, μ and Bartel's τ of every labelled composition (from its A, B and anion sites)."""
    from matmeta.design.tolerance import factors

    out = [factors((r["a_site"],), (r["b_site"],), tuple(r["anions"].split())) for r in rows]
    return tuple(np.array([f[k] for f in out]) for k in ("tolerance_factor", "octahedral_factor", "bartel_tau"))


def label_report(rows: list[dict[str, Any]], window: Any) -> list[list[Any]]:
    """Table rows: how well each structural criterion predicts "kept" on the labels.

    Columns: criterion, inside, kept inside, precision, recall over the kept with a t, recall over all kept,
    balanced accuracy (all). Rows: no criterion, compositions without a t, ``window`` (the shipped one), the
    window :func:`~matmeta.design.tolerance.choose_window` picks on these labels, and Bartel's τ < 4.18.
    """
    from matmeta.design.tolerance import BARTEL_TAU_MAX, choose_window, precision_recall

    kept = np.array([bool(r["kept"]) for r in rows])
    t, mu, tau = label_factors(rows)
    has_t = np.isfinite(t)
    rechosen, _, _ = choose_window(t, mu, kept)
    cases = [
        ("none (every composition)", np.ones(len(rows), dtype=bool)),
        ("no t (rejected: no radius / assignment)", ~has_t),
        (f"shipped: {window.describe()}", np.array([window.inside(a, b) for a, b in zip(t, mu, strict=True)])),
        (f"re-chosen: {rechosen.describe()}", np.array([rechosen.inside(a, b) for a, b in zip(t, mu, strict=True)])),
        (f"Bartel tau < {BARTEL_TAU_MAX:g}", np.isfinite(tau) & (tau < BARTEL_TAU_MAX)),
    ]
    out = []
    for name, inside in cases:
        p, r, bacc = precision_recall(inside, kept)
        r_t = precision_recall(inside[has_t], kept[has_t])[1]
        out.append([name, int(inside.sum()), int((inside & kept).sum()), p, r_t, r, bacc])
    return out
