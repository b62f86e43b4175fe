"""Shared pieces of the converters: the registry, ``write_manifest`` and the list-file readers.

Every converter reads one official layout under ``src_root`` (never writing there) and writes a
manifest into ``out_dir`` through :func:`write_manifest`: ``train_val.csv``, ``test.csv``,
``train.csv`` and ``val.csv`` (carved from train_val by the reference rule with the dataset's p
unless the source defines them), ``classid_classname.csv`` and ``manifest.json``, which records
the absolute image root the CSV paths are relative to, the source root and the converter. The
manifest can therefore live in a cache folder while the images stay in a read-only tree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..manifest import (
    CLASS_TABLE,
    MANIFEST_JSON,
    ManifestError,
    Row,
    carve_train_val,
    check_rows,
    split_path,
    write_class_table,
    write_manifest_info,
    write_split,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ConversionError(ManifestError):
    """An official layout is incomplete or inconsistent; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Registry of converters
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Converter:
    name: str
    func: Callable[..., Path]
    requires: tuple[str, ...]
    """Paths (relative to the source root) that identify the layout; ``a|b`` = either, ``*`` globs,
    ``{folder}`` = the spec's image folder."""
    layout: str
    """Human description used in error messages."""
    detector: Callable[[Path], bool] | None = None
    """Replaces ``requires`` for layouts that no fixed file identifies (own class-folder trees)."""

    def detect(self, root: str | os.PathLike, image_folder: str = "images") -> bool:
        root = Path(root)
        if self.detector is not None:
            return self.detector(root)
        for req in self.requires:
            alternatives = req.format(folder=image_folder).split("|")
            if not any(_exists(root, a) for a in alternatives):
                return False
        return True


def _exists(root: Path, pattern: str) -> bool:
    if "*" in pattern:
        return next(iter(root.glob(pattern)), None) is not None
    return (root / pattern).exists()


CONVERTERS: dict[str, Converter] = {}


def _register(name: str, requires: tuple[str, ...], layout: str,
              detector: Callable[[Path], bool] | None = None):
    def deco(func):
        if name in CONVERTERS:
            raise ValueError(f"converter '{name}' is already registered.")
        CONVERTERS[name] = Converter(name, func, requires, layout, detector)
        return func

    return deco


def layout_description(name: str) -> str:
    """The layout a converter reads, for messages ('' for no/unknown converter)."""
    conv = CONVERTERS.get(name)
    return conv.layout if conv else ""


def write_manifest(out_dir: str | os.PathLike, *, train_val: list[Row], test: list[Row],
                   class_names: list[str], image_root: str | os.PathLike, converter: str,
                   source: str | os.PathLike, val_fraction: float = 0.8,
                   train: list[Row] | None = None, val: list[Row] | None = None,
                   extra: dict | None = None) -> Path:
    """Write the four split CSVs, the class table and ``manifest.json`` into ``out_dir``.

    ``train``/``val`` are carved from ``train_val`` (datasets.md §4.2, p = ``val_fraction``)
    unless both are given. ``extra`` entries are added to ``manifest.json`` (e.g. the own-data
    carve rule). ``manifest.json`` is written last, so its presence marks a complete manifest;
    ``validated`` stays false until :func:`fgir.data.converters.prepare` has checked it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    carved = train is None or val is None
    if carved:
        train, val = carve_train_val(train_val, val_fraction)
    k = len(class_names)
    for split, rows in (("train_val", train_val), ("test", test), ("train", train), ("val", val)):
        check_rows(rows, k, f"{converter}: {split}")
    (out / MANIFEST_JSON).unlink(missing_ok=True)
    for split, rows in (("train_val", train_val), ("test", test), ("train", train), ("val", val)):
        write_split(split_path(out, split), rows)
    write_class_table(out / CLASS_TABLE, class_names)
    info = {
        "format": 1,
        "image_root": str(Path(image_root).expanduser().absolute()),
        "source": str(Path(source).expanduser().absolute()),
        "converter": converter,
        "num_classes": k,
        "counts": {"train_val": len(train_val), "test": len(test), "train": len(train), "val": len(val)},
        "val_fraction": val_fraction if carved else None,
        "carved": carved,
        "validated": False,
        **(extra or {}),
    }
    write_manifest_info(out, info)
    return out


# Small readers for the official list files
_FIRST = re.compile(r"^\s*([^\s,]+)\s*(?:,\s*|\s+)(.*?)\s*$")
_LAST = re.compile(r"^\s*(.*?)\s*(?:,\s*|\s+)([^\s,]+)\s*$")


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    if not path.is_file():
        raise ConversionError(f"Missing file of the official layout: {path}")
    with path.open(encoding="utf-8-sig") as fh:
        for i, line in enumerate(fh, start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield i, line


def _read_pairs(path: Path, last: bool = False) -> list[tuple[str, str]]:
    """``(first, second)`` fields of lines ``a b`` or ``a, b``. The first field is one token and
    the second may hold spaces; with ``last`` it is the other way round (``file label`` lists)."""
    pat = _LAST if last else _FIRST
    out = []
    for i, line in _lines(path):
        m = pat.match(line)
        if not m:
            raise ConversionError(f"{path}:{i}: expected two fields separated by a space or ', ', "
                                  f"got {line!r}.")
        out.append((m.group(1), m.group(2)))
    return out


def _int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise ConversionError(f"{where}: expected an integer, got {value!r}.") from e


def _unique_dict(pairs: list[tuple[str, str]], path: Path) -> dict[str, str]:
    d: dict[str, str] = {}
    for k, v in pairs:
        if k in d:
            raise ConversionError(f"{path}: id {k!r} is listed twice.")
        d[k] = v
    return d


def _one_based(labels: list[int], where: str) -> tuple[list[int], int]:
    """Labels 1..K -> 0..K-1; every label must occur. Returns (class ids, K)."""
    if not labels:
        raise ConversionError(f"{where}: no rows.")
    k = max(labels)
    missing = sorted(set(range(1, k + 1)) - set(labels))
    if min(labels) < 1 or missing:
        raise ConversionError(f"{where}: labels must be 1-based and contiguous 1..{k}; "
                              f"min {min(labels)}, missing e.g. {missing[:5]}.")
    return [c - 1 for c in labels], k


def _numeric_names(k: int, base: int = 1) -> list[str]:
    """Class names for sets without a class table: the original labels as strings (§3)."""
    return [str(i + base) for i in range(k)]


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _check_contiguous(names: dict[int, str], message: str) -> int:
    """K = max id + 1; the ids must be exactly 0..K-1 (``message`` may use {k} and {k - 1})."""
    k = max(names) + 1 if names else 0
    if sorted(names) != list(range(k)):
        raise ConversionError(message.replace("{k - 1}", str(k - 1)).replace("{k}", str(k)))
    return k
