"""Speed measurement on CPU with a tiny model and tiny iteration counts (protocol, not numbers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fgir.benchmarks.speed import environment, measure_throughput, measure_train_step_rate

FAST = {"warmup": 1, "repeats": 2, "min_seconds": 0.0, "threads": 1}


def _tiny(num_classes: int = 5) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))


def test_throughput_reports_positive_rates_and_latencies():
    r = measure_throughput(_tiny(), 32, batch_size=4, iters=3, **FAST)
    assert r["img_per_s"] > 0 and len(r["img_per_s_repeats"]) == 2
    assert 0 < r["latency_ms_median"] <= r["latency_ms_p90"]
    assert r["iters_per_repeat"] == [3, 3]


def test_throughput_is_median_of_repeats():
    r = measure_throughput(_tiny(), 16, batch_size=2, iters=2, warmup=0, repeats=3, min_seconds=0.0)
    torch.testing.assert_close(r["img_per_s"], sorted(r["img_per_s_repeats"])[1], rtol=0, atol=0)


def test_throughput_min_seconds_extends_the_timed_loop():
    r = measure_throughput(_tiny(), 16, batch_size=1, iters=2, warmup=0, repeats=1, min_seconds=0.05)
    assert r["seconds_per_repeat"][0] >= 0.05 and r["iters_per_repeat"][0] % 2 == 0


def test_throughput_records_environment_fingerprint():
    r = measure_throughput(_tiny(), (32, 24), batch_size=2, iters=1, **FAST)
    got = (r["device"], r["dtype"], r["batch_size"], r["img_size"], r["threads"])
    assert got == ("cpu", "fp32", 2, (32, 24), 1)
    assert r["torch"] == torch.__version__ and r["timm"] and r["peak_mem_allocated_mib"] is None
    assert "_fp32_b2_s32x24_t1" in r["fingerprint"]


def test_throughput_restores_threads_and_training_mode():
    model, threads = _tiny().train(), torch.get_num_threads()
    measure_throughput(model, 16, batch_size=2, iters=1, warmup=0, repeats=1, min_seconds=0.0, threads=1)
    assert model.training and torch.get_num_threads() == threads


def test_throughput_bf16_channels_last_on_cpu():
    r = measure_throughput(_tiny(), 16, batch_size=2, iters=1, dtype="bf16", channels_last=True, **FAST)
    assert r["img_per_s"] > 0 and r["dtype"] == "bf16" and r["channels_last"]


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        measure_throughput(_tiny(), 16, dtype="int8")


def test_train_step_rate_is_positive_and_updates_weights():
    model = _tiny()
    before = model[-1].weight.detach().clone()
    rate = measure_train_step_rate(model, 16, batch_size=4, steps=2, warmup=1, repeats=1, threads=1,
                                   grad_clip=1.0)
    assert rate > 0
    assert not torch.equal(before, model[-1].weight)


def test_train_step_rate_uses_optimizer_factory_and_dict_outputs():
    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _tiny(3)

        def forward(self, x):
            return {"logits": self.net(x)}

    made = []

    def factory(params):
        made.append(torch.optim.AdamW(params, lr=1e-3))
        return made[-1]

    rate = measure_train_step_rate(DictOut(), 16, batch_size=2, optimizer_factory=factory, steps=1, warmup=0,
                                   repeats=1, threads=1)
    assert rate > 0 and len(made) == 1 and made[0].state  # AdamW state exists once it has stepped


def test_environment_defaults_to_fp32_on_cpu():
    assert environment("cpu")["dtype"] == "fp32"
