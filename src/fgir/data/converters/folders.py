"""Class-folder trees: the bundled Flowers-12 layout (``class_folders``) and your own data (``folder``).

Own data (the ``folder`` dataset, ``data.name=folder data.root=...``) comes in three shapes,
detected in this order by :func:`own_layout`:

``csv``
    ``data.root`` is a CSV file with a header holding ``path`` and ``label`` and optionally
    ``split``. Paths are relative to the CSV's folder or absolute. Labels are class names or,
    when every label is an integer, class ids 0..K-1 (names are then the ids as text). With a
    ``split`` column (``train``/``val``/``test`` on every row) the rows keep their split, and
    when no row says ``val`` val is carved from train by the reference rule with p (as catalog
    sets do); without one the rows are carved like a flat tree.
``split``
    ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``, optionally ``DIR/val/<class>/*``.
    Without ``val/``, val is carved from train per class by the reference rule with p
    (:func:`fgir.data.manifest.carve_train_val`: first floor(p*n_c) files in path order).
``flat``
    ``DIR/<class>/*`` with no split folder: train, val and test are carved per class by
    :func:`carve_by_fractions` with ``split_fractions``.

Class names are the class-folder names (or CSV labels) sorted, ids 0..K-1. Images are files
with an image extension (:data:`IMAGE_EXTENSIONS`) anywhere below a class folder; hidden files
and anything under a hidden folder are ignored, so are other files. An empty class folder,
fewer than 2 classes, or a root that is not readable is an error naming the path.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..manifest import Row, read_split
from .base import (
    IMAGE_EXTENSIONS,
    ConversionError,
    _is_image,
    _register,
    write_manifest,
)


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
# Own data: the ``folder`` dataset
# ---------------------------------------------------------------------------------------------
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
"""train/val/test fractions of the per-class carve of a flat tree or a CSV list without splits."""
SPLIT_DIRS = ("train", "val", "test")
CSV_COLUMNS = ("path", "label", "split")
_EXTS = ", ".join(sorted(IMAGE_EXTENSIONS))


def check_split_fractions(fractions: Sequence, key: str = "data.split_fractions") -> tuple[float, float, float]:
    """``[train, val, test]`` fractions as floats; ``ValueError`` naming ``key`` unless there are three
    numbers with train > 0, val >= 0, test > 0 summing to 1 (within 1e-6)."""
    try:
        vals = tuple(float(v) for v in fractions)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{key} must be three numbers [train, val, test], got {fractions!r}.") from e
    if len(vals) != 3 or vals[0] <= 0 or vals[1] < 0 or vals[2] <= 0 or abs(sum(vals) - 1) > 1e-6:
        raise ValueError(f"{key}={list(fractions)!r} is not allowed; expected [train, val, test] with "
                         f"train > 0, val >= 0, test > 0 summing to 1, e.g. {list(DEFAULT_SPLIT_FRACTIONS)}.")
    return vals  # type: ignore[return-value]


def carve_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Images of a class with ``n`` images that go to (train, val, test).

    val = floor(f_val*n + 0.5) and test = floor(f_test*n + 0.5) (rounded half up), train = the rest;
    when that leaves no training image, val and then test give one back until train has one. With
    the default [0.7, 0.1, 0.2]: 1 or 2 images -> all train; 3 -> 2/0/1; 5 -> 3/1/1; 10 -> 7/1/2.
    """
    _, fv, ft = fractions
    n_val, n_test = int(fv * n + 0.5 + 1e-9), int(ft * n + 0.5 + 1e-9)
    while n - n_val - n_test < 1 and (n_val or n_test):
        if n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def carve_order(files: Iterable[str]) -> list[str]:
    """The order the carve takes files of one class in: by SHA-1 of the path relative to the class
    folder (for a CSV list: the path as written), then by the path. It depends only on that
    class's own file names, so adding, removing or renaming other classes (or the class folder
    itself) never moves a file, and file names that encode time or source (``0001.jpg``...) do
    not put one block into test."""
    return sorted(files, key=lambda f: (hashlib.sha1(f.encode("utf-8")).hexdigest(), f))


def carve_by_fractions(files: Sequence[str], fractions: Sequence[float]) -> dict[str, list[str]]:
    """The per-class carve of a flat tree: :func:`carve_order`, then the first ``n_train`` files
    to train, the next ``n_val`` to val and the last ``n_test`` to test (:func:`carve_counts`).
    Each split lists its files sorted by path."""
    order = carve_order(files)
    n_train, n_val, _ = carve_counts(len(order), fractions)
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {s: sorted(fs) for s, fs in parts.items()}


def _visible(rel: Path) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


def _own_class_folders(root: Path) -> list[Path]:
    try:
        return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.name)
    except OSError as e:
        raise FileNotFoundError(f"Cannot read {root}: {e.strerror or e}; expected a readable folder of "
                                f"class folders.") from e


def _own_images(class_dir: Path) -> list[str]:
    """Image paths under ``class_dir`` relative to it (posix, sorted); an empty folder is an error."""
    files = sorted(p.relative_to(class_dir).as_posix() for p in class_dir.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and _visible(p.relative_to(class_dir)) and p.is_file())
    if not files:
        raise ConversionError(f"Class folder {class_dir} holds no image; expected files ending in {_EXTS} "
                              f"(remove the folder or add images).")
    return files


def _own_tree(root: Path) -> dict[str, list[str]]:
    """``{class name: image paths relative to its folder}`` for the class folders of ``root``."""
    return {d.name: _own_images(d) for d in _own_class_folders(root)}


def own_layout(root: str | os.PathLike) -> str | None:
    """``"csv"``, ``"split"``, ``"flat"`` (see the module docstring) or ``None`` when ``root`` is
    neither a ``.csv`` file nor a folder with sub-folders."""
    r = Path(root)
    if r.is_file():
        return "csv" if r.suffix.lower() == ".csv" else None
    if not r.is_dir():
        return None
    try:
        subdirs = {p.name for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")}
    except OSError:
        return None
    if not subdirs:
        return None
    return "split" if set(SPLIT_DIRS) & subdirs else "flat"


def _check_classes(names: Sequence[str], where: Path) -> None:
    if len(names) < 2:
        raise ConversionError(f"{where}: found {len(names)} class(es) {list(names)}; expected at least 2 class "
                              f"folders (or labels) to classify.")


def _split_tree(src: Path) -> dict[str, dict[str, list[str]]]:
    present = [s for s in SPLIT_DIRS if (src / s).is_dir()]
    missing = [s for s in ("train", "test") if s not in present]
    if missing:
        raise ConversionError(f"{src}: found {'/, '.join(present)}/ but no {'/, '.join(missing)}/; a split tree "
                              f"needs train/<class>/ and test/<class>/ (val/ optional), a flat tree has only "
                              f"<class>/ folders (none named train, val or test).")
    trees = {s: _own_tree(src / s) for s in present}
    names = sorted(trees["train"])
    _check_classes(names, src / "train")
    for s in present[1:]:
        extra = sorted(set(trees[s]) - set(names))
        if extra:
            raise ConversionError(f"{src / s}: class folders {extra[:5]} have no counterpart in {src / 'train'}; "
                                  f"every class needs training images.")
    return trees


def own_images(src_root: str | os.PathLike) -> set[str]:
    """Every image the own-data source lists now, as manifest ``dir`` paths (to spot new files)."""
    src = Path(src_root).expanduser()
    layout = own_layout(src)
    if layout == "csv":
        return {r.dir for r in _csv_rows(src)[0]}
    if layout == "split":
        return {f"{s}/{c}/{f}" for s, tree in _split_tree(src).items() for c, fs in tree.items() for f in fs}
    if layout == "flat":
        return {f"{c}/{f}" for c, fs in _own_tree(src).items() for f in fs}
    return set()


def _csv_rows(path: Path) -> tuple[list[Row], list[str], list[str] | None]:
    """(rows with ``dir`` as written, class names, per-row split or None) of a CSV list."""
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise FileNotFoundError(f"Cannot read {path}: {e.strerror or e}.") from e
    with fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise ConversionError(f"{path}: the first line must be a header with columns path,label[,split]; "
                                  f"got {header!r}.")
        col = {c: header.index(c) for c in CSV_COLUMNS if c in header}
        recs = []
        for i, rec in enumerate(reader, start=2):
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) < len(header):
                raise ConversionError(f"{path}:{i}: expected {len(header)} fields ({','.join(header)}), got {rec!r}.")
            p, lab = rec[col["path"]].strip(), rec[col["label"]].strip()
            if not p or not lab:
                raise ConversionError(f"{path}:{i}: empty path or label in {rec!r}.")
            split = rec[col["split"]].strip().lower() if "split" in col else None
            if split is not None and split not in SPLIT_DIRS:
                raise ConversionError(f"{path}:{i}: split must be train, val or test, got {split!r}.")
            recs.append((i, Path(p).as_posix(), lab, split))
    if not recs:
        raise ConversionError(f"{path}: no rows after the header; expected lines path,label[,split].")
    labels = [lab for _, _, lab, _ in recs]
    if all(lab.lstrip("-").isdigit() for lab in labels):
        ids = sorted({int(lab) for lab in labels})
        if ids != list(range(len(ids))):
            missing = sorted(set(range(max(ids) + 1)) - set(ids))[:5]
            raise ConversionError(f"{path}: integer labels must be class ids 0..K-1 with every id used; "
                                  f"found {ids[0]}..{ids[-1]}, missing e.g. {missing}. Use class names instead.")
        names = [str(i) for i in ids]
        cid = {lab: int(lab) for lab in labels}
    else:
        names = sorted(set(labels))
        cid = {n: i for i, n in enumerate(names)}
    _check_classes(names, path)
    rows = [Row(cid[lab], p) for _, p, lab, _ in recs]
    splits = [s for *_, s in recs] if "split" in col else None
    return rows, names, splits


def _by_class(rows: Iterable[Row]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for r in rows:
        out.setdefault(r.class_id, []).append(r.dir)
    return out


def _carve_classes(per_class: dict[int, list[str]], fractions: Sequence[float],
                   prefixes: dict[int, str] | None = None) -> dict[str, list[Row]]:
    """Carve every class (in id order) with :func:`carve_by_fractions`; ``dir`` = prefix + file.
    The files are hashed without the prefix (the class folder), so renaming a class keeps its split."""
    rows: dict[str, list[Row]] = {s: [] for s in SPLIT_DIRS}
    for c in sorted(per_class):
        pre = (prefixes or {}).get(c, "")
        for s, fs in carve_by_fractions(per_class[c], fractions).items():
            rows[s] += [Row(c, pre + f) for f in fs]
    return rows


def _detect_own(root: Path) -> bool:
    return own_layout(root) is not None


@_register("folder", (), "your own data: train/<class>/* + test/<class>/* [+ val/<class>/*], a flat "
           "<class>/* tree, or a CSV list path,label[,split]", detector=_detect_own)
def convert_folder(src_root: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float = 0.8,
                   split_fractions: Sequence[float] | None = None) -> Path:
    """Your own data (module docstring): a split tree, a flat class-folder tree or a CSV list.

    ``val_fraction`` is the p of the reference rule that carves val from train when the source
    has train and test but no val; ``split_fractions`` ([train, val, test], default
    :data:`DEFAULT_SPLIT_FRACTIONS`) carves a flat tree or a CSV list without a ``split`` column
    per class with :func:`carve_by_fractions`. ``manifest.json`` records the layout and the
    fractions, and the manifest (kept in the fgir cache) is the saved split: it is reused as it is
    until prepared again with ``refresh``.

    Raises:
        ConversionError: an empty class folder, fewer than 2 classes, a split tree without
            ``train/`` or ``test/``, a malformed CSV list.
        FileNotFoundError: ``src_root`` is not readable.
    """
    src = Path(src_root).expanduser()
    fractions = check_split_fractions(split_fractions if split_fractions is not None else DEFAULT_SPLIT_FRACTIONS)
    layout = own_layout(src)
    extra: dict = {"layout": layout}
    given: dict[str, list[Row]] | None = None
    if layout == "csv":
        rows, names, splits = _csv_rows(src)
        image_root = src.parent
        if splits is None:
            carved = _carve_classes(_by_class(rows), fractions)
            extra.update(split_fractions=list(fractions), split_rule="fractions")
        else:
            carved = {s: [r for r, t in zip(rows, splits, strict=True) if t == s] for s in SPLIT_DIRS}
            if not carved["train"] or not carved["test"]:
                raise ConversionError(f"{src}: the split column needs rows for both train and test; found "
                                      f"{ {s: len(v) for s, v in carved.items()} }.")
            extra.update(split_rule="given" if carved["val"] else "carve_val")
    elif layout == "split":
        trees = _split_tree(src)
        names = sorted(trees["train"])
        cid = {c: i for i, c in enumerate(names)}
        carved = {s: [Row(cid[c], f"{s}/{c}/{f}") for c in sorted(tree) for f in tree[c]]
                  for s, tree in trees.items()}
        carved.setdefault("val", [])
        image_root = src
        extra.update(split_rule="given" if "val" in trees else "carve_val")
    elif layout == "flat":
        tree = _own_tree(src)
        names = sorted(tree)
        _check_classes(names, src)
        loose = [p.name for p in src.iterdir() if _is_image(p)]
        if loose:
            warnings.warn(f"{src}: {len(loose)} image(s) lie directly in the root, outside any class folder, "
                          f"and are ignored (e.g. {sorted(loose)[:3]}).", stacklevel=2)
        carved = _carve_classes({i: tree[c] for i, c in enumerate(names)}, fractions,
                                {i: f"{c}/" for i, c in enumerate(names)})
        image_root = src
        extra.update(split_fractions=list(fractions), split_rule="fractions")
    else:
        raise FileNotFoundError(f"{src} is neither a folder of class folders nor a .csv list; expected "
                                f"DIR/train/<class>/* + DIR/test/<class>/*, DIR/<class>/* or list.csv "
                                f"(path,label[,split]).")
    if not carved["test"]:
        raise ConversionError(f"{src}: no image went to test; every class has too few images for "
                              f"split_fractions={list(fractions)} (a class needs about 1/(2*test fraction) "
                              f"images to give one to test). Add images, raise the test fraction or give "
                              f"test images explicitly (test/ folder or a split column).")
    if extra["split_rule"] == "carve_val":
        train_val = carved["train"]
        extra["val_fraction"] = val_fraction
    else:
        given = {"train": carved["train"], "val": carved["val"]}
        train_val = carved["train"] + carved["val"]
    return write_manifest(out_dir, train_val=train_val, test=carved["test"], class_names=names,
                          image_root=image_root, converter="folder", source=src, val_fraction=val_fraction,
                          train=given["train"] if given else None, val=given["val"] if given else None,
                          extra=extra)


def unlisted_images(manifest_dir: str | os.PathLike, src_root: str | os.PathLike) -> list[str]:
    """Images the own-data source lists now that the saved split in ``manifest_dir`` does not
    (added after it was prepared), sorted; they stay unused until the split is prepared again."""
    mdir = Path(manifest_dir)
    saved = {r.dir for s in ("train_val", "test") for r in read_split(mdir / f"{s}.csv")}
    return sorted(own_images(src_root) - saved)
