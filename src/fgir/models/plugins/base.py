"""The plug-in mechanism: registration, ordered application, inference variants.

A paper's idea enters fgir as a plug-in module in this package (house style, design.md §3): a pure
functional core, a thin module holding state, a config dataclass (a
:class:`~fgir.config.PluginConfig` subclass) and ``apply_<name>(model, cfg) -> model``, registered
with :func:`register_plugin`. Every module of this package is imported when a plug-in or task is
first looked up, so adding a method means adding one file: ``config.py``, the builder and the
train loop never name a method.

``model.plugins`` in a config is the ordered list of entries; :func:`apply_plugins` applies them
and records, on the returned model, which plug-ins were applied (``fgir_plugins``) and which
parameters each one added (``fgir_plugin_params``, used by ``model.trainable: [plugins]``).

Test-time inference variants (CAL's 8-view TTA, a second GLSim pass, ...) go through one hook: a
plug-in calls :func:`register_inference` on the model it returns; ``fgir eval --inference NAME``,
``fgir predict --inference NAME`` and ``model.inference`` look variants up with
:func:`get_inference`. ``default`` is always ``model.forward``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from ...config import PluginConfig
from ...registry import PLUGINS

__all__ = ["register_plugin", "apply_plugins", "register_inference", "get_inference", "inference_names",
           "plugin_parameters", "mark_only_plugin_trainable"]


FAMILIES = ("cnn", "vit")
"""Backbone families a plug-in can declare: ``cnn`` (feature maps, timm CNNs and LRNets) and
``vit`` (token models: timm ``VisionTransformer`` and ViTFS)."""


def register_plugin(name: str, config: type[PluginConfig] = PluginConfig, *, repeatable: bool = False,
                    families: tuple[str, ...] = FAMILIES) -> Callable[[Callable], Callable]:
    """Decorator registering ``apply_fn(model, cfg) -> model`` as plug-in ``name``.

    Args:
        name: the ``name`` of a ``model.plugins`` entry.
        config: the plug-in's config dataclass (subclass of :class:`~fgir.config.PluginConfig`).
        repeatable: whether the plug-in may be applied more than once to one model.
        families: the backbone families it applies to (``cnn``, ``vit``); the registry-driven tests
            run every plug-in on every backbone of its families, and ``fgir list plugins`` shows them.
    """
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise TypeError(f"plug-in '{name}': families must be a non-empty subset of {FAMILIES}, got {families!r}.")
    if not (isinstance(config, type) and issubclass(config, PluginConfig)):
        raise TypeError(f"plug-in '{name}': config must be a PluginConfig subclass, got {config!r}.")

    def deco(fn: Callable) -> Callable:
        PLUGINS.add(name, fn, config=config, repeatable=repeatable, families=tuple(families))
        return fn

    return deco


def find_backbone(model: nn.Module, attr: str) -> tuple[nn.Module, str]:
    """The first of ``model``, ``model.backbone``, ``model.backbone.backbone``, ... that has ``attr``
    (a wrapping plug-in such as GLSim keeps the timm model as ``backbone``), with its parameter-name
    prefix (``""``, ``"backbone."``, ...); the innermost one when none has it."""
    root, prefix = model, ""
    while getattr(root, attr, None) is None and isinstance(getattr(root, "backbone", None), nn.Module):
        root, prefix = root.backbone, prefix + "backbone."
    return root, prefix


def _structure(model: nn.Module) -> list[tuple[str, type]]:
    return [(n, type(m)) for n, m in model.named_modules()]


def apply_plugins(model: nn.Module, entries: Sequence[PluginConfig]) -> nn.Module:
    """Apply ``entries`` (``cfg.model.plugins``) in order; ``[]`` returns ``model`` unchanged.

    Raises ``ValueError`` when a non-repeatable plug-in is applied twice; warns when a plug-in
    changed nothing.
    """
    for entry in entries:
        fn, meta = PLUGINS.get(entry.name), PLUGINS.meta(entry.name)
        applied = list(getattr(model, "fgir_plugins", []))
        if entry.name in applied and not meta.get("repeatable"):
            raise ValueError(f"plug-in '{entry.name}' is already applied to this model (applied: {applied}); "
                             "list it once in model.plugins.")
        # keep the old parameters alive: a plug-in that drops some (a replaced classifier) must not
        # let new parameters reuse their ids and go unrecorded
        kept = list(model.parameters())
        before_params = {id(p) for p in kept}
        before_structure = _structure(model)
        owned = dict(getattr(model, "fgir_plugin_params", {}))
        variants = dict(getattr(model, "fgir_inference", {}))
        out = fn(model, entry)
        out = model if out is None else out
        added = [p for p in out.parameters() if id(p) not in before_params]
        if out is model and not added and _structure(out) == before_structure:
            warnings.warn(f"plug-in '{entry.name}' changed nothing on {type(model).__name__}.", stacklevel=2)
        owned[entry.name] = owned.get(entry.name, []) + added
        del kept
        out.fgir_plugins = applied + [entry.name]
        out.fgir_plugin_params = owned
        out.fgir_inference = {**variants, **getattr(out, "fgir_inference", {})}
        model = out
    return model


def plugin_parameters(model: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """Parameters added by plug-in ``name`` (all plug-ins when None), as recorded by apply_plugins."""
    owned = getattr(model, "fgir_plugin_params", {})
    names = [name] if name is not None else list(owned)
    ids = {id(p) for n in names for p in owned.get(n, [])}
    return [p for p in model.parameters() if id(p) in ids]


def mark_only_plugin_trainable(model: nn.Module, name: str, include_head: bool = False) -> nn.Module:
    """Freeze everything except the parameters plug-in ``name`` added (and the classifier when
    ``include_head``). Plug-in modules expose this as ``mark_only_<name>_trainable``."""
    keep = {id(p) for p in plugin_parameters(model, name)}
    if not keep:
        raise ValueError(f"plug-in '{name}' added no parameters to this model "
                         f"(applied: {getattr(model, 'fgir_plugins', [])}).")
    if include_head and hasattr(model, "get_classifier"):
        keep |= {id(p) for p in model.get_classifier().parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return model


# ----------------------------------------------------------------------------- inference variants
def register_inference(model: nn.Module, name: str, method: str) -> None:
    """Declare that ``getattr(model, method)(images) -> logits`` is inference variant ``name``.

    The method is stored by name, so copies of the model (EMA, deepcopy) resolve their own."""
    if name == "default":
        raise ValueError("'default' is always model.forward; register another name.")
    if not callable(getattr(model, method, None)):
        raise TypeError(f"{type(model).__name__} has no method '{method}' for inference variant '{name}'.")
    model.fgir_inference = {**getattr(model, "fgir_inference", {}), name: method}


FLIP = "flip"
"""The one model-agnostic variant: the mean of the logits of the images and of their horizontal
flips (the GLSim/ILA reference ``--test_flip``). It composes: ``<variant>+flip`` flips any variant."""


def inference_names(model: nn.Module) -> list[str]:
    return ["default", FLIP] + sorted(getattr(model, "fgir_inference", {}))


def split_flip(name: str) -> tuple[str, bool]:
    """``"no-crop+flip"`` -> ``("no-crop", True)``; ``"flip"`` -> ``("default", True)``."""
    if name == FLIP:
        return "default", True
    if name.endswith("+" + FLIP):
        base = name[: -len(FLIP) - 1] or "default"
        if split_flip(base)[1]:
            raise ValueError(f"inference variant '{name}': flip twice is the image itself; use one '+flip'.")
        return base, True
    return name, False


def flip_average(fn: Callable[[Any], Any], x: Any) -> Any:
    """``(fn(x) + fn(x flipped left-right)) / 2`` (logits)."""
    return (fn(x) + fn(x.flip(-1))) / 2


def get_inference(model: nn.Module, name: str = "default") -> Callable[[Any], Any]:
    """The callable for inference variant ``name`` of ``model`` (``default`` = the model itself;
    ``flip`` / ``<variant>+flip`` = that variant averaged with the horizontally flipped images)."""
    if name in ("", "default"):
        return model
    base, flip = split_flip(name)
    if flip:
        import functools

        return functools.partial(flip_average, get_inference(model, base))
    method = getattr(model, "fgir_inference", {}).get(name)
    if method is None:
        from ...registry import suggest

        names = inference_names(model)
        raise ValueError(f"inference variant '{name}' is not available for this model ({type(model).__name__}, "
                         f"plug-ins {getattr(model, 'fgir_plugins', [])}); available: {names}."
                         f"{suggest(name, names)}")
    return getattr(model, method)


def plugin_class_count(plugin: str, backbone: nn.Module, num_classes: int | None) -> int:
    """The class count a head-replacing plug-in builds for: ``num_classes`` if given, else the
    backbone's ``num_classes``; a clear error when neither is positive."""
    k = num_classes if num_classes is not None else int(getattr(backbone, "num_classes", 0) or 0)
    if k <= 0:
        raise ValueError(f"apply_{plugin} needs a class count: {type(backbone).__name__}.num_classes is {k}; "
                         "pass num_classes=K.")
    return k
