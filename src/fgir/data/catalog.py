"""Named dataset specs over the one manifest format (spec datasets.md §2), and root resolution.

Every benchmark set of the five papers is registered from one table (``_BENCHMARKS``), plus two
small sets bundled with the project (``cub100``, ``flowers12``). A spec records what the set
should look like (class count, image folder, expected rows per split, the train/val carve-out
fraction) and which converter in :mod:`fgir.data.converters` reads its official layout.

:func:`resolve_root` turns a dataset name and an optional root into the folder holding the split
CSVs and the folder the CSV paths are relative to. Roots come from the argument or
``$FGIR_DATA``; there is never an absolute default.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..registry import DATASETS

SPLITS = ("train_val", "test", "train", "val")
"""The four split CSVs of a manifest, in the order counts are listed."""
MANIFEST_JSON = "manifest.json"
"""Written next to converted CSVs: the absolute image root, the source and the converter."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_folder: str = "images"
    """Image folder under the dataset root; split ``dir`` paths are relative to it."""
    default_root: str = ""
    """Root relative to $FGIR_DATA (the reference YAML root)."""
    counts: dict = field(default_factory=dict)
    """Expected rows per split (train_val, test, train, val), checked by `fgir data prepare`."""
    val_fraction: float = 0.8
    """p of the train/val carve-out (first floor(p*n_c) rows per class go to train)."""
    converter: str = ""
    """Name of the official-layout converter in fgir.data.converters ('' = CSVs only)."""
    description: str = ""
    builtin: Callable | None = None
    """For built-in sets: ``builtin(root) -> None`` materialises the set (no download)."""
    mean: tuple = ()
    std: tuple = ()
    split_suffix: str = ""
    """Suffix of the reference CSV names (SoyAgeing rounds: ``train_val_R1.csv``); manifests
    written by fgir always use the plain names."""
    converter_options: dict = field(default_factory=dict)
    """Extra keyword arguments for the converter (e.g. the SoyAgeing rounds)."""


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.add(spec.name, spec)
    return spec


def get_spec(name: str) -> DatasetSpec:
    from . import demo  # noqa: F401  (registers the built-in sets)

    return DATASETS.get(name)


def dataset_names() -> list[str]:
    """Every registered dataset name, sorted (built-in sets included)."""
    from . import demo  # noqa: F401

    return DATASETS.names()


def data_home() -> Path | None:
    env = os.environ.get("FGIR_DATA")
    return Path(env).expanduser() if env else None


def cache_home() -> Path:
    env = os.environ.get("FGIR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fgir"


# ---------------------------------------------------------------------------------------------
# The catalog (datasets.md §2). One row per set:
#   key, K, root (reference YAML, relative to $FGIR_DATA), image folder,
#   (train_val, test, train, val) rows (None = unknown), p, converter, description.
# ---------------------------------------------------------------------------------------------
_HALF = (0.5, 0.5, 0.5)  # GLSim's custom_mean_std and Animesion's normalisation for anime sets

_BENCHMARKS: tuple[tuple, ...] = (
    ("cub", 200, "cub/CUB_200_2011", "images", (5994, 5794, 4794, 1200), 0.8, "cub",
     "CUB-200-2011 birds"),
    ("cars", 196, "cars", "car_ims", (8144, 8041, 6442, 1702), 0.8, "cars",
     "Stanford Cars (malformed reference class table is read as two columns)"),
    ("aircraft", 100, "aircraft/fgvc-aircraft-2013b/data", "images", (6667, 3333, 5267, 1400), 0.8,
     "aircraft", "FGVC-Aircraft 2013b, variant level"),
    ("nabirds", 555, "nabirds/nabirds", "images", (23929, 24633, 18957, 4972), 0.8, "nabirds",
     "NABirds, 555 leaf classes"),
    ("dogs", 120, "dogs", "Images", (12000, 8580, 9600, 2400), 0.8, "dogs", "Stanford Dogs"),
    ("flowers", 102, "flowers/flowers-102", "jpg", (2040, 6149, 1020, 1020), 0.5, "flowers102",
     "Oxford Flowers-102 (p = 0.5 reproduces the official train/val)"),
    ("pets", 37, "pets/oxford-iiit-pet", "images", (3680, 3669, 2941, 739), 0.8, "pets",
     "Oxford-IIIT Pets, breed level"),
    ("food", 101, "food/food-101", "images", (75750, 25250, 15150, 60600), 0.2, "food101",
     "Food-101 (p = 0.2: train.csv is the smaller part)"),
    ("vegfru", 292, "vegfru", "images", (43800, 116931, 35040, 8760), 0.8, "vegfru",
     "VegFru (veg200 + fru92 merged into images/)"),
    ("inat17", 5089, "inat17", "train_val_images", (579184, 95986, None, None), 0.8, "inat17",
     "iNaturalist 2017 (test = official validation set)"),
    ("dafb", 3263, "daf", "fullMin256", (368997, 94440, 322947, 46050), 0.8, "daf",
     "DAF:re Full (train/val = DAF:re's own splits, not carved)"),
    ("daf", 3263, "daf", "faces", (368997, 94440, 322947, 46050), 0.8, "daf",
     "DAF:re Faces (train/val = DAF:re's own splits, not carved)"),
    ("moe", 173, "moe", "data", (11454, 2943, 9098, 2356), 0.8, "",
     "moeImouto (use the published FGIR CSVs; class ids are not alphabetical)"),
    ("cotton", 80, "cotton", "cotton_square_new", (240, 240, 160, 80), 0.8, "ufgir",
     "Cotton80 (ultra-fine-grained leaves)"),
    ("soylocal", 200, "soylocal", "soybean200_square", (600, 600, 400, 200), 0.8, "ufgir",
     "SoyLocal (ultra-fine-grained leaves)"),
    ("soygene", 1110, "soygene", "images", (12763, 11143, 9562, 3201), 0.8, "soygene",
     "SoyGene (ultra-fine-grained leaves)"),
    ("soyglobal", 1938, "soyglobal", "soybean2000", (5814, 5814, 3876, 1938), 0.8, "ufgir",
     "SoyGlobal (ultra-fine-grained leaves)"),
    ("soyageing", 198, "soyageing", ".", (4950, 4950, 3960, 990), 0.8, "soyageing",
     "SoyAgeing, rounds R1, R3-R6 pooled (val = exactly round R6)"),
)

_BUNDLED: tuple[tuple, ...] = (
    ("cub100", 100, "cub100", "images", (2903, 2999, 2315, 588), 0.8, "cub",
     "Bundled CUB-200-2011 subset: 100 species, 227x227 crops, 0-based ids (../shared/data/cub100)"),
    ("flowers12", 12, "flowers12", ".", (720, 240, 576, 144), 0.8, "class_folders",
     "Bundled Oxford-17 subset: 12 classes, 60 train + 20 test each (../shared/data/flowers12)"),
)

_SOYAGEING_ROUNDS = (1, 3, 4, 5, 6)


def _spec_from_row(row: tuple, **extra) -> DatasetSpec:
    name, k, root, folder, counts, p, conv, desc = row
    counts = {s: n for s, n in zip(SPLITS, counts, strict=True) if n is not None}
    mean_std = {"mean": _HALF, "std": _HALF} if name in ("dafb", "daf", "moe") else {}
    return DatasetSpec(name=name, num_classes=k, image_folder=folder, default_root=root, counts=counts,
                       val_fraction=p, converter=conv, description=desc, **mean_std, **extra)


for _row in _BENCHMARKS + _BUNDLED:
    register_dataset(_spec_from_row(_row))
for _k in _SOYAGEING_ROUNDS:
    register_dataset(_spec_from_row(
        (f"soyageingr{_k}", 198, "soyageing", ".", (990, 990, 792, 198), 0.8, "soyageing",
         f"SoyAgeing round R{_k} (reference CSVs *_R{_k}.csv)"),
        split_suffix=f"_R{_k}", converter_options={"rounds": (_k,)}))


# ---------------------------------------------------------------------------------------------
# Root resolution
# ---------------------------------------------------------------------------------------------
def has_split_csvs(root: str | os.PathLike, suffix: str = "", splits: tuple[str, ...] = SPLITS) -> bool:
    """True when ``root`` holds every split CSV in ``splits`` under the plain fgir names."""
    return all((Path(root) / f"{s}{suffix}.csv").is_file() for s in splits)


def read_manifest_info(manifest_dir: str | os.PathLike) -> dict:
    """The ``manifest.json`` of a converted manifest, or ``{}`` when there is none."""
    p = Path(manifest_dir) / MANIFEST_JSON
    if not p.is_file():
        return {}
    return json.loads(p.read_text(encoding="utf-8"))


def image_root_of(manifest_dir: str | os.PathLike, spec: DatasetSpec) -> Path:
    """Where the CSV ``dir`` paths of ``manifest_dir`` point: manifest.json's ``image_root`` if
    present, else ``<manifest_dir>/<spec.image_folder>``."""
    info = read_manifest_info(manifest_dir)
    if info.get("image_root"):
        return Path(info["image_root"])
    return Path(manifest_dir) / spec.image_folder


def _root_hint(spec: DatasetSpec) -> str:
    from .converters import layout_description

    home = "<FGIR_DATA>" if data_home() is None else str(data_home())
    where = f"{home}/{spec.default_root or spec.name}"
    what = "train_val.csv" if not spec.split_suffix else f"train_val{spec.split_suffix}.csv"
    layout = layout_description(spec.converter)
    if layout:
        what += f" or {layout}"
    return f"expected {where} with {what}"


def cached_manifest_dir(name: str, root: str | os.PathLike) -> Path:
    """``<cache_home>/manifests/<name>-<hash of the absolute root>``: where :func:`resolve_root`
    prepares a manifest for a root that has none."""
    digest = hashlib.sha1(str(Path(root).expanduser().absolute()).encode()).hexdigest()[:10]
    return cache_home() / "manifests" / f"{name}-{digest}"


def resolve_root(name: str, root: str | os.PathLike = "", *, check_counts: bool = True,
                 refresh: bool = False) -> tuple[Path, Path]:
    """Locate the manifest of dataset ``name``: returns ``(manifest_dir, image_root)``.

    The root is ``root`` if given, else ``$FGIR_DATA/<spec.default_root>``; built-in sets with no
    root are materialised by their builder into its default folder (or into ``root`` when given
    and still empty). A root holding the four split CSVs (``train_val``, ``test``, ``train``,
    ``val``) is used as it is; its image root is
    manifest.json's ``image_root`` if present, else ``<root>/<spec.image_folder>``. A root with
    only part of the CSVs, suffixed reference CSVs or an official layout the spec's converter
    reads is prepared once into :func:`cached_manifest_dir` (reused afterwards unless
    ``refresh``); ``check_counts`` is passed on to :func:`fgir.data.converters.prepare`.

    Raises:
        FileNotFoundError: no root is known, it does not exist, or it holds nothing usable.
    """
    spec = get_spec(name)
    if root:
        r = Path(root).expanduser()
    elif spec.builtin is not None:
        if spec.default_root:
            r = cache_home() / "datasets" / spec.default_root
            spec.builtin(r)
        else:
            r = Path(spec.builtin(None))
    elif data_home() is not None:
        r = data_home() / (spec.default_root or spec.name)
    else:
        raise FileNotFoundError(
            f"Dataset '{name}' needs a root: set data.root=... or FGIR_DATA ({_root_hint(spec)}); "
            f"see `fgir data prepare`.")
    if root and spec.builtin is not None and not has_split_csvs(r):
        spec.builtin(r)  # its builder refuses to overwrite a folder that is not its own
    if not r.is_dir():
        src = "data.root" if root else "FGIR_DATA"
        raise FileNotFoundError(
            f"Dataset '{name}': root {r} (from {src}) is not a folder; {_root_hint(spec)}; "
            f"see `fgir data prepare`.")
    info = read_manifest_info(r)
    # A SoyAgeing round shares its root with the pooled set: the plain CSVs there are the pooled
    # ones, so a round uses them only from a manifest prepared for it.
    if has_split_csvs(r) and (not spec.split_suffix or info.get("dataset") == name):
        return r, image_root_of(r, spec)

    from .converters import prepare, source_kind

    if source_kind(spec, r) is None:
        raise FileNotFoundError(
            f"Dataset '{name}': {r} holds neither the split CSVs nor a layout fgir can convert; "
            f"{_root_hint(spec)}; see `fgir data prepare`.")
    out = cached_manifest_dir(name, r)
    info = read_manifest_info(out)
    usable = (info.get("validated") and (info.get("checked_counts") or not check_counts)
              and has_split_csvs(out))
    if refresh or not usable:
        prepare(name, r, out, check_counts=check_counts)
    return out, image_root_of(out, spec)
