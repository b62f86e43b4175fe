"""Oxford-IIIT Pets, breed level (§5)."""

from __future__ import annotations

import os
from pathlib import Path

from ..manifest import Row
from .base import (
    ConversionError,
    _check_contiguous,
    _int,
    _lines,
    _register,
    write_manifest,
)


@_register("pets", ("annotations/trainval.txt", "annotations/test.txt"),
           "the official Oxford-IIIT Pets lists (annotations/trainval.txt, annotations/test.txt)")
def convert_pets(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                 image_folder: str = "images") -> Path:
    """Oxford-IIIT Pets: ``annotations/{trainval,test}.txt`` lines ``<Image> <CLASS-ID> <SPECIES>
    <BREED ID>``; class id = CLASS-ID - 1; ``dir`` = ``<Image>.jpg``; class name = the image
    name without its trailing ``_<n>``."""
    src = Path(src_root).expanduser()
    rows: dict[str, list[Row]] = {}
    names: dict[int, str] = {}
    for split in ("trainval", "test"):
        path = src / "annotations" / f"{split}.txt"
        rows[split] = []
        for i, line in _lines(path):
            tok = line.split()
            if len(tok) < 2:
                raise ConversionError(f"{path}:{i}: expected '<Image> <CLASS-ID> ...', got {line!r}.")
            c = _int(tok[1], f"{path}:{i}") - 1
            breed = tok[0].rsplit("_", 1)[0]
            if names.setdefault(c, breed) != breed:
                raise ConversionError(f"{path}:{i}: class {c + 1} is both {names[c]!r} and {breed!r}.")
            rows[split].append(Row(c, f"{tok[0]}.jpg"))
    k = _check_contiguous(names, f"{src / 'annotations'}: CLASS-IDs are not contiguous 1..{{k}}.")
    return write_manifest(out_dir, train_val=rows["trainval"], test=rows["test"],
                          class_names=[names[c] for c in range(k)], image_root=src / image_folder,
                          converter="pets", source=src, val_fraction=val_fraction)
