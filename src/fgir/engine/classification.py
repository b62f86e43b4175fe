"""Plain classification: cross-entropy (label smoothing) or soft-target CE after mixup/cutmix.

Long-tail options (``task: {name: classification, loss: ..., tau: ...}``), both computed with the
training split's class frequencies pi_c and used only in the loss (predictions are the raw logits):

* ``balanced_softmax`` (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
  arXiv 2007.10740): CE on ``logits + log pi``;
* ``logit_adjusted`` (Menon et al., "Long-tail learning via logit adjustment", arXiv 2007.07314):
  CE on ``logits + tau * log pi`` (tau = 1 is balanced softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, TaskConfig
from ..registry import TASKS
from .task import IOSpec, Task

LOSSES = ("ce", "balanced_softmax", "logit_adjusted")


@dataclass
class ClassificationConfig(TaskConfig):
    """Plain classification: cross-entropy with label smoothing (soft-target CE after mixup/cutmix)."""

    loss: str = "ce"
    """ce, balanced_softmax (CE on logits + log training class prior) or logit_adjusted (+ tau * log prior)."""
    tau: float = 1.0
    """Scale of the log prior for loss=logit_adjusted (1.0 = balanced_softmax)."""

    def validate(self, cfg) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"task.loss={self.loss!r} is not allowed; expected one of {', '.join(LOSSES)}.")
        if not (isinstance(self.tau, (int, float)) and not isinstance(self.tau, bool) and 0 < self.tau < float("inf")):
            raise ConfigError(f"task.tau={self.tau!r} is out of range; expected a number > 0.")


def log_prior(class_counts: torch.Tensor) -> torch.Tensor:
    """log pi_c of training-set class counts; a class without training images counts as 1 (so its
    adjustment stays finite)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64).clamp_min(1)
    return (counts / counts.sum()).log().float()


class ClassificationTask(Task):
    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, io: IOSpec | None = None,
                 inference: str = "default", logit_adjustment: torch.Tensor | None = None):
        super().__init__(io, inference)
        self.model = model
        self.label_smoothing = label_smoothing
        # tau * log prior added to the logits inside the loss only (None = plain CE); not saved in checkpoints
        self.register_buffer("logit_adjustment", logit_adjustment, persistent=False)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.model(batch["image"])
        z = logits if self.logit_adjustment is None else logits.float() + self.logit_adjustment
        out = {"loss": classification_loss(z, batch["target"], self.label_smoothing), "logits": logits}
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
def build_classification(cfg, model: nn.Module, num_classes: int, class_counts=None, **_) -> ClassificationTask:
    """``class_counts``: training images per class (K), needed by the long-tail losses."""
    loss = getattr(cfg.task, "loss", "ce")
    adjustment = None
    if loss != "ce":
        if class_counts is None:
            raise ValueError(f"task.loss={loss} needs the training split's class counts (build_task(..., "
                             "class_counts=...)); fgir train passes them.")
        if len(class_counts) != num_classes:
            raise ValueError(f"task.loss={loss}: {len(class_counts)} class counts for {num_classes} classes.")
        tau = 1.0 if loss == "balanced_softmax" else float(cfg.task.tau)
        adjustment = tau * log_prior(class_counts)
    return ClassificationTask(model, cfg.optim.label_smoothing, logit_adjustment=adjustment)
