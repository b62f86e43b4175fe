"""DAF:re label files: train/val are kept as DAF:re defines them (§6.1)."""

from __future__ import annotations

import os
from pathlib import Path

from ..manifest import CLASS_TABLE, read_class_table, read_split
from .base import (
    _numeric_names,
    _register,
    write_manifest,
)


@_register("daf", ("labels/train.csv", "labels/val.csv", "labels/test.csv"),
           "the DAF:re label files (labels/train.csv, labels/val.csv, labels/test.csv)")
def convert_daf(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, image_folder: str = "faces",
                val_fraction: float = 0.8) -> Path:
    """DAF:re: ``labels/{train,val,test}.csv`` (``class_id,dir``, header optional) from the DAF:re
    repository; train and val are kept as DAF:re defines them (not carved), train_val = train
    then val. Class table ``labels/classid_classname.csv`` or ``classid_classname.csv`` if
    present. ``val_fraction`` is accepted for a uniform signature and unused."""
    src = Path(src_root).expanduser()
    rows = {s: read_split(src / "labels" / f"{s}.csv") for s in ("train", "val", "test")}
    for table in (src / "labels" / CLASS_TABLE, src / CLASS_TABLE):
        if table.is_file():
            names = read_class_table(table)
            break
    else:
        names = _numeric_names(1 + max(r.class_id for rs in rows.values() for r in rs), base=0)
    return write_manifest(out_dir, train_val=rows["train"] + rows["val"], test=rows["test"],
                          class_names=names, image_root=src / image_folder, converter="daf", source=src,
                          train=rows["train"], val=rows["val"])
