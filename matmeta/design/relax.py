"""Relax candidates with a universal machine-learned interatomic potential (CHGNet through ASE).

One job: take generated cells to the nearest local minimum of CHGNet (Deng et al., Nat. Mach. Intell.
2023; the ``chgnet`` wheel ships its pretrained weights, so this runs offline) and say what changed:
energy per atom before and after, RMSD between the generated and relaxed positions, volume change,
whether the relaxed cell is still a corner-sharing perovskite, and whether it is still structurally
valid. Every relaxation is bounded (``max_steps`` optimiser steps, ``fmax``), so nothing waits without end.

Every relaxation starts from the generated cell plus a seeded random rattle (``rattle_ang``, default
0.02 Å per Cartesian component, normal): a generated cell at a stationary point that is not a minimum
(e.g. the ideal cubic cell of :mod:`matmeta.design.symmetry` for a compound that distorts) can leave
it, so a small RMSD means a real local minimum, not a start where the forces vanish by symmetry.

RMSD here: the displacement of each atom between the generated (unrattled) and the relaxed structure
(sites keep their order), taken in fractional coordinates wrapped to the nearest image, expressed in Å in the
relaxed cell, with the mean displacement (a rigid translation) removed. Strain of the cell is reported
separately as the volume change.

``chgnet`` is imported only when a relaxation is asked for (``matmeta --help`` stays fast).
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from matmeta.design.validity import structural_validity
from matmeta.perovskite_network import keeps_perovskite_connectivity


@dataclass(frozen=True)
class RelaxSettings:
    """How far a relaxation may go.

    Attributes:
        fmax: force convergence (eV/Å; the cell is converged through the same ASE filter).
        max_steps: optimiser steps at most (a candidate not converged by then is marked).
        relax_cell: relax the cell too (FrechetCellFilter), not only the positions.
        optimizer: an ASE optimiser name known to CHGNet's StructOptimizer (FIRE, BFGS, LBFGS...).
        bfgs_alpha: the initial Hessian (eV/Å²) of BFGS / LBFGS (ASE's default is 70). 25 is closer to the
            curvature of these cells (ionic positions, and cell strain through the FrechetCellFilter):
            chosen on six known cubic perovskites and ten decoder draws (not the benchmark targets), it
            took the known ones from median 9.5 to 5.5 steps (0.95 to 0.63 CPU s) to the same energies.
        rattle_ang: standard deviation (Å) of the seeded random displacement of every atom before
            relaxing (0: none); the RMSD is still measured from the generated cell.
        seed: seeds the rattle (the i-th structure of :meth:`Relaxer.relax_all` uses ``seed + i``).
        chunk: structures per CHGNet forward in :meth:`Relaxer.relax_all` (8 was fastest per structure on
            one core for 5-atom cells, 16 within 5 %, 64 25 % slower; :mod:`matmeta.design.batch_relax`).
    """

    fmax: float = 0.05
    max_steps: int = 150
    relax_cell: bool = True
    optimizer: str = "BFGS"
    bfgs_alpha: float = 25.0
    rattle_ang: float = 0.02
    seed: int = 0
    chunk: int = 8


def rattled(structure: Any, amplitude: float, seed: int) -> Any:
    """A copy of ``structure`` with every atom moved by a seeded normal displacement (``amplitude`` Å)."""
    out = structure.copy()
    if amplitude <= 0:
        return out
    shift = np.random.default_rng(seed).normal(0.0, amplitude, size=(len(out), 3))
    for i, d in enumerate(shift):
        out.translate_sites([i], d, frac_coords=False, to_unit_cell=False)
    return out


def displacement_rmsd(before: Any, after: Any) -> float:
    """RMSD (Å) of the atoms between two structures with the same site order (module docstring)."""
    diff = np.asarray(after.frac_coords, dtype=np.float64) - np.asarray(before.frac_coords, dtype=np.float64)
    diff -= np.round(diff)
    cart = diff @ np.asarray(after.lattice.matrix, dtype=np.float64)
    cart -= cart.mean(axis=0)
    return float(np.sqrt((cart**2).sum(axis=1).mean()))


def describe_relaxation(before: Any, after: Any, energies: np.ndarray, max_steps: int) -> dict[str, Any]:
    """What a relaxation did: energies per atom, steps, RMSD, volume change, validity, connectivity.

    Args:
        before: the generated structure.
        after: the relaxed structure (same site order).
        energies: energy per atom (eV) at every optimiser step, the first one at the start (the rattled cell).
        max_steps: the step bound (a relaxation that used all of it did not converge).
    """
    steps = len(energies) - 1
    return {
        "energy_before_ev_per_atom": float(energies[0]),
        "energy_after_ev_per_atom": float(energies[-1]),
        "relax_steps": steps,
        "relax_converged": steps < max_steps,
        "rmsd_ang": displacement_rmsd(before, after),
        "volume_change": float(after.volume / before.volume - 1.0),
        "relaxed_valid": structural_validity(after)[0],
        "keeps_structure_generated": keeps_perovskite_connectivity(before),
        "keeps_structure": keeps_perovskite_connectivity(after),
    }


class Relaxer:
    """CHGNet relaxations of small cells on the CPU: one at a time (:meth:`relax`) or batched (:meth:`relax_all`).

    Args:
        settings: the bounds of every relaxation.
    """

    def __init__(self, settings: RelaxSettings | None = None) -> None:
        self.settings = settings or RelaxSettings()
        self._optimizer: Any = None

    def _load(self) -> Any:
        if self._optimizer is None:
            import warnings

            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                from chgnet.model import CHGNet, StructOptimizer

                model = CHGNet.load(verbose=False, use_device="cpu")
                self._optimizer = StructOptimizer(
                    model=model, optimizer_class=self.settings.optimizer, use_device="cpu"
                )
        return self._optimizer

    def _model(self) -> Any:
        return self._load().calculator.model

    def relax(self, structure: Any, seed: int | None = None) -> tuple[Any | None, dict[str, Any]]:
        """Relax one structure from its seeded rattle (``seed``: default the settings' seed).

        Returns:
            ``(relaxed structure or None when CHGNet could not handle it, row)``: the row holds
            ``energy_before_ev_per_atom``, ``energy_after_ev_per_atom``, ``relax_steps``,
            ``relax_converged``, ``rmsd_ang``, ``volume_change``, ``relaxed_valid``,
            ``keeps_structure`` (and ``keeps_structure_generated``: before relaxing), ``relax_seconds``
            (wall), ``relax_cpu_seconds`` (CPU time of this process: the time on one core when torch runs one
            thread, whatever else shares the machine) and ``relax_error`` ("" when none).
        """
        import warnings

        s = self.settings
        start, cpu = time.perf_counter(), time.process_time()
        row = _blank_row(structure)
        start_cell = rattled(structure, s.rattle_ang, s.seed if seed is None else seed)
        try:
            optimizer = self._load()
            start, cpu = time.perf_counter(), time.process_time()  # loading CHGNet (once) is not part of relaxing
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                options = {"alpha": s.bfgs_alpha} if s.optimizer in ("BFGS", "LBFGS") else {}
                out = optimizer.relax(
                    start_cell, fmax=s.fmax, steps=s.max_steps, relax_cell=s.relax_cell, verbose=False, **options
                )
        except Exception as exc:  # noqa: BLE001 - CHGNet raises many kinds on unphysical cells; the row says which
            row["relax_error"] = f"{type(exc).__name__}: {exc}"[:200]
            row["relax_seconds"] = time.perf_counter() - start
            row["relax_cpu_seconds"] = time.process_time() - cpu
            return None, row
        energies = np.asarray(out["trajectory"].energies, dtype=np.float64) / len(structure)
        row.update(describe_relaxation(structure, out["final_structure"], energies, s.max_steps))
        row["relax_seconds"] = time.perf_counter() - start
        row["relax_cpu_seconds"] = time.process_time() - cpu  # one thread: the time on one core, load or not
        return out["final_structure"], row

    def relax_each(
        self, structures: Sequence[Any], on_done: Callable[[], None] | None = None
    ) -> tuple[list[Any | None], list[dict[str, Any]]]:
        """Relax every structure in turn with :meth:`relax` (the reference for :meth:`relax_all`)."""
        relaxed, rows = [], []
        for i, structure in enumerate(structures):
            r, row = self.relax(structure, seed=self.settings.seed + i)
            relaxed.append(r)
            rows.append(row)
            if on_done is not None:
                on_done()
        return relaxed, rows

    def relax_all(
        self, structures: Sequence[Any], on_done: Callable[[], None] | None = None
    ) -> tuple[list[Any | None], list[dict[str, Any]]]:
        """Relax all structures together: one batched CHGNet evaluation per optimiser step.

        The same optimiser path, rattle seeds (``seed + i``) and rows as :meth:`relax_each`
        (:mod:`matmeta.design.batch_relax`); a structure CHGNet cannot handle gets ``relax_error`` and
        the others go on. ``relax_cpu_seconds`` / ``relax_seconds`` are each structure's equal share of
        the rounds it took part in. ``on_done`` is called as each structure finishes (a progress bar).
        Optimisers that evaluate more than once per step (line searches) run :meth:`relax_each`.
        """
        import warnings

        from matmeta.design import batch_relax

        s = self.settings
        if s.optimizer not in batch_relax.SINGLE_EVALUATION_OPTIMIZERS:
            return self.relax_each(structures, on_done)
        rows = [_blank_row(structure) for structure in structures]
        starts = [rattled(st, s.rattle_ang, s.seed + i) for i, st in enumerate(structures)]
        try:
            model = self._model()
        except Exception as exc:  # noqa: BLE001 - CHGNet could not load: every row says why
            for row in rows:
                row.update(relax_error=f"{type(exc).__name__}: {exc}"[:200], relax_seconds=0.0, relax_cpu_seconds=0.0)
            return [None] * len(rows), rows
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            runs = batch_relax.start_runs(starts, s.optimizer, s.bfgs_alpha, s.relax_cell)
            done = (lambda _run: on_done()) if on_done is not None else None
            batch_relax.relax_batch(model, runs, s.fmax, s.max_steps, s.chunk, done)
        relaxed: list[Any | None] = []
        for structure, run, row in zip(structures, runs, rows, strict=True):
            cpu, start = time.process_time(), time.perf_counter()
            after = None if run.error else batch_relax.final_structure(run)
            if after is None:
                row["relax_error"] = run.error
            else:
                energies = np.asarray(run.energies, dtype=np.float64) / len(structure)
                row.update(describe_relaxation(structure, after, energies, s.max_steps))
            row["relax_seconds"] = run.wall_seconds + time.perf_counter() - start
            row["relax_cpu_seconds"] = run.cpu_seconds + time.process_time() - cpu
            relaxed.append(after)
        return relaxed, rows


def _blank_row(structure: Any) -> dict[str, Any]:
    """A relaxation row before relaxing: nothing measured yet, connectivity of the generated cell."""
    row: dict[str, Any] = {key: math.nan for key in ("energy_before_ev_per_atom", "energy_after_ev_per_atom")}
    row.update(rmsd_ang=math.nan, volume_change=math.nan, relax_steps=0, relax_converged=False)
    row.update(relaxed_valid=False, keeps_structure=False, relax_error="")
    row["keeps_structure_generated"] = keeps_perovskite_connectivity(structure)
    return row


def relax_status(row: dict[str, Any], in_window_after: bool | None) -> str:
    """One word for what relaxation did to a candidate: ok, or why it is marked."""
    if row.get("relax_error"):
        return "relax failed"
    if not row["relaxed_valid"]:
        return "collapsed"
    if not row["keeps_structure"]:
        return "lost perovskite connectivity"
    if in_window_after is False:
        return "left window"
    if not row["relax_converged"]:
        return "not converged"
    return "ok"
