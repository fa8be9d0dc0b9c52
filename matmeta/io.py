"""Read and write crystal structures; every failure is a ``MatmetaInputError("<input>: <reason>")``.

Formats: CIF (files or CIF text in a CSV column), POSCAR/CONTCAR (``*.vasp``, ``*.poscar``,
``POSCAR*``, ``CONTCAR*``) and extended XYZ (``*.extxyz``, ``*.xyz``, one structure per frame).

CIF text goes through a fast parser for the common case (one data block, space group P1, plain
element symbols, full occupancy; what pymatgen, ase and most databases write) and through
pymatgen's ``CifParser`` for everything else (symmetry expansion, disorder, oxidation states,
uncertainties). Both paths give the same ``Structure`` up to site order, which the tests check.

Every structure is then validated by :func:`check_structure`: partially occupied sites are
refused unless an ordered approximation is requested, cells with more than ``max_atoms`` atoms,
absurd volumes per atom and overlapping atoms are refused with the reason.
"""

from __future__ import annotations

import csv
import functools
import glob
import math
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matmeta.errors import MatmetaInputError
from matmeta.guards import MAX_CSV_BYTES, MAX_STRUCTURE_FILE_BYTES, regular_file

if TYPE_CHECKING:
    from pymatgen.core import Structure

DEFAULT_MAX_ATOMS = 500
MIN_VOLUME_PER_ATOM = 1.0  # Å^3
MAX_VOLUME_PER_ATOM = 1000.0  # Å^3
MIN_DISTANCE = 0.5  # Å
MAX_FRACTIONAL = 1e6  # |fractional coordinate|; beyond it the position within the cell is lost to rounding

CIF_SUFFIXES = (".cif",)
POSCAR_SUFFIXES = (".vasp", ".poscar")
XYZ_SUFFIXES = (".extxyz", ".xyz")

_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|\S+")
_SYMBOL = re.compile(r"^[A-Z][a-z]?$")
_RESERVED = ("data_", "loop_", "save_", "global_", "stop_")
_UNUSUAL_SPACE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_NUMBER = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\(\d+\))?$")
_FORMULA_TERM = re.compile(r"([A-Z][a-z]?)\s*(\d*\.?\d*)")
_CELL_KEYS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)
_SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")
_SG_NAME_KEYS = ("_symmetry_space_group_name_h-m", "_space_group_name_h-m_alt")
_SG_NUMBER_KEYS = ("_symmetry_int_tables_number", "_space_group_it_number")


@functools.cache
def _element_numbers() -> dict[str, int]:
    """Element symbol → atomic number for every element pymatgen knows."""
    from pymatgen.core.periodic_table import Element

    return {el.symbol: el.Z for el in Element}


# --------------------------------------------------------------------------------------- CIF


def _number(token: str) -> float | None:
    """A CIF number (``4.05``, ``4.05(2)``) as float; ``None`` for anything else (``?``, ``.``)."""
    match = _NUMBER.match(token)
    return float(match.group(1)) if match else None


def _fast_p1_cif(text: str, name: str) -> tuple[list[float], list[str], np.ndarray] | None:
    """Parse a single-block, P1, fully ordered CIF; ``None`` when it needs the general parser.

    Returns:
        ``(cell_parameters, element_symbols, frac_coords)``; raises ``MatmetaInputError`` for a
        CIF that is certainly broken (e.g. a truncated atom loop, an unknown element).
    """
    if not text.isascii() or _UNUSUAL_SPACE.search(text):
        return None  # non-ASCII or control characters: Python's and pymatgen's line/word splits differ
    items: dict[str, str] = {}
    loops: list[tuple[list[str], list[str]]] = []
    blocks = 0
    header: list[str] | None = None
    values: list[str] = []
    in_values = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if line[0] == ";":
            return None  # multi-line text field
        lower = line.lower()
        if lower.startswith("data_"):
            blocks += 1
            header = None
            continue
        if not blocks:
            return None  # content before the first data_ block
        if lower.startswith("loop_"):
            if lower != "loop_":
                return None  # something glued to loop_: the general parser decides
            header, values, in_values = [], [], False
            loops.append((header, values))
            continue
        if line[0] == "_":
            if header is not None and not in_values:
                header.append(lower.split()[0])
                if len(line.split()) > 1:
                    return None  # unusual layout
                continue
            header = None
            parts = line.split(None, 1)
            if len(parts) < 2:
                return None  # value on the next line
            items[parts[0].lower()] = parts[1].strip().strip("'\"")
            continue
        if header is None:
            return None  # stray value
        in_values = True
        tokens = _TOKEN.findall(line)
        if any(token[0] in "#_" or token.lower().startswith(_RESERVED) for token in tokens):
            return None  # a comment, tag or reserved word inside a row: the general parser knows where it ends
        values.extend(tokens)
    if blocks != 1 or any(
        not header_ or not values_ or len(set(header_)) < len(header_) or len(values_) % len(header_)
        for header_, values_ in loops
        if "_atom_site_fract_x" not in header_  # the atom loop gets its own error below
    ):
        return None  # several blocks, an empty, repeated-tag or ragged loop: the general parser decides

    cell = [_number(items.get(key, "?")) for key in _CELL_KEYS]
    if any(v is None for v in cell):
        return None

    symops = None
    atoms = None
    for header_, values_ in loops:
        if any(key in header_ for key in _SYMOP_KEYS):
            symops = (header_, values_)
        if "_atom_site_fract_x" in header_:
            atoms = (header_, values_)
    if symops is not None:
        header_, values_ = symops
        column = next(header_.index(key) for key in _SYMOP_KEYS if key in header_)
        rows = [values_[i : i + len(header_)] for i in range(0, len(values_), len(header_))]
        ops = {row[column].strip("'\"").replace(" ", "").lower() for row in rows if len(row) == len(header_)}
        if ops != {"x,y,z"}:
            return None
    else:
        sg_name = next((items[k] for k in _SG_NAME_KEYS if k in items), None)
        sg_number = next((items[k] for k in _SG_NUMBER_KEYS if k in items), None)
        if not ((sg_name and sg_name.replace(" ", "") == "P1") or sg_number == "1"):
            return None
    if atoms is None:
        return None
    header_, values_ = atoms
    needed = ("_atom_site_type_symbol", "_atom_site_label", *(f"_atom_site_fract_{axis}" for axis in "xyz"))
    if any(key not in header_ for key in needed):
        return None  # pymatgen needs the label column too: it decides
    width = len(header_)
    if len(values_) % width:
        raise MatmetaInputError(f"{name}: truncated or malformed CIF (atom_site loop has a partial row)")
    rows = [values_[i : i + width] for i in range(0, len(values_), width)]
    if not rows:
        raise MatmetaInputError(f"{name}: CIF lists no atoms")
    i_sym = header_.index("_atom_site_type_symbol")
    i_xyz = [header_.index(f"_atom_site_fract_{axis}") for axis in "xyz"]
    i_occ = header_.index("_atom_site_occupancy") if "_atom_site_occupancy" in header_ else None
    symbols: list[str] = []
    frac = np.empty((len(rows), 3), dtype=np.float64)
    for k, row in enumerate(rows):
        symbol = row[i_sym]
        if not _SYMBOL.match(symbol):
            return None  # oxidation state, label-like symbol, ...: general parser
        if symbol not in _element_numbers():
            raise MatmetaInputError(f"{name}: unknown element {symbol!r}")
        if i_occ is not None:
            occupancy = _number(row[i_occ])
            if occupancy is None or abs(occupancy - 1.0) > 1e-6:
                return None  # partial occupancy: the general parser builds the disordered sites
        for axis, column in enumerate(i_xyz):
            coordinate = _number(row[column])
            if coordinate is None:
                return None
            frac[k, axis] = coordinate
        symbols.append(symbol)
    return [float(v) for v in cell], symbols, frac  # type: ignore[arg-type]


_CELL_ITEM = re.compile(
    r"^\s*(_cell_(?:length_[abc]|angle_(?:alpha|beta|gamma)))\s+(\S+)", re.MULTILINE | re.IGNORECASE
)


def _check_cell_items(text: str, name: str) -> None:
    """Refuse non-positive cell lengths and angles outside (0°, 180°) before either CIF parser sees them.

    pymatgen reads ``_cell_length_a -4.0`` as a 4 Å vector pointing the other way and accepts
    ``_cell_angle_alpha -90``; both are broken files, refused here so both parsers agree.
    """
    for key, token in _CELL_ITEM.findall(text):
        value = _number(token.strip("'\""))
        if value is None:
            continue  # '?' or a layout the parsers judge themselves
        key = key.lower()
        if "length" in key and not (math.isfinite(value) and value > 0):
            raise MatmetaInputError(f"{name}: {key} {token} must be a positive length")
        if "angle" in key and not (math.isfinite(value) and 0 < value < 180):
            raise MatmetaInputError(f"{name}: {key} {token} must be an angle between 0 and 180 degrees")


def _check_formula_sum(text: str, found: dict[str, float], name: str) -> None:
    """Compare the atoms read (element → amount) with ``_chemical_formula_sum`` (catches truncated CIFs)."""
    match = re.search(r"^\s*_chemical_formula_sum\s+(.+)$", text, flags=re.MULTILINE | re.IGNORECASE)
    if not match:
        return
    declared: dict[str, float] = {}
    for symbol, amount in _FORMULA_TERM.findall(match.group(1).strip().strip("'\"")):
        declared[symbol] = declared.get(symbol, 0.0) + (float(amount) if amount else 1.0)
    if not declared or any(symbol not in _element_numbers() for symbol in declared):
        return
    if set(found) != set(declared):
        missing = sorted(set(declared) - set(found))
        extra = sorted(set(found) - set(declared))
        detail = f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}"
        raise MatmetaInputError(f"{name}: atoms do not match _chemical_formula_sum ({detail}); truncated CIF?")
    ratios = [found[s] / declared[s] for s in declared]
    if any(abs(r - ratios[0]) > 1e-3 * abs(ratios[0]) for r in ratios):
        raise MatmetaInputError(f"{name}: atom counts do not match _chemical_formula_sum; truncated CIF?")


def _amounts(structure: Structure) -> dict[str, float]:
    found: dict[str, float] = {}
    for site in structure:
        for species, occupancy in site.species.items():
            symbol = getattr(species, "symbol", str(species))
            found[symbol] = found.get(symbol, 0.0) + occupancy
    return found


def _pymatgen_cif(text: str, name: str) -> Structure:
    """The general path: pymatgen's ``CifParser`` (symmetry, disorder, oxidation states)."""
    from pymatgen.core.periodic_table import DummySpecies
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser.from_str(text).parse_structures(primitive=False)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for broken files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MatmetaInputError(f"{name}: not a readable CIF ({reason})") from None
    if not structures:
        raise MatmetaInputError(f"{name}: not a readable CIF (no structure found)")
    if len(structures) > 1:
        raise MatmetaInputError(f"{name}: CIF holds {len(structures)} structures; split it into one per file")
    structure = structures[0]
    for site in structure:
        for species in site.species:
            if isinstance(species, DummySpecies):
                raise MatmetaInputError(f"{name}: unknown element {species.symbol!r}")
    return structure


def parse_cif_arrays(
    text: str,
    name: str = "<cif>",
    *,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    ordered_approximation: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One validated crystal from CIF text as arrays (the ingest hot path: no ``Structure`` is built for P1 CIFs).

    Args:
        text: The CIF.
        name: Names the input in error messages (a file name, ``file.csv row 12``).
        max_atoms: Refuse larger cells.
        ordered_approximation: Replace partially occupied sites by their majority species instead of refusing.

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
    _check_cell_items(text, name)
    fast = _fast_p1_cif(text, name)
    if fast is None:
        structure = _pymatgen_cif(text, name)
        _check_formula_sum(text, _amounts(structure), name)
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
    _check_formula_sum(text, counts, name)
    try:
        with np.errstate(all="ignore"):
            lattice = np.array(Lattice.from_parameters(*cell).matrix, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - degenerate lattice and the like
        raise MatmetaInputError(f"{name}: invalid cell ({exc})") from None
    numbers = np.array([_element_numbers()[s] for s in symbols], dtype=np.int64)
    check_cell(lattice, frac, name)
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


def ordered_approximation_of(structure: Structure) -> Structure:
    """Each partially occupied site becomes its majority species; a site mostly vacant is dropped.

    A crude but explicit approximation (the usual alternative, enumerating orderings in a
    supercell, multiplies the cell size): use it only when the disorder is minor.
    """
    from pymatgen.core import Structure

    species, coords = [], []
    for site in structure:
        items = sorted(site.species.items(), key=lambda kv: (-kv[1], str(kv[0])))
        top, occupancy = items[0]
        vacancy = 1.0 - sum(site.species.values())
        if vacancy > occupancy:
            continue
        species.append(getattr(top, "element", top))
        coords.append(site.frac_coords)
    return Structure(structure.lattice, species, coords)


def check_structure(
    structure: Structure,
    name: str,
    *,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    ordered_approximation: bool = False,
) -> Structure:
    """Refuse structures that would give a meaningless or unbounded graph.

    Checks, in order: at least one atom and at most ``max_atoms``; full site occupancy (or an
    ordered approximation when asked); a finite cell with ``MIN_VOLUME_PER_ATOM`` ≤ V/N ≤
    ``MAX_VOLUME_PER_ATOM`` Å³; no two atoms closer than ``MIN_DISTANCE`` Å (any periodic image).

    Returns:
        The structure (the ordered approximation when one was made).

    Raises:
        MatmetaInputError: ``"<name>: <reason>"`` for the first failed check.
    """
    n_atoms = len(structure)
    if n_atoms == 0:
        raise MatmetaInputError(f"{name}: structure has no atoms")
    check_species(structure, name)
    if n_atoms > max_atoms:
        raise MatmetaInputError(f"{name}: {n_atoms} atoms exceed max_atoms={max_atoms}")
    if not structure.is_ordered:
        if not ordered_approximation:
            raise MatmetaInputError(
                f"{name}: partially occupied sites (disorder); pass ordered_approximation=True "
                "(--ordered-approximation) to use the majority species"
            )
        structure = ordered_approximation_of(structure)
        n_atoms = len(structure)
        if n_atoms == 0:
            raise MatmetaInputError(f"{name}: no site left after the ordered approximation")
    check_cell(structure.lattice.matrix, structure.frac_coords, name)
    return structure


def check_species(structure: Structure, name: str) -> None:
    """Refuse any site whose species is not a real element (pymatgen's ``DummySpecies`` such as ``Xx``).

    POSCAR and CIF readers turn unknown symbols into dummy species whose atomic number is garbage;
    this is the one place that stops them before a graph is built.

    Raises:
        MatmetaInputError: ``"<name>: unknown element 'Xx'"``.
    """
    known = _element_numbers()
    for site in structure:
        for species in site.species:
            symbol = getattr(species, "symbol", str(species))
            element = getattr(species, "element", species)
            if symbol not in known or getattr(element, "Z", None) != known[symbol]:
                raise MatmetaInputError(f"{name}: unknown element {symbol!r}")


def check_cell(lattice: np.ndarray, frac_coords: np.ndarray, name: str) -> None:
    """The geometric checks of :func:`check_structure`: finite cell, volume per atom, no overlapping atoms.

    Shapes:
        lattice: (3, 3); frac_coords: (N, 3)

    Raises:
        MatmetaInputError: ``"<name>: <reason>"``.
    """
    from matmeta.geometry import closest_pair, wrap_fractional

    matrix = np.asarray(lattice, dtype=np.float64)
    frac = np.asarray(frac_coords, dtype=np.float64)
    if not np.all(np.isfinite(frac)):
        raise MatmetaInputError(f"{name}: non-finite atom coordinates")
    if frac.size and float(np.abs(frac).max()) > MAX_FRACTIONAL:
        raise MatmetaInputError(f"{name}: fractional coordinate {float(np.abs(frac).max()):.3g} is absurd")
    with np.errstate(all="ignore"):  # an overflowing determinant is refused below, not warned about
        volume = float(abs(np.linalg.det(matrix))) if np.all(np.isfinite(matrix)) else 0.0
    if not math.isfinite(volume) or volume <= 0:
        raise MatmetaInputError(f"{name}: degenerate or non-finite cell")
    per_atom = volume / len(frac)
    if per_atom < MIN_VOLUME_PER_ATOM or per_atom > MAX_VOLUME_PER_ATOM:
        raise MatmetaInputError(
            f"{name}: implausible volume per atom {per_atom:.3g} Å^3 "
            f"(allowed {MIN_VOLUME_PER_ATOM:g}–{MAX_VOLUME_PER_ATOM:g})"
        )
    # The search runs in the LLL-reduced cell with wrapped atoms: a coordinate such as -87588 or a
    # skewed/needle cell would otherwise make the cell-list search span millions of cells.
    from pymatgen.core import Lattice

    reduced = np.asarray(Lattice(matrix).get_lll_reduced_lattice().matrix, dtype=np.float64)
    shortest = float(np.linalg.norm(reduced, axis=1).min())
    if shortest < MIN_DISTANCE:
        raise MatmetaInputError(
            f"{name}: atoms 0 and 0 overlap ({shortest:.3g} Å apart: a lattice vector shorter than {MIN_DISTANCE} Å)"
        )
    cart = wrap_fractional((wrap_fractional(frac) @ matrix) @ np.linalg.inv(reduced)) @ reduced
    pair = closest_pair(reduced, cart, MIN_DISTANCE)
    if pair is not None:
        i, j, distance = pair
        raise MatmetaInputError(f"{name}: atoms {i} and {j} overlap ({distance:.3f} Å apart, minimum {MIN_DISTANCE} Å)")


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
    for source in sources:
        try:
            paths = expand_sources(source)
        except MatmetaInputError as exc:
            bad.append(str(exc))
            continue
        for path in paths:
            try:
                good.extend(read_structure_file(path))
            except MatmetaInputError as exc:
                bad.append(str(exc))
    return good, bad
