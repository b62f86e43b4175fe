"""Layout detection, conversion and validation: ``prepare`` turns one source root into a checked manifest.

:func:`source_kind` says what a root holds for a spec, :func:`run_converter` runs the spec's
official-layout converter, :func:`validate_manifest` checks the result against the catalog
(row counts, datasets.md §4.3 invariants, images on disk) and :func:`prepare` chains the three.
Where the manifest goes and when an existing one is reused is :mod:`fgir.data.resolve`.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..catalog import DatasetSpec, cache_home, get_spec
from ..manifest import (
    CLASS_TABLE,
    SPLITS,
    ManifestError,
    Row,
    check_rows,
    image_root_of,
    read_class_table,
    read_manifest_info,
    read_split,
    split_path,
    write_manifest_info,
)
from .base import CONVERTERS, ConversionError, layout_description
from .reference_csvs import convert_reference_csvs, has_reference_csvs


def source_kind(spec: DatasetSpec, root: str | os.PathLike) -> str | None:
    """What ``root`` holds for ``spec``: ``"csv"`` (reference split CSVs, preferred),
    ``"converter"`` (a layout the spec's converter reads) or ``None``."""
    root = Path(root)
    if root.is_dir() and has_reference_csvs(root, spec.split_suffix):
        return "csv"
    conv = CONVERTERS.get(spec.converter)
    if conv is not None and conv.detect(root, spec.image_folder):
        return "converter"
    return None


def run_converter(spec: DatasetSpec, src_root: str | os.PathLike, out_dir: str | os.PathLike, *,
                  split_fractions: Sequence[float] | None = None) -> Path:
    """Run the spec's official-layout converter with the spec's p, image folder and options
    (and ``split_fractions`` for converters that carve test, i.e. own data)."""
    if spec.converter not in CONVERTERS:
        raise ConversionError(f"Dataset '{spec.name}' has no official-layout converter; "
                              f"provide the reference split CSVs (train_val.csv, test.csv).")
    conv = CONVERTERS[spec.converter]
    params = inspect.signature(conv.func).parameters
    kwargs: dict = {"val_fraction": spec.val_fraction}
    if "image_folder" in params:
        kwargs["image_folder"] = spec.image_folder
    if "split_fractions" in params and split_fractions is not None:
        kwargs["split_fractions"] = split_fractions
    kwargs.update(spec.converter_options)
    return conv.func(src_root, out_dir, **kwargs)


def validate_manifest(manifest_dir: str | os.PathLike, spec: DatasetSpec, *, check_counts: bool = True,
                      strict: bool = True, check_files: bool = True,
                      image_root: str | os.PathLike | None = None,
                      require_every_class: bool = True) -> dict[str, int]:
    """Check a manifest against the catalog; returns the rows per split.

    Always: the four split CSVs exist and class ids lie in the class table. With
    ``check_counts``: the class count (unless the spec's is 0, i.e. taken from the data) and the
    rows per split equal ``spec`` (the error names each split with expected and found counts).
    The datasets.md §4.3 invariants (train ∪ val = train_val, train ∩ val = ∅, test ∩ train_val
    = ∅ by path, no duplicate rows, every class in every split) and, with ``check_files``, every
    listed image existing under the image root are errors when ``strict`` and warnings otherwise;
    ``require_every_class=False`` only warns about classes missing from a split (own data, where
    a class with 1-2 images has no val or test image).
    """
    mdir = Path(manifest_dir)
    missing = [s for s in SPLITS if not split_path(mdir, s).is_file()]
    if missing:
        raise ManifestError(f"Dataset '{spec.name}': {mdir} lacks {', '.join(f'{s}.csv' for s in missing)}.")
    rows = {s: read_split(split_path(mdir, s)) for s in SPLITS}
    table = mdir / CLASS_TABLE
    names = read_class_table(table) if table.is_file() else None
    k = len(names) if names is not None else spec.num_classes
    for s, rs in rows.items():
        check_rows(rs, k, str(split_path(mdir, s)))
    found = {s: len(rs) for s, rs in rows.items()}

    if check_counts:
        wrong = [f"{s}: expected {spec.counts[s]}, found {found[s]}"
                 for s in SPLITS if s in spec.counts and spec.counts[s] != found[s]]
        if spec.num_classes and k != spec.num_classes:
            wrong.insert(0, f"classes: expected {spec.num_classes}, found {k}")
        if wrong:
            raise ManifestError(
                f"Dataset '{spec.name}' in {mdir} does not match the catalog: " + "; ".join(wrong)
                + ". If the source is a subset on purpose, pass check_counts=False "
                  "(`fgir data prepare --no-check-counts`).")

    problems, coverage = _invariant_problems(rows, k, names)
    if require_every_class:
        problems += coverage
    elif coverage:
        warnings.warn(f"Dataset '{spec.name}' in {mdir}: " + "; ".join(coverage)
                      + " (classes with few images; add images or change the split).", stacklevel=2)
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


def _invariant_problems(rows: dict[str, list[Row]], k: int,
                        names: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(§4.3 violations, classes missing from a split)."""
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
    coverage = []
    for s in SPLITS:
        absent = sorted(set(range(k)) - {r.class_id for r in rows[s]})
        if absent:
            named = f" = {[names[c] for c in absent[:5]]}" if names else ""
            coverage.append(f"{len(absent)} class(es) have no row in {s} (e.g. {absent[:5]}{named})")
    return out, coverage


def prepare(name: str, src_root: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
            check_counts: bool = True, strict: bool = True, check_files: bool = True,
            split_fractions: Sequence[float] | None = None) -> Path:
    """Write the manifest of dataset ``name`` from ``src_root`` and check it; returns its folder.

    Always converts (reuse is :func:`fgir.data.resolve.resolve_root`'s business). ``src_root``
    holds either the reference split CSVs (preferred; normalised, train/val carved when absent)
    or a layout the spec's converter reads (own data: a class-folder tree or a CSV list, carved
    with ``split_fractions``). ``out_dir`` defaults to ``<cache_home>/manifests/<name>``. See
    :func:`validate_manifest` for ``check_counts`` (``False`` for subsets), ``strict`` and
    ``check_files``. On success manifest.json gets ``validated: true`` (only validated manifests
    are reused).
    """
    spec = get_spec(name)
    src = Path(src_root).expanduser()
    if not src.is_dir() and not (spec.converter == "folder" and src.is_file()):
        what = "a folder or a .csv list" if spec.converter == "folder" else "a folder"
        raise FileNotFoundError(f"Dataset '{name}': source root {src} is not {what}.")
    out = Path(out_dir).expanduser() if out_dir is not None else cache_home() / "manifests" / name
    kind = source_kind(spec, src)
    if kind == "csv":
        convert_reference_csvs(src, out, val_fraction=spec.val_fraction, image_folder=spec.image_folder,
                               suffix=spec.split_suffix,
                               # a deliberate subset (no count check) gets K from its own labels
                               num_classes=spec.num_classes if check_counts else 0)
    elif kind == "converter":
        run_converter(spec, src, out, split_fractions=split_fractions)
    else:
        layout = layout_description(spec.converter)
        raise FileNotFoundError(
            f"Dataset '{name}': {src} holds neither train_val{spec.split_suffix}.csv + "
            f"test{spec.split_suffix}.csv" + (f" nor {layout}" if layout else "")
            + (f" (no converter for '{name}': use the published CSVs)" if not layout else "") + ".")
    validate_manifest(out, spec, check_counts=check_counts, strict=strict, check_files=check_files,
                      require_every_class=spec.num_classes > 0)
    info = read_manifest_info(out)
    info.update(dataset=name, validated=True, checked_counts=check_counts, strict=strict, checked_files=check_files)
    write_manifest_info(out, info)
    return out
