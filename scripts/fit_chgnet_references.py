"""Fit the per-element CHGNet chemical potentials on mp36k (matmeta.design.chgnet_reference).

Usage (one thread; about 33 ms per structure on one core, CIF parsing included):
    OMP_NUM_THREADS=1 python scripts/fit_chgnet_references.py --n 8000 --seed 0

Draws a seeded sample of ``--n`` mp36k rows with nsites <= 40, holds out 20 % of it, fits the chemical
potentials on the rest plus the elemental (and fallback) reference rows, prints the holdout MAEs and writes
the JSON (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from matmeta.design.chgnet_reference import DEFAULT_PATH, draw_sample, fit_references, write_references
from matmeta.design.hull import read_phases


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000, help="sample size (rows with nsites <= 40)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sample, the holdout and the CV folds")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help="the JSON to write")
    parser.add_argument("--csv", type=Path, default=None, help="mp36k CSV (default: the shared data)")
    parser.add_argument("--batch-size", type=int, default=16, help="structures per CHGNet forward")
    return parser.parse_args()


def main() -> None:
    """Fit, report and write."""
    import torch

    torch.set_num_threads(1)
    args = parse_args()
    start = time.perf_counter()
    phases = read_phases(args.csv)
    sample = draw_sample(phases, args.n, args.seed)
    print(f"{len(phases)} rows read, sample of {len(sample)} (seed {args.seed})", flush=True)
    payload = fit_references(sample, phases, seed=args.seed, batch_size=args.batch_size, log=_log)
    path = write_references(payload, args.out)
    print(
        f"n_fit {payload['n_fit']}, n_holdout {payload['n_holdout']}, ridge lambda {payload['ridge_lambda']}\n"
        f"holdout MAE fitted mu: {payload['holdout_mae_ev_per_atom']:.4f} eV/atom "
        f"(median AE {payload['holdout_median_ae_ev_per_atom']:.4f})\n"
        f"holdout MAE elemental references only: {payload['holdout_mae_elemental_only']:.4f} eV/atom\n"
        f"wrote {path} ({len(payload['mu'])} elements) in {time.perf_counter() - start:.0f} s",
        flush=True,
    )


def _log(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    main()
