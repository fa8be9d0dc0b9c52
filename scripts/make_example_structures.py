"""Build ``data/structures_other/``: non-perovskite example crystals in each input format matmeta reads.

The perovskite examples (``data/structures/``) come from ``scripts/make_example_data.py``. These
four show the other formats and the non-perovskite paths of ingest (``b_site`` does not apply):

- rocksalt NaCl, a = 5.640 Å (CIF)
- fcc Cu, a = 3.615 Å (CIF)
- diamond Si, a = 5.431 Å (POSCAR, ``Si.vasp``)
- wurtzite ZnO, a = 3.250 Å, c = 5.207 Å, u = 0.382 (extended XYZ)

Lattice constants are room-temperature experimental values (rounded). ``targets.csv`` gives
their experimental band gaps in eV (NaCl 8.5, Cu 0 (metal), Si 1.12 indirect, ZnO 3.37),
keyed by file stem, for ``matmeta data ingest --targets-csv``.

Run from the repository root: ``python scripts/make_example_structures.py``.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.vasp import Poscar

from matmeta.atomic import atomic_path, write_text_atomic
from matmeta.io import write_cif

BAND_GAPS_EV = {"NaCl": 8.5, "Cu": 0.0, "Si": 1.12, "ZnO": 3.37}


def structures() -> dict[str, Structure]:
    """The four example crystals (conventional cells)."""
    u = 0.382
    return {
        "NaCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.640), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Cu": Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]]),
        "Si": Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]]),
        "ZnO": Structure.from_spacegroup(
            "P6_3mc", Lattice.hexagonal(3.250, 5.207), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, u]]
        ),
    }


def main(root: Path = Path("data") / "structures_other") -> None:
    """Write the four files and ``targets.csv`` into ``root``."""
    crystals = structures()
    write_cif(crystals["NaCl"], root / "NaCl.cif")
    write_cif(crystals["Cu"], root / "Cu.cif")
    write_text_atomic(root / "Si.vasp", Poscar(crystals["Si"], comment="diamond Si, a = 5.431 A").get_str())
    with atomic_path(root / "ZnO.extxyz") as tmp:
        ase.io.write(tmp, AseAtomsAdaptor.get_atoms(crystals["ZnO"]), format="extxyz")
    rows = ["id,band_gap"] + [f"{name},{gap}" for name, gap in BAND_GAPS_EV.items()]
    write_text_atomic(root / "targets.csv", "\n".join(rows) + "\n")
    print(f"wrote {len(crystals)} structures and targets.csv to {root}")


if __name__ == "__main__":
    main()
