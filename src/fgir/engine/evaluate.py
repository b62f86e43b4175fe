"""Evaluate a model (or a Task's deployable model) on a loader: metrics, CSVs and plots."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from .metrics import MetricAccumulator, write_per_class_csv, write_predictions_csv


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


def write_eval_outputs(out_dir: Path, prefix: str, acc: MetricAccumulator, result: dict,
                       class_names: list[str]) -> dict:
    """per_class CSV, predictions CSV, confusion-matrix PNG and a JSON summary for one split."""
    from ..report.plots import plot_confusion_matrix

    out_dir.mkdir(parents=True, exist_ok=True)
    write_per_class_csv(out_dir / f"{prefix}_per_class.csv", result)
    write_predictions_csv(out_dir / f"{prefix}_predictions.csv", acc)
    plot_confusion_matrix(result["confusion_matrix"], class_names, out_dir / f"{prefix}_confusion_matrix.png")
    summary = {k: v for k, v in result.items() if k not in ("per_class", "confusion_matrix")}
    (out_dir / f"{prefix}_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary
