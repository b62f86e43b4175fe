"""Build the deployable model and the Task for a config."""

from __future__ import annotations

import torch.nn as nn

from ..config import Config
from ..models.factory import create_model
from ..registry import TASKS


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The deployable model for ``cfg``: a registry model, wrapped by the task's plug-in if any."""
    m = cfg.model
    kwargs = dict(m.kwargs)
    if m.drop_rate:
        kwargs["drop_rate"] = m.drop_rate
    if m.drop_path_rate:
        kwargs["drop_path_rate"] = m.drop_path_rate
    if cfg.task.name == "cal":
        from ..models.plugins.cal import apply_cal

        backbone = create_model(m.name, num_classes=0, pretrained=m.pretrained, **kwargs)
        return apply_cal(backbone, num_classes, cfg.task.cal)
    return create_model(m.name, num_classes=num_classes, pretrained=m.pretrained, **kwargs)


def build_task(cfg: Config, model: nn.Module, num_classes: int, **kwargs):
    """The Task for ``cfg.task.name``; builders take ``(cfg, model, num_classes, **kwargs)``
    (``class_names`` lets distillation check the teacher's class table)."""
    from . import classification  # noqa: F401  (registers the plain task)

    if cfg.task.name not in TASKS:
        from . import distill  # noqa: F401  (registers cal and tgda)
    return TASKS.get(cfg.task.name)(cfg, model, num_classes, **kwargs)
