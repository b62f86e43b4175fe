"""Named dataset specs over the one manifest format (spec datasets.md §2): pure data.

Every benchmark set of the five papers is registered from one table (``_BENCHMARKS``), plus two
small sets bundled with the project (``cub100``, ``flowers12``) and ``folder``, the user's own
class-folder tree or CSV list. A spec records what the set should look like (class count, image
folder, expected rows per split, the train/val carve-out fraction) and the name of the converter
in :mod:`fgir.data.converters` that reads its official layout.

This module reads no files and imports no converter. Turning a name and a root into a manifest
is :mod:`fgir.data.resolve` (``resolve_root`` is still importable from here through a lazy
shim).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..registry import DATASETS
from .manifest import (  # noqa: F401  (re-exported: the manifest format's names)
    MANIFEST_JSON,
    SPLITS,
    has_split_csvs,
    image_root_of,
    read_manifest_info,
)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    """Class count of the class table; 0 = taken from the data (own folder sets)."""
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


def cached_manifest_dir(name: str, root: str | os.PathLike) -> Path:
    """``<cache_home>/manifests/<name>-<hash of the absolute root>``: the one folder where a root
    without a usable manifest is prepared (by ``fgir data prepare`` and by training alike). The root
    is normalised (``a/../b`` = ``b``), so every spelling of one folder finds the same manifest."""
    digest = hashlib.sha1(os.path.abspath(Path(root).expanduser()).encode()).hexdigest()[:10]
    return cache_home() / "manifests" / f"{name}-{digest}"


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
    ("moeimouto", 173, "moe", "data", (11452, 2943, None, None), 0.8, "moeimouto",
     "moeImouto as the DAF:re authors split it (train.csv 11,452 / test.csv 2,943, or the class folders)"),
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
    mean_std = {"mean": _HALF, "std": _HALF} if name in ("dafb", "daf", "moe", "moeimouto") else {}
    return DatasetSpec(name=name, num_classes=k, image_folder=folder, default_root=root, counts=counts,
                       val_fraction=p, converter=conv, description=desc, **mean_std, **extra)


for _row in _BENCHMARKS + _BUNDLED:
    register_dataset(_spec_from_row(_row))
for _k in _SOYAGEING_ROUNDS:
    register_dataset(_spec_from_row(
        (f"soyageingr{_k}", 198, "soyageing", ".", (990, 990, 792, 198), 0.8, "soyageing",
         f"SoyAgeing round R{_k} (reference CSVs *_R{_k}.csv)"),
        split_suffix=f"_R{_k}", converter_options={"rounds": (_k,)}))

FOLDER = register_dataset(DatasetSpec(
    name="folder", num_classes=0, image_folder=".", converter="folder",
    description="Your own data: data.root = a class-folder tree (train/ + test/ [+ val/], or flat "
                "<class>/*) or a CSV list path,label[,split]"))
"""The own-data spec: no catalog counts, class names from the folder names or the CSV labels."""

DATASET_VERSIONS: dict[str, dict[str, str]] = {"dafre": {"faces": "daf", "full": "dafb"}}
"""Names that stand for one catalog set per image version (``fgir data prepare dafre --version full``
= ``dafb``); the first version is the default."""


def versioned_name(name: str, version: str = "") -> str:
    """The catalog name for ``name`` and image ``version`` (``dafre`` + ``full`` -> ``dafb``).

    Raises:
        ValueError: an unknown version, or a version given for a set that has only one.
    """
    if name in DATASET_VERSIONS:
        versions = DATASET_VERSIONS[name]
        if not version:
            return next(iter(versions.values()))
        if version not in versions:
            raise ValueError(f"--version {version!r} is not a version of '{name}'; expected one of "
                             f"{', '.join(versions)}.")
        return versions[version]
    for alias, versions in DATASET_VERSIONS.items():
        if name in versions.values() and version and versions.get(version) != name:
            raise ValueError(f"--version {version!r} contradicts '{name}' (= {alias} --version "
                             f"{next(v for v, n in versions.items() if n == name)}); use "
                             f"`{alias} --version {version}`.")
    if version and not any(name in v.values() for v in DATASET_VERSIONS.values()):
        raise ValueError(f"--version applies to {', '.join(DATASET_VERSIONS)} only, not to '{name}'.")
    return name


_MOVED_TO_RESOLVE = ("resolve_root",)


def __getattr__(name: str):
    # Shim: root resolution moved to fgir.data.resolve (imported lazily: resolve imports this module).
    if name in _MOVED_TO_RESOLVE:
        from . import resolve

        return getattr(resolve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
