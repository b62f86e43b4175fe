"""Converters from official dataset layouts to the manifest format (spec datasets.md §5).

Every converter reads one official layout under ``src_root`` (never writing there) and writes a
manifest into ``out_dir``: ``train_val.csv``, ``test.csv``, ``train.csv`` and ``val.csv`` (carved
from train_val by the reference rule with the dataset's p unless the source defines them),
``classid_classname.csv`` and ``manifest.json``, which records the absolute image root the CSV
paths are relative to, the source root and the converter. The manifest can therefore live in a
cache folder while the images stay in a read-only tree.

:func:`prepare` is the entry point: it picks the reference CSVs or the spec's converter, runs it
and checks the result against the catalog (row counts, datasets.md §4.3 invariants, images on
disk). Converters are registered in ``CONVERTERS`` with the files that identify their layout.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .catalog import (
    MANIFEST_JSON,
    SPLITS,
    DatasetSpec,
    cache_home,
    get_spec,
    has_split_csvs,
    image_root_of,
    read_manifest_info,
)
from .manifest import (
    ManifestError,
    Row,
    carve_train_val,
    check_rows,
    read_class_table,
    read_split,
    split_path,
    write_class_table,
    write_split,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CLASS_TABLE = "classid_classname.csv"


class ConversionError(ManifestError):
    """An official layout is incomplete or inconsistent; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Registry of converters
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Converter:
    name: str
    func: Callable[..., Path]
    requires: tuple[str, ...]
    """Paths (relative to the source root) that identify the layout; ``a|b`` = either, ``*`` globs,
    ``{folder}`` = the spec's image folder."""
    layout: str
    """Human description used in error messages."""

    def detect(self, root: str | os.PathLike, image_folder: str = "images") -> bool:
        root = Path(root)
        for req in self.requires:
            alternatives = req.format(folder=image_folder).split("|")
            if not any(_exists(root, a) for a in alternatives):
                return False
        return True


def _exists(root: Path, pattern: str) -> bool:
    if "*" in pattern:
        return next(iter(root.glob(pattern)), None) is not None
    return (root / pattern).exists()


CONVERTERS: dict[str, Converter] = {}


def _register(name: str, requires: tuple[str, ...], layout: str):
    def deco(func):
        if name in CONVERTERS:
            raise ValueError(f"converter '{name}' is already registered.")
        CONVERTERS[name] = Converter(name, func, requires, layout)
        return func

    return deco


def layout_description(name: str) -> str:
    """The layout a converter reads, for messages ('' for no/unknown converter)."""
    conv = CONVERTERS.get(name)
    return conv.layout if conv else ""


# ---------------------------------------------------------------------------------------------
# Writing a manifest
# ---------------------------------------------------------------------------------------------
def write_manifest(out_dir: str | os.PathLike, *, train_val: list[Row], test: list[Row],
                   class_names: list[str], image_root: str | os.PathLike, converter: str,
                   source: str | os.PathLike, val_fraction: float = 0.8,
                   train: list[Row] | None = None, val: list[Row] | None = None) -> Path:
    """Write the four split CSVs, the class table and ``manifest.json`` into ``out_dir``.

    ``train``/``val`` are carved from ``train_val`` (datasets.md §4.2, p = ``val_fraction``)
    unless both are given. ``manifest.json`` is written last, so its presence marks a complete
    manifest; ``validated`` stays false until :func:`prepare` has checked it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    carved = train is None or val is None
    if carved:
        train, val = carve_train_val(train_val, val_fraction)
    k = len(class_names)
    for split, rows in (("train_val", train_val), ("test", test), ("train", train), ("val", val)):
        check_rows(rows, k, f"{converter}: {split}")
    (out / MANIFEST_JSON).unlink(missing_ok=True)
    for split, rows in (("train_val", train_val), ("test", test), ("train", train), ("val", val)):
        write_split(split_path(out, split), rows)
    write_class_table(out / CLASS_TABLE, class_names)
    info = {
        "format": 1,
        "image_root": str(Path(image_root).expanduser().absolute()),
        "source": str(Path(source).expanduser().absolute()),
        "converter": converter,
        "num_classes": k,
        "counts": {"train_val": len(train_val), "test": len(test), "train": len(train), "val": len(val)},
        "val_fraction": val_fraction if carved else None,
        "carved": carved,
        "validated": False,
    }
    _write_json(out / MANIFEST_JSON, info)
    return out


def _write_json(path: Path, info: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Small readers for the official list files
# ---------------------------------------------------------------------------------------------
_FIRST = re.compile(r"^\s*([^\s,]+)\s*(?:,\s*|\s+)(.*?)\s*$")
_LAST = re.compile(r"^\s*(.*?)\s*(?:,\s*|\s+)([^\s,]+)\s*$")


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    if not path.is_file():
        raise ConversionError(f"Missing file of the official layout: {path}")
    with path.open(encoding="utf-8-sig") as fh:
        for i, line in enumerate(fh, start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield i, line


def _read_pairs(path: Path, last: bool = False) -> list[tuple[str, str]]:
    """``(first, second)`` fields of lines ``a b`` or ``a, b``. The first field is one token and
    the second may hold spaces; with ``last`` it is the other way round (``file label`` lists)."""
    pat = _LAST if last else _FIRST
    out = []
    for i, line in _lines(path):
        m = pat.match(line)
        if not m:
            raise ConversionError(f"{path}:{i}: expected two fields separated by a space or ', ', "
                                  f"got {line!r}.")
        out.append((m.group(1), m.group(2)))
    return out


def _int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise ConversionError(f"{where}: expected an integer, got {value!r}.") from e


def _unique_dict(pairs: list[tuple[str, str]], path: Path) -> dict[str, str]:
    d: dict[str, str] = {}
    for k, v in pairs:
        if k in d:
            raise ConversionError(f"{path}: id {k!r} is listed twice.")
        d[k] = v
    return d


def _one_based(labels: list[int], where: str) -> tuple[list[int], int]:
    """Labels 1..K -> 0..K-1; every label must occur. Returns (class ids, K)."""
    if not labels:
        raise ConversionError(f"{where}: no rows.")
    k = max(labels)
    missing = sorted(set(range(1, k + 1)) - set(labels))
    if min(labels) < 1 or missing:
        raise ConversionError(f"{where}: labels must be 1-based and contiguous 1..{k}; "
                              f"min {min(labels)}, missing e.g. {missing[:5]}.")
    return [c - 1 for c in labels], k


def _numeric_names(k: int, base: int = 1) -> list[str]:
    """Class names for sets without a class table: the original labels as strings (§3)."""
    return [str(i + base) for i in range(k)]


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


# ---------------------------------------------------------------------------------------------
# Reference CSVs (the published split files, or any root already in the manifest format)
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# CUB-200-2011 and NABirds
# ---------------------------------------------------------------------------------------------
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



def _check_contiguous(names: dict[int, str], message: str) -> int:
    """K = max id + 1; the ids must be exactly 0..K-1 (``message`` may use {k} and {k - 1})."""
    k = max(names) + 1 if names else 0
    if sorted(names) != list(range(k)):
        raise ConversionError(message.replace("{k - 1}", str(k - 1)).replace("{k}", str(k)))
    return k

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


# ---------------------------------------------------------------------------------------------
# Class-folder trees (Flowers-12, anything shaped train/<class>/*, test/<class>/*)
# ---------------------------------------------------------------------------------------------
def _class_tree(root: Path) -> dict[str, list[str]]:
    if not root.is_dir():
        raise ConversionError(f"Class-folder split not found: {root}")
    tree = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        tree[d.name] = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if _is_image(p))
    return tree


@_register("class_folders", ("train", "test"), "class folders train/<class>/*, test/<class>/*")
def convert_class_folders(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, train: str = "train",
                          test: str = "test", val_fraction: float = 0.8) -> Path:
    """Class-folder trees ``<train>/<class>/*`` and ``<test>/<class>/*``: classes sorted by name
    (from the train tree), files sorted by path; ``dir`` = ``<train|test>/<class>/<file>`` under the
    source root. A test class that train lacks is an error."""
    src = Path(src_root).expanduser()
    tr, te = _class_tree(src / train), _class_tree(src / test)
    names = [c for c in tr if tr[c]]
    if not names:
        raise ConversionError(f"{src / train}: no class folder holds an image.")
    extra = sorted(c for c in te if te[c] and c not in names)
    if extra:
        raise ConversionError(f"{src / test}: classes {extra[:5]} have test images but no training images "
                              f"in {src / train}.")
    cid = {c: i for i, c in enumerate(names)}
    train_val = [Row(cid[c], f"{train}/{c}/{f}") for c in names for f in tr[c]]
    test_rows = [Row(cid[c], f"{test}/{c}/{f}") for c in te if te[c] for f in te[c]]
    return write_manifest(out_dir, train_val=train_val, test=test_rows, class_names=names, image_root=src,
                          converter="class_folders", source=src, val_fraction=val_fraction)


# ---------------------------------------------------------------------------------------------
# FGVC-Aircraft, Oxford-IIIT Pets, Food-101, VegFru, iNat17
# ---------------------------------------------------------------------------------------------
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


@_register("pets", ("annotations/trainval.txt", "annotations/test.txt"),
           "the official Oxford-IIIT Pets lists (annotations/trainval.txt, annotations/test.txt)")
def convert_pets(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                 image_folder: str = "images") -> Path:
    """Oxford-IIIT Pets: ``annotations/{trainval,test}.txt`` lines ``<Image> <CLASS-ID> <SPECIES>
    <BREED ID>``; class id = CLASS-ID - 1; ``dir`` = ``<Image>.jpg``; class name = the image
    name without its trailing ``_<n>``."""
    src = Path(src_root).expanduser()
    rows: dict[str, list[Row]] = {}
    names: dict[int, str] = {}
    for split in ("trainval", "test"):
        path = src / "annotations" / f"{split}.txt"
        rows[split] = []
        for i, line in _lines(path):
            tok = line.split()
            if len(tok) < 2:
                raise ConversionError(f"{path}:{i}: expected '<Image> <CLASS-ID> ...', got {line!r}.")
            c = _int(tok[1], f"{path}:{i}") - 1
            breed = tok[0].rsplit("_", 1)[0]
            if names.setdefault(c, breed) != breed:
                raise ConversionError(f"{path}:{i}: class {c + 1} is both {names[c]!r} and {breed!r}.")
            rows[split].append(Row(c, f"{tok[0]}.jpg"))
    k = _check_contiguous(names, f"{src / 'annotations'}: CLASS-IDs are not contiguous 1..{{k}}.")
    return write_manifest(out_dir, train_val=rows["trainval"], test=rows["test"],
                          class_names=[names[c] for c in range(k)], image_root=src / image_folder,
                          converter="pets", source=src, val_fraction=val_fraction)


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


def _vegfru_list(src: Path, split: str) -> Path:
    for p in (src / f"vegfru_{split}.txt", src / "vegfru_list" / f"vegfru_{split}.txt"):
        if p.is_file():
            return p
    raise ConversionError(f"{src}: vegfru_{split}.txt not found (looked in {src} and {src / 'vegfru_list'}).")


@_register("vegfru", ("vegfru_train.txt|vegfru_list/vegfru_train.txt",),
           "the official VegFru lists (vegfru_list/vegfru_{train,val,test}.txt)")
def convert_vegfru(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                   image_folder: str = "images") -> Path:
    """VegFru: lists ``vegfru_{train,val,test}.txt`` (``<path> <label>``, 0-based) with
    ``veg200_images/`` and ``fru92_images/`` merged into ``images/``; train_val = train + val;
    ``dir`` = the list path without its first component; class name = the class folder."""
    src = Path(src_root).expanduser()
    names: dict[int, str] = {}
    rows: dict[str, list[Row]] = {}
    for split in ("train", "val", "test"):
        path = _vegfru_list(src, split)
        rows[split] = []
        for file, label in _read_pairs(path, last=True):
            c = _int(label, str(path))
            parts = file.split("/", 1)
            d = parts[1] if len(parts) == 2 else parts[0]
            folder = d.split("/", 1)[0]
            if names.setdefault(c, folder) != folder:
                raise ConversionError(f"{path}: label {c} is both {names[c]!r} and {folder!r}.")
            rows[split].append(Row(c, d))
    k = _check_contiguous(names, f"{src}: VegFru labels are not contiguous 0..{{k - 1}}.")
    return write_manifest(out_dir, train_val=rows["train"] + rows["val"], test=rows["test"],
                          class_names=[names[c] for c in range(k)], image_root=src / image_folder,
                          converter="vegfru", source=src, val_fraction=val_fraction)


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


# ---------------------------------------------------------------------------------------------
# DAF:re label files
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Ultra-fine-grained leaves: Cotton80 / SoyLocal / SoyGlobal, SoyGene, SoyAgeing
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# MATLAB layouts (Stanford Cars, Stanford Dogs, Flowers-102): need SciPy
# ---------------------------------------------------------------------------------------------
def _loadmat(path: Path) -> dict:
    """``scipy.io.loadmat(path, squeeze_me=True)``; a clear error when SciPy is missing."""
    if not path.is_file():
        raise ConversionError(f"Missing file of the official layout: {path}")
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ConversionError(f"Reading {path.name} needs SciPy, which is not installed: "
                              f"`pip install scipy`, then run the conversion again.") from e
    return loadmat(str(path), squeeze_me=True)


def _flat(a) -> list:
    import numpy as np

    return list(np.atleast_1d(np.asarray(a)).ravel())


def _scalar(v) -> object:
    import numpy as np

    a = np.asarray(v)
    return a.item() if a.size == 1 else a


@_register("cars", ("cars_annos.mat",), "the Stanford Cars annotations (cars_annos.mat)")
def convert_cars(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                 image_folder: str = "car_ims") -> Path:
    """Stanford Cars combined release: ``cars_annos.mat`` (``annotations``: relative_im_path,
    class (1-based), test flag; ``class_names``); class id = class - 1; ``dir`` = file name."""
    src = Path(src_root).expanduser()
    mat = _loadmat(src / "cars_annos.mat")
    names = [str(_scalar(n)) for n in _flat(mat["class_names"])]
    rows: dict[int, list[Row]] = {0: [], 1: []}
    for a in _flat(mat["annotations"]):
        c = int(_scalar(a["class"])) - 1
        rows[int(_scalar(a["test"]))].append(Row(c, Path(str(_scalar(a["relative_im_path"]))).name))
    return write_manifest(out_dir, train_val=rows[0], test=rows[1], class_names=names,
                          image_root=src / image_folder, converter="cars", source=src,
                          val_fraction=val_fraction)


@_register("dogs", ("train_list.mat", "test_list.mat"),
           "the Stanford Dogs lists (train_list.mat, test_list.mat)")
def convert_dogs(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                 image_folder: str = "Images") -> Path:
    """Stanford Dogs: ``{train,test}_list.mat`` (``file_list`` ``<wnid>-<breed>/<file>``,
    ``labels`` 1-based); class id = label - 1; class name = the breed part of the folder."""
    src = Path(src_root).expanduser()
    names: dict[int, str] = {}
    rows: dict[str, list[Row]] = {}
    for split in ("train", "test"):
        mat = _loadmat(src / f"{split}_list.mat")
        files = [str(_scalar(f)) for f in _flat(mat["file_list"])]
        labels = [int(_scalar(v)) - 1 for v in _flat(mat["labels"])]
        rows[split] = []
        for f, c in zip(files, labels, strict=True):
            breed = f.split("/", 1)[0].split("-", 1)[-1]
            if names.setdefault(c, breed) != breed:
                raise ConversionError(f"{src / f'{split}_list.mat'}: label {c + 1} is both {names[c]!r} "
                                      f"and {breed!r}.")
            rows[split].append(Row(c, f))
    k = _check_contiguous(names, f"{src}: Stanford Dogs labels are not contiguous 1..{{k}}.")
    return write_manifest(out_dir, train_val=rows["train"], test=rows["test"],
                          class_names=[names[c] for c in range(k)], image_root=src / image_folder,
                          converter="dogs", source=src, val_fraction=val_fraction)


@_register("flowers102", ("imagelabels.mat", "setid.mat"),
           "the Flowers-102 files (imagelabels.mat, setid.mat)")
def convert_flowers102(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.5,
                       image_folder: str = "jpg", class_names: list[str] | None = None) -> Path:
    """Oxford Flowers-102: ``imagelabels.mat`` (``labels``, 1-based, image i = ``image_{i:05d}.jpg``)
    and ``setid.mat`` (``trnid``, ``valid``, ``tstid``, 1-based image numbers); train_val = trnid
    then valid, test = tstid. With p = 0.5 the carve-out reproduces the official train/val. The
    official files hold no class names: pass ``class_names`` or get ``"1"``..``"102"``."""
    src = Path(src_root).expanduser()
    labels = [int(_scalar(v)) for v in _flat(_loadmat(src / "imagelabels.mat")["labels"])]
    setid = _loadmat(src / "setid.mat")
    ids, k = _one_based(labels, str(src / "imagelabels.mat"))

    def rows(key: str) -> list[Row]:
        out = []
        for n in _flat(setid[key]):
            n = int(_scalar(n))
            if not 1 <= n <= len(ids):
                raise ConversionError(f"{src / 'setid.mat'}: {key} lists image {n}, outside 1..{len(ids)}.")
            out.append(Row(ids[n - 1], f"image_{n:05d}.jpg"))
        return out

    names = list(class_names) if class_names else _numeric_names(k)
    if len(names) != k:
        raise ConversionError(f"class_names has {len(names)} entries; imagelabels.mat has {k} classes.")
    return write_manifest(out_dir, train_val=rows("trnid") + rows("valid"), test=rows("tstid"),
                          class_names=names, image_root=src / image_folder, converter="flowers102",
                          source=src, val_fraction=val_fraction)


# ---------------------------------------------------------------------------------------------
# Validation and the prepare entry point
# ---------------------------------------------------------------------------------------------
def source_kind(spec: DatasetSpec, root: str | os.PathLike) -> str | None:
    """What ``root`` holds for ``spec``: ``"csv"`` (reference split CSVs, preferred),
    ``"converter"`` (an official layout the spec's converter reads) or ``None``."""
    root = Path(root)
    if has_reference_csvs(root, spec.split_suffix):
        return "csv"
    conv = CONVERTERS.get(spec.converter)
    if conv is not None and conv.detect(root, spec.image_folder):
        return "converter"
    return None


def run_converter(spec: DatasetSpec, src_root: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Run the spec's official-layout converter with the spec's p, image folder and options."""
    if spec.converter not in CONVERTERS:
        raise ConversionError(f"Dataset '{spec.name}' has no official-layout converter; "
                              f"provide the reference split CSVs (train_val.csv, test.csv).")
    conv = CONVERTERS[spec.converter]
    params = inspect.signature(conv.func).parameters
    kwargs: dict = {"val_fraction": spec.val_fraction}
    if "image_folder" in params:
        kwargs["image_folder"] = spec.image_folder
    kwargs.update(spec.converter_options)
    return conv.func(src_root, out_dir, **kwargs)


def validate_manifest(manifest_dir: str | os.PathLike, spec: DatasetSpec, *, check_counts: bool = True,
                      strict: bool = True, check_files: bool = True,
                      image_root: str | os.PathLike | None = None) -> dict[str, int]:
    """Check a manifest against the catalog; returns the rows per split.

    Always: the four split CSVs exist and class ids lie in the class table. With
    ``check_counts``: the class count and the rows per split equal ``spec`` (the error names each
    split with expected and found counts). The datasets.md §4.3 invariants (train ∪ val =
    train_val, train ∩ val = ∅, test ∩ train_val = ∅ by path, no duplicate rows, every class in
    every split) and, with ``check_files``, every listed image existing under the image root are
    errors when ``strict`` and warnings otherwise.
    """
    mdir = Path(manifest_dir)
    missing = [s for s in SPLITS if not split_path(mdir, s).is_file()]
    if missing:
        raise ManifestError(f"Dataset '{spec.name}': {mdir} lacks {', '.join(f'{s}.csv' for s in missing)}.")
    rows = {s: read_split(split_path(mdir, s)) for s in SPLITS}
    table = mdir / CLASS_TABLE
    k = len(read_class_table(table)) if table.is_file() else spec.num_classes
    for s, rs in rows.items():
        check_rows(rs, k, str(split_path(mdir, s)))
    found = {s: len(rs) for s, rs in rows.items()}

    if check_counts:
        wrong = [f"{s}: expected {spec.counts[s]}, found {found[s]}"
                 for s in SPLITS if s in spec.counts and spec.counts[s] != found[s]]
        if k != spec.num_classes:
            wrong.insert(0, f"classes: expected {spec.num_classes}, found {k}")
        if wrong:
            raise ManifestError(
                f"Dataset '{spec.name}' in {mdir} does not match the catalog: " + "; ".join(wrong)
                + ". If the source is a subset on purpose, pass check_counts=False "
                  "(`fgir data prepare --no-check-counts`).")

    problems = _invariant_problems(rows, k)
    if check_files:
        root = Path(image_root) if image_root is not None else image_root_of(mdir, spec)
        dirs = dict.fromkeys(r.dir for s in ("train_val", "test") for r in rows[s])
        absent = [d for d in dirs if not (root / d).is_file()]
        if absent:
            problems.append(f"{len(absent)} of {len(dirs)} listed images are missing under {root} "
                            f"(e.g. {absent[:3]})")
    if problems:
        msg = f"Dataset '{spec.name}' in {mdir}: " + "; ".join(problems)
        if strict:
            raise ManifestError(msg + ". Pass strict=False to only warn.")
        warnings.warn(msg, stacklevel=2)
    return found


def _invariant_problems(rows: dict[str, list[Row]], k: int) -> list[str]:
    out = []
    tv, tr, va, te = (rows[s] for s in ("train_val", "train", "val", "test"))
    for s in ("train_val", "test"):
        dup = len(rows[s]) - len(set(rows[s]))
        if dup:
            out.append(f"{s} has {dup} duplicated row(s)")
    tr_set, va_set, tv_set = set(tr), set(va), set(tv)
    if tr_set & va_set:
        out.append(f"train and val share {len(tr_set & va_set)} row(s)")
    if tr_set | va_set != tv_set:
        extra = len((tr_set | va_set) - tv_set)
        lost = len(tv_set - (tr_set | va_set))
        out.append(f"train ∪ val differs from train_val ({extra} row(s) not in train_val, "
                   f"{lost} train_val row(s) in neither)")
    leak = {r.dir for r in te} & {r.dir for r in tv}
    if leak:
        out.append(f"{len(leak)} test image(s) are also in train_val (e.g. {sorted(leak)[:3]})")
    for s in SPLITS:
        absent = sorted(set(range(k)) - {r.class_id for r in rows[s]})
        if absent:
            out.append(f"{len(absent)} class(es) have no row in {s} (e.g. {absent[:5]})")
    return out


def prepare(name: str, src_root: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
            check_counts: bool = True, strict: bool = True, check_files: bool = True) -> Path:
    """Write the manifest of dataset ``name`` from ``src_root`` and check it; returns its folder.

    ``src_root`` holds either the reference split CSVs (preferred; normalised, train/val carved
    when absent) or an official layout the spec's converter reads. ``out_dir`` defaults to
    ``<cache_home>/manifests/<name>``. See :func:`validate_manifest` for ``check_counts``
    (``False`` for subsets), ``strict`` and ``check_files``. On success manifest.json gets
    ``validated: true`` (only validated manifests are reused by ``resolve_root``).
    """
    spec = get_spec(name)
    src = Path(src_root).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"Dataset '{name}': source root {src} is not a folder.")
    out = Path(out_dir).expanduser() if out_dir is not None else cache_home() / "manifests" / name
    kind = source_kind(spec, src)
    if kind == "csv":
        convert_reference_csvs(src, out, val_fraction=spec.val_fraction, image_folder=spec.image_folder,
                               suffix=spec.split_suffix,
                               # a deliberate subset (no count check) gets K from its own labels
                               num_classes=spec.num_classes if check_counts else 0)
    elif kind == "converter":
        run_converter(spec, src, out)
    else:
        layout = layout_description(spec.converter)
        raise FileNotFoundError(
            f"Dataset '{name}': {src} holds neither train_val{spec.split_suffix}.csv + "
            f"test{spec.split_suffix}.csv" + (f" nor {layout}" if layout else "")
            + (f" (no converter for '{name}': use the published CSVs)" if not layout else "") + ".")
    validate_manifest(out, spec, check_counts=check_counts, strict=strict, check_files=check_files)
    info = read_manifest_info(out)
    info.update(dataset=name, validated=True, checked_counts=check_counts, strict=strict)
    _write_json(out / MANIFEST_JSON, info)
    return out


__all__ = [
    "CONVERTERS", "ConversionError", "Converter", "convert_aircraft", "convert_cars", "convert_class_folders",
    "convert_cub", "convert_daf", "convert_dogs", "convert_flowers102", "convert_food101", "convert_inat17",
    "convert_nabirds", "convert_pets", "convert_reference_csvs", "convert_soyageing", "convert_soygene",
    "convert_ufgir", "convert_vegfru", "has_reference_csvs", "has_split_csvs", "layout_description",
    "prepare",
    "run_converter", "source_kind", "validate_manifest", "write_manifest",
]
