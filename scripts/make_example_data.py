"""Build the example inputs in ``data/``: cubic ABO3 perovskite CIFs and a lab band-gap CSV.

Each structure is the ideal cubic perovskite (space group Pm-3m, 5 atoms) with a pseudo-cubic
lattice constant from room-temperature diffraction (rounded to 0.01 Å); the real crystals of
several of them are slightly distorted (tetragonal, orthorhombic or rhombohedral), which the
ideal cell ignores. Band gaps are experimental optical gaps from the cited literature.

Run from the repository root: ``python scripts/make_example_data.py``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pymatgen.core import Lattice, Structure

from matmeta.atomic import write_text_atomic
from matmeta.io import write_cif

# formula: (A, B, pseudo-cubic a in Å, experimental band gap in eV, source)
MEASUREMENTS = {
    "SrTiO3": ("Sr", "Ti", 3.905, 3.25, "van Benthem, Elsässer & French, J. Appl. Phys. 90, 6156 (2001): indirect gap"),
    "BaTiO3": ("Ba", "Ti", 4.00, 3.2, "Wemple, Phys. Rev. B 2, 2679 (1970)"),
    "CaTiO3": ("Ca", "Ti", 3.83, 3.5, "Ueda et al., J. Phys.: Condens. Matter 10, 3669 (1998)"),
    "KTaO3": ("K", "Ta", 3.99, 3.6, "Kato & Kudo, J. Phys. Chem. B 105, 4285 (2001)"),
    "NaTaO3": ("Na", "Ta", 3.89, 4.0, "Kato & Kudo, J. Phys. Chem. B 105, 4285 (2001)"),
    "KNbO3": ("K", "Nb", 4.01, 3.3, "Wiesendanger, Ferroelectrics 6, 263 (1974)"),
    "BaSnO3": ("Ba", "Sn", 4.12, 3.1, "Mizoguchi, Eng & Woodward, Inorg. Chem. 43, 1667 (2004)"),
    "SrSnO3": ("Sr", "Sn", 4.03, 4.1, "Mizoguchi, Eng & Woodward, Inorg. Chem. 43, 1667 (2004)"),
    "CaSnO3": ("Ca", "Sn", 3.95, 4.4, "Mizoguchi, Eng & Woodward, Inorg. Chem. 43, 1667 (2004)"),
    "SrZrO3": ("Sr", "Zr", 4.10, 5.6, "Lee et al., Phys. Rev. B 67, 113101 (2003)"),
    "LaAlO3": ("La", "Al", 3.79, 5.6, "Lim et al., J. Appl. Phys. 91, 4500 (2002)"),
    "LaCrO3": ("La", "Cr", 3.88, 3.4, "Arima, Tokura & Torrance, Phys. Rev. B 48, 17006 (1993)"),
    "LaFeO3": ("La", "Fe", 3.93, 2.1, "Arima, Tokura & Torrance, Phys. Rev. B 48, 17006 (1993)"),
}

FRACTIONAL = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def cubic_perovskite(a_site: str, b_site: str, lattice_angstrom: float) -> Structure:
    """Ideal cubic ABO3: A at the corner, B at the body centre, O at the face centres."""
    return Structure(Lattice.cubic(lattice_angstrom), [a_site, b_site, "O", "O", "O"], FRACTIONAL)


def main(root: Path = Path("data")) -> None:
    """Write ``root/structures/*.cif`` and ``root/lab_perovskites.csv``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "path", "band_gap", "lattice_angstrom", "source"])
    for formula, (a_site, b_site, lattice, gap, source) in MEASUREMENTS.items():
        path = Path("structures") / f"{formula}.cif"
        write_cif(cubic_perovskite(a_site, b_site, lattice), root / path)
        writer.writerow([formula, path.as_posix(), gap, lattice, source])
    write_text_atomic(root / "lab_perovskites.csv", buffer.getvalue())
    print(f"wrote {len(MEASUREMENTS)} structures and {root / 'lab_perovskites.csv'}")


if __name__ == "__main__":
    main()
