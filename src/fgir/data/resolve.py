"""From a dataset name and a root to a manifest: the one resolution path.

Training (:class:`fgir.data.datasets.ManifestDataset`), ``fgir eval`` and ``fgir data prepare``
all go through :func:`resolve_root`, which runs four steps in order, each once:

1. **spec**: :func:`fgir.data.catalog.get_spec` (pure data).
2. **root**: the argument, else ``$FGIR_DATA/<spec.default_root>``, else a built-in set's own
   folder (:func:`locate_root`); never an absolute default.
3. **layout**: a root that already holds the four split CSVs is a manifest and is used in place;
   otherwise :func:`fgir.data.converters.source_kind` names what it holds (reference CSVs or a
   layout the spec's converter reads).
4. **convert once**: :func:`fgir.data.converters.prepare` writes and validates the manifest in
   :func:`fgir.data.catalog.cached_manifest_dir`; later calls reuse it unless ``refresh``.

``fgir data prepare NAME --root R`` is :func:`prepare_dataset`, the same path with
``refresh`` available, so ``fgir train data.name=NAME data.root=R`` afterwards finds the
manifest it wrote and converts nothing. For own data (``folder``) the manifest is the saved
carve: images added to the source later are reported with a warning and left out until the
set is prepared again with ``refresh``.
"""

from __future__ import annotations

import os
import shlex
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .catalog import DatasetSpec, cache_home, cached_manifest_dir, data_home, get_spec
from .converters import layout_description, prepare, source_kind
from .converters.folders import DEFAULT_SPLIT_FRACTIONS, check_split_fractions, unlisted_images
from .manifest import (
    SPLITS,
    ManifestError,
    has_split_csvs,
    image_root_of,
    read_class_table,
    read_manifest_info,
    read_split,
    split_path,
    write_manifest_info,
)

__all__ = ["Prepared", "cached_manifest_dir", "locate_root", "prepare_dataset", "resolve_root", "train_command"]

_REPORTED_NEW: dict[str, int] = {}
"""Manifest folder -> count of unlisted images last warned about (one warning per change and process)."""


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare_dataset` made or found."""

    name: str
    source: Path
    manifest_dir: Path
    image_root: Path
    counts: dict
    """Rows per split (train_val, test, train, val)."""
    num_classes: int
    converted: bool
    """False when an existing manifest was reused (or the root is a manifest itself)."""
    split_fractions: tuple | None
    """The fractions the saved split was carved with (own flat trees / CSV lists), else None."""


def _is_own(spec: DatasetSpec) -> bool:
    return spec.converter == "folder"


def _root_hint(spec: DatasetSpec) -> str:
    if _is_own(spec):
        return ("expected DIR/train/<class>/* + DIR/test/<class>/* [+ DIR/val/<class>/*], DIR/<class>/* or "
                "a list.csv with path,label[,split]")
    home = "<FGIR_DATA>" if data_home() is None else str(data_home())
    where = f"{home}/{spec.default_root or spec.name}"
    what = "train_val.csv" if not spec.split_suffix else f"train_val{spec.split_suffix}.csv"
    layout = layout_description(spec.converter)
    if layout:
        what += f" or {layout}"
    return f"expected {where} with {what}"


def locate_root(spec: DatasetSpec, root: str | os.PathLike = "") -> Path:
    """Step 2: the source root of ``spec`` (built-in sets are materialised here).

    Raises:
        FileNotFoundError: no root is known or it does not exist.
    """
    name = spec.name
    if root:
        r = Path(root).expanduser()
    elif spec.builtin is not None:
        if spec.default_root:
            r = cache_home() / "datasets" / spec.default_root
            spec.builtin(r)
        else:
            r = Path(spec.builtin(None))
    elif data_home() is not None and not _is_own(spec):
        r = data_home() / (spec.default_root or spec.name)
    elif _is_own(spec):
        raise FileNotFoundError(f"Dataset '{name}' needs data.root=DIR or data.root=list.csv ({_root_hint(spec)}); "
                                f"see `fgir data prepare folder --help`.")
    else:
        raise FileNotFoundError(
            f"Dataset '{name}' needs a root: set data.root=... or FGIR_DATA ({_root_hint(spec)}); "
            f"see `fgir data prepare`.")
    if root and spec.builtin is not None and not has_split_csvs(r):
        spec.builtin(r)  # its builder refuses to overwrite a folder that is not its own
    if not (r.is_dir() or (_is_own(spec) and r.is_file())):
        src = "data.root" if root else "FGIR_DATA"
        what = "a folder or a .csv file" if _is_own(spec) else "a folder"
        raise FileNotFoundError(
            f"Dataset '{name}': root {r} (from {src}) is not {what}; {_root_hint(spec)}; "
            f"see `fgir data prepare`.")
    return r


def _in_place(spec: DatasetSpec, r: Path) -> bool:
    """Step 3a: ``r`` is a manifest already. A SoyAgeing round shares its root with the pooled set:
    the plain CSVs there are the pooled ones, so a round uses them only from a manifest prepared
    for it."""
    return r.is_dir() and has_split_csvs(r) and (not spec.split_suffix
                                                 or read_manifest_info(r).get("dataset") == spec.name)


def _usable(info: dict, out: Path, check_counts: bool) -> bool:
    return bool(info.get("validated") and has_split_csvs(out)
                and (info.get("checked_counts") or info.get("counts_waived") or not check_counts))


def _check_saved_fractions(info: dict, out: Path, src: Path, split_fractions: Sequence[float] | None) -> None:
    saved = info.get("split_fractions")
    if split_fractions is None or saved is None:
        return
    asked = check_split_fractions(split_fractions)
    if any(abs(a - b) > 1e-9 for a, b in zip(asked, saved, strict=True)):
        raise ManifestError(
            f"data.split_fractions={list(asked)} but the saved split of {src} (in {out}) was carved with "
            f"{saved}; pass data.split_fractions={','.join(f'{v:g}' for v in saved)} to reuse it, or re-carve "
            f"with `fgir data prepare folder --root {src} --split-fractions "
            f"{','.join(f'{v:g}' for v in asked)} --refresh`.")


def _report_new_images(out: Path, src: Path) -> None:
    try:
        new = unlisted_images(out, src)
    except (ManifestError, OSError) as e:
        # The saved split stays usable even when the source changed in a way prepare would refuse.
        warnings.warn(f"Could not compare {src} with its saved split ({out}): {e}", stacklevel=3)
        return
    key = str(out)
    if new and _REPORTED_NEW.get(key) != len(new):
        warnings.warn(f"{len(new)} image(s) under {src} are not in its saved split ({out}) and are not used "
                      f"(e.g. {new[:3]}); run `fgir data prepare folder --root {src} --refresh` to split again.",
                      stacklevel=3)
    _REPORTED_NEW[key] = len(new)


def _resolve(name: str, root: str | os.PathLike, *, out: Path | None, check_counts: bool, refresh: bool,
             split_fractions: Sequence[float] | None, waive_counts: bool = False, check_files: bool = True
             ) -> tuple[DatasetSpec, Path, Path, bool]:
    """Steps 1-4; returns (spec, source root, manifest folder, whether it converted)."""
    spec = get_spec(name)                                   # 1. spec
    r = locate_root(spec, root)                             # 2. root
    if split_fractions is not None:
        check_split_fractions(split_fractions)
    if out is None and _in_place(spec, r):                  # 3a. already a manifest
        return spec, r, r, False
    if source_kind(spec, r) is None:                        # 3b. a layout fgir converts?
        raise FileNotFoundError(
            f"Dataset '{name}': {r} holds neither the split CSVs nor a layout fgir can convert; "
            f"{_root_hint(spec)}; see `fgir data prepare`.")
    out = out if out is not None else cached_manifest_dir(name, r)
    info = read_manifest_info(out)
    if not refresh and _usable(info, out, check_counts):   # 4. convert once, then reuse
        if info.get("converter") == "folder":
            _check_saved_fractions(info, out, r, split_fractions)
            _report_new_images(out, r)
        return spec, r, out, False
    prepare(name, r, out, check_counts=check_counts, split_fractions=split_fractions, check_files=check_files)
    _REPORTED_NEW.pop(str(out), None)
    if waive_counts and not check_counts:
        # `fgir data prepare --no-check-counts` declares a deliberate subset: training reuses it as is.
        info = read_manifest_info(out)
        info["counts_waived"] = True
        write_manifest_info(out, info)
    return spec, r, out, True


def resolve_root(name: str, root: str | os.PathLike = "", *, check_counts: bool = True,
                 refresh: bool = False, split_fractions: Sequence[float] | None = None) -> tuple[Path, Path]:
    """Locate (preparing once if needed) the manifest of dataset ``name``: ``(manifest_dir, image_root)``.

    The root is ``root`` if given, else ``$FGIR_DATA/<spec.default_root>``; built-in sets with no
    root are materialised by their builder into its default folder (or into ``root`` when given
    and still empty). A root holding the four split CSVs (``train_val``, ``test``, ``train``,
    ``val``) is used as it is; its image root is manifest.json's ``image_root`` if present, else
    ``<root>/<spec.image_folder>``. A root with only part of the CSVs, suffixed reference CSVs, an
    official layout the spec's converter reads or own data (``folder``: a class-folder tree or a
    CSV list) is prepared once into :func:`cached_manifest_dir` and reused afterwards unless
    ``refresh``; ``check_counts`` is passed on to :func:`fgir.data.converters.prepare`.

    ``split_fractions`` ([train, val, test]) carves own flat trees and CSV lists without a split
    column when they are first prepared (default [0.7, 0.1, 0.2]); a saved split carved with
    other fractions is an error rather than silently used or re-carved. ``None`` = whatever
    was saved.

    Raises:
        FileNotFoundError: no root is known, it does not exist, or it holds nothing usable.
        ManifestError: the source or the manifest is inconsistent (the message names the file).
    """
    spec, _, out, _ = _resolve(name, root, out=None, check_counts=check_counts, refresh=refresh,
                               split_fractions=split_fractions)
    return out, image_root_of(out, spec)


def prepare_dataset(name: str, root: str | os.PathLike, *, out: str | os.PathLike | None = None,
                    check_counts: bool = True, refresh: bool = False,
                    split_fractions: Sequence[float] | None = None, check_files: bool = True) -> Prepared:
    """``fgir data prepare``: :func:`resolve_root`'s path, reporting what it made.

    Without ``out`` the manifest goes where training looks for it (:func:`cached_manifest_dir`),
    so ``fgir train data.name=NAME data.root=ROOT`` reuses it; an existing valid manifest is kept
    unless ``refresh``. ``check_counts=False`` marks the manifest as a deliberate subset that
    training then reuses without checking counts. ``check_files=False`` checks the label files only
    (rows, counts, invariants), not that every listed image exists (``--no-verify-images``).
    """
    spec, src, mdir, converted = _resolve(
        name, root, out=Path(out).expanduser() if out else None, check_counts=check_counts, refresh=refresh,
        split_fractions=split_fractions, waive_counts=True, check_files=check_files)
    table = mdir / "classid_classname.csv"
    info = read_manifest_info(mdir)
    counts = info.get("counts") if info.get("validated") else None  # written with the CSVs: no re-read
    if not counts:
        counts = {s: len(read_split(split_path(mdir, s))) for s in SPLITS if split_path(mdir, s).is_file()}
    k = len(read_class_table(table)) if table.is_file() else spec.num_classes
    saved = info.get("split_fractions")
    return Prepared(name=name, source=src, manifest_dir=mdir, image_root=image_root_of(mdir, spec), counts=counts,
                    num_classes=k, converted=converted, split_fractions=tuple(saved) if saved else None)


def train_command(p: Prepared, *, root_given: str | os.PathLike = "", out_given: bool = False) -> str:
    """The ``fgir train`` line that trains on what :func:`prepare_dataset` made (a real command:
    with ``--out`` the manifest folder itself becomes the root)."""
    root = p.manifest_dir if out_given else Path(os.path.abspath(Path(root_given or p.source).expanduser()))
    args = ["fgir", "train", f"data.name={p.name}", f"data.root={root}"]
    if p.split_fractions and tuple(p.split_fractions) != tuple(DEFAULT_SPLIT_FRACTIONS):
        args.append("data.split_fractions=" + ",".join(f"{v:g}" for v in p.split_fractions))
    if p.counts.get("val", 0) == 0:
        args.append("data.val_split=")
    args += ["model.name=resnet18", "data.img_size=224", "optim.epochs=30"]
    return " ".join(shlex.quote(a) if a != "data.val_split=" else a for a in args)
