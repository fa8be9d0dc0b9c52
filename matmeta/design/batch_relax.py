"""Relax many small cells together: one CHGNet evaluation per optimiser step for all that still move.

One job: the batched path of :meth:`matmeta.design.relax.Relaxer.relax_all`. Every structure keeps its
own ASE optimiser (BFGS with the same ``alpha``, by default) on its own ``FrechetCellFilter``
coordinates, exactly as CHGNet's ``StructOptimizer`` runs one structure; only the energy, forces and
stress are computed for all not-yet-converged structures at once and handed to each optimiser as a
single-point result. Each structure stops on its own: converged (ASE's criterion on the filter's
generalised forces: ``fmax`` on the atoms and on the cell through the same Frechet scaling) or
``max_steps`` optimiser steps. The trajectory is the one of the single path, so the energies agree to
float32 round-off.

Why it is cheaper (measured on 5-atom perovskite cells, one thread): CHGNet's ``predict_graph`` takes
forces and stress in two backward passes that each build a second-order graph (``create_graph=True``,
needed for training only); :func:`chgnet_efsm` takes both in one first-order backward pass over the same
model (about half the CPU time), and evaluates up to ``chunk`` graphs per forward (8 is the
measured optimum on one core; larger batches get slower per graph).

A structure CHGNet cannot handle (its graph cannot be built, the forward fails, or the result is not
finite) is dropped from the batch with the error recorded; the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GPA_PER_EV_PER_A3 = 160.21766208  # CHGNet's own conversion (model.py), undone by ASE's units.GPa as in its calculator
SINGLE_EVALUATION_OPTIMIZERS = ("BFGS", "LBFGS", "FIRE", "MDMin")  # one force call per step() in ASE


def chgnet_efsm(model: Any, structures: Sequence[Any]) -> list[dict[str, Any]]:
    """CHGNet energy (eV), forces (eV/Å), stress (eV/Å³, 3x3, ASE sign) and magmoms of all ``structures``.

    One forward and one first-order backward pass over the batch (module docstring). Raises whatever
    CHGNet raises; a caller that needs to know which structure failed calls it again one by one.
    """
    import torch
    from chgnet.model.model import BatchedGraph

    graphs = [model.graph_converter(s) for s in structures]
    model.eval()
    batch = BatchedGraph.from_graphs(
        graphs,
        bond_basis_expansion=model.bond_basis_expansion,
        angle_basis_expansion=model.angle_basis_expansion,
        compute_stress=True,
    )
    pred = model._compute(batch, compute_magmom=True)
    atoms = pred["atoms_per_graph"]
    per_atom = pred["e"] if model.is_intensive else pred["e"] / atoms
    total = per_atom * atoms  # d(total)/d(positions, strain): the same graph CHGNet differentiates
    grads = torch.autograd.grad(total.sum(), [*batch.atom_positions, *batch.strains])
    from ase import units

    comp = model.composition_model(graphs) if model.composition_model is not None else 0.0
    per_atom = (per_atom + comp).detach().numpy()
    n = len(graphs)
    return [
        {
            "energy": float(per_atom[i]) * int(atoms[i]),
            "forces": -grads[i].numpy().astype(np.float64),
            "stress": (grads[n + i] / batch.volumes[i]).numpy().astype(np.float64) * GPA_PER_EV_PER_A3 * units.GPa,
            "magmoms": pred["m"][i].detach().numpy().astype(np.float64),
        }
        for i in range(n)
    ]


def _finite(result: dict[str, Any]) -> bool:
    arrays = (result["forces"], result["stress"])
    return bool(np.isfinite(result["energy"]) and all(np.isfinite(a).all() for a in arrays))


def evaluate(model: Any, structures: Sequence[Any], chunk: int = 8) -> list[dict[str, Any] | str]:
    """:func:`chgnet_efsm` in chunks; a chunk that fails is evaluated one by one, failures as error strings."""
    out: list[dict[str, Any] | str] = []
    for start in range(0, len(structures), chunk):
        part = structures[start : start + chunk]
        try:
            out.extend(chgnet_efsm(model, part))
        except Exception:  # noqa: BLE001 - find which structure of the chunk CHGNet cannot handle
            for s in part:
                try:
                    out.extend(chgnet_efsm(model, [s]))
                except Exception as exc:  # noqa: BLE001 - recorded in the row, the others go on
                    out.append(f"{type(exc).__name__}: {exc}"[:200])
    return [r if isinstance(r, str) or _finite(r) else "ValueError: CHGNet returned a non-finite result" for r in out]


@dataclass
class BatchRun:
    """One structure's relaxation inside a batch.

    Attributes:
        atoms: the ASE atoms being relaxed (their positions and cell are the current state).
        optimizer: its own ASE optimiser (on the cell filter when the cell relaxes).
        energies: total energy (eV) after every evaluation, the first at the start.
        magmoms: CHGNet's magnetic moments at the last evaluation.
        error: why CHGNet could not relax it ("" when it could).
        done: converged, out of steps, or failed.
        cpu_seconds: its share of the CPU time of every round it took part in (an equal share of the batch).
        wall_seconds: the same for wall time.
    """

    atoms: Any
    optimizer: Any
    energies: list[float] = field(default_factory=list)
    magmoms: Any = None
    error: str = ""
    done: bool = False
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


def start_runs(starts: Sequence[Any], optimizer: str, alpha: float, relax_cell: bool) -> list[BatchRun]:
    """One :class:`BatchRun` per start structure (pymatgen), each with its own optimiser and cell filter."""
    from ase.filters import FrechetCellFilter
    from chgnet.model.dynamics import OPTIMIZERS
    from pymatgen.io.ase import AseAtomsAdaptor

    options = {"alpha": alpha} if optimizer in ("BFGS", "LBFGS") else {}
    runs = []
    for structure in starts:
        atoms = AseAtomsAdaptor().get_atoms(structure)
        target = FrechetCellFilter(atoms) if relax_cell else atoms
        runs.append(BatchRun(atoms, OPTIMIZERS[optimizer](target, logfile=None, **options)))
    return runs


def _round(model: Any, runs: list[BatchRun], max_steps: int, chunk: int) -> None:
    """Evaluate every run in ``runs`` at its current geometry, record it, and mark the finished ones."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    results = evaluate(model, [AseAtomsAdaptor.get_structure(r.atoms) for r in runs], chunk)
    for run, result in zip(runs, results, strict=True):
        if isinstance(result, str):
            run.error, run.done = result, True
            continue
        run.atoms.calc = SinglePointCalculator(
            run.atoms,
            energy=result["energy"],
            free_energy=result["energy"],
            forces=result["forces"],
            stress=result["stress"],
            magmoms=result["magmoms"],
        )
        run.energies.append(result["energy"])
        run.magmoms = result["magmoms"]
        opt = run.optimizer
        run.done = bool(opt.gradient_converged(opt.optimizable.get_gradient()) or opt.nsteps >= max_steps)


def relax_batch(
    model: Any,
    runs: list[BatchRun],
    fmax: float,
    max_steps: int,
    chunk: int = 8,
    on_done: Callable[[BatchRun], None] | None = None,
) -> None:
    """Relax all ``runs`` in lockstep rounds: every unfinished optimiser steps once, then one batched evaluation.

    The same sequence as ASE's ``Optimizer.irun`` per structure (evaluate, check, step, evaluate, ...),
    with CHGNet's trajectory observer's trailing record (the last energy twice). ``on_done`` is called
    with each run as it finishes.
    """
    for run in runs:
        run.optimizer.fmax = fmax
    active = list(runs)
    first = True
    while active:
        cpu, wall = time.process_time(), time.perf_counter()
        if not first:
            for run in active:
                try:
                    run.optimizer.step()
                except Exception as exc:  # noqa: BLE001 - a singular step: recorded, the others go on
                    run.error, run.done = f"{type(exc).__name__}: {exc}"[:200], True
                run.optimizer.nsteps += 1
        first = False
        _round(model, [r for r in active if not r.error], max_steps, chunk)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        for run in active:
            run.cpu_seconds += cpu / len(active)
            run.wall_seconds += wall / len(active)
        for run in [r for r in active if r.done]:
            if run.energies and not run.error:
                run.energies.append(run.energies[-1])  # CHGNet's StructOptimizer records the final state again
            if on_done is not None:
                on_done(run)
        active = [r for r in active if not r.done]


def final_structure(run: BatchRun) -> Any:
    """The relaxed pymatgen structure with CHGNet's magmoms as its only site property (as CHGNet returns it)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = AseAtomsAdaptor.get_structure(run.atoms)
    for key in list(structure.site_properties):
        structure.remove_site_property(key)
    moments = run.magmoms if run.magmoms is not None else [math.nan] * len(structure)
    structure.add_site_property("magmom", [float(m) for m in np.ravel(moments)])
    return structure
