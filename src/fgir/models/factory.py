"""``create_model``: the one way to build a model, for fgir's own models and every timm model."""

from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn
from timm.models import register_model as _timm_register_model

from ..registry import MODELS, close_matches


def register_model(fn: Any = None, **meta: Any) -> Any:
    """Register an fgir model builder in our registry *and* in timm's (so ``timm.create_model``
    sees it). Builders take ``pretrained`` and ``**kwargs`` like timm's."""

    def deco(f: Any) -> Any:
        MODELS.add(f.__name__, f, **meta)
        _timm_register_model(f)
        return f

    return deco(fn) if fn is not None else deco


def timm_builder_kwargs(name: str, pretrained: bool, kwargs: dict) -> tuple[dict, Any, Any]:
    """What fgir builders share when timm calls them: refuse ``pretrained`` (no hosted weights),
    drop timm's pretrained-config plumbing, and split off ``device``/``dtype``."""
    if pretrained:
        raise ValueError(f"{name}: no pretrained weights are hosted; train from scratch or convert a "
                         "TGDA checkpoint with fgir.models.importers.import_tgda_checkpoint.")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    return kwargs, kwargs.pop("device", None), kwargs.pop("dtype", None)


def model_names(include_timm: bool = True) -> list[str]:
    from . import backbones  # noqa: F401  (registers our builders)

    names = MODELS.names()
    return names + sorted(set(timm.list_models()) - set(names)) if include_timm else names


def create_model(name: str, num_classes: int | None = None, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build ``name`` (an fgir model or any timm architecture) with a ``num_classes``-way head.

    Unknown names raise ``KeyError`` listing close matches.
    """
    from . import backbones  # noqa: F401  (registers our builders)

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):  # a published model (fgir push / timm layout)
        from ..export.hub import create_from_hub

        return create_from_hub(name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    if name not in MODELS and not timm.is_model(name):
        hits = close_matches(name, model_names())
        hint = f" Did you mean: {', '.join(hits)}?" if hits else ""
        raise KeyError(f"Unknown model '{name}'.{hint} See `fgir list models`.")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained and name not in MODELS and "file" not in (kwargs.get("pretrained_cfg_overlay") or {}):
        from .pretrained import pretrained_overlay  # the local cache first; fail at once when offline

        extra = pretrained_overlay(name).get("pretrained_cfg_overlay")
        if extra:
            kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), **extra}
    return timm.create_model(name, pretrained=pretrained, **kwargs)
