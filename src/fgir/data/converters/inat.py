"""iNaturalist 2017: COCO-style JSONs; test = the official validation set (§5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..manifest import Row
from .base import (
    ConversionError,
    _check_contiguous,
    _register,
    write_manifest,
)


@_register("inat17", ("train2017.json", "val2017.json"), "the iNat2017 JSONs (train2017.json, val2017.json)")
def convert_inat17(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                   image_folder: str = "train_val_images") -> Path:
    """iNaturalist 2017: ``train2017.json`` -> train_val and ``val2017.json`` -> test (COCO style,
    JSON image order); class id = ``category_id``; ``dir`` = ``file_name`` without the leading
    image folder; names from ``categories``."""
    src = Path(src_root).expanduser()
    names: dict[int, str] = {}
    rows: dict[str, list[Row]] = {}
    prefix = image_folder.rstrip("/") + "/"
    for split in ("train", "val"):
        path = src / f"{split}2017.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        for c in data.get("categories", []):
            names.setdefault(int(c["id"]), c["name"])
        cat = {a["image_id"]: int(a["category_id"]) for a in data["annotations"]}
        rows[split] = []
        for im in data["images"]:
            if im["id"] not in cat:
                raise ConversionError(f"{path}: image {im['id']} has no annotation.")
            fn = im["file_name"]
            rows[split].append(Row(cat[im["id"]], fn[len(prefix):] if fn.startswith(prefix) else fn))
    k = _check_contiguous(names, f"{src}: category ids are not contiguous 0..{{k - 1}}.")
    return write_manifest(out_dir, train_val=rows["train"], test=rows["val"],
                          class_names=[names[c] for c in range(k)], image_root=src / image_folder,
                          converter="inat17", source=src, val_fraction=val_fraction)
