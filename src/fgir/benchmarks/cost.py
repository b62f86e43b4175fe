"""`fgir cost`: parameters (total, trainable) and MACs of a registry model with its plug-ins, and
optionally its measured throughput on a device."""

from __future__ import annotations

from typing import Any

from ..config import Config, from_dict
from ..engine.build import build_model
from .flops import count_macs, count_params


def cost_config(name: str, img_size: int, plugins: list | None = None, trainable: list | None = None,
                **model_kwargs: Any) -> Config:
    """The config ``fgir cost`` builds: ``name`` at ``img_size`` with ``plugins`` / ``trainable``."""
    model: dict[str, Any] = {"name": name, "kwargs": dict(model_kwargs)}
    if plugins:
        model["plugins"] = list(plugins)
    if trainable:
        model["trainable"] = list(trainable)
    cfg = from_dict(Config, {"model": model, "data": {"img_size": img_size}})
    for i, p in enumerate(cfg.model.plugins):
        p.validate(cfg, f"--plugins[{i}]")
    return cfg


def model_cost(name: str, img_size: int, num_classes: int = 200, plugins: list | None = None,
               attention: bool = True, trainable: list | None = None, throughput: bool = False,
               device: str = "cpu", batch_size: int = 32, **model_kwargs: Any) -> dict:
    """Params and MACs (batch-1, eval mode) of ``name`` with ``plugins``; with ``throughput`` also the
    measured batch throughput and latency on ``device`` (:func:`fgir.benchmarks.speed.measure_throughput`)."""
    cfg = cost_config(name, img_size, plugins, trainable, **model_kwargs)
    model = build_model(cfg, num_classes)
    macs = count_macs(model, img_size, attention=attention)
    row = {"model": name, "plugins": [p.name for p in cfg.model.plugins], "img_size": img_size,
           "num_classes": num_classes, "params": count_params(model),
           "params_trainable": count_params(model, trainable_only=True), "macs": macs,
           "gmacs": round(macs / 1e9, 4), "attention_counted": attention}
    if throughput:
        from .speed import measure_throughput

        speed = measure_throughput(model, img_size, batch_size=batch_size, device=device)
        row.update({k: speed[k] for k in ("img_per_s", "latency_ms_median", "peak_mem_allocated_mib")},
                   device=str(device), batch_size=batch_size)
    return row
