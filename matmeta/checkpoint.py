"""Checkpoints: one safetensors file of weights with JSON metadata in its header.

Everything needed to use the weights travels with them: model class and config, graph
settings, target names and normalisation, families seen, recipe, matmeta version. Files are
never unpickled: a pickle or ``torch.save`` zip is refused with a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matmeta import __version__
from matmeta.atomic import atomic_path
from matmeta.errors import CheckpointError

SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"  # pretrained checkpoints packaged with matmeta
FORMAT = "matmeta-checkpoint"
FORMAT_VERSION = 1
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, zip (torch.save)


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-serialisable ``metadata`` atomically to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "matmeta_version": __version__, **metadata}
    try:
        text = json.dumps(header, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(f"{path}: metadata is not JSON-serialisable ({exc})") from None
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={"matmeta": text})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its tensors."""
    return _open(Path(path))[1]


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a matmeta checkpoint (CPU tensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    _, metadata = _open(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc})") from None
    return tensors, metadata


def _open(path: Path) -> tuple[None, dict[str, Any]]:
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .ckpt file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("matmeta")
    except Exception as exc:
        with path.open("rb") as stream:
            head = stream.read(4)
        # Only after safetensors failed: a safetensors header length may itself start with 0x80.
        if head[:1] == _PICKLE_MAGIC[0] or head == _PICKLE_MAGIC[1]:
            raise CheckpointError(
                f"{path}: refused: a pickled file (torch.save/pickle) can run code; matmeta reads safetensors only"
            ) from None
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without matmeta metadata")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt metadata header") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a matmeta checkpoint")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {metadata['format_version']} is newer than this matmeta ({FORMAT_VERSION})"
        )
    return None, metadata


def expect(metadata: dict[str, Any], path: str | Path, **required: Any) -> None:
    """Refuse a checkpoint whose metadata differs from ``required`` (e.g. ``kind="predictor"``)."""
    for key, wanted in required.items():
        found = metadata.get(key)
        if found != wanted:
            raise CheckpointError(f"{path}: checkpoint has {key}={found!r}, this command needs {key}={wanted!r}")


def load_state_strict(module: torch.nn.Module, tensors: dict[str, Tensor], path: str | Path) -> None:
    """The one loading pattern of every app: finite weights only, then ``load_state_dict(strict=True)``.

    Raises:
        CheckpointError: a NaN/inf weight, or names/shapes that do not match ``module`` (one line).
    """
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: checkpoint holds non-finite weights ({name})")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        reason = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{path}: weights do not match {type(module).__name__}: {reason}") from None
