"""Evaluate a model (or a Task's deployable model) on a loader: metrics, CSVs and figures."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from ..utils import atomic_path
from .metrics import (
    ECE_BINS,
    MetricAccumulator,
    confused_pairs,
    image_path_for,
    write_confused_pairs_csv,
    write_per_class_csv,
    write_predictions_csv,
)


@torch.no_grad()
def run_inference(model: nn.Module, loader, num_classes: int, class_names: list[str] | None = None,
                  device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
                  progress: bool = False, desc: str = "eval", predict_fn=None) -> MetricAccumulator:
    was = model.training
    model.eval()
    acc = MetricAccumulator(num_classes, class_names)
    fn = predict_fn or model
    dev = torch.device(device)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = batch["image"].to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = fn(x)
        acc.update(logits.float().cpu(), batch["label"], ids=batch.get("index"))
    model.train(was)
    return acc


def _best_effort(what: str, fn, *args, **kwargs) -> str | None:
    """Run one figure; a failure warns in one line and never stops the evaluation."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - a figure must never cost the metrics
        warnings.warn(f"could not draw {what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                      stacklevel=2)
        return None


def worst_records(acc: MetricAccumulator, class_names: Sequence[str], image_paths, n: int = 16) -> list[dict]:
    """The ``n`` most confident mistakes as records for :func:`fgir.report.plots.plot_worst_grid`."""
    from ..report.plots import select_worst_misclassified

    p = acc.predictions()
    picks = select_worst_misclassified(p["label"], p["topk_ids"], p["topk_probs"], n)
    out = []
    for j in picks:
        ids, probs = p["topk_ids"][j].tolist(), p["topk_probs"][j].tolist()
        out.append({"path": image_path_for(p["image_id"][j], image_paths),
                    "true_name": class_names[int(p["label"][j])],
                    "top": [(class_names[c], q) for c, q in zip(ids, probs)][:3]})
    return out


def write_eval_outputs(out_dir: Path, prefix: str, acc: MetricAccumulator, result: dict,
                       class_names: list[str], image_paths: Sequence | Mapping | None = None,
                       worst_n: int = 16) -> dict:
    """Everything one evaluated split leaves in ``out_dir``, all names prefixed with ``prefix``.

    Written first (atomically): ``_metrics.json`` (summary), ``_per_class.csv``,
    ``_predictions.csv``, ``_confused_pairs.csv``. Then, best-effort (a failure warns in one line):
    ``_confusion_matrix.png``, ``_confused_pairs.png``, ``_per_class.png``, ``_reliability.png``
    and, when ``image_paths`` is given, ``_worst.png``.

    Args:
        out_dir: folder (created).
        prefix: usually the split name.
        acc: the filled accumulator (synced in a distributed run).
        result: ``acc.compute()``.
        class_names: K names.
        image_paths: the image path of each image id the accumulator recorded (``run_inference``
            records dataset indices, so ``[str(ds.path(i)) for i in range(len(ds))]``), or a
            mapping id -> path. Fills the ``path`` column; without it there is no worst grid.
        worst_n: tiles in the worst-misclassified grid.
    """
    from ..report import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k not in ("per_class", "confusion_matrix")}
    with atomic_path(out_dir / f"{prefix}_metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2))
    write_per_class_csv(out_dir / f"{prefix}_per_class.csv", result)
    write_predictions_csv(out_dir / f"{prefix}_predictions.csv", acc, class_names, image_paths)
    pairs = confused_pairs(result["confusion_matrix"], class_names)
    write_confused_pairs_csv(out_dir / f"{prefix}_confused_pairs.csv", pairs)

    split = f"{prefix} split"
    _best_effort("the confusion matrix", plots.plot_confusion_matrix, result["confusion_matrix"], class_names,
                 out_dir / f"{prefix}_confusion_matrix.png")
    _best_effort("the confused pairs", plots.plot_confused_pairs, pairs, out_dir / f"{prefix}_confused_pairs.png",
                 title=f"Most-confused class pairs, {split} (top {min(25, len(pairs))} of {len(pairs)})")
    _best_effort("the per-class accuracy", plots.plot_per_class_accuracy, result["per_class"],
                 out_dir / f"{prefix}_per_class.png")
    p = acc.predictions()
    _best_effort("the reliability diagram", plots.plot_reliability, p["topk_probs"][:, 0],
                 p["topk_ids"][:, 0] == p["label"], out_dir / f"{prefix}_reliability.png", n_bins=ECE_BINS,
                 ece=result.get("ece"), title=split)
    if image_paths is not None:
        records = _best_effort("the worst-misclassified grid", worst_records, acc, class_names, image_paths,
                               worst_n)
        if records is not None:
            _best_effort("the worst-misclassified grid", plots.plot_worst_grid, records,
                         out_dir / f"{prefix}_worst.png",
                         title=f"{len(records)} most confident mistakes, {split} (top-3 predictions, ✓ = true class)")
    return summary
