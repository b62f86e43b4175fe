"""Named dataset specs over the one manifest format (spec datasets.md §2)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..registry import DATASETS


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_folder: str = "images"
    """Image folder under the dataset root; split ``dir`` paths are relative to it."""
    default_root: str = ""
    """Root relative to $FGIR_DATA (the reference YAML root)."""
    counts: dict = field(default_factory=dict)
    """Expected rows per split (train_val, test, train, val), checked by `fgir data prepare`."""
    val_fraction: float = 0.8
    """p of the train/val carve-out (first floor(p*n_c) rows per class go to train)."""
    converter: str = ""
    """Name of the official-layout converter in fgir.data.converters ('' = CSVs only)."""
    description: str = ""
    builtin: Callable | None = None
    """For built-in sets: ``builtin(root) -> None`` materialises the set (no download)."""
    mean: tuple = ()
    std: tuple = ()


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.add(spec.name, spec)
    return spec


def get_spec(name: str) -> DatasetSpec:
    from . import demo  # noqa: F401  (registers the built-in sets)

    return DATASETS.get(name)


def data_home() -> Path | None:
    env = os.environ.get("FGIR_DATA")
    return Path(env).expanduser() if env else None


def cache_home() -> Path:
    env = os.environ.get("FGIR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fgir"
