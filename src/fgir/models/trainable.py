"""Trainable-parameter control (``model.trainable``) and the parameter census every run stores.

``model.trainable`` is a list applied after the plug-ins; entries are unioned left to right and an
entry with a leading ``!`` removes what it matches:

* presets: ``all``, ``none``, ``head`` (the classifier, ``get_classifier()``), ``plugins`` (every
  parameter a plug-in added), ``plugins:<name>`` (one plug-in's), ``backbone`` (everything else);
* glob patterns over parameter names (``fnmatch``): ``blocks.11.*``, ``*norm*``, ...

An entry that matches nothing is an error (a typo must not silently freeze a model).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

import torch.nn as nn

from ..config import ConfigError
from ..registry import suggest

PRESETS = ("all", "none", "head", "plugins", "backbone")


def _head_ids(model: nn.Module) -> set[int]:
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    return {id(p) for p in clf.parameters()} if isinstance(clf, nn.Module) else set()


def _select(model: nn.Module, entry: str) -> set[str]:
    from .plugins.base import plugin_parameters

    named = list(model.named_parameters())
    names = [n for n, _ in named]
    if entry == "all":
        return set(names)
    if entry == "none":
        return set()
    head = _head_ids(model)
    plug = {id(p) for p in plugin_parameters(model)}
    if entry == "head":
        ids = head
    elif entry == "plugins":
        ids = plug
    elif entry.startswith("plugins:"):
        name = entry.split(":", 1)[1]
        applied = list(getattr(model, "fgir_plugin_params", {}))
        if name not in applied:
            raise ConfigError(f"model.trainable entry '{entry}': plug-in '{name}' is not applied to this model "
                              f"(applied: {applied}).{suggest(name, applied)}")
        ids = {id(p) for p in plugin_parameters(model, name)}
    elif entry == "backbone":
        ids = {id(p) for _, p in named} - head - plug
    else:
        return {n for n in names if fnmatch(n, entry)}
    return {n for n, p in named if id(p) in ids}


def apply_trainable(model: nn.Module, spec: Sequence[str]) -> nn.Module:
    """Set ``requires_grad`` on every parameter of ``model`` from ``spec`` (see the module docstring)."""
    if list(spec) == ["all"]:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    selected: set[str] = set()
    names = [n for n, _ in model.named_parameters()]
    for raw in spec:
        neg = raw.startswith("!")
        entry = raw[1:] if neg else raw
        hit = _select(model, entry)
        if not hit and entry != "none":
            what = ("the model has no classifier" if entry == "head" else
                    "no plug-in added parameters" if entry.startswith("plugins") else
                    "no parameter name matches")
            examples = ", ".join(names[:3] + ["..."] + names[-2:]) if len(names) > 5 else ", ".join(names)
            raise ConfigError(f"model.trainable entry '{raw}' selects nothing ({what}). Presets: "
                              f"{', '.join(PRESETS)}, plugins:<name>; patterns are globs over parameter names "
                              f"such as {examples}.{suggest(entry, list(PRESETS))}")
        selected = selected - hit if neg else selected | hit
    for n, p in model.named_parameters():
        p.requires_grad_(n in selected)
    return model


def parameter_census(module: nn.Module, depth: int = 1) -> dict:
    """Total / trainable parameter counts, overall and per top-level submodule (``depth`` levels of
    names). Shared parameters count once."""
    seen: set[int] = set()
    rows: dict[str, dict[str, int]] = {}
    total = trainable = 0
    for name, p in module.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        key = ".".join(name.split(".")[:depth]) if "." in name else name
        row = rows.setdefault(key, {"total": 0, "trainable": 0})
        row["total"] += p.numel()
        total += p.numel()
        if p.requires_grad:
            row["trainable"] += p.numel()
            trainable += p.numel()
    return {"total": total, "trainable": trainable, "frozen": total - trainable, "modules": rows}


def format_census(census: dict, title: str = "parameters") -> str:
    """A small text table of :func:`parameter_census` output."""
    width = max([len(k) for k in census["modules"]] + [8])
    lines = [f"{title}: {census['total']:,} total, {census['trainable']:,} trainable "
             f"({100.0 * census['trainable'] / max(census['total'], 1):.2f} %)",
             f"  {'module':<{width}} {'total':>14} {'trainable':>14}"]
    for k, r in census["modules"].items():
        lines.append(f"  {k:<{width}} {r['total']:>14,} {r['trainable']:>14,}")
    return "\n".join(lines)
