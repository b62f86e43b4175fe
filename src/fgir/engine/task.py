"""Training is a Task module: ``forward(batch) -> {"loss", "logits", ...}``.

The train loop never knows which method runs. A Task owns the deployable ``model`` (the module
that is checkpointed, evaluated, exported) plus whatever else the method needs (a frozen
teacher, a loss). Batches are dicts: ``image`` (B,3,S,S float, normalised), ``target`` (B long,
or B x K soft targets after mixup/cutmix), ``label`` (B long, always hard) and ``index``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


class Task(nn.Module):
    """Base class. Subclasses set ``self.model`` and implement ``forward``."""

    model: nn.Module

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the deployable model for evaluation (no augmentation, no teacher)."""
        return self.model(images)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def on_train_start(self) -> None:
        """Called when the loop puts the task in train mode (frozen parts go back to eval)."""

    def train(self, mode: bool = True) -> Task:
        super().train(mode)
        if mode:
            self.on_train_start()
        return self
