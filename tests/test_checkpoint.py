"""Checkpoints: round trip, pickles refused without running them, truncated and foreign files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from matmeta import __version__
from matmeta.checkpoint import expect, load_checkpoint, load_state_strict, read_metadata, save_checkpoint
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
