"""DAF:re (DanbooruAnimeFaces:revamped, arXiv 2101.08674): label files or the filtered crop list (§6.1).

Two sources under one root, tried in this order:

* the published label files ``labels/{train,val,test}.csv`` (no header, ``class_id,dir``) and
  ``labels/classid_classname.csv`` (no header, ``id,name``): train and val are kept as DAF:re
  defines them (never carved), train_val = train then val;
* ``danbooru2018_faces_85.csv`` (no header, ``danbooru_id,dir``; the crops with detection
  confidence >= 0.85): the split is rebuilt with the authors' rule (:func:`dafre_split_counts`,
  :func:`split_dafre`). Class names come from ``tagIds.tsv`` (``name<TAB>danbooru_id``) when present,
  else they are the Danbooru ids.

``dir`` is relative to ``faces/`` (DAF:re Faces, dataset ``daf``) or ``fullMin256/`` (DAF:re
Full, ``dafb``); the same manifest serves both, only the image root differs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..manifest import CLASS_TABLE, ManifestError, Row, _csv_records, read_class_table, read_split
from .base import ConversionError, _numeric_names, _register, write_manifest

DAFRE_MIN_IMAGES = 20
"""Classes with fewer images are dropped (the code and logs use 20; the DAF:re README says 10)."""
DAFRE_TRAIN, DAFRE_VAL = 0.7, 0.1
FACES85 = "danbooru2018_faces_85.csv"


def dafre_split_counts(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes of a DAF:re class with ``n`` images (spec animesion.md §2.3).

    n_trval = int(n * (0.7 + 0.1)) in IEEE double: 0.7 + 0.1 = 0.7999999999999999, so n = 20 gives
    15 (not 16). n_train = int(n * 0.7); val = the rest of train_val; test = n - n_trval.
    Examples: 20 -> (14, 1, 5), 25 -> (17, 3, 5), 30 -> (21, 2, 7), 100 -> (70, 10, 20).
    """
    if n < 0:
        raise ValueError(f"a class cannot have {n} images.")
    n_trval = int(n * (DAFRE_TRAIN + DAFRE_VAL))
    n_train = int(n * DAFRE_TRAIN)
    return n_train, n_trval - n_train, n - n_trval


def split_dafre(rows: Iterable[tuple[int, str]], min_images: int = DAFRE_MIN_IMAGES
                ) -> tuple[dict[str, list[Row]], list[int], dict[str, int]]:
    """The DAF:re split of ``(danbooru_id, dir)`` rows in file order.

    Classes with at least ``min_images`` images are kept; new ids 0..K-1 follow the ascending
    Danbooru id. Within a class, in file order (never shuffled): the first n_train images go to
    train, the next n_val to val, the last n_test to test (:func:`dafre_split_counts`).

    Returns:
        ``({"train", "val", "test"} -> rows, kept Danbooru ids in class-id order, report)`` where
        ``report`` counts source rows/classes and what was kept.
    """
    by_id: dict[int, list[str]] = {}
    n_rows = 0
    for did, d in rows:
        by_id.setdefault(did, []).append(d)
        n_rows += 1
    kept = [did for did in sorted(by_id) if len(by_id[did]) >= min_images]
    out: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    for cid, did in enumerate(kept):
        dirs = by_id[did]
        n_train, n_val, _ = dafre_split_counts(len(dirs))
        n_trval = n_train + n_val
        out["train"] += [Row(cid, d) for d in dirs[:n_train]]
        out["val"] += [Row(cid, d) for d in dirs[n_train:n_trval]]
        out["test"] += [Row(cid, d) for d in dirs[n_trval:]]
    kept_rows = sum(len(by_id[i]) for i in kept)
    report = {"source_rows": n_rows, "source_classes": len(by_id), "min_images": min_images,
              "kept_rows": kept_rows, "kept_classes": len(kept), "dropped_rows": n_rows - kept_rows,
              "dropped_classes": len(by_id) - len(kept)}
    return out, kept, report


def _read_faces85(path: Path) -> list[tuple[int, str]]:
    """``danbooru_id,dir`` rows of ``danbooru2018_faces_85.csv`` (no header) in file order; a
    path listed twice is an error naming both lines."""
    rows: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for i, rec in _csv_records(path):
        if not rec or (not rec[0].strip() and all(not c.strip() for c in rec)):  # blank line
            continue
        if len(rec) < 2:
            raise ConversionError(f"{path}:{i}: expected 'danbooru_id,dir', got {rec!r}.")
        try:
            did = int(rec[0])
        except ValueError as e:
            if i == 1:  # a header row
                continue
            raise ConversionError(f"{path}:{i}: the Danbooru id must be an integer, got {rec[0]!r}.") from e
        d = rec[1].strip()
        if d in seen:
            raise ConversionError(f"{path}:{i}: {d!r} is already listed at line {seen[d]}; the crop list must "
                                  "name each image once.")
        seen[d] = i
        rows.append((did, d))
    if not rows:
        raise ConversionError(f"{path}: no rows.")
    return rows


def _read_tag_names(path: Path) -> dict[int, str]:
    """``name<TAB>danbooru_id`` lines of ``tagIds.tsv`` -> {id: name}."""
    names: dict[int, str] = {}
    with path.open(encoding="utf-8-sig") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            name, _, did = line.rstrip("\n").rpartition("\t")
            try:
                names[int(did)] = name
            except ValueError as e:
                raise ConversionError(f"{path}:{i}: expected 'name<TAB>id', got {line.strip()!r}.") from e
    return names


def read_split_files(files: dict[str, Path]) -> tuple[dict[str, list[Row]], int]:
    """Read published split CSVs (``{split: path}``), refuse rows repeated within or across them,
    and return the rows with the class count implied by the largest class id."""
    try:
        rows = {s: read_split(p) for s, p in files.items()}
    except ManifestError as e:
        raise ConversionError(str(e)) from e
    check_no_duplicates(rows, files)
    return rows, 1 + max(r.class_id for rs in rows.values() for r in rs)


def check_no_duplicates(splits: dict[str, list[Row]], files: dict[str, Path]) -> None:
    """An image listed twice (in one split or across splits) is an error naming both places and
    the number of repeated rows."""
    first: dict[str, tuple[str, int]] = {}
    dups: list[str] = []
    for s, rows in splits.items():
        for r in rows:
            key = os.path.normpath(r.dir)
            if key in first:
                fs, fl = first[key]
                dups.append(f"{files[s]}:{r.line}: {r.dir!r} is already listed at {files[fs]}:{fl}")
            else:
                first[key] = (s, r.line)
    if dups:
        raise ConversionError(f"{dups[0]} ({len(dups)} repeated row(s) in all); each image belongs to one split.")


def _label_names(src: Path, k: int) -> list[str]:
    for table in (src / "labels" / CLASS_TABLE, src / CLASS_TABLE):
        if table.is_file():
            names = read_class_table(table)
            if len(names) != k:
                raise ConversionError(f"{table}: {len(names)} classes, but the label files use class ids up to "
                                      f"{k - 1}.")
            return names
    return _numeric_names(k, base=0)


@_register("daf", ("labels/train.csv|" + FACES85,),
           "the DAF:re label files (labels/train.csv, labels/val.csv, labels/test.csv) or " + FACES85)
def convert_daf(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, image_folder: str = "faces",
                val_fraction: float = 0.8, min_images: int = DAFRE_MIN_IMAGES) -> Path:
    """DAF:re from ``labels/{train,val,test}.csv`` (``class_id,dir``, header optional), else from
    ``danbooru2018_faces_85.csv`` with the authors' filter (>= ``min_images`` per class) and split
    rule. Train and val are DAF:re's own, never carved; ``val_fraction`` is accepted for a uniform
    signature and unused. ``manifest.json`` records the source (``dafre_source``) and, for the crop
    list, what the filter kept (``report``)."""
    src = Path(src_root).expanduser()
    labels = src / "labels"
    extra: dict = {}
    if (labels / "train.csv").is_file():
        rows, k = read_split_files({s: labels / f"{s}.csv" for s in ("train", "val", "test")})
        names = _label_names(src, k)
        extra["dafre_source"] = "labels"
    else:
        rows, kept, report = split_dafre(_read_faces85(src / FACES85), min_images)
        if not kept:
            raise ConversionError(f"{src / FACES85}: no class has {min_images} or more images.")
        tags = src / "tagIds.tsv"
        tag_names = _read_tag_names(tags) if tags.is_file() else {}
        names = [tag_names.get(did, str(did)) for did in kept]
        extra["dafre_source"] = FACES85
        extra["report"] = [
            f"{FACES85}: {report['source_rows']} images of {report['source_classes']} Danbooru ids; kept "
            f"{report['kept_rows']} images of {report['kept_classes']} classes with >= {min_images} images "
            f"(dropped {report['dropped_rows']} images of {report['dropped_classes']} smaller classes)"]
    return write_manifest(out_dir, train_val=rows["train"] + rows["val"], test=rows["test"],
                          class_names=names, image_root=src / image_folder, converter="daf", source=src,
                          train=rows["train"], val=rows["val"], extra=extra)

