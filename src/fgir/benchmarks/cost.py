"""`fgir cost`: parameters (total, trainable) and MACs of a registry model with its plug-ins, and
optionally its measured throughput on a device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from ..config import Config, from_dict
from ..engine.build import build_model
from .flops import count_macs, count_params

UFGIR5_CLASSES: tuple[int, ...] = (80, 198, 1110, 1938, 200)
"""Classes of the five ultra-fine-grained tasks of ILA Table 1: Cotton80, SoyAgeing, SoyGene, SoyGlobal, SoyLocal."""
PAPER_EFFECTIVE_CLASSES = 2257
"""The class total that reproduces every TTP the ILA paper prints (ila.md §7; cause unknown): 1,269 fewer than 3,526."""


def ttp_census(model: nn.Module, num_classes: int) -> dict:
    """Trainable parameters split into head and non-head (what TTP needs): ``head_per_class`` is the
    head's trainable count per class (``D + 1`` for a linear head), None when it is not a multiple."""
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in clf.parameters()} if isinstance(clf, nn.Module) else set()
    seen: set[int] = set()
    head = non_head = 0
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if id(p) in head_ids:
            head += p.numel()
        else:
            non_head += p.numel()
    per_class = head // num_classes if num_classes > 0 and head % num_classes == 0 else None
    return {"trainable": head + non_head, "non_head_trainable": non_head, "head_trainable": head,
            "num_classes": num_classes, "head_per_class": per_class}


def total_trainable_params(non_head: int, head_per_class: int, class_counts: Sequence[int] = UFGIR5_CLASSES) -> int:
    """TTP (ILA, ila.md §7): trainable parameters summed over one model per task,
    ``len(class_counts) * non_head + head_per_class * sum(class_counts)``.

    ILA++ on ViT-B/16 (non-head 354,800, linear head 769 per class): 4,485,494 with the true class
    counts; :func:`ttp_paper_convention` gives the paper's 3,509,633."""
    return len(class_counts) * int(non_head) + int(head_per_class) * int(sum(class_counts))


def ttp_paper_convention(non_head: int, head_per_class: int, tasks: int = 5,
                         classes: int = PAPER_EFFECTIVE_CLASSES) -> int:
    """The TTP the ILA paper prints: ``tasks * non_head + head_per_class * C_eff`` (C_eff = 2,257)."""
    return tasks * int(non_head) + int(head_per_class) * int(classes)


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
    t = ttp_census(model, num_classes)
    row.update(params_trainable_non_head=t["non_head_trainable"], head_per_class=t["head_per_class"])
    if t["head_per_class"] is not None:
        row.update(ttp_ufgir5=total_trainable_params(t["non_head_trainable"], t["head_per_class"]),
                   ttp_ufgir5_paper=ttp_paper_convention(t["non_head_trainable"], t["head_per_class"]))
    if throughput:
        from .speed import measure_throughput

        speed = measure_throughput(model, img_size, batch_size=batch_size, device=device)
        row.update({k: speed[k] for k in ("img_per_s", "latency_ms_median", "peak_mem_allocated_mib")},
                   device=str(device), batch_size=batch_size)
    return row
