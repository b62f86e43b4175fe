"""VegFru: veg200 + fru92 merged into one image folder (§5)."""

from __future__ import annotations

import os
from pathlib import Path

from ..manifest import Row
from .base import (
    ConversionError,
    _check_contiguous,
    _int,
    _read_pairs,
    _register,
    write_manifest,
)


def _vegfru_list(src: Path, split: str) -> Path:
    for p in (src / f"vegfru_{split}.txt", src / "vegfru_list" / f"vegfru_{split}.txt"):
        if p.is_file():
            return p
    raise ConversionError(f"{src}: vegfru_{split}.txt not found (looked in {src} and {src / 'vegfru_list'}).")


@_register("vegfru", ("vegfru_train.txt|vegfru_list/vegfru_train.txt",),
           "the official VegFru lists (vegfru_list/vegfru_{train,val,test}.txt)")
def convert_vegfru(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                   image_folder: str = "images") -> Path:
    """VegFru: lists ``vegfru_{train,val,test}.txt`` (``<path> <label>``, 0-based) with
    ``veg200_images/`` and ``fru92_images/`` merged into ``images/``; train_val = train + val;
    ``dir`` = the list path without its first component; class name = the class folder."""
    src = Path(src_root).expanduser()
    names: dict[int, str] = {}
    rows: dict[str, list[Row]] = {}
    for split in ("train", "val", "test"):
        path = _vegfru_list(src, split)
        rows[split] = []
        for file, label in _read_pairs(path, last=True):
            c = _int(label, str(path))
            parts = file.split("/", 1)
            d = parts[1] if len(parts) == 2 else parts[0]
            folder = d.split("/", 1)[0]
            if names.setdefault(c, folder) != folder:
                raise ConversionError(f"{path}: label {c} is both {names[c]!r} and {folder!r}.")
            rows[split].append(Row(c, d))
    k = _check_contiguous(names, f"{src}: VegFru labels are not contiguous 0..{{k - 1}}.")
    return write_manifest(out_dir, train_val=rows["train"] + rows["val"], test=rows["test"],
                          class_names=[names[c] for c in range(k)], image_root=src / image_folder,
                          converter="vegfru", source=src, val_fraction=val_fraction)
