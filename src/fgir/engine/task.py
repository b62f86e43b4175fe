"""Training is a Task module: ``forward(batch) -> {"loss", "logits", ...}``.

The train loop never knows which method runs. A Task owns the deployable ``model`` (the module
that is checkpointed, evaluated, exported) plus whatever else the method needs (a frozen
teacher, a loss). Batches are dicts: ``image`` (B,3,S,S float, normalised), ``target`` (B long,
or B x K soft targets after mixup/cutmix), ``label`` (B long, always hard) and ``index``.

The contract the loop, checkpoints, evaluation and predict rely on (no attribute probing):

* :meth:`Task.input_spec` — the size and normalisation batches must arrive in;
* :meth:`Task.deploy_spec` — what is deployed: the model, its own input size and mean/std;
* :meth:`Task.predict` — logits of the deployed model (or a stand-in such as its EMA copy) for
  batches in the input format, through the configured inference variant
  (:func:`fgir.models.plugins.get_inference`);
* extra ``loss_*`` entries of :meth:`forward`'s output are averaged per epoch and logged;
* :meth:`Task.set_progress` — the training step, for losses that follow a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class IOSpec:
    """Input size and normalisation of a model or of a task's batches."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DeploySpec:
    """What a Task deploys: the model and the input it expects (size, mean, std)."""

    model: nn.Module
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def model_io(model: nn.Module, img_size: int = 0) -> IOSpec:
    """The IOSpec a model's ``pretrained_cfg`` states (ImageNet stats when it states none)."""
    pc = getattr(model, "pretrained_cfg", None) or {}
    size = img_size or int((pc.get("input_size") or (3, 224, 224))[-1])
    return IOSpec(size, tuple(pc.get("mean", IMAGENET_MEAN)), tuple(pc.get("std", IMAGENET_STD)))


class Task(nn.Module):
    """Base class. Subclasses set ``self.model`` and implement ``forward``.

    ``io`` (set by :func:`fgir.engine.build.build_task` from the config, or passed by callers) is
    the batch format; the base class deploys ``self.model`` with that same format.
    """

    model: nn.Module

    def __init__(self, io: IOSpec | None = None, inference: str = "default"):
        super().__init__()
        self.io = io
        self.inference = inference

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ contract
    def input_spec(self) -> IOSpec:
        """Size and normalisation the batches must be prepared with."""
        return self.io or model_io(self.model)

    def deploy_spec(self) -> DeploySpec:
        """The deployed model and its input format (default: the batch format)."""
        io = self.input_spec()
        return DeploySpec(self.model, io.img_size, io.mean, io.std)

    def to_deploy_input(self, images: torch.Tensor) -> torch.Tensor:
        """Batch-format images -> the deployed model's input format (identity by default)."""
        return images

    def predict(self, images: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Logits of the deployed model (or ``model``, e.g. its EMA copy) for batch-format images,
        through the inference variant ``self.inference``."""
        from ..models.plugins import get_inference

        return get_inference(model if model is not None else self.model, self.inference)(
            self.to_deploy_input(images))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def no_weight_decay(self) -> set[str]:
        """The deployed model's no-weight-decay names in the Task's namespace (timm's optimizer
        factory reads this; norms and biases are excluded by its 1-D rule)."""
        fn = getattr(self.model, "no_weight_decay", None)
        return {f"model.{n}" for n in (fn() if callable(fn) else ())}

    def group_matcher(self, coarse: bool = False) -> dict | None:
        """timm's layer grouping (``optim.layer_decay``) of the deployed model's backbone, rewritten into
        the Task's parameter names; the backbone is the model or, for a wrapping plug-in (GLSim), its
        ``backbone``. None when it has no ``group_matcher``."""
        import re

        from ..models.plugins.base import find_backbone

        root, prefix = find_backbone(self.model, "group_matcher")
        prefix = "model." + prefix
        fn = getattr(root, "group_matcher", None)
        if not callable(fn):
            return None

        def scoped(rx: str) -> str:  # '^a|b' -> '^model\.(?:a|b)': every alternative under the prefix
            body = rx[1:] if rx.startswith("^") else rx
            return "^" + re.escape(prefix) + "(?:" + body.replace("|^", "|") + ")"

        out: dict = {}
        for name, spec in fn(coarse=coarse).items():
            if spec is None or isinstance(spec, str):
                out[name] = spec if spec is None else scoped(spec)
            else:
                out[name] = [(scoped(rx), suffix) for rx, suffix in spec]
        return out

    def on_train_start(self) -> None:
        """Called when the loop puts the task in train mode (frozen parts go back to eval)."""

    def set_progress(self, step: int, total: int) -> None:
        """Called by the loop before every training forward: optimizer steps done so far (restored on
        resume) and planned in all. For tasks whose loss follows a schedule (tagging's mask schedule)."""

    def train(self, mode: bool = True) -> Task:
        super().train(mode)
        if mode:
            self.on_train_start()
        return self
