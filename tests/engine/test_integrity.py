"""Checkpoints carry a checksum; damage is an error naming the file; a damaged newest training
state falls back to the one before it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg
from safetensors import safe_open

from fgir.engine import checkpoint as ckpt
from fgir.engine.train import train


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("integ")
    return Path(train(tiny_cfg(tiny_root, out, "optim.epochs=3", "data.test_split="))["run_dir"])


def _flip_tensor_byte(path: Path, out: Path) -> Path:
    """Copy ``path`` to ``out`` with one byte of the tensor data flipped (the header stays valid)."""
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 100] ^= 0x40
    out.write_bytes(bytes(data))
    return out


def test_every_file_records_a_checksum(run):
    with safe_open(str(run / "last.safetensors"), framework="pt") as f:
        assert len(f.metadata()["fgir_sha256"]) == 64


def test_flipped_byte_in_weights_is_an_error_naming_the_file(run, tmp_path):
    bad = _flip_tensor_byte(run / "last.safetensors", tmp_path / "last.safetensors")
    with pytest.raises(ckpt.CheckpointError, match=r"last\.safetensors is corrupt"):
        ckpt.read_tensors(bad)


def test_truncated_weights_are_an_error_naming_the_file(run, tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes((run / "last.safetensors").read_bytes()[:500])
    with pytest.raises(ckpt.CheckpointError, match=r"cut\.safetensors is not a readable safetensors file"):
        ckpt.read_tensors(bad)


def test_non_finite_weights_are_refused(tmp_path):
    m = torch.nn.Linear(2, 2)
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
    p = ckpt.save_weights(m, tmp_path / "nan.safetensors", {"config": {}})
    with pytest.raises(ckpt.CheckpointError, match="non-finite"):
        ckpt.read_tensors(p)


def test_two_states_are_kept(run):
    assert [q.name for q in ckpt.state_files(run)] == ["state_e0003.safetensors", "state_e0002.safetensors"]


def test_truncated_newest_state_falls_back_to_the_previous(run, tiny_root, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    newest = copy / "state_e0003.safetensors"
    newest.write_bytes(newest.read_bytes()[:300])
    res = train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=4", "data.test_split="), resume=str(copy))
    assert "Falling back to state_e0002.safetensors" in capsys.readouterr().out
    assert res["epochs"] == 4


def test_written_files_leave_no_temporaries(run):
    assert not list(run.glob("*.tmp*"))
