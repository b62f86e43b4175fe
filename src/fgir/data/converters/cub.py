"""CUB-200-2011 (and the bundled CUB-100 subset) and NABirds: the CUB list-file layout (§5)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..manifest import Row
from .base import (
    ConversionError,
    _int,
    _numeric_names,
    _read_pairs,
    _register,
    _unique_dict,
    write_manifest,
)


def _read_cub_like(src: Path) -> tuple[list[str], dict[str, str], dict[str, int], dict[str, str],
                                       dict[int, str]]:
    """(ids in image-id order, id->path, id->label, id->flag, label->class name)."""
    files = {n: src / f"{n}.txt" for n in ("images", "image_class_labels", "train_test_split")}
    pairs = {n: _read_pairs(p) for n, p in files.items()}
    images, labels, flags = (_unique_dict(pairs[n], files[n]) for n in files)
    id_sets = {n: set(d) for n, d in zip(files, (images, labels, flags), strict=True)}
    if not id_sets["images"] == id_sets["image_class_labels"] == id_sets["train_test_split"]:
        problems = []
        for a in files:
            for b in files:
                extra = sorted(id_sets[a] - id_sets[b])
                if extra:
                    problems.append(f"{len(extra)} id(s) of {a}.txt missing from {b}.txt (e.g. {extra[:3]})")
        raise ConversionError(f"{src}: the per-image files list different image ids: " + "; ".join(problems))
    ids = [k for k, _ in pairs["images"]]
    if all(re.fullmatch(r"-?\d+", i) for i in ids):
        ids.sort(key=int)
    lab = {i: _int(v, f"{files['image_class_labels']} (image {i})") for i, v in labels.items()}
    classes: dict[int, str] = {}
    if (src / "classes.txt").is_file():
        for cid, name in _read_pairs(src / "classes.txt"):
            classes[_int(cid, str(src / "classes.txt"))] = name
    return ids, images, lab, flags, classes


def _split_by_flag(ids: list[str], images: dict[str, str], class_of: dict[str, int],
                   flags: dict[str, str], where: Path) -> tuple[list[Row], list[Row]]:
    train_val: list[Row] = []
    test: list[Row] = []
    for i in ids:
        flag = flags[i]
        if flag not in ("0", "1"):
            raise ConversionError(f"{where}: image {i} has flag {flag!r}; expected 1 (train) or 0 (test).")
        (train_val if flag == "1" else test).append(Row(class_of[i], images[i]))
    return train_val, test


@_register("cub", ("images.txt", "image_class_labels.txt", "train_test_split.txt"),
           "the official CUB files (images.txt, image_class_labels.txt, train_test_split.txt, classes.txt)")
def convert_cub(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                image_folder: str = "images") -> Path:
    """CUB-200-2011 layout: ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``
    and ``classes.txt`` (``id path`` or ``id, path`` lines).

    Labels are 1-based in the official release (class id = label - 1) and 0-based in the bundled
    CUB-100 subset; the base is read from ``classes.txt`` (its smallest id; the labels' smallest
    when there is no ``classes.txt``) and never subtracted from 0-based ids. Flag 1 = train_val,
    0 = test, in image-id order.
    """
    src = Path(src_root).expanduser()
    ids, images, lab, flags, classes = _read_cub_like(src)
    if classes:
        base, k = min(classes), len(classes)
        if sorted(classes) != list(range(base, base + k)):
            raise ConversionError(f"{src / 'classes.txt'}: class ids must be contiguous from 0 or 1.")
        names = [classes[base + c] for c in range(k)]
    else:
        base = min(lab.values())
        k = max(lab.values()) - base + 1
        names = _numeric_names(k, base)
    if base not in (0, 1):
        raise ConversionError(f"{src}: class ids start at {base}; expected 0 (0-based) or 1 (official CUB).")
    bad = sorted({v for v in lab.values() if not base <= v < base + k})
    if bad:
        raise ConversionError(f"{src / 'image_class_labels.txt'}: labels {bad[:5]} are not in classes.txt "
                              f"({base}..{base + k - 1}).")
    class_of = {i: v - base for i, v in lab.items()}
    train_val, test = _split_by_flag(ids, images, class_of, flags, src / "train_test_split.txt")
    return write_manifest(out_dir, train_val=train_val, test=test, class_names=names,
                          image_root=src / image_folder, converter="cub", source=src,
                          val_fraction=val_fraction)


@_register("nabirds", ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"),
           "the official NABirds files (images.txt, image_class_labels.txt, train_test_split.txt, "
           "classes.txt)")
def convert_nabirds(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                    image_folder: str = "images") -> Path:
    """NABirds: the CUB layout with hierarchy labels; class id = rank of the image's label among
    the labels used by images (the 555 leaves), ascending. Names from ``classes.txt``."""
    src = Path(src_root).expanduser()
    ids, images, lab, flags, classes = _read_cub_like(src)
    leaves = sorted(set(lab.values()))
    rank = {v: r for r, v in enumerate(leaves)}
    missing = [v for v in leaves if v not in classes]
    if missing:
        raise ConversionError(f"{src / 'classes.txt'}: labels {missing[:5]} used by images are not listed.")
    class_of = {i: rank[v] for i, v in lab.items()}
    train_val, test = _split_by_flag(ids, images, class_of, flags, src / "train_test_split.txt")
    return write_manifest(out_dir, train_val=train_val, test=test, class_names=[classes[v] for v in leaves],
                          image_root=src / image_folder, converter="nabirds", source=src,
                          val_fraction=val_fraction)
