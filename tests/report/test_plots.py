"""Report figures are written as non-empty PNGs, atomically, for small and large class counts."""

from __future__ import annotations

import json

import pytest
import torch

from fgir.report.plots import (
    plot_accuracy_vs_cost,
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_training_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, folder):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]  # no temp file left


def test_confusion_matrix_small_k_with_names(tmp_path):
    cm = torch.tensor([[5, 1, 0], [0, 3, 2], [0, 0, 0]])  # last class empty: row stays 0
    out = plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png")
    assert out == str(tmp_path / "cm.png")
    _assert_png(out, tmp_path)


def test_confusion_matrix_two_hundred_classes(tmp_path):
    cm = torch.randint(0, 5, (200, 200)) + 50 * torch.eye(200, dtype=torch.long)
    _assert_png(plot_confusion_matrix(cm, None, tmp_path / "cm200.png"), tmp_path)


def test_confusion_matrix_rejects_non_square(tmp_path):
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(torch.zeros(3, 4), None, tmp_path / "x.png")


def test_reliability_diagram(tmp_path):
    probs = torch.randn(500, 10).mul(2).softmax(1)
    labels = torch.randint(0, 10, (500,))
    _assert_png(plot_reliability_diagram(probs, labels, tmp_path / "rel.png"), tmp_path)


def test_training_curves_from_jsonl(tmp_path):
    rows = [{"epoch": e, "train_loss": 2.0 / (e + 1), "val_loss": 2.2 / (e + 1), "lr": 0.01 * 0.9 ** e,
             "train_top1": 40 + 5 * e, "val_top1": 35 + 5 * e} for e in range(6)]
    rows.insert(3, {"epoch": 2.5, "train_loss": 0.7})  # a partial row only adds a point to one curve
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _assert_png(plot_training_curves(jsonl, tmp_path / "curves.png"), tmp_path)


def test_training_curves_from_rows_without_accuracy(tmp_path):
    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "lr": 0.1} for e in range(3)]
    _assert_png(plot_training_curves(rows, tmp_path / "curves.png"), tmp_path)


def test_accuracy_vs_cost(tmp_path):
    rows = [{"model": "vit_b16", "gmacs": 78.5, "top1": 91.0, "method": "baseline"},
            {"model": "clca_10", "gmacs": 25.2, "top1": 90.1, "method": "clca"},
            {"model": "lrnet14", "gmacs": 0.57, "top1": 80.2, "method": "tgda"},
            {"model": "no_cost", "top1": 50.0}]  # skipped: no gmacs
    _assert_png(plot_accuracy_vs_cost(rows, tmp_path / "cost.png", group="method"), tmp_path)


def test_plot_creates_missing_folder(tmp_path):
    out = plot_accuracy_vs_cost([{"model": "m", "gmacs": 1.0, "top1": 2.0}], tmp_path / "a" / "b" / "c.png")
    _assert_png(out, tmp_path / "a" / "b")
