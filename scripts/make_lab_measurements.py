"""Build ``data/lab_measurements.csv`` and ``data/lab/*.cif``: one real family of measured band gaps.

The cadmium compounds of the shared measured gaps (``expt_gaps.csv``: cation family "Cd", one of the
measured-gap TEST families of ``recipes/expt_gap.toml``, so the shipped model never trained on them), each
with its Materials Project structure (mp36k; data CC BY 4.0, Jain et al., APL Mater. 1, 011002, 2013) and
its measured gap (Zhuo, Mansouri Tehrani & Brgoch, J. Phys. Chem. Lett. 9, 1668, 2018; Dong & Cole,
Sci. Data 2022). The rows are what a lab brings to ``matmeta finetune --target band_gap``: a structure and
a measurement each, metals (gap 0) included.

Run from the repository root with the shared data beside it: ``python scripts/make_lab_measurements.py``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from matmeta.atomic import write_text_atomic
from matmeta.io import write_cif
from matmeta.predict.measured_data import read_measured
from matmeta.store.reader import GraphStore

FAMILY = "Cd"


def main(root: Path = Path("data"), store: Path = Path("out/mp.lmdb")) -> None:
    """Write the CIFs and the CSV (the store is built by ``matmeta meta-train recipes/mp.toml`` or ingest)."""
    shared = Path(os.environ.get("MATMETA_SHARED_DATA", "../shared/data"))
    graph_store = GraphStore(store)
    rows = read_measured(shared / "expt_gaps" / "expt_gaps.csv", graph_store, "cation")
    ids = graph_store.ids
    chosen = [i for i in rows.with_structure if rows.family[i] == FAMILY]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "path", "band_gap", "material_id", "source"])
    for i in sorted(chosen, key=lambda i: rows.formula[i]):
        record, name = int(rows.store_index[i]), rows.formula[i]
        stem = name.replace("(", "_").replace(")", "_").strip("_")  # a file name any shell takes
        write_cif(graph_store.structure(record), root / "lab" / f"{stem}.cif")
        writer.writerow([name, f"lab/{stem}.cif", f"{rows.gap[i]:g}", ids[record], rows.source[i]])
    write_text_atomic(root / "lab_measurements.csv", buffer.getvalue())
    print(f"wrote {len(chosen)} measured {FAMILY} compounds to {root / 'lab_measurements.csv'}")


if __name__ == "__main__":
    main()
