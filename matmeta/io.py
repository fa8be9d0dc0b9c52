"""Read and write crystal structures; every failure is a ``MatmetaInputError("<input>: <reason>")``.

Formats: CIF (files or CIF text in a CSV column), POSCAR/CONTCAR (``*.vasp``, ``*.poscar``,
``POSCAR*``, ``CONTCAR*``) and extended XYZ (``*.extxyz``, ``*.xyz``, one structure per frame).

CIF text goes through :mod:`matmeta.cif` (a fast exact parser for one-block P1 files, pymatgen's
``CifParser`` for everything else); every structure is then validated by
:func:`matmeta.structure_checks.check_structure` (disorder, size, elements, volume, overlaps).
"""

from __future__ import annotations

import csv
import glob
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matmeta.cif import (
    check_cell_items,
    check_formula_sum,
    element_numbers,
    parse_cif_general,
    parse_p1_cif,
    species_amounts,
)
from matmeta.errors import MatmetaInputError
from matmeta.guards import MAX_CSV_BYTES, MAX_STRUCTURE_FILE_BYTES, regular_file
from matmeta.structure_checks import DEFAULT_MAX_ATOMS, check_cell, check_structure

if TYPE_CHECKING:
    from pymatgen.core import Structure


CIF_SUFFIXES = (".cif",)
POSCAR_SUFFIXES = (".vasp", ".poscar")
XYZ_SUFFIXES = (".extxyz", ".xyz")


# --------------------------------------------------------------------------------------- CIF


def parse_cif_arrays(
    text: str,
    name: str = "<cif>",
    *,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    ordered_approximation: bool = False,
    check_overlaps: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One validated crystal from CIF text as arrays (the ingest hot path: no ``Structure`` is built for P1 CIFs).

    Args:
        text: The CIF.
        name: Names the input in error messages (a file name, ``file.csv row 12``).
        max_atoms: Refuse larger cells.
        ordered_approximation: Replace partially occupied sites by their majority species instead of refusing.
        check_overlaps: False leaves the overlap check of a P1 file to the caller
            (:func:`matmeta.structure_checks.check_overlaps_from_pairs`, with its own neighbour search).

    Returns:
        ``(lattice, frac_coords, atomic_numbers)``.

    Shapes:
        lattice: (3, 3) float64, rows are lattice vectors in Å; frac_coords: (N, 3) float64; atomic_numbers: (N,) int64

    Raises:
        MatmetaInputError: malformed or truncated text, unknown element, or a failed check.
    """
    from pymatgen.core import Lattice

    if "\x00" in text:
        raise MatmetaInputError(f"{name}: binary data, not a CIF")
    if "_cell_length_a" not in text and "_cell_length_a" not in text.lower():
        raise MatmetaInputError(f"{name}: not a CIF (no _cell_length_a)")
    check_cell_items(text, name)
    fast = parse_p1_cif(text, name)
    if fast is None:
        structure = parse_cif_general(text, name)
        check_formula_sum(text, species_amounts(structure), name)
        structure = check_structure(structure, name, max_atoms=max_atoms, ordered_approximation=ordered_approximation)
        return (
            np.array(structure.lattice.matrix, dtype=np.float64),
            np.array(structure.frac_coords, dtype=np.float64),
            np.array(structure.atomic_numbers, dtype=np.int64),
        )
    cell, symbols, frac = fast
    if len(symbols) > max_atoms:
        raise MatmetaInputError(f"{name}: {len(symbols)} atoms exceed max_atoms={max_atoms}")
    counts: dict[str, float] = {}
    for symbol in symbols:
        counts[symbol] = counts.get(symbol, 0.0) + 1.0
    check_formula_sum(text, counts, name)
    try:
        with np.errstate(all="ignore"):
            lattice = np.array(Lattice.from_parameters(*cell).matrix, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - degenerate lattice and the like
        raise MatmetaInputError(f"{name}: invalid cell ({exc})") from None
    numbers = np.array([element_numbers()[s] for s in symbols], dtype=np.int64)
    check_cell(lattice, frac, name, overlaps=check_overlaps)
    return lattice, frac, numbers


def parse_cif(
    text: str,
    name: str = "<cif>",
    *,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    ordered_approximation: bool = False,
) -> Structure:
    """One ``Structure`` from CIF text, validated like :func:`check_structure` (see :func:`parse_cif_arrays`).

    Raises:
        MatmetaInputError: malformed or truncated text, unknown element, or a failed check.
    """
    from pymatgen.core import Lattice, Structure

    lattice, frac, numbers = parse_cif_arrays(
        text, name, max_atoms=max_atoms, ordered_approximation=ordered_approximation
    )
    return Structure(Lattice(lattice), numbers.tolist(), frac)


# ------------------------------------------------------------------------------- validation


# ---------------------------------------------------------------------------- files


def file_kind(path: Path) -> str | None:
    """``"cif"``, ``"poscar"``, ``"extxyz"`` or ``None`` for a file name matmeta cannot read."""
    name = path.name.lower()
    if name.endswith(CIF_SUFFIXES):
        return "cif"
    if name.endswith(XYZ_SUFFIXES):
        return "extxyz"
    if name.endswith(POSCAR_SUFFIXES) or name.startswith(("poscar", "contcar")):
        return "poscar"
    return None


def _read_text(path: Path) -> str:
    regular_file(path, MAX_STRUCTURE_FILE_BYTES)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MatmetaInputError(f"{path}: file not found") from None
    except OSError as exc:
        raise MatmetaInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if b"\x00" in raw:
        raise MatmetaInputError(f"{path}: binary data, not a structure file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return raw.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise MatmetaInputError(f"{path}: not a text file") from None


def read_structure_file(
    path: str | Path, *, max_atoms: int = DEFAULT_MAX_ATOMS, ordered_approximation: bool = False
) -> list[tuple[str, Structure]]:
    """All structures in one file as ``(name, Structure)``; the name is the file stem (``stem:k`` per frame).

    Only regular files are opened (a FIFO or device is refused unread). Each structure's
    ``properties["source"]`` holds the path as given (``path frame k`` per frame), for messages.

    Raises:
        MatmetaInputError: unreadable file, unknown format, or a structure failing the checks.
    """
    named = _read_structure_file(Path(path), max_atoms=max_atoms, ordered_approximation=ordered_approximation)
    for name, structure in named:
        frame = name.rsplit(":", 1)[1] if ":" in name else None
        structure.properties["source"] = str(path) if frame is None else f"{path} frame {frame}"
    return named


def _read_structure_file(path: Path, **options: Any) -> list[tuple[str, Structure]]:
    kind = file_kind(path)
    if kind is None:
        raise MatmetaInputError(f"{path}: unknown structure format (use .cif, POSCAR/.vasp or .extxyz)")
    text = _read_text(path)
    if kind == "cif":
        return [(path.stem, parse_cif(text, str(path), **options))]
    if kind == "poscar":
        from pymatgen.io.vasp import Poscar

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Poscar.from_str(text).structure
        except Exception as exc:  # noqa: BLE001
            raise MatmetaInputError(
                f"{path}: not a readable POSCAR ({str(exc).strip() or type(exc).__name__})"
            ) from None
        return [(path.stem, check_structure(structure, str(path), **options))]
    return _read_extxyz(path, **options)


def _read_extxyz(path: Path, **options: int | bool) -> list[tuple[str, Structure]]:
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = ase.io.read(path, index=":", format="extxyz")
    except Exception as exc:  # noqa: BLE001
        raise MatmetaInputError(
            f"{path}: not a readable extended XYZ ({str(exc).strip() or type(exc).__name__})"
        ) from None
    if not frames:
        raise MatmetaInputError(f"{path}: no frames")
    out = []
    for k, atoms in enumerate(frames):
        name = path.stem if len(frames) == 1 else f"{path.stem}:{k}"
        where = str(path) if len(frames) == 1 else f"{path} frame {k}"
        if not all(atoms.pbc) or abs(atoms.cell.volume) < 1e-8:
            raise MatmetaInputError(f'{where}: no periodic cell (need a Lattice= with pbc="T T T")')
        try:
            structure = AseAtomsAdaptor.get_structure(atoms)
        except Exception as exc:  # noqa: BLE001 - ase/pymatgen raise many types for odd frames
            raise MatmetaInputError(f"{where}: not a usable frame ({str(exc).strip() or type(exc).__name__})") from None
        out.append((name, check_structure(structure, where, **options)))  # type: ignore[arg-type]
    return out


def expand_sources(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """Structure files named by files, directories (all readable files inside, recursively) or globs.

    Returns:
        Sorted, de-duplicated paths.

    Raises:
        MatmetaInputError: a source that matches nothing.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and file_kind(p) is not None)
            if not files:
                raise MatmetaInputError(f"{path}: no .cif, POSCAR or .extxyz files in this directory")
            found.extend(files)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(str(source)):
            files = sorted(Path(p) for p in glob.glob(str(source), recursive=True) if Path(p).is_file())
            if not files:
                raise MatmetaInputError(f"{source}: the pattern matches no file")
            found.extend(files)
        else:
            raise MatmetaInputError(f"{path}: file not found")
    unique: dict[Path, None] = dict.fromkeys(found)
    return list(unique)


def write_cif(structure: Structure, path: str | Path) -> Path:
    """Write ``structure`` as a P1 CIF, atomically."""
    from pymatgen.io.cif import CifWriter

    from matmeta.atomic import write_text_atomic

    path = Path(path)
    write_text_atomic(path, str(CifWriter(structure)))
    return path


def structure_to_cif(structure: Structure) -> str:
    """P1 CIF text of ``structure``."""
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(structure))


# ------------------------------------------------------------------------------------ CSV


def read_csv(path: str | Path, required: Sequence[str] = ()) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file as ``(columns, rows)``; rows are dicts of strings.

    Raises:
        MatmetaInputError: unreadable file, no header, a row with the wrong number of fields,
            or a missing required column (named, with the columns that exist).
    """
    path = regular_file(path, MAX_CSV_BYTES)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise MatmetaInputError(f"{path}: empty CSV file")
            header = [h.strip() for h in header]
            rows = []
            for line_no, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise MatmetaInputError(
                        f"{path}: row {line_no - 1} has {len(fields)} fields, the header has {len(header)}"
                    )
                rows.append(dict(zip(header, fields, strict=True)))
    except FileNotFoundError:
        raise MatmetaInputError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise MatmetaInputError(f"{path}: not a UTF-8 text CSV") from None
    except csv.Error as exc:
        raise MatmetaInputError(f"{path}: malformed CSV ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise MatmetaInputError(
            f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(header) or 'none'})"
        )
    return header, rows


def read_structures(sources: list[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """``(name, Structure)`` for every readable structure in ``sources``, and one message per bad input."""
    from matmeta.errors import MatmetaInputError

    good: list[tuple[str, Any]] = []
    bad: list[str] = []
    for item in expand_each(sources):
        if isinstance(item, str):
            bad.append(item)
            continue
        try:
            good.extend(read_structure_file(item))
        except MatmetaInputError as exc:
            bad.append(str(exc))
    return good, bad


def expand_each(sources: Sequence[str | Path]) -> list[Path | str]:
    """:func:`expand_sources` source by source, in order: each file found, or the message of an unmatched source.

    In order so that callers report bad inputs in the order they were given.
    """
    from matmeta.errors import MatmetaInputError

    items: list[Path | str] = []
    for source in sources:
        try:
            items.extend(expand_sources(source))
        except MatmetaInputError as exc:
            items.append(str(exc))
    return items
