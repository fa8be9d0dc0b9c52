"""Fetch the public CDVAE benchmark datasets (Perov-5, MP-20, Carbon-24) and verify them.

The CSV splits live in the CDVAE repository (Xie et al., ICLR 2022, github.com/txie-93/cdvae,
MIT licence). The upstream project publishes no checksums, so a download is verified by content:
the expected columns, a readable CIF cell in every row, unique ids within a split and the total
row count published with the dataset (within 1%). The SHA-256 of every verified file is then
written to ``MANIFEST.json`` beside it; later calls re-check the files against the manifest and
refuse silently changed or truncated copies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from matmeta.errors import MatmetaError, MatmetaInputError

BASE_URL = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
SPLITS = ("train", "val", "test")
MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class DatasetInfo:
    """One CDVAE dataset: where it lives and what a correct copy looks like."""

    name: str
    slug: str
    columns: tuple[str, ...]
    total_rows: int
    description: str

    def url(self, split: str) -> str:
        """Raw URL of one split."""
        return f"{BASE_URL}/{self.slug}/{split}.csv"


DATASETS: dict[str, DatasetInfo] = {
    "perovskites": DatasetInfo(
        "perovskites",
        "perov_5",
        ("material_id", "cif", "heat_ref", "heat_all", "dir_gap", "ind_gap"),
        18928,
        "Perov-5: 18,928 ABX3 perovskites, 5 atoms per cell (Castelli et al. 2012)",
    ),
    "mp20": DatasetInfo(
        "mp20",
        "mp_20",
        ("material_id", "cif", "formation_energy_per_atom", "band_gap"),
        45231,
        "MP-20: 45,231 Materials Project structures with at most 20 atoms (Jain et al. 2013)",
    ),
    "carbon24": DatasetInfo(
        "carbon24",
        "carbon_24",
        ("material_id", "cif", "energy_per_atom"),
        10153,
        "Carbon-24: 10,153 carbon structures from AIRSS at 10 GPa (Pickard 2020)",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The dataset called ``name`` (perovskites, mp20, carbon24)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise MatmetaInputError(f"{name}: unknown dataset (choose {', '.join(DATASETS)})") from None


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_split(path: Path, info: DatasetInfo) -> int:
    """Check one split's content; return its row count.

    Raises:
        MatmetaInputError: a missing column, a row without a CIF cell, or a repeated id.
    """
    from matmeta.io import read_csv

    _, rows = read_csv(path, info.columns)
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        if "_cell_length_a" not in row["cif"]:
            raise MatmetaInputError(f"{path} row {number}: the cif column holds no CIF cell")
        rid = row["material_id"]
        if rid in seen:
            raise MatmetaInputError(f"{path} row {number}: duplicate material_id {rid!r} (first at row {seen[rid]})")
        seen[rid] = number
    if not rows:
        raise MatmetaInputError(f"{path}: no rows")
    return len(rows)


def _check_total(info: DatasetInfo, counts: dict[str, int], where: Path) -> None:
    total = sum(counts.values())
    if abs(total - info.total_rows) > 0.01 * info.total_rows:
        raise MatmetaInputError(
            f"{where}: {total} rows in {', '.join(SPLITS)}; {info.name} has {info.total_rows} (incomplete copy?)"
        )


def _fetch(url: str, target: Path, timeout: float) -> None:
    from matmeta.atomic import atomic_path

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
            with tmp.open("wb") as handle:
                shutil.copyfileobj(response, handle)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MatmetaError(
            f"cannot download {url} ({reason}); offline? Fetch train/val/test.csv elsewhere and pass --from PATH"
        ) from None


def verify_manifest(folder: Path) -> dict[str, str]:
    """Re-check the files of a downloaded dataset against its manifest.

    Raises:
        MatmetaInputError: no manifest, a missing file or a changed checksum.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise MatmetaInputError(f"{folder}: no {MANIFEST} (not downloaded by matmeta)")
    manifest = json.loads(manifest_path.read_text())
    for split, digest in manifest["sha256"].items():
        path = folder / f"{split}.csv"
        if not path.exists():
            raise MatmetaInputError(f"{path}: missing")
        if sha256(path) != digest:
            raise MatmetaInputError(f"{path}: checksum differs from {MANIFEST} (changed or truncated)")
    return manifest["sha256"]


def download(
    name: str,
    root: str | Path,
    from_path: str | Path | None = None,
    timeout: float = 30.0,
    force: bool = False,
) -> Path:
    """Fetch (or copy from ``from_path``) and verify one dataset into ``root/<name>/``.

    Args:
        name: perovskites, mp20 or carbon24.
        root: Data directory; the dataset goes to ``root/name/{train,val,test}.csv``.
        from_path: A folder with ``train.csv``, ``val.csv`` and ``test.csv`` (a local copy).
        timeout: Seconds per network request.
        force: Fetch again even if a verified copy is there.

    Returns:
        The dataset folder.

    Raises:
        MatmetaError: offline or unreachable source (one line, pointing to ``--from``).
        MatmetaInputError: a copy that fails verification (nothing is kept then).
    """
    from matmeta.atomic import atomic_path, write_text_atomic

    info = dataset_info(name)
    folder = Path(root) / info.name
    if not force and (folder / MANIFEST).exists():
        verify_manifest(folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    staging = {split: folder / f".{split}.csv.part" for split in SPLITS}
    try:
        for split in SPLITS:
            if from_path is not None:
                source = Path(from_path) / f"{split}.csv"
                if not source.exists():
                    raise MatmetaInputError(f"{source}: missing (--from needs train.csv, val.csv and test.csv)")
                with atomic_path(staging[split]) as tmp:
                    shutil.copyfile(source, tmp)
            else:
                _fetch(info.url(split), staging[split], timeout)
        counts = {split: verify_split(staging[split], info) for split in SPLITS}
        _check_total(info, counts, Path(from_path) if from_path else folder)
        digests = {}
        for split in SPLITS:
            final = folder / f"{split}.csv"
            staging[split].replace(final)
            digests[split] = sha256(final)
        source_text = str(from_path) if from_path is not None else f"{BASE_URL}/{info.slug}"
        write_text_atomic(
            folder / MANIFEST,
            json.dumps({"dataset": info.name, "source": source_text, "rows": counts, "sha256": digests}, indent=2),
        )
    finally:
        for path in staging.values():
            path.unlink(missing_ok=True)
        if not any(folder.iterdir()):
            folder.rmdir()  # a failed first download leaves nothing behind
    return folder


def dataset_files(name: str, root: str | Path) -> list[Path]:
    """The verified split CSVs of a downloaded dataset (for ``matmeta data ingest NAME``).

    Raises:
        MatmetaInputError: not downloaded yet, or changed since.
    """
    info = dataset_info(name)
    folder = Path(root) / info.name
    if not (folder / MANIFEST).exists():
        raise MatmetaInputError(f"{name}: not downloaded to {folder}; run `matmeta data download {name}`")
    verify_manifest(folder)
    return [folder / f"{split}.csv" for split in SPLITS]
