"""Food-101 (§5; p = 0.2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..manifest import Row
from .base import (
    ConversionError,
    _lines,
    _register,
    write_manifest,
)


@_register("food101", ("meta/train.json|meta/train.txt", "meta/test.json|meta/test.txt"),
           "the official Food-101 meta files (meta/train.json, meta/test.json)")
def convert_food101(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.2,
                    image_folder: str = "images") -> Path:
    """Food-101: ``meta/{train,test}.json`` (class -> ``["<class>/<id>", ...]``, in file order;
    ``meta/{train,test}.txt`` as a fallback); class id = index in the sorted class names
    (``meta/classes.txt`` when present); ``dir`` = ``<class>/<id>.jpg``."""
    src = Path(src_root).expanduser()
    entries: dict[str, list[str]] = {}
    for split in ("train", "test"):
        js, txt = src / "meta" / f"{split}.json", src / "meta" / f"{split}.txt"
        if js.is_file():
            data = json.loads(js.read_text(encoding="utf-8"))
            entries[split] = [e for items in data.values() for e in items]
        else:
            entries[split] = [line for _, line in _lines(txt)]
    used = {e.split("/", 1)[0] for es in entries.values() for e in es}
    if (src / "meta" / "classes.txt").is_file():
        names = sorted({line for _, line in _lines(src / "meta" / "classes.txt")})
        unknown = sorted(used - set(names))
        if unknown:
            raise ConversionError(f"{src / 'meta'}: classes {unknown[:5]} are not in classes.txt.")
    else:
        names = sorted(used)
    cid = {n: i for i, n in enumerate(names)}

    def rows(es: list[str]) -> list[Row]:
        return [Row(cid[e.split("/", 1)[0]], e if Path(e).suffix else f"{e}.jpg") for e in es]

    return write_manifest(out_dir, train_val=rows(entries["train"]), test=rows(entries["test"]),
                          class_names=names, image_root=src / image_folder, converter="food101",
                          source=src, val_fraction=val_fraction)
