"""MATLAB layouts (Stanford Cars, Stanford Dogs, Flowers-102); reading them needs SciPy."""

from __future__ import annotations

import os
from pathlib import Path

from ..manifest import Row
from .base import (
    ConversionError,
    _check_contiguous,
    _numeric_names,
    _one_based,
    _register,
    write_manifest,
)


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
