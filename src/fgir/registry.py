"""One registry class for every named thing in fgir (models, datasets, tasks, plug-ins)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any


def close_matches(name: str, choices: list[str], n: int = 5) -> list[str]:
    """Names in ``choices`` that look like ``name`` (for 'did you mean' messages)."""
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    subs = [c for c in choices if name.lower() in c.lower() and lowered.get(c.lower()) not in hits]
    return [lowered[h] for h in hits] + subs[: max(0, n - len(hits))]


def suggest(name: str, choices: list[str]) -> str:
    """A ' Did you mean ...?' suffix, or '' when nothing is close."""
    hits = close_matches(name, choices)
    return f" Did you mean: {', '.join(hits)}?" if hits else ""


class Registry:
    """A named table of builders.

    Registering a name twice raises; asking for an unknown name raises ``KeyError``
    listing close matches.
    """

    def __init__(self, kind: str, autoload: tuple[str, ...] = ()):
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._autoload = autoload
        self._loaded = not autoload

    def _load(self) -> None:
        """Import the modules that register the built-in entries (once, on first lookup)."""
        if not self._loaded:
            self._loaded = True
            import importlib

            for mod in self._autoload:
                importlib.import_module(mod)

    def register(self, name: str | None = None, **meta: Any) -> Callable[[Any], Any]:
        """Decorator: ``@REG.register()`` or ``@REG.register("name", key=value)``."""

        def deco(obj: Any) -> Any:
            self.add(name or obj.__name__, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: Any, **meta: Any) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered ({self._items[name]!r}).")
        self._items[name] = obj
        self._meta[name] = meta

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._items:
            raise KeyError(f"Unknown {self.kind} '{name}'.{suggest(name, self.names())} "
                           f"See `fgir list {self.kind}s`.")
        return self._items[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)


MODELS = Registry("model")
DATASETS = Registry("dataset")
TASKS = Registry("task", autoload=("fgir.engine.classification", "fgir.engine.distill", "fgir.engine.tagging",
                                    "fgir.models.plugins"))
"""Training tasks: name -> builder ``(cfg, model, num_classes, **kw) -> Task``; meta ``config`` is the
task's config dataclass (a :class:`fgir.config.TaskConfig` subclass)."""
PLUGINS = Registry("plugin", autoload=("fgir.models.plugins",))
"""Model plug-ins: name -> ``apply(model, cfg) -> model``; meta ``config`` is the plug-in's config
dataclass (a :class:`fgir.config.PluginConfig` subclass). See :mod:`fgir.models.plugins`."""
VIZ = Registry("visualisation", autoload=("fgir.report.viz", "fgir.report.cam", "fgir.models.plugins"))
"""``fgir viz KIND CKPT IMG``: name -> ``fn(model, image, out, **options) -> list[Path]`` drawing PNGs
for one image; meta ``help`` (one line) and ``options`` (``{flag: (type, default, help)}``). Register with
:func:`fgir.report.viz.register_viz` next to the code whose behaviour it shows."""
