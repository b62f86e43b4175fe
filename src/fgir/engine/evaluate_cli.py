"""`fgir eval`: evaluate checkpoints on a split of the dataset recorded in them.

One checkpoint gives the per-checkpoint outputs (metrics JSON, per-class and predictions CSVs,
confusion matrix) in its eval folder; several give one results row each, like timm's
``validate.py`` over many models: :data:`RESULT_COLUMNS` (model with its plug-ins, dataset,
split, inference variant, input size, parameters, GMACs, top-1/top-5, macro-F1, ECE, image
count, device), written atomically to a results CSV when asked.

A warning is raised when the evaluated split shares images with the split the checkpoint was
trained on (``data.train_split`` of its embedded config), e.g. ``train_val`` for a model trained
on ``train``: the numbers are then not held-out accuracies.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from ..data.datasets import ManifestDataset
from ..data.transforms import to_model_size
from ..utils import atomic_path
from .checkpoint import CheckpointError, load_model, resolve_checkpoint
from .distributed import DistInfo, pick_device
from .evaluate import run_inference, write_eval_outputs

RESULT_COLUMNS = ["checkpoint", "model", "dataset", "split", "inference", "img_size", "params", "gmacs", "top1",
                  "top5", "macro_f1", "ece", "num_images", "device"]
"""Columns of ``fgir eval``'s results CSV (one row per checkpoint); accuracies, macro-F1 and ECE
in percent. ``img_size`` is the input size the deployed model sees; ``gmacs`` is one forward of it
at that size (torchprofile conventions, :func:`fgir.benchmarks.flops.count_macs`)."""


class SplitOverlapWarning(UserWarning):
    """The evaluated split shares images with the checkpoint's training split."""


def _default_out_dir(ck: Path, split: str, suffix: str) -> Path:
    """``<run>/eval_<split>[_<variant>]`` for the checkpoint its run folder resolves to; any other
    checkpoint of the folder (``best`` next to ``last``, imported files) adds ``_<stem>`` so two
    checkpoints of one folder never share an eval folder."""
    try:
        is_main = resolve_checkpoint(ck.parent) == ck
    except CheckpointError:
        is_main = False
    return ck.parent / (f"eval_{split}{suffix}" + ("" if is_main else f"_{ck.stem}"))


def split_overlap(cfg, ds: ManifestDataset) -> tuple[int, str]:
    """Images of ``ds`` that are also in the checkpoint's training split: ``(count, message)``,
    ``(0, "")`` when disjoint. Compares the manifests' image paths; when the training split cannot
    be read (another root, a removed CSV) the split names decide and the message says so."""
    train_split = cfg.data.train_split
    if not train_split:
        return 0, ""
    if train_split == ds.split:
        return len(ds), (f"split '{ds.split}' is the training split of this checkpoint (data.train_split="
                         f"'{train_split}'): all {len(ds)} images were trained on.")
    try:
        train = ManifestDataset(cfg.data.name, train_split, cfg.data.root, check_files=False,
                                split_fractions=cfg.data.split_fractions)
    except (ValueError, FileNotFoundError) as e:
        if set(ds.split.split("_")) & set(train_split.split("_")):
            return -1, (f"split '{ds.split}' may overlap the training split '{train_split}' (could not read it "
                        f"to compare images: {e}).")
        return 0, ""
    seen = {os.path.normpath(r.dir) for r in train.rows}
    n = sum(os.path.normpath(r.dir) in seen for r in ds.rows)
    if not n:
        return 0, ""
    return n, (f"{n} of {len(ds)} images of split '{ds.split}' are in the training split '{train_split}' of this "
               "checkpoint: these are not held-out accuracies.")


def _macs(model, size: int) -> float | None:
    from ..benchmarks.flops import count_macs

    try:
        return count_macs(model, size) / 1e9
    except Exception as e:  # torchprofile traces the model; report rather than fail the evaluation
        warnings.warn(f"MACs of {type(model).__name__} at {size}px could not be counted ({type(e).__name__}: {e}); "
                      "the gmacs column is left empty.", stacklevel=3)
        return None


def evaluate_checkpoint(path: str, split: str = "test", root: str = "", out: str = "", inference: str = "",
                        batch_size: int = 64, device: str = "", progress: bool = True, count_macs: bool = True,
                        warn: Callable[[str], None] | None = None) -> dict:
    """Metrics of a checkpoint on ``split`` of the dataset recorded in it.

    Args:
        path: run folder or ``.safetensors`` checkpoint.
        split: manifest split to evaluate.
        root: dataset root (default: the one recorded in the checkpoint).
        out: output folder (default: ``<run>/eval_<split>[_<variant>]``, plus ``_<stem>`` for a
            checkpoint other than the one the run folder resolves to).
        inference: inference variant (default: the run's ``model.inference``).
        batch_size: evaluation batch size (at least 64 is used, as in training's evaluation).
        device: ``auto``/empty (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
        progress: show a progress bar.
        count_macs: also count the MACs of one forward of the deployed model (``gmacs``; a
            multi-view variant such as CAL's ``tta`` runs it several times).
        warn: called with the message when the split overlaps the training split; default:
            ``warnings.warn(..., SplitOverlapWarning)``.

    Returns:
        The metrics summary (``top1``, ``top5``, ``macro_f1``, ``ece``, ``nll``, ``num_images``, ...)
        plus ``checkpoint``, ``model``, ``dataset``, ``split``, ``inference``, ``img_size``,
        ``params``, ``gmacs``, ``device``, ``out_dir``, ``train_split`` and ``train_overlap``
        (images also in the training split; -1 = possibly, could not be checked).
    """
    from ..benchmarks.flops import count_params
    from ..models.plugins import get_inference
    from .checkpoint import build_from_meta
    from .train import make_loader

    ck = resolve_checkpoint(path)
    dev = pick_device(device)
    model = load_model(ck, device=str(dev))
    meta = model.fgir_meta
    _, cfg = build_from_meta(meta)
    if root:
        cfg.data.root = root
    cfg.optim.batch_size = batch_size
    variant = inference or cfg.model.inference
    fn = get_inference(model, variant)
    ds = ManifestDataset.from_config(cfg.data, split)
    if ds.num_classes != meta["num_classes"]:
        raise ValueError(f"Checkpoint {ck} predicts {meta['num_classes']} classes but dataset "
                         f"'{cfg.data.name}' has {ds.num_classes}.")
    overlap, msg = split_overlap(cfg, ds)
    if msg:
        if warn is None:
            warnings.warn(f"{ck}: {msg}", SplitOverlapWarning, stacklevel=2)
        else:
            warn(f"{ck}: {msg}")
    loader = make_loader(cfg, ds, False, meta["mean"], meta["std"], DistInfo(device=dev))
    size = int(meta.get("model_img_size") or meta["img_size"])
    acc = run_inference(model, loader, ds.num_classes, ds.class_names, device=dev, progress=progress,
                        desc=f"eval {split}", predict_fn=lambda x: fn(to_model_size(x, size)))
    res = acc.compute()
    res.update(_longtail(cfg, ds.num_classes, res["per_class"], warn))
    res.update({"checkpoint": str(ck), "split": split, "inference": variant or "default"})  # provenance in the json
    suffix = f"_{variant}" if variant not in ("", "default") else ""
    out_dir = Path(out) if out else _default_out_dir(ck, split, suffix)
    summary = write_eval_outputs(out_dir, split, acc, res, ds.class_names,
                                 image_paths=[str(ds.path(i)) for i in range(len(ds))])
    plugins = [p.name for p in cfg.model.plugins]
    return {"checkpoint": str(ck), "model": "+".join([cfg.model.name, *plugins]), "dataset": cfg.data.name,
            "split": split, "inference": variant or "default", "img_size": size, "params": count_params(model),
            "gmacs": _macs(model, size) if count_macs else None, "device": str(dev), "out_dir": str(out_dir),
            "train_split": cfg.data.train_split, "train_overlap": overlap, **summary}


def _longtail(cfg, num_classes: int, per_class: list, warn: Callable[[str], None] | None) -> dict:
    """Head/medium/tail accuracy by the training split's class counts (``data.longtail_thresholds``
    of the checkpoint's config); {} when off or when the training split cannot be read."""
    import torch

    from .metrics import longtail_accuracy

    thresholds = cfg.data.longtail_thresholds
    if not thresholds:
        return {}
    try:
        train = ManifestDataset.from_config(cfg.data, cfg.data.train_split, check_files=False)
    except (ValueError, OSError, KeyError) as e:
        msg = f"no head/medium/tail accuracy: training split '{cfg.data.train_split}' not readable ({e})"
        if warn is None:
            warnings.warn(msg, stacklevel=3)
        else:
            warn(msg)
        return {}
    return longtail_accuracy(per_class, torch.bincount(train.labels, minlength=num_classes), thresholds)


def result_row(res: dict) -> dict:
    """The :data:`RESULT_COLUMNS` of an :func:`evaluate_checkpoint` result (``None`` = not defined,
    e.g. top-5 with fewer than 5 classes)."""
    return {c: res.get(c) for c in RESULT_COLUMNS}


def _label(path) -> str:
    p = Path(path)
    return f"{p.parent.name}_{p.stem}" if p.suffix == ".safetensors" else p.name


def evaluate_many(paths: Iterable[str | os.PathLike], split: str = "test", root: str = "", out: str = "",
                  inference: str = "", batch_size: int = 64, device: str = "", progress: bool = True,
                  count_macs: bool = True, results_csv: str | os.PathLike = "", append: bool = False,
                  on_result: Callable[[dict], None] | None = None,
                  on_error: Callable[[str, Exception], None] | None = None,
                  warn: Callable[[str], None] | None = None) -> tuple[list[dict], list[tuple[str, Exception]]]:
    """Evaluate several checkpoints; a failing one is reported and the others still run.

    With ``out`` and several checkpoints each gets ``<out>/<run folder>_<checkpoint stem>``. With
    ``results_csv`` the rows so far are written (atomically) after every checkpoint, so an
    interrupted run keeps the finished rows; ``append`` adds them to an existing file with the same
    header instead of replacing it.

    Returns:
        ``(rows, errors)``: one :func:`result_row` per evaluated checkpoint, in order, and
        ``(checkpoint, exception)`` for each that failed (also passed to ``on_error``).
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("evaluate: no checkpoints given.")
    pick_device(device)  # a bad device name fails once, before any checkpoint is read
    existing = _read_results(results_csv) if results_csv and append else []
    labels: dict[str, int] = {}
    rows: list[dict] = []
    errors: list[tuple[str, Exception]] = []
    for p in paths:
        sub = out
        if out and len(paths) > 1:
            name = _label(p)
            labels[name] = labels.get(name, 0) + 1
            sub = str(Path(out) / (name if labels[name] == 1 else f"{name}_{labels[name]}"))
        try:
            res = evaluate_checkpoint(p, split=split, root=root, out=sub, inference=inference,
                                      batch_size=batch_size, device=device, progress=progress,
                                      count_macs=count_macs, warn=warn)
        except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError, OSError) as e:
            errors.append((p, e))
            if on_error is not None:
                on_error(p, e)
            continue
        rows.append(result_row(res))
        if on_result is not None:
            on_result(res)
        if results_csv:
            write_results_csv(existing + rows, results_csv)
    return rows, errors


def _read_results(path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != RESULT_COLUMNS:
            raise ValueError(f"--append: {p} has columns {reader.fieldnames}, expected {RESULT_COLUMNS}. "
                             "Write to a new file or drop --append.")
        return list(reader)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(v) if isinstance(v, float) else str(v)


def write_results_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write result rows (:data:`RESULT_COLUMNS`) to ``path`` atomically; floats at full precision,
    undefined values empty."""
    with atomic_path(path) as tmp, open(tmp, "x", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(RESULT_COLUMNS)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in RESULT_COLUMNS])
    return Path(path)


def format_table(rows: list[dict]) -> str:
    """The console table of ``fgir eval``: one line per checkpoint, accuracies to 2 decimals."""
    def num(v, f):
        return "-" if v in (None, "") or (isinstance(v, float) and math.isnan(v)) else format(float(v), f)

    head = ["checkpoint", "model", "split", "inference", "img", "params(M)", "GMACs", "top1", "top5", "F1",
            "ECE", "N", "device"]
    body = [[str(r["checkpoint"]), str(r["model"]), str(r["split"]), str(r["inference"]), str(r["img_size"]),
             num(int(r["params"]) / 1e6 if r["params"] not in (None, "") else None, ".2f"), num(r["gmacs"], ".3f"),
             num(r["top1"], ".2f"), num(r["top5"], ".2f"), num(r["macro_f1"], ".2f"), num(r["ece"], ".2f"),
             str(r["num_images"]), str(r["device"])] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    right = {4, 5, 6, 7, 8, 9, 10, 11}
    lines = ["  ".join(x.rjust(w) if i in right else x.ljust(w) for i, (x, w) in enumerate(zip(line, widths)))
             .rstrip() for line in [head, *body]]
    return "\n".join(lines)


def print_table(rows: list[dict], file=None) -> None:
    print(format_table(rows), file=file or sys.stdout)
