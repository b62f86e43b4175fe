"""The one on-disk split format (the reference CSVs, adopted unchanged).

A dataset root holds ``train.csv``, ``val.csv``, ``train_val.csv``, ``test.csv`` (header
``class_id,dir``; ``dir`` relative to ``<root>/<image folder>``) and ``classid_classname.csv``
(header ``class_id,class_name``). Published split CSVs load as they are. A manifest written by
fgir also holds ``manifest.json`` (the absolute image root, the source and how it was made).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

SPLIT_HEADER = ["class_id", "dir"]
CLASS_HEADER = ["class_id", "class_name"]
SPLITS = ("train_val", "test", "train", "val")
"""The four split CSVs of a manifest, in the order counts are listed."""
CLASS_TABLE = "classid_classname.csv"
MANIFEST_JSON = "manifest.json"
"""Written next to converted CSVs: the absolute image root, the source and the converter."""


class ManifestError(ValueError):
    """A split or class-table file is malformed; the message names the file and row."""


@dataclass(frozen=True)
class Row:
    class_id: int
    dir: str
    line: int = field(default=0, compare=False, repr=False)
    """Line of the CSV the row was read from (0 = not read from a file); for error messages."""


def split_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"{split}.csv"


def has_split_csvs(root: str | os.PathLike, suffix: str = "", splits: tuple[str, ...] = SPLITS) -> bool:
    """True when ``root`` holds every split CSV in ``splits`` under the plain fgir names."""
    return all((Path(root) / f"{s}{suffix}.csv").is_file() for s in splits)


def read_manifest_info(manifest_dir: str | os.PathLike) -> dict:
    """The ``manifest.json`` of a converted manifest, or ``{}`` when there is none."""
    p = Path(manifest_dir) / MANIFEST_JSON
    if not p.is_file():
        return {}
    return json.loads(p.read_text(encoding="utf-8"))


def write_manifest_info(manifest_dir: str | os.PathLike, info: dict) -> None:
    """Write ``manifest.json`` atomically (its presence marks a complete manifest)."""
    path = Path(manifest_dir) / MANIFEST_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def image_root_of(manifest_dir: str | os.PathLike, spec) -> Path:
    """Where the CSV ``dir`` paths of ``manifest_dir`` point: manifest.json's ``image_root`` if
    present, else ``<manifest_dir>/<spec.image_folder>`` (``spec`` may also be the folder name)."""
    info = read_manifest_info(manifest_dir)
    if info.get("image_root"):
        return Path(info["image_root"])
    return Path(manifest_dir) / getattr(spec, "image_folder", spec)


def read_split(path: str | os.PathLike) -> list[Row]:
    """Read a ``class_id,dir`` CSV (a header-less file, as in the DAF:re label files, also works)."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"Split file not found: {p}")
    rows: list[Row] = []
    for i, cid, rec in _id_records(p, SPLIT_HEADER):
        rows.append(Row(cid, rec[1], i))
    return rows


def _id_records(p: Path, header: list[str]):
    """``(line, class_id, fields)`` of a two-column ``class_id,<x>`` CSV (:func:`_csv_records`):
    blank lines and the header are skipped; a short row or a non-integer id names ``file:line``."""
    for i, rec in _csv_records(p):
        if not rec or (not rec[0].strip() and all(not c.strip() for c in rec)):  # blank line
            continue
        if i == 1 and [c.strip() for c in rec[:2]] == header:
            continue
        if len(rec) < 2:
            raise ManifestError(f"{p}:{i}: expected '{','.join(header)}', got {rec!r}.")
        try:
            cid = int(rec[0])
        except ValueError as e:
            raise ManifestError(f"{p}:{i}: class_id must be an integer, got {rec[0]!r}.") from e
        yield i, cid, rec


def _csv_records(p: Path):
    """``(line, fields)`` of a CSV as spreadsheets write them: a UTF-8 BOM and CRLF line ends are
    accepted; bytes that are not UTF-8 name the file and line; oversized fields are an error
    naming the line instead of csv's bare ``field larger than field limit``."""
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ManifestError(f"{p}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as "
                            "UTF-8 (spreadsheets: 'CSV UTF-8').") from e
    reader = csv.reader(text.splitlines())
    try:
        for rec in reader:
            yield reader.line_num, rec
    except csv.Error as e:
        raise ManifestError(f"{p}:{reader.line_num}: malformed CSV: {e}.") from e


def check_paths(rows: list[Row], image_root: str | os.PathLike, where: str) -> None:
    """Every ``dir`` must stay inside ``image_root``: a row with ``..`` or an absolute path that
    resolves outside it is refused with ``file:line`` (a manifest must not open arbitrary files)."""
    root = os.path.abspath(image_root)
    for r in rows:
        d = r.dir
        if not d:
            raise ManifestError(f"{where}:{r.line}: empty image path.")
        if not (os.path.isabs(d) or ".." in Path(d).parts or d.startswith("~")):
            continue
        full = os.path.abspath(os.path.join(root, d))
        if os.path.commonpath([root, full]) != root:
            raise ManifestError(f"{where}:{r.line}: image path {d!r} points outside the image root {root}; "
                                "paths must be relative to it, without '..'.")


def duplicate_rows(rows: list[Row]) -> list[str]:
    """Image paths listed more than once in one split (normalised), in first-seen order."""
    seen: set[str] = set()
    dups: list[str] = []
    for r in rows:
        k = os.path.normpath(r.dir)
        if k in seen and k not in dups:
            dups.append(k)
        seen.add(k)
    return dups


def write_split(path: str | os.PathLike, rows: list[Row] | list[tuple[int, str]]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(SPLIT_HEADER)
        for r in rows:
            cid, d = (r.class_id, r.dir) if isinstance(r, Row) else r
            w.writerow([int(cid), d])
    os.replace(tmp, p)


def read_class_table(path: str | os.PathLike) -> list[str]:
    """Read ``classid_classname.csv``; ids must be 0..K-1. Extra columns (the malformed Cars
    table) are ignored and a stray trailing quote is stripped."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"Class table not found: {p}")
    names: dict[int, str] = {}
    for i, cid, rec in _id_records(p, CLASS_HEADER):
        name = rec[1]
        if name.endswith("'") and name.count("'") % 2 == 1:
            name = name[:-1]
        if cid in names:
            raise ManifestError(f"{p}:{i}: class_id {cid} appears twice.")
        names[cid] = name
    k = len(names)
    if sorted(names) != list(range(k)):
        missing = sorted(set(range(k)) - set(names))[:5]
        raise ManifestError(f"{p}: class ids must be contiguous 0..{k - 1}; missing e.g. {missing}.")
    return [names[i] for i in range(k)]


def write_class_table(path: str | os.PathLike, names: list[str]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CLASS_HEADER)
        for i, n in enumerate(names):
            w.writerow([i, n])
    os.replace(tmp, p)


def carve_train_val(train_val: list[Row], p: float = 0.8) -> tuple[list[Row], list[Row]]:
    """The reference rule (spec datasets.md §4.2): per class in increasing id order, the rows of
    that class in ``train_val`` order; the first floor(p*n_c) go to train, the rest to val.
    Deterministic, no shuffling; outputs are written class by class."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}.")
    by_class: dict[int, list[Row]] = {}
    for r in train_val:
        by_class.setdefault(r.class_id, []).append(r)
    train: list[Row] = []
    val: list[Row] = []
    for c in sorted(by_class):
        rows = by_class[c]
        k = int(p * len(rows) + 1e-9)
        train += rows[:k]
        val += rows[k:]
    return train, val


def check_rows(rows: list[Row], num_classes: int, where: str) -> None:
    """Class ids must lie in [0, K)."""
    bad = [r for r in rows if not 0 <= r.class_id < num_classes]
    if bad:
        ex = ", ".join(f"{r.dir} -> {r.class_id}" for r in bad[:3])
        raise ManifestError(f"{where}: {len(bad)} row(s) have class ids outside the class table "
                            f"[0, {num_classes - 1}] (e.g. {ex}).")
