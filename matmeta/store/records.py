"""Graph store records and the ingest worker; imports neither torch nor LMDB.

A record is safetensors bytes: the graph fields of :mod:`matmeta.graphs`, ``lattice`` (3, 3)
float64, ``frac_coords`` (N, 3) float64, ``cif`` (uint8 text) and, in the header metadata, the
JSON ``info`` (``id``, ``source``, ``families``, ``family_errors``). Ingest workers import only
this module (and pymatgen/spglib through io, graphs and families), so spawned workers start fast.
"""

from __future__ import annotations

import functools
import json
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.graphs import GRAPH_SCHEMA, GraphConfig

_DTYPES = {"I64": np.int64, "F32": np.float32, "F64": np.float64, "U8": np.uint8}
GRAPH_FIELDS = tuple(GRAPH_SCHEMA)
_ITEMSIZE = {code: np.dtype(dtype).itemsize for code, dtype in _DTYPES.items()}


# ----------------------------------------------------------------------------- records


_CODES = {np.dtype(np.int64): "I64", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.uint8): "U8"}


_LITTLE_ENDIAN = sys.byteorder == "little"


@functools.lru_cache(maxsize=256)
def _json_string(text: str) -> str:
    return json.dumps(text)


def encode_record(arrays: dict[str, np.ndarray], info: dict[str, Any]) -> bytes:
    """Safetensors bytes of one record (arrays + JSON ``info`` in the header metadata).

    Written directly (the format is an 8-byte header length, a JSON header padded with spaces to
    a multiple of 8 bytes, then the little-endian array bytes); ``safetensors.numpy.load`` reads it.
    """
    # the header is written as json.dumps(header, separators=(",", ":")) would write it (keys are
    # plain field names, values numbers and dtype codes), without building the dict
    entries = ['"__metadata__":{"info":' + json.dumps(json.dumps(info)) + "}"]
    chunks = []
    offset = 0
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        code = _CODES.get(array.dtype)  # native byte order only
        if code is None:
            raise TypeError(f"record field {key}: unsupported dtype {array.dtype}")
        data = array.tobytes() if _LITTLE_ENDIAN else array.astype(array.dtype.newbyteorder("<")).tobytes()
        shape = ",".join(map(str, array.shape))
        span = f"{offset},{offset + len(data)}"
        entries.append(f'{_json_string(key)}:{{"dtype":"{code}","shape":[{shape}],"data_offsets":[{span}]}}')
        chunks.append(data)
        offset += len(data)
    text = ("{" + ",".join(entries) + "}").encode()
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *chunks])


def _header(raw: bytes | memoryview) -> tuple[dict[str, Any], int]:
    (length,) = struct.unpack_from("<Q", raw, 0)
    return json.loads(bytes(raw[8 : 8 + length])), 8 + length


_META_PREFIX = b'{"__metadata__":{"info":'


@functools.lru_cache(maxsize=4096)
def _layout(layout_json: bytes, keys: tuple[str, ...]) -> tuple[tuple[str, Any, int, int, tuple[int, ...]], ...]:
    """(key, dtype, start, count, shape) of ``keys`` from the array part of a header.

    Cached: records with the same shapes (and CIF length) share a layout, so most reads skip JSON.
    """
    entries = json.loads(layout_json)
    plan = []
    for key in keys:
        entry = entries[key]
        start, end = entry["data_offsets"]
        code = entry["dtype"]
        plan.append((key, _DTYPES[code], start, (end - start) // _ITEMSIZE[code], tuple(entry["shape"])))
    return tuple(plan)


def decode_arrays(raw: bytes, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Only the arrays ``keys`` of a record, fast (the read path of ``GraphStore[i]``).

    Headers written by :func:`encode_record` start with the metadata entry; the rest of the
    header (the array layout) is the cache key of :func:`_layout`. The arrays share one private,
    writable copy of ``raw``.
    """
    (length,) = struct.unpack_from("<Q", raw, 0)
    header = raw[8 : 8 + length]
    if header.startswith(_META_PREFIX):
        end = header.find(b'"},"', len(_META_PREFIX))  # an escaped string never holds `"},"`
        layout_json = b"{" + header[end + 3 :] if end >= 0 else header
    else:
        layout_json = header
    buffer = bytearray(raw)
    base = 8 + length
    return {
        key: np.frombuffer(buffer, dtype=dtype, count=count, offset=base + start).reshape(shape)
        for key, dtype, start, count, shape in _layout(bytes(layout_json), keys)
    }


def decode_record(
    raw: bytes, keys: Sequence[str] | None = None, with_info: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays (all, or only ``keys``) and ``info`` of a record (``{}`` unless ``with_info``).

    The arrays share one private, writable copy of ``raw``.
    """
    if not with_info and keys is not None:
        return decode_arrays(raw, tuple(keys)), {}
    header, base = _header(raw)
    info = json.loads(header.get("__metadata__", {}).get("info", "{}")) if with_info else {}
    buffer = bytearray(raw)
    arrays = {}
    for key in keys if keys is not None else [k for k in header if k != "__metadata__"]:
        entry = header[key]
        dtype = _DTYPES[entry["dtype"]]
        start, end = entry["data_offsets"]
        count = (end - start) // _ITEMSIZE[entry["dtype"]]
        arrays[key] = np.frombuffer(buffer, dtype=dtype, count=count, offset=base + start).reshape(entry["shape"])
    return arrays, info


def record_info(raw: bytes) -> dict[str, Any]:
    """Only the JSON ``info`` of a record (no array is touched)."""
    header, _ = _header(raw)
    return json.loads(header.get("__metadata__", {}).get("info", "{}"))


@dataclass(frozen=True)
class IngestSettings:
    """How raw inputs are validated at ingest (stored in the store metadata).

    Attributes:
        max_atoms: Refuse cells with more atoms.
        ordered_approximation: Replace partially occupied sites by their majority species.
        on_isolated_atoms: ``"error"`` | ``"warn"`` | ``"ignore"`` for atoms with no neighbour.
        allow_missing_targets: Store empty/NaN targets as NaN instead of refusing the row.
    """

    max_atoms: int = 500
    ordered_approximation: bool = False
    on_isolated_atoms: str = "error"
    allow_missing_targets: bool = False


@dataclass(frozen=True)
class WorkItem:
    """One unit of work: where the structure comes from and what is stored with it."""

    id: str
    where: str
    kind: str  # "cif_text" | "file"
    payload: str
    y: tuple[float, ...]
    columns: tuple[tuple[str, str], ...] = ()


def build_record(item: WorkItem, config: GraphConfig, settings: IngestSettings) -> list[tuple[str, bytes, list[str]]]:
    """Parse, validate, graph and label one item; ``[(id, record_bytes, warnings)]`` (several for multi-frame files)."""
    from matmeta.families import all_family_keys_of
    from matmeta.geometry import neighbor_list, wrap_fractional
    from matmeta.graphs import graph_arrays, targets_array
    from matmeta.io import parse_cif_arrays, read_structure_file, structure_to_cif
    from matmeta.structure_checks import check_overlaps_from_pairs

    options = {"max_atoms": settings.max_atoms, "ordered_approximation": settings.ordered_approximation}
    crystals: list[tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray], str]] = []
    if item.kind == "cif_text":  # overlaps are checked below, from the graph's own neighbour search
        parsed = parse_cif_arrays(item.payload, item.where, check_overlaps=False, **options)
        crystals.append((item.id, parsed, item.payload))
    else:
        text = Path(item.payload).read_text(errors="replace") if item.payload.lower().endswith(".cif") else None
        for name, s in read_structure_file(item.payload, **options):
            arrays_of = (
                np.array(s.lattice.matrix, dtype=np.float64),
                np.array(s.frac_coords, dtype=np.float64),
                np.array(s.atomic_numbers, dtype=np.int64),
            )
            crystals.append((name, arrays_of, text if text is not None else structure_to_cif(s)))
    out = []
    for rid, (lattice, raw_frac, numbers), cif_text in crystals:
        where = item.where if rid == item.id else f"{item.where} ({rid})"
        frac = wrap_fractional(raw_frac)
        pairs = neighbor_list(lattice, frac @ lattice, config.cutoff_angstrom)  # graph, overlap check, families
        check_overlaps_from_pairs(lattice, frac, pairs[3], where, config.cutoff_angstrom)
        arrays, warnings = graph_arrays(
            lattice, frac, numbers, config, on_isolated_atoms=settings.on_isolated_atoms, name=where, pairs=pairs
        )  # type: ignore[arg-type]
        arrays["y"] = targets_array(item.y)
        arrays["lattice"] = lattice
        arrays["frac_coords"] = frac
        arrays["cif"] = np.frombuffer(cif_text.encode("utf-8"), dtype=np.uint8)
        families, family_errors = all_family_keys_of(
            lattice, frac, numbers, where, symmetry=False, found=(pairs, config.cutoff_angstrom)
        )
        families.update({f"column:{k}": v for k, v in item.columns})
        info = {"id": rid, "source": where, "families": families, "family_errors": family_errors}
        out.append((rid, encode_record(arrays, info), warnings))
    return out


def work_chunk(
    chunk: list[WorkItem], config_dict: dict[str, Any], settings_dict: dict[str, Any]
) -> list[tuple[list[tuple[str, bytes, list[str]]], str | None]]:
    """Worker entry point (top level, so it pickles under ``spawn``): one result per item."""
    import warnings as _warnings

    from matmeta.errors import MatmetaError

    config = GraphConfig.from_dict(config_dict)
    settings = IngestSettings(**settings_dict)
    results = []
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        for item in chunk:
            try:
                results.append((build_record(item, config, settings), None))
            except MatmetaError as exc:
                results.append(([], str(exc)))
            except Exception as exc:  # noqa: BLE001 - one bad input must not stop the batch
                results.append(([], f"{item.where}: {type(exc).__name__}: {exc}"))
    return results


def star_work(args: tuple[list[WorkItem], dict[str, Any], dict[str, Any]]) -> Any:
    """:func:`work_chunk` with packed arguments (for ``Pool.imap``)."""
    return work_chunk(*args)
