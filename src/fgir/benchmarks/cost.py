"""`fgir cost`: parameters and MACs of a registry model (optionally wrapped by a task plug-in)."""

from __future__ import annotations

from ..config import Config
from ..engine.build import build_model
from .flops import count_macs, count_params


def model_cost(name: str, img_size: int, num_classes: int = 200, task: str = "classification",
               attention: bool = True, **model_kwargs) -> dict:
    cfg = Config()
    cfg.model.name = name
    cfg.model.kwargs = dict(model_kwargs)
    cfg.task.name = task
    if name.startswith("vitfs") or "vit" in name or "deit" in name:
        cfg.model.kwargs.setdefault("img_size", img_size)
    try:
        model = build_model(cfg, num_classes)
    except TypeError:
        cfg.model.kwargs.pop("img_size", None)
        model = build_model(cfg, num_classes)
    macs = count_macs(model, img_size, attention=attention)
    return {"model": name, "task": task, "img_size": img_size, "num_classes": num_classes,
            "params": count_params(model), "params_trainable": count_params(model, trainable_only=True),
            "macs": macs, "gmacs": round(macs / 1e9, 4), "attention_counted": attention}
