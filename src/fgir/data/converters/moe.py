"""moeImouto (nagadomi's animeface-character-dataset, split by the DAF:re authors; spec animesion.md §2.8).

Two sources under one root, tried in this order:

* the published split files of github.com/arkel23/moeimouto_animefacecharacterdataset:
  ``train.csv`` and ``test.csv`` (no header, ``class_id,dir``, ``dir`` like
  ``190_kawashima_ami/face_654_354_7.png``) and ``classid_classname.csv`` (no header); there is no
  val split in them, so val is carved from train (p = 0.8, datasets.md §4.2);
* the original folder layout ``data/<NNN_character>/face_*.png``: per class, the first
  int(0.8 n) images go to train_val and the rest to test (the authors' ``data_split.py`` rule).
  Class ids follow ``classid_classname.csv`` when present (folders it does not list are skipped and
  counted); otherwise the folder names sorted.

NOTE: the authors enumerated folders and files in their file system's listing order (class 0 is
``103_reinforce_zwei``, not alphabetical); sorted order cannot reproduce that listing, so only the
published CSVs give the published membership (11,452 / 2,943).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..manifest import CLASS_TABLE, Row, read_class_table
from .base import ConversionError, _is_image, _numeric_names, _register, write_manifest
from .daf import read_split_files

MOE_TRAIN = 0.8


@_register("moeimouto", ("train.csv|{folder}",),
           "the moeImouto split files (train.csv, test.csv, classid_classname.csv) or the folders "
           "data/<NNN_character>/*.png")
def convert_moeimouto(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, image_folder: str = "data",
                      val_fraction: float = 0.8) -> Path:
    """moeImouto from the published ``train.csv``/``test.csv`` or from the class folders under
    ``image_folder`` (see the module docstring). ``manifest.json`` records the source
    (``moe_source``) and, for folders, what was skipped (``report``)."""
    src = Path(src_root).expanduser()
    table = src / CLASS_TABLE
    extra: dict = {}
    if (src / "train.csv").is_file():
        rows, k = read_split_files({"train_val": src / "train.csv", "test": src / "test.csv"})
        names = read_class_table(table) if table.is_file() else _numeric_names(k, base=0)
        if len(names) < k:
            raise ConversionError(f"{table}: {len(names)} classes, but the split files use class ids up to {k - 1}.")
        extra["moe_source"] = "csv"
    else:
        folder = src / image_folder
        dirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        names = read_class_table(table) if table.is_file() else dirs
        listed = set(names)
        skipped = [d for d in dirs if d not in listed]
        rows = {"train_val": [], "test": []}
        empty = []
        for cid, name in enumerate(names):
            d = folder / name
            files_c = sorted(p.name for p in d.iterdir() if _is_image(p)) if d.is_dir() else []
            if not files_c:
                empty.append(name)
                continue
            n_train = int(len(files_c) * MOE_TRAIN)
            rows["train_val"] += [Row(cid, f"{name}/{f}") for f in files_c[:n_train]]
            rows["test"] += [Row(cid, f"{name}/{f}") for f in files_c[n_train:]]
        if empty:
            raise ConversionError(f"{folder}: {len(empty)} class(es) of {table if table.is_file() else 'the folder'} "
                                  f"have no image folder or no image (e.g. {empty[:3]}).")
        extra["moe_source"] = "folders"
        extra["report"] = [f"{folder}: {len(names)} class folders used"
                           + (f"; skipped {len(skipped)} folder(s) not in {table.name} (e.g. {skipped[:3]})"
                              if skipped else "")]
    return write_manifest(out_dir, train_val=rows["train_val"], test=rows["test"], class_names=names,
                          image_root=src / image_folder, converter="moeimouto", source=src,
                          val_fraction=val_fraction, extra=extra)
