"""Plain classification: cross-entropy (label smoothing) or soft-target CE after mixup/cutmix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TaskConfig
from ..registry import TASKS
from .task import IOSpec, Task


@dataclass
class ClassificationConfig(TaskConfig):
    """Plain classification: cross-entropy with label smoothing (soft-target CE after mixup/cutmix)."""


class ClassificationTask(Task):
    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, io: IOSpec | None = None,
                 inference: str = "default"):
        super().__init__(io, inference)
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.model(batch["image"])
        out = {"loss": classification_loss(logits, batch["target"], self.label_smoothing), "logits": logits}
        return add_aux_losses(self.model, out)


def add_aux_losses(model: nn.Module, out: dict) -> dict:
    """Add the ``loss_*`` terms a plug-in reports for the last forward through ``model.fgir_aux_losses()``
    (e.g. DynamicViT's keep-ratio loss) to ``out["loss"]`` and log them as entries of ``out``."""
    aux = getattr(model, "fgir_aux_losses", None)
    for k, v in (aux() if callable(aux) else {}).items():
        out["loss"] = out["loss"] + v
        out[k] = v
    return out


def classification_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE with label smoothing for hard targets; soft-target CE for (B, K) mixed targets."""
    if target.ndim == 2:
        return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


@TASKS.register("classification", config=ClassificationConfig)
def build_classification(cfg, model: nn.Module, num_classes: int, **_) -> ClassificationTask:
    return ClassificationTask(model, cfg.optim.label_smoothing)
