"""Checkpoints: one safetensors file of weights with JSON metadata in its header.

Everything needed to use the weights travels with them: model class and config, graph
settings, target names and normalisation, families seen, recipe, matmeta version. Files are
never unpickled: a pickle or ``torch.save`` zip is refused with a clear error.

Provenance: every checkpoint is saved with two sha256 digests in its header (key ``matmeta_sha256``):
one of its tensors (each tensor's name, dtype, shape and raw bytes, in name order: :func:`tensors_sha256`)
and one of its JSON metadata (the exact ``matmeta`` header string). Both are verified on load (the
metadata one also by :func:`read_metadata`), so a flipped byte in the weights or the metadata is refused
with a :class:`~matmeta.errors.CheckpointError` naming the file instead of loading silently. A checkpoint
without digests (saved before checkpoints carried them, issue 33: users' older files) loads as before,
unverified and without a warning, since there is nothing to check it against; saving it again adds them
(:func:`stored_digest` says which kind a file is). The digests guard against corruption (bad copies,
truncation, bit flips), not against tampering: anyone can recompute a sha256.
"""

from __future__ import annotations

import hashlib
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
#: Header key of the provenance digests (``{"metadata": hex, "tensors": hex}``), beside ``matmeta``.
DIGEST_KEY = "matmeta_sha256"


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """sha256 of tensors: each one's name, dtype and shape, then its raw bytes, in name order (any layout)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode() + b"\n")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-serialisable ``metadata`` atomically to ``path``, with their sha256 digests."""
    from safetensors.torch import save_file

    path = Path(path)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "matmeta_version": __version__, **metadata}
    try:
        text = json.dumps(header, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(f"{path}: metadata is not JSON-serialisable ({exc})") from None
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    digests = json.dumps({"metadata": _text_sha256(text), "tensors": tensors_sha256(plain)}, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={"matmeta": text, DIGEST_KEY: digests})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (its digest verified when it has one), without loading its tensors."""
    return _open(Path(path))[0]


def stored_digest(path: str | Path) -> dict[str, str] | None:
    """The sha256 digests saved in a checkpoint (``metadata``, ``tensors``), or None for an unhashed older file."""
    return _open(Path(path))[1]


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a matmeta checkpoint (CPU tensors), both verified against their stored sha256.

    Raises:
        CheckpointError: missing, unreadable, pickled, foreign or newer file, or (for a hashed file) tensors or
            metadata that do not match the digest saved with them.
    """
    from safetensors.torch import load_file

    path = Path(path)
    metadata, digest = _open(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc})") from None
    if digest is not None and tensors_sha256(tensors) != digest["tensors"]:
        raise CheckpointError(
            f"{path}: corrupt checkpoint: its weights do not match the sha256 saved with them (a changed byte)"
        )
    return tensors, metadata


def _digest(path: Path, raw: str | None, text: str) -> dict[str, str] | None:
    """The file's stored digests (None: an unhashed older file), its metadata already checked against them."""
    if raw is None:
        return None
    try:
        digest = json.loads(raw)
        valid = isinstance(digest, dict) and all(isinstance(digest.get(k), str) for k in ("metadata", "tensors"))
    except json.JSONDecodeError:
        valid = False
    if not valid:
        raise CheckpointError(f"{path}: corrupt checkpoint: unreadable {DIGEST_KEY} record")
    if _text_sha256(text) != digest["metadata"]:
        raise CheckpointError(
            f"{path}: corrupt checkpoint: its metadata does not match the sha256 saved with it (a changed byte)"
        )
    return digest


def _open(path: Path) -> tuple[dict[str, Any], dict[str, str] | None]:
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .ckpt file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        raw, raw_digest = header.get("matmeta"), header.get(DIGEST_KEY)
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
    digest = _digest(path, raw_digest, raw)
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
    return metadata, digest


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
