"""Whether the MP network serves the Castelli perovskites (another fidelity) through a linear map (issue 27).

On the perovskite checkpoint's 7 TEST B-site families (held out of its training; the MP model never saw
Castelli data): both models zero-shot, and the MP model with one linear map per target fitted on structures
of the perovskite checkpoint's TRAIN families (the data a shared fidelity head would learn from). Not
measured: one network trained jointly on both datasets with a fidelity input.

    OMP_NUM_THREADS=1 python scripts/measure_perovskite_sharing.py     (~5 min on one core)
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from matmeta.io import parse_cif
from matmeta.predict.api import load, predict_named
from matmeta.predict.domain import perovskite_sites_checked

PER_SPLIT = 700
SHARED = Path(os.environ.get("MATMETA_SHARED_DATA", "../shared/data"))


def b_site(structure: object) -> str | None:
    """The B cation of a structure that is a perovskite by composition and geometry, else None."""
    try:
        return perovskite_sites_checked(structure)[1]
    except Exception:  # noqa: BLE001 - not a perovskite by geometry: left out
        return None


def sample(rows: list[dict], families: dict[str, set[str]], seed: int = 0) -> dict[str, list]:
    """``PER_SPLIT`` random (row, structure) pairs whose B site is in each split's families."""
    chosen: dict[str, list] = {name: [] for name in families}
    for i in np.random.default_rng(seed).permutation(len(rows)):
        row = rows[int(i)]
        structure = parse_cif(row["cif"], row["material_id"])
        site = b_site(structure)
        for name, members in families.items():
            if site in members and len(chosen[name]) < PER_SPLIT:
                chosen[name].append((row, structure))
        if all(len(v) >= PER_SPLIT for v in chosen.values()):
            break
    return chosen


def predictions(model: object, items: list) -> list[dict]:
    """Zero-shot rows of ``model`` for every item (every one must be predictable)."""
    out, bad = predict_named(model, [(row["material_id"], structure) for row, structure in items])
    if bad:
        raise SystemExit(f"unexpected refusals: {bad[:3]}")
    return out


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of ``score`` for the ``positive`` class (rank form)."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    """Print the comparison."""
    csv.field_size_limit(10**8)
    with (SHARED / "perovskites" / "perovskites.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    perovskite, mp = load("perovskites"), load("mp")
    families = {name: set(perovskite.metadata["families"][name]) for name in ("train", "test")}
    chosen = sample(rows, families)
    truth = {
        name: (
            np.array([float(r["heat_ref"]) for r, _ in items]),
            np.array([float(r["ind_gap"]) for r, _ in items]),
            np.array([len(s) for _, s in items]),
        )
        for name, items in chosen.items()
    }
    mp_rows = {name: predictions(mp, items) for name, items in chosen.items()}
    mp_heat = {n: np.array([r["formation_energy_per_atom"] for r in mp_rows[n]]) * truth[n][2] for n in chosen}
    mp_gap = {n: np.array([r["band_gap_pbe"] for r in mp_rows[n]]) for n in chosen}
    heat_train, gap_train, _ = truth["train"]
    a, b = np.polyfit(mp_heat["train"], heat_train, 1)
    nonmetal_train = gap_train > 0
    c, d = np.polyfit(mp_gap["train"][nonmetal_train], gap_train[nonmetal_train], 1)

    heat, gap, _ = truth["test"]
    own = predictions(perovskite, chosen["test"])
    own_heat, own_gap = np.array([r["heat_ref"] for r in own]), np.array([r["band_gap"] for r in own])
    mapped_gap = np.where(mp_gap["test"] > 0, c * mp_gap["test"] + d, 0.0)
    nonmetal = gap > 0
    print(
        f"perovskite test B-site families {sorted(families['test'])}: {len(heat)} structures, "
        f"{int(nonmetal.sum())} GLLB-SC non-metals; linear maps fitted on {len(heat_train)} structures of its "
        "train families"
    )
    print(
        f"heat_ref MAE eV/cell: perovskite checkpoint {np.mean(np.abs(own_heat - heat)):.3f}; MP energy x atoms "
        f"+ linear map ({a:.3f} x + {b:.3f}) {np.mean(np.abs(a * mp_heat['test'] + b - heat)):.3f}; Pearson r "
        f"{np.corrcoef(mp_heat['test'], heat)[0, 1]:.3f}; train mean {np.mean(np.abs(heat_train.mean() - heat)):.3f}"
    )
    print(
        f"GLLB-SC gap MAE eV, all: perovskite checkpoint {np.mean(np.abs(own_gap - gap)):.3f}; MP PBE gap "
        f"{np.mean(np.abs(mp_gap['test'] - gap)):.3f}; MP + linear map ({c:.3f} x + {d:.3f}) "
        f"{np.mean(np.abs(mapped_gap - gap)):.3f}"
    )
    print(
        f"GLLB-SC gap MAE eV, non-metals: perovskite checkpoint {np.mean(np.abs(own_gap - gap)[nonmetal]):.3f}; "
        f"MP + linear map {np.mean(np.abs(mapped_gap - gap)[nonmetal]):.3f}"
    )
    print(
        f"non-metal ROC-AUC: perovskite checkpoint {roc_auc(1 - np.array([r['p_metal'] for r in own]), nonmetal):.3f}"
        f"; MP {roc_auc(1 - np.array([r['p_metal'] for r in mp_rows['test']]), nonmetal):.3f}"
    )


if __name__ == "__main__":
    main()
