"""Add common materials to ``data/structures/``: the crystals a new user tries first, built with pymatgen.

Each is its textbook prototype with room-temperature experimental lattice parameters (rounded):

- Si, diamond (Fd-3m), a = 5.431 Å
- GaAs, zinc blende (F-43m), a = 5.653 Å
- ZnO, wurtzite (P6_3mc), a = 3.250, c = 5.207 Å, u = 0.382
- NaCl, rock salt (Fm-3m), a = 5.640 Å
- MoS2, 2H (P6_3/mmc), a = 3.160, c = 12.294 Å, S at z = 0.621
- TiO2, rutile (P4_2/mnm), a = 4.594, c = 2.959 Å, O at x = 0.305
- LiFePO4, olivine (Pnma), a = 10.332, b = 6.010, c = 4.692 Å (Streltsov et al., Acta Cryst. B 49, 147, 1993)
- CsPbI3, cubic α phase (Pm-3m), a = 6.289 Å
- Cu, fcc (Fm-3m), a = 3.615 Å
- Fe, bcc (Im-3m), a = 2.866 Å

(SrTiO3 is already there, from ``scripts/make_example_data.py``.) Run from the repository root:
``python scripts/make_common_materials.py``.
"""

from __future__ import annotations

from pathlib import Path

from pymatgen.core import Lattice, Structure

from matmeta.io import write_cif


def common_materials() -> dict[str, Structure]:
    """The crystals, by formula."""
    olivine = [
        ("Li", [0.0, 0.0, 0.0]), ("Fe", [0.2822, 0.25, 0.9747]), ("P", [0.0950, 0.25, 0.4182]),
        ("O", [0.0968, 0.25, 0.7428]), ("O", [0.4571, 0.25, 0.2060]), ("O", [0.1656, 0.0464, 0.2848]),
    ]  # fmt: skip
    return {
        "Si": Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]]),
        "GaAs": Structure.from_spacegroup("F-43m", Lattice.cubic(5.653), ["Ga", "As"], [[0, 0, 0], [0.25] * 3]),
        "ZnO": Structure.from_spacegroup(
            "P6_3mc", Lattice.hexagonal(3.250, 5.207), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
        ),
        "NaCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.640), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]),
        "MoS2": Structure.from_spacegroup(
            "P6_3/mmc", Lattice.hexagonal(3.160, 12.294), ["Mo", "S"], [[1 / 3, 2 / 3, 0.25], [1 / 3, 2 / 3, 0.621]]
        ),
        "TiO2": Structure.from_spacegroup(
            "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]
        ),
        "LiFePO4": Structure.from_spacegroup(
            "Pnma", Lattice.orthorhombic(10.332, 6.010, 4.692), [e for e, _ in olivine], [p for _, p in olivine]
        ),
        "CsPbI3": Structure(
            Lattice.cubic(6.289),
            ["Cs", "Pb", "I", "I", "I"],
            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        ),  # fmt: skip
        "Cu": Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]]),
        "Fe": Structure.from_spacegroup("Im-3m", Lattice.cubic(2.866), ["Fe"], [[0, 0, 0]]),
    }


def main(root: Path = Path("data") / "structures") -> None:
    """Write one CIF per material (primitive cells) into ``root``."""
    crystals = common_materials()
    for name, structure in crystals.items():
        write_cif(structure.get_primitive_structure(), root / f"{name}.cif")
    print(f"wrote {len(crystals)} structures to {root}")


if __name__ == "__main__":
    main()
