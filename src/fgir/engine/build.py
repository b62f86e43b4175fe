"""Build the deployable model and the Task for a config.

``build_model``: the registry model (timm ViTs get ``img_size`` from ``model.img_size`` or
``data.img_size``), the ``model.checkpoint`` initialisation, the ``model.plugins`` in order, then
``model.trainable``. ``build_task``: the registered Task for ``task.name``. Neither names a method.
"""

from __future__ import annotations

import torch.nn as nn

from ..config import Config, ConfigError
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..models.factory import create_model
from ..registry import TASKS
from .task import IOSpec, Task


def normalization(cfg: Config, model: nn.Module) -> tuple[tuple, tuple]:
    """``data.mean``/``data.std`` when set, else the model's ``pretrained_cfg`` (ImageNet by default)."""
    if cfg.data.mean and cfg.data.std:
        return tuple(cfg.data.mean), tuple(cfg.data.std)
    pc = getattr(model, "pretrained_cfg", None) or {}
    return tuple(pc.get("mean", IMAGENET_MEAN)), tuple(pc.get("std", IMAGENET_STD))


def _fixed_input_size(name: str) -> bool:
    """Whether timm builds ``name`` for one input size (ViTs: position table, patch grid)."""
    from timm.models import get_pretrained_cfg

    try:
        pc = get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        return False
    return bool(getattr(pc, "fixed_input_size", False)) if pc is not None else False


def _set_norm_eps(model: nn.Module, eps: float, name: str) -> nn.Module:
    """``model.norm_eps``: the eps of every ``nn.LayerNorm`` (subclasses included) of the backbone."""
    if not eps:
        return model
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    if not norms:
        raise ConfigError(f"model.norm_eps={eps}: model '{name}' has no LayerNorm; leave model.norm_eps at 0.")
    for m in norms:
        m.eps = float(eps)
    return model


def _grad_checkpointing(model: nn.Module, name: str) -> None:
    """``model.grad_checkpointing``: timm's ``set_grad_checkpointing(True)`` on the backbone."""
    from ..models.plugins.base import find_backbone

    fn = getattr(find_backbone(model, "set_grad_checkpointing")[0], "set_grad_checkpointing", None)
    if not callable(fn):
        raise ConfigError(f"model.grad_checkpointing=true: model '{name}' has no set_grad_checkpointing (timm models "
                          "have one). Leave it false.")
    fn(True)


def create_backbone(cfg: Config, num_classes: int) -> nn.Module:
    """The registry model of ``cfg.model`` with a ``num_classes``-way head (no plug-ins)."""
    m = cfg.model
    kwargs = dict(m.kwargs)
    if m.drop_rate:
        kwargs["drop_rate"] = m.drop_rate
    if m.drop_path_rate:
        kwargs["drop_path_rate"] = m.drop_path_rate
    size_optional = False
    if "img_size" not in kwargs:
        if _fixed_input_size(m.name):
            kwargs["img_size"] = m.img_size or cfg.data.img_size
        elif m.img_size:  # a size-agnostic model takes it as its default size when its builder accepts it
            kwargs["img_size"], size_optional = m.img_size, True
    attempts = [kwargs] + ([{k: v for k, v in kwargs.items() if k != "img_size"}] if size_optional else [])
    for i, kw in enumerate(attempts):
        try:
            return _set_norm_eps(create_model(m.name, num_classes=num_classes, pretrained=m.pretrained, **kw),
                                 m.norm_eps, m.name)
        except TypeError as e:
            if i + 1 < len(attempts) and "img_size" in str(e):
                continue
            raise ConfigError(f"model '{m.name}' does not accept the builder arguments {sorted(kw)} "
                              f"(model.kwargs / model.img_size / drop rates): {e}") from e
    raise AssertionError("unreachable")


def _checkpoint_plugins(path: str) -> list[str] | None:
    """Plug-in names recorded in an fgir checkpoint (None for a plain state-dict file)."""
    from pathlib import Path

    from .checkpoint import read_meta, resolve_checkpoint

    p = Path(path)
    if not (p.is_dir() or p.suffix == ".safetensors"):
        return None
    meta = read_meta(resolve_checkpoint(p))
    return [e.get("name") for e in meta.get("config", {}).get("model", {}).get("plugins", [])]


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The deployable model for ``cfg``: backbone, ``model.checkpoint``, ``model.plugins``, ``model.trainable``.

    ``model.checkpoint`` goes into the backbone before the plug-ins, unless it is an fgir checkpoint
    trained with the same plug-in list (then into the finished model): a plain ViT run can start an
    adapter run, and a CAL run can continue as a CAL run.
    """
    from ..models.plugins import apply_plugins, get_inference
    from ..models.trainable import apply_trainable
    from .checkpoint import init_from_checkpoint

    m = cfg.model
    model = create_backbone(cfg, num_classes)
    names = [p.name for p in m.plugins]
    after = bool(m.checkpoint) and names and _checkpoint_plugins(m.checkpoint) == names
    def load(into: nn.Module) -> None:
        init_from_checkpoint(into, m.checkpoint, num_classes, strict=m.checkpoint_strict, keep_head=m.checkpoint_head)

    if m.checkpoint and not after:
        load(model)
    if m.grad_checkpointing:
        _grad_checkpointing(model, m.name)
    try:
        model = apply_plugins(model, m.plugins)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.plugins on '{m.name}': {e}") from e
    if m.grad_checkpointing:
        bn = [n for n, mod in model.named_modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
        if bn:
            raise ConfigError(f"model.grad_checkpointing=true: the model has BatchNorm layers (e.g. {bn[0]}); a "
                              "recomputed block would update their running statistics twice. Leave it false.")
    if after:
        load(model)
    apply_trainable(model, m.trainable)
    try:
        get_inference(model, m.inference)
    except ValueError as e:
        raise ConfigError(f"model.inference={m.inference!r}: {e}") from e
    return model


def build_task(cfg: Config, model: nn.Module, num_classes: int, **kwargs) -> Task:
    """The Task for ``cfg.task.name``; builders take ``(cfg, model, num_classes, **kwargs)``
    (``class_names`` lets distillation check the teacher's class table; ``class_counts``, the
    training images per class, feeds the long-tail losses). A keyword the builder does not accept
    is not passed to it."""
    import inspect

    builder = TASKS.get(cfg.task.name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    task = builder(cfg, model, num_classes, **kwargs)
    if task.io is None:
        task.io = IOSpec(cfg.data.img_size, *normalization(cfg, model))
    task.inference = cfg.model.inference
    return task
