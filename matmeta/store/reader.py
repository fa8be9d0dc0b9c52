"""Reading the LMDB graph store: one record per structure, versioned metadata, lazy read-only handles.

Layout of the LMDB environment (a directory, e.g. ``perov.lmdb/``):

- ``b"0"``, ``b"1"``, … (integer ASCII keys): one record per structure, encoded as safetensors
  bytes (never pickles; see :mod:`matmeta.records`). Tensors: the graph fields of
  :mod:`matmeta.graphs` plus ``lattice`` (3, 3) float64, ``frac_coords`` (N, 3) float64 (the exact
  structure) and ``cif`` (the source CIF text, uint8). The safetensors header metadata ``info`` is
  JSON: ``id``, ``source``, ``families`` (kind → key, including ``column:<name>``) and
  ``family_errors`` (kind → reason).
- ``b"__meta__"``: JSON with the format version, matmeta version, graph config, target names,
  ingest settings and ``count``, the number of records. ``count`` is the progress marker: it is
  written in the same transaction as the records of each batch, so a reader or a resumed
  ingest never sees half a batch.

Readers open the environment read-only with ``lock=False``, lazily and once per process and path
(LMDB allows one handle per path and process; a handle inherited through ``fork`` is dropped in
the child), so a :class:`GraphStore` works in DataLoader workers (fork or spawn). Read
transactions are short (one record), as ``lock=False`` readers need when a writer is active.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matmeta.errors import MatmetaInputError, StoreError
from matmeta.graphs import GraphConfig
from matmeta.store.records import (
    GRAPH_FIELDS,
    decode_record,
)

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from torch_geometric.data import Data

FORMAT_NAME = "matmeta-graph-store"
FORMAT_VERSION = 1
META_KEY = b"__meta__"
MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows with the data
FAMILY_KINDS = ("anion_set", "anion_class", "cation", "b_site", "a_site", "chemsys", "spacegroup", "prototype")

# ----------------------------------------------------------------------------- reading


# LMDB allows one environment handle per path and process: read handles are shared by every
# GraphStore of this process and dropped when the process changes (fork) or a writer needs the path.
_READ_ENVS: dict[tuple[str, int], Any] = {}


def _open_env(path: Path, readonly: bool, resolved: str | None = None) -> Any:
    import lmdb

    if readonly:
        key = (resolved or str(Path(path).resolve()), os.getpid())
        env = _READ_ENVS.get(key)
        if env is None:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=512)
            _READ_ENVS[key] = env
        return env
    _close_read_env(path)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return lmdb.open(str(path), map_size=MAP_SIZE, readahead=False, meminit=False, max_dbs=0)
    except (OSError, lmdb.Error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).split(":")[-1].strip() or type(exc).__name__
        raise StoreError(f"{path}: cannot write a graph store there ({reason})") from None


def _drop_inherited_envs() -> None:
    """In a forked child: close the handles inherited from the parent (LMDB handles must not cross fork).

    Closing only unmaps the child's copy of the file and closes the child's descriptors; the
    parent's handles are untouched. The child reopens lazily on its next read.
    """
    inherited = list(_READ_ENVS.values())
    _READ_ENVS.clear()
    for env in inherited:
        try:
            env.close()
        except Exception:  # noqa: BLE001, S110 - best effort in a fresh child
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_envs)


def _close_read_env(path: Path) -> None:
    env = _READ_ENVS.pop((str(Path(path).resolve()), os.getpid()), None)
    if env is not None:
        env.close()


def read_store_metadata(path: str | Path) -> dict[str, Any]:
    """The ``__meta__`` entry of a store, checked for format and version.

    Raises:
        StoreError: missing path, not a matmeta store, or a newer format.
    """
    path = Path(path)
    if not (path / "data.mdb").exists():
        raise StoreError(f"{path}: no graph store here (expected an LMDB directory with data.mdb)")
    with _open_env(path, readonly=True).begin() as txn:
        raw = txn.get(META_KEY)
    if raw is None:
        raise StoreError(f"{path}: not a matmeta graph store (no metadata entry)")
    return _check_metadata(path, raw)


def _check_metadata(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except ValueError:
        raise StoreError(f"{path}: corrupt store metadata") from None
    if meta.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: not a matmeta graph store (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format {version} was written by a newer matmeta "
            f"({meta.get('matmeta_version')}); this matmeta reads format ≤ {FORMAT_VERSION}"
        )
    return meta


def _config_mismatch(stored: GraphConfig, wanted: GraphConfig) -> str | None:
    if stored == wanted:
        return None
    return (
        f"built with cutoff_angstrom={stored.cutoff_angstrom:g}, max_neighbors={stored.max_neighbors}; "
        f"asked for cutoff_angstrom={wanted.cutoff_angstrom:g}, max_neighbors={wanted.max_neighbors}"
    )


try:  # a torch Dataset when torch is there (always, in matmeta's environment)
    from torch.utils.data import Dataset as _DatasetBase
except ImportError:  # pragma: no cover
    _DatasetBase = object  # type: ignore[assignment,misc]


class GraphStore(_DatasetBase):  # type: ignore[misc,valid-type]
    """Read-only view of a graph store; a ``torch.utils.data.Dataset`` of ``Data`` graphs.

    Args:
        path: The store directory.
        graph_config: If given, the store must have been built with exactly these settings.

    Raises:
        StoreError: missing or foreign store, newer format, or other graph settings.
    """

    def __init__(self, path: str | Path, graph_config: GraphConfig | None = None) -> None:
        self.path = Path(path)
        self._meta = read_store_metadata(self.path)
        self._config = GraphConfig.from_dict(self._meta["graph_config"])
        if graph_config is not None:
            mismatch = _config_mismatch(self._config, graph_config)
            if mismatch:
                raise StoreError(f"{self.path}: {mismatch}")
        self._count = int(self._meta["count"])
        self._index: dict[str, Any] | None = None
        self._resolved = str(self.path.resolve())

    # -- handles ---------------------------------------------------------------------------
    def _txn_env(self) -> Any:
        # looked up on every access: the handle is per process and shared per path (never pickled)
        return _open_env(self.path, readonly=True, resolved=self._resolved)

    def close(self) -> None:
        """Close this process's LMDB handle for the store's path (reopened on the next access)."""
        _close_read_env(self.path)

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- basic properties --------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    @property
    def metadata(self) -> dict[str, Any]:
        """The store's metadata (format, versions, graph config, targets, ingest settings, count)."""
        return dict(self._meta)

    @property
    def graph_config(self) -> GraphConfig:
        """The graph settings every record was built with."""
        return self._config

    @property
    def target_names(self) -> tuple[str, ...]:
        """Names of the columns of ``y`` / :attr:`targets`."""
        return tuple(self._meta["target_names"])

    def _raw(self, i: int) -> bytes:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"store index must be an integer, got {type(i).__name__}")
        n = self._count
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range for a store of {n}")
        with self._txn_env().begin(buffers=False) as txn:
            raw = txn.get(str(int(i)).encode("ascii"))
        if raw is None:
            raise StoreError(f"{self.path}: record {i} missing (corrupt store)")
        return raw

    def __getitem__(self, i: int) -> Data:
        """Graph ``i`` (see :mod:`matmeta.graphs` for the fields)."""
        from matmeta.graphs import arrays_to_data

        arrays, _ = decode_record(self._raw(i), GRAPH_FIELDS, with_info=False)
        return arrays_to_data(arrays)

    def record(self, i: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """All arrays and the ``info`` dict of record ``i``."""
        return decode_record(self._raw(i))

    def structure(self, i: int) -> Structure:
        """The (ordered) structure record ``i`` was built from."""
        from pymatgen.core import Lattice, Structure

        arrays, _ = decode_record(self._raw(i), ("lattice", "frac_coords", "atomic_numbers"))
        return Structure(
            Lattice(arrays["lattice"].copy()), arrays["atomic_numbers"].tolist(), arrays["frac_coords"].copy()
        )

    def cif(self, i: int) -> str:
        """The source CIF text of record ``i`` (for POSCAR/extxyz inputs: a CIF written at ingest)."""
        arrays, _ = decode_record(self._raw(i), ("cif",))
        return arrays["cif"].tobytes().decode("utf-8")

    # -- whole-store index ----------------------------------------------------------------------
    def _load_index(self) -> dict[str, Any]:
        if self._index is None:
            ids: list[str] = []
            targets = np.empty((self._count, len(self.target_names)), dtype=np.float64)
            families: list[dict[str, str]] = []
            errors: list[dict[str, str]] = []
            with self._txn_env().begin() as txn:
                for i in range(self._count):
                    raw = txn.get(str(i).encode("ascii"))
                    if raw is None:
                        raise StoreError(f"{self.path}: record {i} missing (corrupt store)")
                    arrays, info = decode_record(raw, ("y",))
                    ids.append(str(info["id"]))
                    targets[i] = arrays["y"].reshape(-1)
                    families.append(info.get("families", {}))
                    errors.append(info.get("family_errors", {}))
            self._index = {"ids": ids, "targets": targets, "families": families, "errors": errors}
        return self._index

    @property
    def ids(self) -> list[str]:
        """The id of every record, in store order."""
        return list(self._load_index()["ids"])

    @property
    def targets(self) -> np.ndarray:
        """All targets (NaN = missing).

        Shapes:
            (N, T) float64, columns as :attr:`target_names`.
        """
        return self._load_index()["targets"].copy()

    def family_kinds(self) -> list[str]:
        """The family kinds available in this store (structural kinds and ``column:<name>``)."""
        kinds = set(FAMILY_KINDS)
        for families in self._load_index()["families"][:1]:
            kinds.update(k for k in families if k.startswith("column:"))
        return sorted(kinds)

    def _fill_composition_keys(self, index: dict[str, Any]) -> None:
        """``anion_class`` and ``cation`` of records stored before ingest wrote them (from their atomic numbers)."""
        from matmeta.families import anion_class_of, cation_of

        for i, families in enumerate(index["families"]):
            if "cation" not in families:
                numbers = decode_record(self._raw(i), ("atomic_numbers",), with_info=False)[0]["atomic_numbers"]
                index["families"][i] = {
                    **families,
                    "anion_class": anion_class_of(numbers),
                    "cation": cation_of(numbers),
                }

    def _fill_symmetry(self, index: dict[str, Any]) -> None:
        """Space groups and prototypes of the records that lack them (:mod:`matmeta.store.symmetry`: cached)."""
        from matmeta.store.symmetry import symmetry_keys

        if all("prototype" in families for families in index["families"]):
            return
        found = symmetry_keys(self, index["ids"])
        for i, families in enumerate(index["families"]):
            index["families"][i] = {
                "spacegroup": found["spacegroup"][i],
                "prototype": found["prototype"][i],
                "prototype_signature": found["prototype_signature"][i],
                **families,  # a key stored at ingest (older stores' space groups) stays
            }

    def family_keys(self, by: str, undefined: str = "raise") -> list[str]:
        """The family of every record by one kind (``anion_set``, ``b_site``, …, ``column:<name>``).

        Args:
            by: the family kind.
            undefined: ``"raise"`` when the kind does not apply to some records, or ``"empty"``: their key is "".

        Raises:
            MatmetaInputError: an unknown kind, or (with ``undefined="raise"``) records the kind does not
                apply to (e.g. ``b_site`` of a non-perovskite; the message counts them and gives the first reason).
        """
        index = self._load_index()
        if by in ("spacegroup", "prototype", "prototype_signature"):
            self._fill_symmetry(index)
        if by in ("anion_class", "cation"):
            self._fill_composition_keys(index)
        keys: list[str] = []
        bad: list[str] = []
        for families, errors, rid in zip(index["families"], index["errors"], index["ids"], strict=True):
            if by in families:
                keys.append(families[by])
            elif by in errors:
                keys.append("")
                bad.append(f"id {rid}: {errors[by]}")
            else:
                raise MatmetaInputError(
                    f"{self.path}: no family kind {by!r} (available: {', '.join(self.family_kinds())})"
                )
        if bad and undefined == "raise":
            raise MatmetaInputError(f"{self.path}: {by} is undefined for {len(bad)} record(s); first: {bad[0]}")
        return keys
