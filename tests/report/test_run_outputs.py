"""What an evaluation and a training run write: CSVs with names, and every figure, at K = 3 and 150."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from conftest import tiny_cfg
from PIL import Image

from fgir.engine import train as train_mod
from fgir.engine.evaluate import write_eval_outputs
from fgir.engine.metrics import MetricAccumulator, confused_pairs, write_predictions_csv
from fgir.report.plots import (
    plot_per_class_accuracy,
    plot_reliability,
    plot_training_curves,
    plot_worst_grid,
    select_worst_misclassified,
)

FIGURES = ["confusion_matrix", "confused_pairs", "per_class", "reliability", "worst"]


def _assert_valid_png(path):
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"


def _synthetic_eval(k: int, n: int, tmp_path):
    """Seeded logits that are mostly right, a K-class accumulator with dataset-index ids and images."""
    g = torch.Generator().manual_seed(k)
    labels = torch.arange(n) % k
    logits = torch.randn(n, k, generator=g)
    logits[torch.arange(n), labels] += 2.5
    names = [f"{c + 1:03d}.Long_Class_Name_Number_{c}" for c in range(k)]
    acc = MetricAccumulator(k, names)
    acc.update(logits[: n // 2], labels[: n // 2], ids=torch.arange(n // 2))
    acc.update(logits[n // 2:], labels[n // 2:], ids=torch.arange(n // 2, n))
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    paths = []
    for i in range(n):
        p = img_dir / f"{i:04d}.png"
        Image.new("RGB", (24, 16), ((37 * i) % 256, 90, 160)).save(p)
        paths.append(str(p))
    return acc, names, paths


@pytest.mark.parametrize("k", [3, 150])
def test_eval_outputs_write_every_figure_as_png(tmp_path, k):
    acc, names, paths = _synthetic_eval(k, 4 * k, tmp_path)
    out = tmp_path / "out"
    write_eval_outputs(out, "test", acc, acc.compute(), names, image_paths=paths)
    for fig in FIGURES:
        _assert_valid_png(out / f"test_{fig}.png")
    for table in ["metrics.json", "per_class.csv", "predictions.csv", "confused_pairs.csv"]:
        assert (out / f"test_{table}").is_file(), table
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_worst_grid_skipped_without_image_paths(tmp_path):
    acc, names, _ = _synthetic_eval(3, 12, tmp_path)
    write_eval_outputs(tmp_path / "out", "val", acc, acc.compute(), names)
    assert not (tmp_path / "out" / "val_worst.png").exists()
    assert (tmp_path / "out" / "val_reliability.png").is_file()


def test_plot_failure_warns_and_keeps_metrics(tmp_path, monkeypatch):
    from fgir.report import plots

    def broken(*args, **kwargs):
        raise RuntimeError("no canvas\nsecond line")

    monkeypatch.setattr(plots, "plot_confusion_matrix", broken)
    acc, names, paths = _synthetic_eval(3, 12, tmp_path)
    with pytest.warns(UserWarning, match=r"^could not draw the confusion matrix: RuntimeError: no canvas$"):
        summary = write_eval_outputs(tmp_path / "out", "test", acc, acc.compute(), names, image_paths=paths)
    assert json.loads((tmp_path / "out" / "test_metrics.json").read_text())["top1"] == summary["top1"]
    assert (tmp_path / "out" / "test_per_class.png").is_file()  # later figures still drawn


def test_predictions_csv_columns_names_and_ranked_probabilities(tmp_path):
    acc = MetricAccumulator(6, [f"c{i}" for i in range(6)])
    probs = torch.tensor([[0.05, 0.60, 0.10, 0.20, 0.03, 0.02],   # true 1, right
                          [0.50, 0.05, 0.30, 0.05, 0.05, 0.05]])  # true 2, predicted 0
    acc.update(probs, torch.tensor([1, 2]), ids=torch.tensor([1, 0]))
    path = write_predictions_csv(tmp_path / "p.csv", acc, image_paths=["a/x.jpg", "b/y.jpg"])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image_id", "path", "true_id", "true_name", "pred_id", "pred_name", "prob",
                             "correct"] + [
        f"top{k}_{f}" for k in range(1, 6) for f in ("name", "prob")]
    assert [rows[0][c] for c in ("path", "true_id", "true_name", "pred_id", "pred_name", "correct")] == [
        "b/y.jpg", "1", "c1", "1", "c1", "1"]
    assert [rows[1][c] for c in ("image_id", "path", "true_name", "pred_name", "correct")] == [
        "0", "a/x.jpg", "c2", "c0", "0"]
    assert float(rows[1]["prob"]) == pytest.approx(0.50, abs=1e-6)
    assert [rows[0][f"top{k}_name"] for k in range(1, 6)] == ["c1", "c3", "c2", "c0", "c4"]
    for r in rows:
        p = [float(r[f"top{k}_prob"]) for k in range(1, 6)]
        assert p == sorted(p, reverse=True) and sum(p) <= 1.0 + 1e-5
    assert float(rows[1]["top2_prob"]) == pytest.approx(0.30, abs=1e-6)


def test_predictions_csv_has_k_columns_below_five_classes(tmp_path):
    acc = MetricAccumulator(3)
    acc.update(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0]))
    with open(write_predictions_csv(tmp_path / "p.csv", acc)) as f:
        row = next(csv.DictReader(f))
    assert row["path"] == "0" and row["true_name"] == "0" and "top3_name" in row and "top4_name" not in row


def test_confused_pairs_ranked_by_count_then_rate():
    cm = torch.tensor([[10, 4, 1, 0],    # a -> b 4 of 15
                       [2, 5, 0, 0],     # b -> a 2 of 7
                       [0, 4, 2, 2],     # c -> b 4 of 8: same count as a -> b, higher rate
                       [0, 0, 2, 1]])    # d -> c 2 of 3
    pairs = confused_pairs(cm, ["a", "b", "c", "d"])
    assert [(p["true_name"], p["pred_name"], p["count"]) for p in pairs] == [
        ("c", "b", 4), ("a", "b", 4), ("d", "c", 2), ("b", "a", 2), ("c", "d", 2), ("a", "c", 1)]
    assert pairs[0]["rate"] == pytest.approx(0.5) and pairs[1]["rate"] == pytest.approx(4 / 15)
    assert len(confused_pairs(cm, top=2)) == 2 and confused_pairs(torch.eye(3, dtype=torch.long) * 5) == []


def test_select_worst_picks_highest_confidence_errors():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    top_ids = torch.tensor([[0, 1], [0, 1], [1, 2], [2, 0], [1, 0], [0, 2]])  # rows 1, 2, 3, 5 are wrong
    top_p = torch.tensor([[0.99, 0.01], [0.60, 0.3], [0.90, 0.1], [0.60, 0.2], [0.95, 0.0], [0.70, 0.2]])
    assert select_worst_misclassified(labels, top_ids, top_p, n=3) == [2, 5, 1]  # ties: earlier first
    assert select_worst_misclassified(labels, top_ids, top_p, n=10) == [2, 5, 1, 3]


def test_worst_grid_draws_unreadable_images_too(tmp_path):
    ok = tmp_path / "ok.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(ok)
    recs = [{"path": str(ok), "true_name": "001.Black_footed_Albatross",
             "top": [("002.Laysan_Albatross", 0.7), ("001.Black_footed_Albatross", 0.2), ("x", 0.05)]},
            {"path": str(tmp_path / "missing.jpg"), "true_name": "b", "top": [("c", 0.9)]}]
    _assert_valid_png(tmp_path / plot_worst_grid(recs, tmp_path / "w.png"))


@pytest.mark.parametrize("k", [3, 150])
def test_per_class_accuracy_plot(tmp_path, k):
    per_class = [{"class_id": c, "class_name": f"{c:03d}.Some_Long_Bird_Name", "total": 4,
                  "accuracy": None if c == 1 else float((c * 37) % 101)} for c in range(k)]
    _assert_valid_png(tmp_path / plot_per_class_accuracy(per_class, tmp_path / "pc.png"))


def test_reliability_from_confidence_matches_given_ece_title(tmp_path):
    conf = torch.rand(200)
    correct = torch.rand(200) < conf
    _assert_valid_png(tmp_path / plot_reliability(conf, correct, tmp_path / "r.png", ece=12.34))


def test_training_curves_missing_values_single_epoch_and_resume(tmp_path):
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_loss_ce": 0.8 / e, "lr": 0.1 / e, "train_top1": 10.0 * e,
             "val_loss": 1.2 / e if e % 2 == 0 else None, "val_top1": 9.0 * e if e % 2 == 0 else None}
            for e in (1, 2, 3, 2, 3, 4)]  # resumed after epoch 1: epochs 2 and 3 logged twice
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 5, "train_lo')  # cut-off line
    _assert_valid_png(tmp_path / plot_training_curves(jsonl, tmp_path / "curves.png"))
    _assert_valid_png(tmp_path / plot_training_curves(rows[:1], tmp_path / "one.png"))


def test_training_run_leaves_every_figure(tiny_root, tmp_path):
    train_mod.train(tiny_cfg(tiny_root, tmp_path))
    run = tmp_path / "t"
    for fig in FIGURES:
        _assert_valid_png(run / f"test_{fig}.png")
    with open(run / "test_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r["true_name"] for r in rows} == {"red_disc", "green_square", "blue_bar"}
    assert all(os.path.isfile(r["path"]) for r in rows)
