"""CHGNet energies on the reference of mp36k's formation energies (per-element chemical potentials).

One job: turn a CHGNet energy per atom into a formation energy per atom comparable with mp36k's (and so
with :mod:`matmeta.design.hull`): ``e_form = E_chgnet_per_atom - sum_el x_el * mu_el`` with ``x_el`` the atomic
fractions and ``mu_el`` (eV/atom) one chemical potential per element.

CHGNet is trained on MPtrj (MP2020-compatible corrected energies), so its energies are close to MP's
corrected total energies; the ``mu`` absorb what is left per element. They are fitted by ridge least squares
of mp36k formation energies against CHGNet static energies on the MP-relaxed structures of a seeded sample
of mp36k rows, regularised toward a prior ``mu0``:

* the elemental reference: CHGNet's energy per atom on the lowest-formation-energy elemental mp36k entry of
  the element, minus that entry's formation energy (a few meV at most), so an element seen rarely in the
  sample keeps the physically meaningful value;
* for an element without an elemental mp36k row (13 of 87: H, F, S, Se, Br, I, Kr, Xe, Ce, Eu, Rh, Th, Pu),
  the median of the values implied by its (up to three) richest compounds whose other elements already have a
  prior (``mu0 = (E - e_form - sum_other x mu0) / x_el``), resolved in passes.

The ridge strength is chosen by k-fold cross-validation (MAE) on the fit rows; 20 % of the sample is held
out and never seen by the fit, to report the MAE with the fitted ``mu`` and with the prior alone.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.design.hull import KnownPhase, as_composition, element_symbols, parse_cif
from matmeta.errors import MatmetaInputError

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "checkpoints" / "chgnet-mp36k-references.json"
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
FALLBACK_COMPOUNDS = 3


class ChgnetReference:
    """Per-element chemical potentials that put CHGNet energies on mp36k's formation-energy reference.

    Args:
        mu: chemical potential (eV/atom) of every element.
        meta: the rest of the JSON (fit sizes, holdout MAEs, versions).
    """

    def __init__(self, mu: dict[str, float], meta: dict[str, Any] | None = None) -> None:
        self.mu = {str(el): float(v) for el, v in mu.items()}
        self.meta = dict(meta or {})

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> ChgnetReference:
        """The references of a JSON written by :func:`write_references` (MatmetaInputError when unusable)."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            mu = payload["mu"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MatmetaInputError(f"{path}: not a CHGNet reference JSON ({exc})") from exc
        return cls(mu, {k: v for k, v in payload.items() if k != "mu"})

    def formation_energy_per_atom(self, composition: Any, chgnet_energy_per_atom: float) -> float:
        """``E_chgnet_per_atom - sum_el x_el mu_el`` (eV/atom) for a Composition or formula string."""
        comp = as_composition(composition)
        unknown = sorted(element_symbols(comp) - set(self.mu))
        if unknown:
            raise MatmetaInputError(f"{', '.join(unknown)}: no CHGNet reference for this element")
        fractions = comp.fractional_composition
        return float(chgnet_energy_per_atom) - sum(float(fractions[el]) * self.mu[el.symbol] for el in fractions)


def chgnet_energies_per_atom(model: Any, structures: Sequence[Any], batch_size: int = 16) -> np.ndarray:
    """CHGNet static energy per atom (eV) of each structure; NaN where CHGNet fails or is not finite.

    ``predict_structure(task="e")`` under ``torch.no_grad`` (on one core it took 1.2 s per 50 mp36k cells,
    against 3.0 s for :func:`matmeta.design.batch_relax.chgnet_efsm`, which also takes forces and stress).
    """
    out = np.full(len(structures), np.nan)
    for start in range(0, len(structures), batch_size):
        part = list(structures[start : start + batch_size])
        out[start : start + len(part)] = _energies_or_nan(model, part, batch_size)
    return out


def _energies_or_nan(model: Any, part: list[Any], batch_size: int) -> list[float]:
    import torch

    with torch.no_grad():
        try:
            preds = model.predict_structure(part, task="e", batch_size=batch_size)
            return [float(p["e"]) for p in preds]
        except Exception:  # noqa: BLE001 - find which structure CHGNet cannot handle
            if len(part) == 1:
                return [math.nan]
    return [v for s in part for v in _energies_or_nan(model, [s], 1)]


def fractions_of(formula: str) -> dict[str, float]:
    """Atomic fractions of a formula's elements."""
    frac = as_composition(formula).fractional_composition
    return {el.symbol: float(frac[el]) for el in frac}


def elemental_rows(phases: Sequence[KnownPhase]) -> dict[str, int]:
    """Index of the lowest-formation-energy elemental phase of every element that has one."""
    best: dict[str, int] = {}
    for i, phase in enumerate(phases):
        system = element_symbols(phase.formula)
        if len(system) == 1:
            (el,) = system
            if el not in best or phase.e_form_per_atom < phases[best[el]].e_form_per_atom:
                best[el] = i
    return best


def fallback_rows(phases: Sequence[KnownPhase], known: set[str], max_sites: int = 40) -> list[tuple[str, list[int]]]:
    """For each element without an elemental phase: its richest compounds whose other elements have a prior.

    Resolved in passes (an element resolved in one pass may serve the next); returned in resolution order.
    MatmetaInputError when some element cannot be resolved.
    """
    fracs = [fractions_of(p.formula) for p in phases]
    missing = set().union(*(f.keys() for f in fracs)) - known
    resolved, order = set(known), []
    while missing:
        step = {el: _richest(phases, fracs, el, resolved, max_sites) for el in sorted(missing)}
        step = {el: rows for el, rows in step.items() if rows}
        if not step:
            raise MatmetaInputError(f"{', '.join(sorted(missing))}: no compound to set a CHGNet reference prior")
        order.extend(step.items())
        resolved |= set(step)
        missing -= set(step)
    return order


def _richest(
    phases: Sequence[KnownPhase], fracs: list[dict[str, float]], el: str, resolved: set[str], max_sites: int
) -> list[int]:
    rows = [
        i
        for i, f in enumerate(fracs)
        if el in f and phases[i].nsites <= max_sites and set(f) - {el} <= resolved and len(f) > 1
    ]
    rows.sort(key=lambda i: (-fracs[i][el], phases[i].nsites, phases[i].material_id))
    return rows[:FALLBACK_COMPOUNDS]


def prior_mu(
    phases: Sequence[KnownPhase],
    energies: dict[int, float],
    elementals: dict[str, int],
    fallbacks: list[tuple[str, list[int]]],
) -> dict[str, float]:
    """The prior ``mu0`` (module docstring) from the CHGNet energies per atom of the reference rows."""
    mu0 = {el: energies[i] - phases[i].e_form_per_atom for el, i in elementals.items() if np.isfinite(energies[i])}
    for el, rows in fallbacks:
        implied = [_implied_mu(phases[i], energies[i], el, mu0) for i in rows]
        implied = [v for v in implied if np.isfinite(v)]
        if not implied:
            raise MatmetaInputError(f"{el}: CHGNet failed on every compound that sets its reference prior")
        mu0[el] = float(np.median(implied))
    return mu0


def _implied_mu(phase: KnownPhase, energy: float, el: str, mu0: dict[str, float]) -> float:
    frac = fractions_of(phase.formula)
    rest = sum(x * mu0.get(other, math.nan) for other, x in frac.items() if other != el)
    return (energy - phase.e_form_per_atom - rest) / frac[el]


def composition_matrix(formulas: Sequence[str], elements: Sequence[str]) -> np.ndarray:
    """Atomic fractions, one row per formula, one column per element (in ``elements`` order)."""
    column = {el: j for j, el in enumerate(elements)}
    x = np.zeros((len(formulas), len(elements)))
    for i, formula in enumerate(formulas):
        for el, f in fractions_of(formula).items():
            x[i, column[el]] = f
    return x


def ridge_mu(x: np.ndarray, target: np.ndarray, mu0: np.ndarray, lam: float) -> np.ndarray:
    """``argmin_mu |x mu - target|^2 + lam |mu - mu0|^2`` (``target = E_chgnet - e_form``)."""
    gram = x.T @ x + lam * np.eye(x.shape[1])
    return mu0 + np.linalg.solve(gram, x.T @ (target - x @ mu0))


def choose_ridge(
    x: np.ndarray,
    target: np.ndarray,
    mu0: np.ndarray,
    grid: Sequence[float] = RIDGE_GRID,
    folds: int = 5,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """The ridge strength of ``grid`` with the lowest k-fold cross-validated MAE, and the MAE of each."""
    fold = np.random.default_rng(seed).permutation(len(target)) % folds
    scores = {}
    for lam in grid:
        errors = []
        for k in range(folds):
            train, test = fold != k, fold == k
            mu = ridge_mu(x[train], target[train], mu0, lam)
            errors.append(np.abs(x[test] @ mu - target[test]))
        scores[float(lam)] = float(np.concatenate(errors).mean())
    return min(scores, key=lambda lam: scores[lam]), scores


def draw_sample(
    phases: Sequence[KnownPhase], n: int, seed: int, max_sites: int = 40, exclude: set[int] | None = None
) -> list[int]:
    """A seeded sample of ``n`` row indices with ``nsites <= max_sites`` (not in ``exclude``), sorted."""
    pool = [i for i, p in enumerate(phases) if p.nsites <= max_sites and i not in (exclude or set())]
    if n > len(pool):
        raise MatmetaInputError(f"--n {n}: only {len(pool)} rows with nsites <= {max_sites}")
    return sorted(np.random.default_rng(seed).choice(pool, size=n, replace=False).tolist())


def load_chgnet() -> Any:
    """CHGNet's pretrained model on the CPU (quietly)."""
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from chgnet.model import CHGNet

        return CHGNet.load(verbose=False, use_device="cpu")


def energies_of_rows(
    model: Any, phases: Sequence[KnownPhase], rows: Sequence[int], batch_size: int = 16, log: Callable = print
) -> dict[int, float]:
    """CHGNet energy per atom of the given rows (their MP-relaxed CIF structures), by row index."""
    import warnings

    start, chunk, out = time.perf_counter(), 512, {}
    for begin in range(0, len(rows), chunk):
        part = list(rows[begin : begin + chunk])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = [parse_cif(phases[i]) for i in part]
            out.update(zip(part, chgnet_energies_per_atom(model, structures, batch_size).tolist(), strict=True))
        log(f"  CHGNet {begin + len(part)}/{len(rows)} rows, {time.perf_counter() - start:.0f} s")
    return out


def fit_references(
    sample_rows: Sequence[int],
    phases: Sequence[KnownPhase],
    model: Any = None,
    holdout: float = 0.2,
    seed: int = 0,
    batch_size: int = 16,
    log: Callable = print,
) -> dict[str, Any]:
    """Fit ``mu`` on the sample (plus the reference rows) and report the holdout; the JSON payload."""
    model = model if model is not None else load_chgnet()
    elementals = elemental_rows(phases)
    fallbacks = fallback_rows(phases, set(elementals))
    reference = sorted(set(elementals.values()) | {i for _, rows in fallbacks for i in rows})
    sample = [i for i in sample_rows if i not in set(reference)]
    order = np.random.default_rng(seed).permutation(len(sample))
    n_hold = int(round(holdout * len(sample)))
    held = [sample[k] for k in order[:n_hold]]
    energies = energies_of_rows(model, phases, reference + sorted(set(sample)), batch_size, log)
    mu0 = prior_mu(phases, energies, elementals, fallbacks)
    fit_rows = _finite_rows(reference + [sample[k] for k in order[n_hold:]], energies)
    held = _finite_rows(held, energies)
    log(f"  {len(energies) - sum(np.isfinite(list(energies.values())))} rows where CHGNet failed (dropped)")
    return _fit_payload(phases, energies, mu0, fit_rows, held, seed, model, log)


def _finite_rows(rows: Sequence[int], energies: dict[int, float]) -> list[int]:
    return [i for i in rows if np.isfinite(energies[i])]


def _arrays(
    phases: Sequence[KnownPhase], energies: dict[int, float], rows: Sequence[int], elements: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    x = composition_matrix([phases[i].formula for i in rows], elements)
    target = np.array([energies[i] - phases[i].e_form_per_atom for i in rows])
    return x, target


def _fit_payload(
    phases: Sequence[KnownPhase],
    energies: dict[int, float],
    mu0: dict[str, float],
    fit_rows: list[int],
    held: list[int],
    seed: int,
    model: Any,
    log: Callable,
) -> dict[str, Any]:
    import chgnet

    elements = sorted(mu0)
    prior = np.array([mu0[el] for el in elements])
    x, target = _arrays(phases, energies, fit_rows, elements)
    lam, scores = choose_ridge(x, target, prior, seed=seed)
    log(f"  ridge CV MAE (eV/atom) by lambda: {scores}; chosen {lam}")
    mu = ridge_mu(x, target, prior, lam)
    xh, th = _arrays(phases, energies, held, elements)
    return {
        "mu": {el: float(v) for el, v in zip(elements, mu, strict=True)},
        "mu_prior": {el: float(v) for el, v in zip(elements, prior, strict=True)},
        "ridge_lambda": lam,
        "n_fit": len(fit_rows),
        "n_holdout": len(held),
        "holdout_mae_ev_per_atom": float(np.abs(xh @ mu - th).mean()),
        "holdout_mae_elemental_only": float(np.abs(xh @ prior - th).mean()),
        "holdout_median_ae_ev_per_atom": float(np.median(np.abs(xh @ mu - th))),
        "seed": seed,
        "chgnet_version": f"{chgnet.__version__} (model {getattr(model, 'version', 'unknown')})",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_references(payload: dict[str, Any], path: str | Path = DEFAULT_PATH) -> Path:
    """Write the JSON atomically (a temporary file in the same folder, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the references are shipped data
    os.replace(tmp, path)
    return path
