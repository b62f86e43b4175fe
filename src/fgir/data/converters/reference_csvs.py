"""Reference split CSVs: the published files, or any root already in the manifest format (§3)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..manifest import CLASS_TABLE, SPLITS, read_class_table, read_split
from .base import (
    ConversionError,
    _numeric_names,
    write_manifest,
)


def _find_csv(root: Path, split: str, suffix: str) -> Path | None:
    # The SoyAgeing round train/val files are published as '*.csv.csv'.
    for name in (f"{split}{suffix}.csv", f"{split}{suffix}.csv.csv"):
        if (root / name).is_file():
            return root / name
    return None


def has_reference_csvs(root: str | os.PathLike, suffix: str = "") -> bool:
    """True when ``root`` holds at least ``train_val`` and ``test`` CSVs (with ``suffix``)."""
    return all(_find_csv(Path(root), s, suffix) is not None for s in ("train_val", "test"))


def convert_reference_csvs(src_root: str | os.PathLike, out_dir: str | os.PathLike, *,
                           val_fraction: float = 0.8, image_folder: str = ".", suffix: str = "",
                           num_classes: int = 0) -> Path:
    """Validate and normalise a root that already holds the reference split CSVs.

    ``train_val`` and ``test`` are required; ``train``/``val`` are carved when either is absent.
    Header-less files (the DAF:re label CSVs) and the malformed Cars class table are read as
    they are and written in the canonical form. Without a class table, names are synthesised
    from the original 1-based labels (``"1"``, ``"2"``, ...; the UFGIR sets) for
    ``num_classes`` classes (default: the largest id + 1).
    """
    src = Path(src_root).expanduser()
    found = {s: _find_csv(src, s, suffix) for s in SPLITS}
    for s in ("train_val", "test"):
        if found[s] is None:
            raise ConversionError(f"{src}: {s}{suffix}.csv not found.")
    rows = {s: read_split(p) for s, p in found.items() if p is not None}
    if (found["train"] is None) != (found["val"] is None):
        have = "train" if found["train"] else "val"
        warnings.warn(f"{src}: only {have}{suffix}.csv is present; carving both train and val "
                      f"from train_val (p = {val_fraction}).", stacklevel=2)
    table = src / CLASS_TABLE
    if table.is_file():
        names = read_class_table(table)
    else:
        k = num_classes or 1 + max(r.class_id for rs in rows.values() for r in rs)
        names = _numeric_names(k)
    both = found["train"] is not None and found["val"] is not None
    return write_manifest(out_dir, train_val=rows["train_val"], test=rows["test"], class_names=names,
                          image_root=src / image_folder, converter="reference_csvs", source=src,
                          val_fraction=val_fraction, train=rows["train"] if both else None,
                          val=rows["val"] if both else None)
