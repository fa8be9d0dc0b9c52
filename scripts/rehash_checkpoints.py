"""Give checkpoints saved before issue 33 their sha256 digests, changing nothing else; verify that.

Every checkpoint written by :func:`matmeta.checkpoint.save_checkpoint` carries the digests; this is for
older files (the shipped ones were re-saved with it). For each file without digests: read the tensors and
the raw metadata string, save them again through ``save_checkpoint``, and check that the tensor data bytes
(the whole safetensors data section) and every tensor's dtype and shape are identical, and that the
metadata string is unchanged, except where ``--note`` adds to it. A file that already has digests is
only verified.

    python scripts/rehash_checkpoints.py matmeta/checkpoints/*.ckpt
    python scripts/rehash_checkpoints.py matmeta/checkpoints/CrystalGNN-*.ckpt --note untimed

``--note untimed`` marks a predictor whose weights predate the phase timing code: ``training.phase_seconds``
null and a ``provenance_note`` (rather than retraining it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

UNTIMED_NOTE = (
    "The weights were trained before matmeta recorded training phase times, so training.phase_seconds is null "
    "(not measured, not zero). Marked rather than retrained (issue 33): only this note, training.phase_seconds and "
    "the sha256 digests were added; the tensors and all other metadata are as they were."
)


def _data_section(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[8 + int.from_bytes(raw[:8], "little") :]


def rehash(path: Path, note: str | None) -> str:
    """Re-save ``path`` with digests (verified bit for bit), or verify it; returns what was done."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from matmeta.checkpoint import load_checkpoint, save_checkpoint, stored_digest

    if stored_digest(path) is not None:
        load_checkpoint(path)  # raises if either digest does not match
        return "already hashed, verified"
    with safe_open(str(path), framework="pt") as handle:
        text = handle.metadata()["matmeta"]
    before, data = load_file(str(path), device="cpu"), _data_section(path)
    metadata = json.loads(text)
    if note == "untimed":
        metadata["training"] = {**metadata["training"], "phase_seconds": None}
        metadata["provenance_note"] = UNTIMED_NOTE
    save_checkpoint(path, before, {k: v for k, v in metadata.items() if k not in ("format", "format_version")})
    after, _ = load_checkpoint(path)  # verifies the new digests
    with safe_open(str(path), framework="pt") as handle:
        new_text = handle.metadata()["matmeta"]
    assert _data_section(path) == data, f"{path}: tensor data bytes changed"
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and after[name].shape == tensor.shape, f"{path}: {name} changed"
        assert torch.equal(after[name], tensor), f"{path}: {name} changed"
    original, saved = json.loads(text), json.loads(new_text)
    if note is None:
        assert new_text == text, f"{path}: metadata changed"
    else:  # only the note and training.phase_seconds are new
        assert set(saved) == set(original) | {"provenance_note"}
        assert all(saved[k] == original[k] for k in original if k != "training"), f"{path}: metadata changed"
        assert saved["training"] == {**original["training"], "phase_seconds": None}
    return "hashed; tensor bytes identical" + ("" if note is None else f"; marked {note}")


def main() -> int:
    """Rehash every file given; 1 if any check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--note", choices=["untimed"], default=None, help="also mark the file (see above)")
    args = parser.parse_args()
    for path in args.paths:
        print(f"{path}: {rehash(path, args.note)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
