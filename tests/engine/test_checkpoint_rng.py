"""RNG state in the training state: CPU round trip, and the CUDA path through a stand-in torch.cuda."""

import random

import numpy as np
import pytest
import torch

from fgir.engine import checkpoint as ckpt


def _round_trip(tmp_path, state: dict) -> dict:
    ckpt.save_training_state(tmp_path, 1, {"rng": state})
    return ckpt.load_training_state(tmp_path / "state_e0001.safetensors")["rng"]


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


class _FakeCuda:
    """The slice of torch.cuda that rng_state / set_rng_state use, for `devices` devices."""

    def __init__(self, devices: int, initialized: bool = True):
        self.devices, self.initialized, self.restored = devices, initialized, None
        self.states = [torch.arange(16, dtype=torch.uint8) + d for d in range(devices)]

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.devices > 0)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.devices)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: setattr(self, "restored", list(states)))
        return self


def test_cpu_rng_round_trip_without_cuda(tmp_path, monkeypatch):
    _FakeCuda(0).install(monkeypatch)
    st = _round_trip(tmp_path, ckpt.rng_state())
    assert st["cuda"] == []
    expected = _draws()
    _draws()  # move every stream on
    ckpt.set_rng_state(st)
    assert _draws() == expected


def test_cuda_rng_states_saved_and_restored(tmp_path, monkeypatch):
    fake = _FakeCuda(2).install(monkeypatch)
    st = _round_trip(tmp_path, ckpt.rng_state())
    assert len(st["cuda"]) == 2
    ckpt.set_rng_state(st)
    assert fake.restored is not None and len(fake.restored) == 2
    for got, want in zip(fake.restored, fake.states):
        assert got.dtype == torch.uint8
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_uninitialised_cuda_is_not_touched(tmp_path, monkeypatch):
    fake = _FakeCuda(1, initialized=False).install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("would initialise CUDA"))
    st = ckpt.rng_state()
    assert st["cuda"] == []
    ckpt.set_rng_state(st)
    assert fake.restored is None


def test_state_without_cuda_restores_on_cuda(tmp_path, monkeypatch):
    _FakeCuda(0).install(monkeypatch)
    st = _round_trip(tmp_path, ckpt.rng_state())
    fake = _FakeCuda(2).install(monkeypatch)
    ckpt.set_rng_state(st)
    legacy = {k: v for k, v in st.items() if k != "cuda"}  # written before CUDA states were saved
    ckpt.set_rng_state(legacy)
    assert fake.restored is None


@pytest.mark.parametrize("devices_now", [0, 1])
def test_cuda_state_on_other_device_count_warns_and_restores_the_rest(tmp_path, monkeypatch, devices_now):
    _FakeCuda(2).install(monkeypatch)
    st = _round_trip(tmp_path, ckpt.rng_state())
    expected = _draws()
    fake = _FakeCuda(devices_now).install(monkeypatch)
    with pytest.warns(UserWarning, match=f"CUDA RNG states for 2 device.*has {devices_now}"):
        ckpt.set_rng_state(st)
    assert fake.restored is None
    assert _draws() == expected
