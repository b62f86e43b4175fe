"""FGVC-Aircraft 2013b, variant level (§5)."""

from __future__ import annotations

import os
from pathlib import Path

from ..manifest import Row
from .base import (
    ConversionError,
    _lines,
    _read_pairs,
    _register,
    write_manifest,
)


@_register("aircraft", ("images_variant_trainval.txt", "images_variant_test.txt"),
           "the official FGVC-Aircraft files (images_variant_trainval.txt, images_variant_test.txt)")
def convert_aircraft(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                     image_folder: str = "images") -> Path:
    """FGVC-Aircraft 2013b ``data/`` folder, variant level: ``images_variant_{trainval,test}.txt``
    (``<image id> <variant name>``); class id = index in the sorted variant names
    (``variants.txt`` when present, else the names in the lists)."""
    src = Path(src_root).expanduser()
    lists = {s: _read_pairs(src / f"images_variant_{s}.txt") for s in ("trainval", "test")}
    used = {v for pairs in lists.values() for _, v in pairs}
    if (src / "variants.txt").is_file():
        names = sorted({line for _, line in _lines(src / "variants.txt")})
        unknown = sorted(used - set(names))
        if unknown:
            raise ConversionError(f"{src}: variants {unknown[:5]} are not in variants.txt.")
    else:
        names = sorted(used)
    cid = {n: i for i, n in enumerate(names)}
    rows = {s: [Row(cid[v], f"{i}.jpg") for i, v in pairs] for s, pairs in lists.items()}
    return write_manifest(out_dir, train_val=rows["trainval"], test=rows["test"], class_names=names,
                          image_root=src / image_folder, converter="aircraft", source=src,
                          val_fraction=val_fraction)
