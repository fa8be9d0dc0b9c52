"""CPU seconds per CHGNet relaxation: one at a time (Relaxer.relax_each) vs batched (Relaxer.relax_all).

Usage (one thread; the two paths interleaved per batch, in one process):
    OMP_NUM_THREADS=1 python scripts/relax_batch_bench.py data/structures out/cands_2ev out/cands_wide

Batches: every folder's CIFs (``*_generated.cif`` where a ``matmeta generate --out`` folder has them),
plus the first 5 of the second folder. Prints per batch: CPU s per relaxation both ways, the speed-up,
steps, and the largest differences of final energy (meV/atom), RMSD and volume change between the paths;
as a control, the largest final-energy difference of the one-at-a-time path against itself started 1e-5 Å
away (first atom moved along x): how far round-off alone can take a relaxation that leaves a saddle point.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def load(folder: Path) -> list:
    """The folder's generated CIFs (a generate --out folder) or all its CIFs."""
    from pymatgen.core import Structure

    files = sorted(folder.glob("*_generated.cif")) or sorted(folder.glob("*.cif"))
    return [Structure.from_file(f) for f in files]


def compare(name: str, structures: list, relaxer, chunks: tuple[int, ...] = ()) -> None:
    """Relax ``structures`` both ways and print one line (plus one per extra chunk size)."""
    cpu = time.process_time()
    _, old = relaxer.relax_each(structures)
    old_s = (time.process_time() - cpu) / len(structures)
    moved = [s.copy() for s in structures]
    for s in moved:
        s.translate_sites([0], [1e-5, 0.0, 0.0], frac_coords=False, to_unit_cell=False)
    _, control = relaxer.relax_each(moved)
    both = [i for i in range(len(old)) if not old[i]["relax_error"] and not control[i]["relax_error"]]
    noise = max(abs(old[i]["energy_after_ev_per_atom"] - control[i]["energy_after_ev_per_atom"]) for i in both) * 1000
    for chunk in (relaxer.settings.chunk, *chunks):
        relaxer.settings = dataclasses.replace(relaxer.settings, chunk=chunk)
        cpu = time.process_time()
        _, new = relaxer.relax_all(structures)
        new_s = (time.process_time() - cpu) / len(structures)
        ok = [i for i in range(len(old)) if not old[i]["relax_error"] and not new[i]["relax_error"]]

        def diff(key: str, scale: float = 1.0, ok: list = ok, new: list = new) -> float:
            return max((abs(new[i][key] - old[i][key]) * scale for i in ok), default=float("nan"))

        keeps = sum(old[i]["keeps_structure"] != new[i]["keeps_structure"] for i in ok)
        errors = (sum(bool(r["relax_error"]) for r in old), sum(bool(r["relax_error"]) for r in new))
        steps = (np.mean([r["relax_steps"] for r in old]), np.mean([r["relax_steps"] for r in new]))
        rmsd = (np.median([old[i]["rmsd_ang"] for i in ok]), np.median([new[i]["rmsd_ang"] for i in ok]))
        print(
            f"| {name} | {len(structures)} | {chunk} | {old_s:.3f} | {new_s:.3f} | {old_s / new_s:.2f}x "
            f"| {steps[0]:.1f} / {steps[1]:.1f} | {max(r['relax_cpu_seconds'] for r in new):.2f} "
            f"| {diff('energy_after_ev_per_atom', 1000):.3f} | {rmsd[0]:.4f} / {rmsd[1]:.4f} "
            f"| {diff('rmsd_ang'):.4f} | {diff('volume_change'):.5f} | {keeps} | {errors[0]} / {errors[1]} "
            f"| {noise:.3f} |",
            flush=True,
        )


def main(folders: list[str]) -> None:
    """One table over the batches of ``folders`` (module docstring)."""
    from matmeta.design.relax import Relaxer

    warnings.simplefilter("ignore")
    pools = [(Path(f).name, load(Path(f))) for f in folders]
    batches = [(f"{pools[1][0]}[:5]", pools[1][1][:5])] if len(pools) > 1 else []
    batches += pools
    relaxer = Relaxer()
    relaxer._load()
    print(
        "| batch | n | chunk | CPU s/relax one at a time | CPU s/relax batched | speed-up | mean steps old / new "
        "| max CPU s one structure (batched share) | max dE after (meV/atom) | median RMSD old / new (Å) "
        "| max dRMSD (Å) | max d volume change | keeps_structure differs | errors old / new "
        "| control: max dE one at a time, start moved 1e-5 Å (meV/atom) |"
    )
    print("|---" * 15 + "|")
    for name, structures in batches:
        compare(name, structures, relaxer, (16,) if len(structures) >= 100 else ())


if __name__ == "__main__":
    main(sys.argv[1:])
