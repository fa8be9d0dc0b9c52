"""Checkpoints: round trip, pickles refused without running them, truncated and foreign files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from matmeta import __version__
from matmeta.checkpoint import (
    SHIPPED_DIR,
    expect,
    load_checkpoint,
    load_state_strict,
    read_metadata,
    save_checkpoint,
    stored_digest,
    tensors_sha256,
)
from matmeta.errors import CheckpointError


class _Payload:
    """Unpickling this object creates the marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.0.weight": torch.randn(4, 3, generator=g),
        "model.0.bias": torch.randn(4, generator=g, dtype=torch.float64),
        "log_lrs.0__weight": torch.tensor(-4.6),
        "counts": torch.arange(5),
    }


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = tmp_path / "sub" / "Model-Data-2026-11-26-test.ckpt"
    metadata = {"kind": "predictor", "targets": ["band_gap"], "graph": {"cutoff_angstrom": 6.0}, "mean": [0.5]}
    save_checkpoint(path, _tensors(), metadata)
    tensors, meta = load_checkpoint(path)
    assert tensors.keys() == _tensors().keys()
    for name, value in _tensors().items():
        assert tensors[name].dtype == value.dtype and torch.equal(tensors[name], value), name
    assert meta["kind"] == "predictor" and meta["graph"] == {"cutoff_angstrom": 6.0} and meta["mean"] == [0.5]
    assert meta["matmeta_version"] == __version__ and meta["format"] == "matmeta-checkpoint"
    assert read_metadata(path) == meta
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    expect(meta, path, kind="predictor")
    with pytest.raises(CheckpointError, match="kind='predictor'.*needs kind='jmak'"):
        expect(meta, path, kind="jmak")


def test_state_dict_round_trip_and_strict_mismatch(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    path = save_checkpoint(tmp_path / "m.ckpt", model.state_dict(), {"kind": "test"})
    tensors, _ = load_checkpoint(path)
    fresh = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    load_state_strict(fresh, tensors, path)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    with pytest.raises(CheckpointError, match=r"m\.ckpt: weights do not match Sequential"):
        load_state_strict(nn.Sequential(nn.Linear(3, 5)), tensors, path)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"model.weight": _Payload(str(marker))}, protocol=protocol))
    with pytest.raises(CheckpointError, match="evil.ckpt: (refused: a pickled file|not a readable safetensors)"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        read_metadata(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # control: the payload is live, unpickling it does create the marker
    assert marker.exists()


def test_torch_save_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "torchsave.ckpt"
    torch.save({"weight": torch.ones(2), "evil": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused: a pickled file"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "full.ckpt", _tensors(), {"kind": "test"})
    data = path.read_bytes()
    for cut, name in ((len(data) - 8, "tail"), (40, "header"), (4, "length")):
        broken = tmp_path / f"cut-{name}.ckpt"
        broken.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"cut-{name}.ckpt: (corrupt checkpoint|not a readable)"):
            load_checkpoint(broken)


def test_newer_format_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "future.ckpt"
    header = '{"format": "matmeta-checkpoint", "format_version": 99}'
    save_file({"w": torch.ones(2)}, str(path), metadata={"matmeta": header})
    with pytest.raises(CheckpointError, match="format 99 is newer"):
        load_checkpoint(path)


def test_missing_directory_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(CheckpointError, match="without matmeta metadata"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "bad.ckpt", {"w": torch.ones(2)}, {"kind": object()})
    assert not (tmp_path / "bad.ckpt").exists()


# ------------------------------------------------------------------------------------------------ provenance


def _data_start(raw: bytes) -> int:
    """Offset of a safetensors file's tensor data: 8-byte header length, then the JSON header."""
    return 8 + int.from_bytes(raw[:8], "little")


def test_a_flipped_byte_in_the_tensor_data_is_refused_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.ckpt", _tensors(), {"kind": "test"})
    raw = bytearray(path.read_bytes())
    start = _data_start(bytes(raw))
    for offset in (start, start + 21, len(raw) - 1):  # first, a middle and the last data byte
        flipped = bytearray(raw)
        flipped[offset] ^= 0x01
        broken = tmp_path / f"flip-{offset}.ckpt"
        broken.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match=f"^{broken}: corrupt checkpoint: its weights do not match"):
            load_checkpoint(broken)
        assert read_metadata(broken)["kind"] == "test"  # the metadata alone is intact
    tensors, _ = load_checkpoint(path)  # the untouched file loads, bit for bit
    assert all(torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype for k, v in _tensors().items())


def test_a_flipped_byte_in_the_metadata_is_refused_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.ckpt", _tensors(), {"kind": "test", "mean": [0.5]})
    raw = path.read_bytes()
    at = raw.index(b'\\"mean\\": [0.5]') + len(b'\\"mean\\": [0.')  # the 5 of 0.5 in the escaped JSON string
    assert raw[at : at + 1] == b"5"
    for flipped_to in (b"4", b"7"):  # still valid JSON, a different number
        broken = tmp_path / f"meta-{flipped_to.decode()}.ckpt"
        broken.write_bytes(raw[:at] + flipped_to + raw[at + 1 :])
        for reader in (load_checkpoint, read_metadata):
            with pytest.raises(CheckpointError, match=f"^{broken}: corrupt checkpoint: its metadata does not match"):
                reader(broken)
    digest = stored_digest(path)
    assert set(digest) == {"metadata", "tensors"} and digest["tensors"] == tensors_sha256(_tensors())


def test_an_unhashed_older_checkpoint_still_loads(tmp_path):
    import json

    from safetensors.torch import save_file

    path = tmp_path / "old.ckpt"
    header = {"format": "matmeta-checkpoint", "format_version": 1, "matmeta_version": "0.1.0", "kind": "test"}
    save_file(_tensors(), str(path), metadata={"matmeta": json.dumps(header, sort_keys=True)})
    tensors, metadata = load_checkpoint(path)
    assert metadata["kind"] == "test" and stored_digest(path) is None
    assert all(torch.equal(tensors[k], v) for k, v in _tensors().items())
    resaved = save_checkpoint(tmp_path / "new.ckpt", tensors, metadata)  # saving it again adds the digests
    assert stored_digest(resaved)["tensors"] == tensors_sha256(tensors) and load_checkpoint(resaved)[1] == metadata


def test_the_tensor_digest_covers_names_dtypes_and_shapes():
    base = {"w": torch.arange(6, dtype=torch.float32)}
    same_bytes = [
        {"v": base["w"]},
        {"w": base["w"].reshape(2, 3)},
        {"w": base["w"].view(torch.int32)},
    ]
    assert tensors_sha256(base) == tensors_sha256({"w": base["w"].clone()})
    assert len({tensors_sha256(base), *(tensors_sha256(t) for t in same_bytes)}) == 4
    transposed = base["w"].reshape(3, 2).t()  # a strided view hashes as its values, not its memory
    assert tensors_sha256({"w": transposed}) == tensors_sha256({"w": transposed.contiguous()})


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED_DIR.glob("*.ckpt")))
def test_every_shipped_checkpoint_carries_a_verified_hash(name):
    path = SHIPPED_DIR / name
    digest = stored_digest(path)
    assert digest is not None, f"{name} has no sha256: re-save it (scripts/rehash_checkpoints.py)"
    tensors, metadata = load_checkpoint(path)  # verifies both digests
    assert digest["tensors"] == tensors_sha256(tensors)
    if metadata.get("kind") == "predictor":  # phase times recorded, or marked as never measured (never missing)
        untimed = metadata["training"]["phase_seconds"] is None
        assert untimed == ("phase times" in metadata.get("provenance_note", ""))


def test_the_rehash_script_adds_digests_and_changes_no_tensor_byte(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    script = Path(__file__).resolve().parents[1] / "scripts" / "rehash_checkpoints.py"
    spec = importlib.util.spec_from_file_location("rehash_checkpoints", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "old.ckpt"
    header = {"format": "matmeta-checkpoint", "format_version": 1, "matmeta_version": "0.0.9", "kind": "predictor",
              "training": {"steps": 3}}  # fmt: skip
    save_file(_tensors(), str(path), metadata={"matmeta": json.dumps(header, sort_keys=True)})
    data = path.read_bytes()[_data_start(path.read_bytes()) :]
    assert module.rehash(path, "untimed").startswith("hashed; tensor bytes identical")
    assert path.read_bytes()[_data_start(path.read_bytes()) :] == data and stored_digest(path) is not None
    metadata = read_metadata(path)
    assert metadata["training"] == {"steps": 3, "phase_seconds": None} and metadata["matmeta_version"] == "0.0.9"
    assert module.rehash(path, None) == "already hashed, verified"
