"""Judging generated crystals: validity, uniqueness, novelty and coverage (reusable by any generator).

* Structural validity: every interatomic distance, periodic images included, ≥ 0.5 Å, and
  the volume per atom inside a sensible range (default 5–60 Å³; the perovskite set spans ~9–25).
* Compositional validity: SMACT's screen (``smact.screening.smact_validity``: a charge-neutral
  assignment of common oxidation states that also passes the Pauling electronegativity test;
  pure metals/alloys accepted) — the definition used by CDVAE (Xie et al., ICLR 2022).
* Uniqueness and novelty: pymatgen ``StructureMatcher`` (default tolerances) among the
  candidates and against a reference set (the training structures), compared within the same
  reduced formula.
* Coverage (CDVAE): COV-R = fraction of reference (test) structures with some generated structure
  within both fingerprint thresholds; COV-P = fraction of valid generated structures with some
  reference structure within both thresholds (minimum distances taken separately for structure
  and composition, as CDVAE does). Fingerprints here are our own, documented in
  :func:`composition_fingerprint` and :func:`structure_fingerprint` (matminer, which CDVAE uses,
  is not a dependency), so the thresholds are ours too (see ``COV_THRESHOLDS``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from matmeta import geometry

MIN_DISTANCE_ANG = 0.5
VOLUME_PER_ATOM_RANGE = (5.0, 60.0)
# (structure, composition) fingerprint-distance thresholds; CDVAE uses (0.2, 4.0) on perov_5 with
# CrystalNN/Magpie fingerprints (132-d composition). Our composition fingerprint has 40 standardised
# dimensions, so 4.0 is scaled by sqrt(40/132).
COV_THRESHOLDS = (0.2, 4.0 * (40 / 132) ** 0.5)
_PROPERTIES = ("Z", "X", "row", "group", "mendeleev_no", "atomic_mass", "average_ionic_radius", "atomic_radius")


def min_distance(structure: Any) -> float:
    """Shortest interatomic distance (Å) including periodic images and an atom's own images."""
    return geometry.min_distance(structure.lattice.matrix, structure.cart_coords)


def structural_validity(
    structure: Any,
    min_distance_ang: float = MIN_DISTANCE_ANG,
    volume_range: tuple[float, float] = VOLUME_PER_ATOM_RANGE,
) -> tuple[bool, float, float]:
    """``(valid, shortest distance Å, volume per atom Å³)``; a degenerate cell is invalid."""
    try:
        volume = float(structure.volume) / len(structure)
        with np.errstate(invalid="ignore", divide="ignore"):  # degenerate cells: LLL divides by zero
            shortest = min_distance(structure)
    except (ValueError, np.linalg.LinAlgError, ZeroDivisionError):
        return False, float("nan"), float("nan")
    ok = bool(np.isfinite(shortest) and shortest >= min_distance_ang and volume_range[0] <= volume <= volume_range[1])
    return ok, shortest, volume


def compositional_validity(composition: Any) -> bool:
    """SMACT validity (charge neutrality under common oxidation states + Pauling test; CDVAE's check)."""
    from pymatgen.core import Composition

    comp = Composition(composition) if not hasattr(composition, "reduced_formula") else composition
    return _smact_valid(comp.formula)


@functools.lru_cache(maxsize=65536)
def _smact_valid(formula: str) -> bool:
    """SMACT's verdict on one formula, remembered (the fill loop and the screen ask it thousands of times)."""
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    try:
        return bool(smact_validity(Composition(formula)))
    except (ValueError, KeyError, TypeError):
        return False


def _matcher() -> Any:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher()


def unique_mask(structures: Sequence[Any], considered: Sequence[bool] | None = None) -> list[bool]:
    """True for the first structure of each StructureMatcher group (only ``considered`` ones count)."""
    matcher = _matcher()
    considered = list(considered) if considered is not None else [True] * len(structures)
    kept: dict[str, list[Any]] = {}
    out = []
    for s, use in zip(structures, considered, strict=True):
        if not use:
            out.append(False)
            continue
        key = s.composition.reduced_formula
        group = kept.setdefault(key, [])
        if any(matcher.fit(s, other) for other in group):
            out.append(False)
        else:
            group.append(s)
            out.append(True)
    return out


class ReferenceSet:
    """Known structures, indexed by reduced formula, for novelty checks.

    Args:
        structures: the reference (training) structures.
    """

    def __init__(self, structures: Sequence[Any]) -> None:
        self.by_formula: dict[str, list[Any]] = {}
        for s in structures:
            self.by_formula.setdefault(s.composition.reduced_formula, []).append(s)
        self.matcher = _matcher()

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_formula.values())

    def contains(self, structure: Any) -> bool:
        """True when some reference structure matches (same reduced formula, StructureMatcher)."""
        known = self.by_formula.get(structure.composition.reduced_formula, ())
        return any(self.matcher.fit(structure, other) for other in known)


def count_repeats(formulas: Sequence[str], known: set[str], distinct: bool = True) -> int:
    """Candidates whose formula is known, or (``distinct``) repeats an earlier candidate; each counted once."""
    seen: set[str] = set()
    left = 0
    for formula in formulas:
        left += formula in known or (distinct and formula in seen)
        seen.add(formula)
    return left


def judge_candidates(structures: Sequence[Any], reference: ReferenceSet | None = None) -> list[dict[str, Any]]:
    """Validity, uniqueness and novelty flags of each candidate (``novel`` is None without a reference)."""
    rows = []
    for s in structures:
        ok, shortest, volume = structural_validity(s)
        comp_ok = compositional_validity(s.composition)
        rows.append(
            {
                "struct_valid": ok,
                "comp_valid": comp_ok,
                "valid": ok and comp_ok,
                "min_distance_ang": shortest,
                "volume_per_atom_ang3": volume,
            }
        )
    unique = unique_mask(structures, [r["struct_valid"] for r in rows])
    for row, u, s in zip(rows, unique, structures, strict=True):
        row["unique"] = u
        row["novel"] = None if reference is None else (bool(row["struct_valid"]) and not reference.contains(s))
    return rows


# ---------------------------------------------------------------------------------------- coverage


def composition_fingerprint(composition: Any) -> np.ndarray:
    """Magpie-style composition fingerprint (40 numbers).

    For eight element properties (Z, Pauling electronegativity, row, group, Mendeleev number,
    atomic mass, average ionic radius, atomic radius) the fraction-weighted mean, minimum,
    maximum, range and mean absolute deviation.
    """
    from pymatgen.core import Element

    amounts = composition.fractional_composition.get_el_amt_dict()
    weights = np.array(list(amounts.values()), dtype=np.float64)
    feats = []
    for prop in _PROPERTIES:
        vals = []
        for sym in amounts:
            v = getattr(Element(sym), prop, None)
            vals.append(float(v) if v is not None else np.nan)
        x = np.array(vals)
        x = np.where(np.isfinite(x), x, np.nanmean(x) if np.isfinite(x).any() else 0.0)
        mean = float(weights @ x)
        feats += [mean, x.min(), x.max(), x.max() - x.min(), float(weights @ np.abs(x - mean))]
    return np.array(feats, dtype=np.float64)


def structure_fingerprint(structure: Any, k: int = 12) -> np.ndarray:
    """Local-geometry fingerprint (``k`` numbers).

    The ``k`` shortest neighbour distances of each site, divided by the cube root of the volume
    per atom (scale-free), averaged over sites.
    """
    scale = (structure.volume / len(structure)) ** (1.0 / 3.0)
    lattice = structure.lattice.get_lll_reduced_lattice()
    frac = lattice.get_fractional_coords(structure.cart_coords)
    images = np.array(list(itertools.product((-2, -1, 0, 1, 2), repeat=3)), dtype=np.float64)
    diff = frac[:, None, :] - frac[None, :, :]
    diff -= np.round(diff)
    dist = np.linalg.norm((diff[:, :, None, :] + images[None, None]) @ lattice.matrix, axis=-1).reshape(len(frac), -1)
    dist = np.sort(dist, axis=1)[:, 1 : k + 1]
    return dist.mean(axis=0) / scale


class FingerprintScaler:
    """Standardises composition fingerprints with the statistics of a fitting set (CDVAE's CompScaler)."""

    def __init__(self, fingerprints: np.ndarray) -> None:
        self.mean = fingerprints.mean(0)
        self.std = np.where(fingerprints.std(0) > 1e-8, fingerprints.std(0), 1.0)

    def __call__(self, fingerprints: np.ndarray) -> np.ndarray:
        """Standardised fingerprints (same shape)."""
        return (fingerprints - self.mean) / self.std


def coverage(
    generated: Sequence[Any],
    reference: Sequence[Any],
    scaler: FingerprintScaler,
    thresholds: tuple[float, float] = COV_THRESHOLDS,
) -> tuple[float, float]:
    """``(COV-R, COV-P)`` of valid ``generated`` structures against ``reference`` (CDVAE definitions)."""
    from scipy.spatial.distance import cdist

    if not generated or not reference:
        return 0.0, 0.0
    gs = np.stack([structure_fingerprint(s) for s in generated])
    rs = np.stack([structure_fingerprint(s) for s in reference])
    gc = scaler(np.stack([composition_fingerprint(s.composition) for s in generated]))
    rc = scaler(np.stack([composition_fingerprint(s.composition) for s in reference]))
    ds, dc = cdist(rs, gs), cdist(rc, gc)
    recall = np.mean((ds.min(1) <= thresholds[0]) & (dc.min(1) <= thresholds[1]))
    precision = np.mean((ds.min(0) <= thresholds[0]) & (dc.min(0) <= thresholds[1]))
    return float(recall), float(precision)
