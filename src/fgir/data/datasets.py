"""Datasets over the manifest format, and the decoded uint8 cache."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from tqdm import tqdm

from .catalog import cache_home, get_spec
from .manifest import (
    ManifestError,
    Row,
    check_paths,
    check_rows,
    duplicate_rows,
    read_class_table,
    read_manifest_info,
    read_split,
    split_path,
)
from .resolve import resolve_root
from .transforms import load_resized

CACHE_VERSION = 1


class ImageReadError(RuntimeError):
    """An image could not be read; the message names the file."""


class ManifestDataset(torch.utils.data.Dataset):
    """One split of a catalog dataset: rows of (image path, class id) plus the class table.

    ``num_classes`` comes from the class table (or the spec / an explicit override), never
    from the labels the split happens to contain. ``root`` and ``split_fractions`` go to
    :func:`fgir.data.resolve.resolve_root` (own data: ``name="folder"``, ``root`` = a class-folder
    tree or a CSV list).
    """

    @classmethod
    def from_config(cls, d, split: str, **kwargs) -> ManifestDataset:
        """Split ``split`` of the dataset a :class:`~fgir.config.DataConfig` names (root, class
        count, own-data fractions, ``data.exclude``)."""
        return cls(d.name, split, d.root, d.num_classes, split_fractions=d.split_fractions,
                   exclude=d.exclude, **kwargs)

    def __init__(self, name: str, split: str = "train", root: str = "", num_classes: int = 0,
                 transform=None, check_files: bool = True, split_fractions=None, exclude: str = ""):
        self.name, self.split, self.transform = name, split, transform
        self.spec = get_spec(name)
        self.manifest_dir, self.image_root = resolve_root(name, root, split_fractions=split_fractions)
        path = split_path(self.manifest_dir, split)
        if not path.is_file():
            have = sorted(p.stem for p in Path(self.manifest_dir).glob("*.csv") if p.stem != "classid_classname")
            raise ManifestError(f"Dataset '{name}' has no split '{split}' ({path} not found); available: {have}.")
        self.rows: list[Row] = read_split(path)
        table = Path(self.manifest_dir) / "classid_classname.csv"
        if table.is_file():
            self.class_names = read_class_table(table)
        else:
            k = num_classes or self.spec.num_classes
            self.class_names = [str(i + 1) for i in range(k)]
        if num_classes and num_classes != len(self.class_names):
            raise ManifestError(f"data.num_classes={num_classes} but the class table of '{name}' has "
                                f"{len(self.class_names)} classes.")
        self.num_classes = len(self.class_names)
        check_rows(self.rows, self.num_classes, str(path))
        info = read_manifest_info(self.manifest_dir)
        if info.get("layout") != "csv":  # a user's own CSV list may name files anywhere, by design
            check_paths(self.rows, self.image_root, str(path))
        if exclude:  # data.exclude: e.g. the test images `fgir data check --exclude` found copied in train
            from .check import read_exclude

            drop = read_exclude(exclude)
            before = len(self.rows)
            self.rows = [r for r in self.rows if os.path.normpath(r.dir) not in drop]
            self.excluded = before - len(self.rows)
        else:
            self.excluded = 0
        _warn_duplicates_and_leaks(self.rows, path, split)
        if check_files:
            missing = [r.dir for r in self.rows if not (Path(self.image_root) / r.dir).is_file()]
            if missing:
                raise ManifestError(f"{len(missing)} of {len(self.rows)} images listed in {path} are missing "
                                    f"under {self.image_root}; first: {missing[:5]}")
        self.labels = torch.tensor([r.class_id for r in self.rows], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def path(self, i: int) -> Path:
        return Path(self.image_root) / self.rows[i].dir

    def load(self, i: int) -> Image.Image:
        return read_image(self.path(i))

    def __getitem__(self, i: int):
        img = self.load(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])


class SplitLeakWarning(UserWarning):
    """A split lists an image twice, or a training split shares images with test."""


def _warn_duplicates_and_leaks(rows: list[Row], path: Path, split: str) -> None:
    """Reported on every load (not only by `fgir data prepare`): duplicated rows of one split, and
    images of a training split (train / val / train_val) that are also listed in test."""
    import warnings

    dups = duplicate_rows(rows)
    if dups:
        warnings.warn(f"{path}: {len(dups)} image(s) listed more than once (e.g. {dups[:3]}).",
                      SplitLeakWarning, stacklevel=3)
    test = path.with_name("test.csv")
    if split != "test" and test.is_file() and test != path:
        try:
            test_dirs = {os.path.normpath(r.dir) for r in read_split(test)}
        except ManifestError:
            return
        shared = sorted({os.path.normpath(r.dir) for r in rows} & test_dirs)
        if shared:
            warnings.warn(f"{path}: {len(shared)} image(s) of split '{split}' are also in test.csv (e.g. "
                          f"{shared[:3]}): test accuracy would be measured on training images.",
                          SplitLeakWarning, stacklevel=3)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: EXIF orientation applied, transparency composited on white,
    16/32-bit greyscale (``I;16``, ``I``, ``F``) scaled from its value range instead of clipped
    (a 16-bit PNG would otherwise load as all white), CMYK/YCbCr/LAB converted."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            top = 65535.0
        elif im.mode == "I":
            top = 65535.0 if a.max(initial=0) > 255 else 255.0
        else:  # float images: 0..1 if they look normalised, else their own maximum
            top = 1.0 if a.max(initial=0) <= 1.0 else max(float(a.max()), 1.0)
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa") or "transparency" in im.info:
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB (:func:`to_rgb`); unreadable, truncated or decompression-bomb files
    raise ``ImageReadError`` naming the file (``data.skip_bad`` skips and counts them)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"Cannot read image {path}: {type(e).__name__}: {e}") from e


def create_dataset(name: str, split: str = "train", root: str = "", **kwargs) -> ManifestDataset:
    """Python API: ``fgir.create_dataset("cub100", split="test", root="../shared/data/cub100")``."""
    return ManifestDataset(name, split, root, **kwargs)


# ----------------------------------------------------------------------------- decoded cache
def _cache_key(ds: ManifestDataset, size: int) -> str:
    h = hashlib.sha1()
    h.update(f"v{CACHE_VERSION}|{size}|{Path(ds.image_root).resolve()}|".encode())
    for i, r in enumerate(ds.rows):
        try:  # an image replaced in place (same name) changes its size or mtime: a new cache
            st = os.stat(ds.path(i))
            stamp = f"{st.st_size},{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{r.class_id},{r.dir},{stamp}\n".encode())
    return h.hexdigest()[:16]


def _remove_stale_tmp(arr_path: Path) -> None:
    """Partial cache files of killed runs (``<name>.tmp<pid>``) whose process is gone."""
    for t in arr_path.parent.glob(arr_path.name + ".tmp*"):
        pid = t.name.rsplit(".tmp", 1)[-1]
        alive = False
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
                alive = int(pid) != os.getpid()
            except OSError:
                alive = False
        if not alive:
            t.unlink(missing_ok=True)


def _load_cached(arr_path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None (with a message) when the file is truncated or of another shape."""
    try:
        arr = np.load(arr_path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        print(f"fgir: decoded cache {arr_path} is unreadable ({e}); rebuilding it.", flush=True)
        return None
    if arr.shape != shape or arr.dtype != np.uint8:
        print(f"fgir: decoded cache {arr_path} has shape {arr.shape}, expected {shape}; rebuilding it.",
              flush=True)
        return None
    return arr


def _preallocate(path: Path, nbytes: int) -> None:
    """Reserve the cache file's blocks up front so a full disk is a clean error, not a SIGBUS on
    a memory-mapped write halfway through."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        import errno

        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"not enough disk space for the decoded image cache ({nbytes / 2**30:.2f} GiB "
                                   f"in {path.parent}); free space, set data.cache_dir to another disk, or "
                                   "data.cache=false to decode on the fly") from e
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
            raise
    finally:
        os.close(fd)


def decoded_cache(ds: ManifestDataset, size: int, cache_dir: str = "", skip_bad: bool = False,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All images of ``ds`` square-resized to ``size`` as a memory-mapped (N, size, size, 3) uint8
    array, built once (atomically) and reused. Returns (array, indices of usable rows)."""
    base = Path(cache_dir) if cache_dir else cache_home() / "arrays"
    base.mkdir(parents=True, exist_ok=True)
    key = _cache_key(ds, size)
    arr_path = base / f"{ds.name}-{ds.split}-{size}-{key}.npy"
    meta_path = arr_path.with_suffix(".json")
    shape = (len(ds), size, size, 3)
    _remove_stale_tmp(arr_path)
    if arr_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, OSError):
            meta = None
        cached = _load_cached(arr_path, shape) if isinstance(meta, dict) else None
        if cached is not None:
            bad = meta.get("bad", [])
            _check_bad(bad, ds, skip_bad)
            keep = np.array([i for i in range(len(ds)) if i not in set(bad)], dtype=np.int64)
            return cached, keep
    tmp = arr_path.with_name(arr_path.name + f".tmp{os.getpid()}")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    try:
        _preallocate(tmp, arr.offset + arr.nbytes)
    except OSError:
        del arr
        tmp.unlink(missing_ok=True)
        raise
    bad: list[int] = []
    prev = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        it = tqdm(range(len(ds)), desc=f"caching {ds.name}/{ds.split} @{size}px", disable=not progress,
                  leave=False)
        for i in it:
            try:
                arr[i] = load_resized(ds.load(i), size)
            except ImageReadError as e:
                if not skip_bad:
                    raise ImageReadError(f"{e}. Set data.skip_bad=true to skip and count unreadable images.") from e
                bad.append(i)
        arr.flush()
        del arr
        os.replace(tmp, arr_path)
        meta_path.write_text(json.dumps({"size": size, "n": len(ds), "bad": bad,
                                         "bad_files": [ds.rows[i].dir for i in bad]}))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev
        if tmp.exists():
            tmp.unlink()
    _check_bad(bad, ds, skip_bad)
    keep = np.array([i for i in range(len(ds)) if i not in set(bad)], dtype=np.int64)
    return np.load(arr_path, mmap_mode="r"), keep


def _check_bad(bad: list[int], ds: ManifestDataset, skip_bad: bool) -> None:
    if not bad:
        return
    files = [str(ds.path(i)) for i in bad[:5]]
    if not skip_bad:
        raise ImageReadError(f"{len(bad)} unreadable image(s) in {ds.name}/{ds.split}, e.g. {files}. "
                             "Set data.skip_bad=true to skip them.")
    warnings.warn(f"Skipping {len(bad)} unreadable image(s) in {ds.name}/{ds.split}: {files}", stacklevel=3)
