"""Ultra-fine-grained leaves: Cotton80 / SoyLocal / SoyGlobal, SoyGene, SoyAgeing (§5)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..manifest import Row
from .base import (
    ConversionError,
    _int,
    _is_image,
    _numeric_names,
    _one_based,
    _read_pairs,
    _register,
    write_manifest,
)

_UFGIR_NAME = re.compile(r"^(\d+)_(\d+)_(train|test)$")


@_register("ufgir", ("{folder}",), "one image folder of <label>_<index>_<train|test>.png files")
def convert_ufgir(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, image_folder: str,
                  val_fraction: float = 0.8) -> Path:
    """Cotton80, SoyLocal, SoyGlobal: one folder of ``{label}_{index}_{train|test}.png`` (label
    1-based); class id = label - 1; split from the name suffix; rows sorted by (label, index).

    NOTE: the published CSVs keep an arbitrary within-class order (glob + unstable sort), so the
    train/val membership carved here differs from theirs; use the published CSVs for parity.
    """
    src = Path(src_root).expanduser()
    folder = src / image_folder
    if not folder.is_dir():
        raise ConversionError(f"Image folder not found: {folder}")
    found: dict[str, list[tuple[int, int, str]]] = {"train": [], "test": []}
    odd = []
    for p in folder.iterdir():
        if not _is_image(p):
            continue
        m = _UFGIR_NAME.match(p.stem)
        if not m:
            odd.append(p.name)
            continue
        found[m.group(3)].append((int(m.group(1)), int(m.group(2)), p.name))
    if odd:
        raise ConversionError(f"{folder}: {len(odd)} image(s) not named <label>_<index>_<train|test>: "
                              f"{sorted(odd)[:5]}.")
    labels = [t[0] for ts in found.values() for t in ts]
    _, k = _one_based(labels, str(folder))
    rows = {s: [Row(lab - 1, name) for lab, _, name in sorted(ts)] for s, ts in found.items()}
    return write_manifest(out_dir, train_val=rows["train"], test=rows["test"], class_names=_numeric_names(k),
                          image_root=folder, converter="ufgir", source=src, val_fraction=val_fraction)


def _anno_rows(path: Path, prefix: str = "") -> list[tuple[int, str]]:
    out = []
    for file, label in _read_pairs(path, last=True):
        d = file if not prefix or file.startswith(prefix) else prefix + file
        out.append((_int(label, str(path)), d))
    return out


@_register("soygene", ("anno/train.txt", "anno/test.txt"),
           "the SoyGene lists (anno/train.txt, anno/test.txt)")
def convert_soygene(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                    image_folder: str = "images") -> Path:
    """SoyGene: ``images/`` + ``anno/{train,test}.txt`` (``<file> <label>``, 1-based);
    class id = label - 1; ``dir`` = the file name."""
    src = Path(src_root).expanduser()
    lists = {s: _anno_rows(src / "anno" / f"{s}.txt") for s in ("train", "test")}
    _, k = _one_based([c for rs in lists.values() for c, _ in rs], str(src / "anno"))
    rows = {s: [Row(c - 1, d) for c, d in rs] for s, rs in lists.items()}
    return write_manifest(out_dir, train_val=rows["train"], test=rows["test"], class_names=_numeric_names(k),
                          image_root=src / image_folder, converter="soygene", source=src,
                          val_fraction=val_fraction)


@_register("soyageing", ("R*/anno/train.txt",),
           "the SoyAgeing rounds (R<k>/anno/train.txt, R<k>/anno/test.txt)")
def convert_soyageing(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                      rounds: tuple[int, ...] = (1, 3, 4, 5, 6)) -> Path:
    """SoyAgeing: ``R{k}/{images/, anno/train.txt, anno/test.txt}`` per round (``<file> <label>``,
    1-based); the pooled set concatenates ``rounds`` in order (so with 5 images per class and
    round, val = the last round); ``dir`` = ``R{k}/images/<file>`` under the root."""
    src = Path(src_root).expanduser()
    lists: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
    for r in rounds:
        for s in lists:
            lists[s] += _anno_rows(src / f"R{r}" / "anno" / f"{s}.txt", prefix=f"R{r}/images/")
    _, k = _one_based([c for rs in lists.values() for c, _ in rs], f"{src} (rounds {list(rounds)})")
    rows = {s: [Row(c - 1, d) for c, d in rs] for s, rs in lists.items()}
    return write_manifest(out_dir, train_val=rows["train"], test=rows["test"], class_names=_numeric_names(k),
                          image_root=src, converter="soyageing", source=src, val_fraction=val_fraction)
