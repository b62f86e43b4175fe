"""MetricAccumulator against hand-computed values, CSV outputs and the distributed gather."""

from __future__ import annotations

import csv
import math
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassCalibrationError

from fgir.engine.metrics import MetricAccumulator, summary_line, write_per_class_csv, write_predictions_csv

# Four classes, eight images. Confidences avoid the 15-bin boundaries (multiples of 1/15).
#               p0    p1    p2    p3      label  top-1  conf  correct
PROBS = torch.tensor([
    [0.90, 0.05, 0.03, 0.02],  # 0      0      0.90  yes
    [0.62, 0.28, 0.05, 0.05],  # 0      0      0.62  yes
    [0.20, 0.70, 0.06, 0.04],  # 0      1      0.70  no
    [0.12, 0.78, 0.05, 0.05],  # 1      1      0.78  yes
    [0.10, 0.35, 0.45, 0.10],  # 1      2      0.45  no
    [0.05, 0.05, 0.85, 0.05],  # 2      2      0.85  yes
    [0.05, 0.05, 0.28, 0.62],  # 2      3      0.62  no
    [0.10, 0.10, 0.10, 0.70],  # 3      3      0.70  yes
])
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
NAMES = ["ani", "bo", "cu", "du"]
TOL = {"rtol": 0.0, "atol": 1e-9}


def _hand_result(**kwargs):
    acc = MetricAccumulator(4, class_names=NAMES, **kwargs)
    acc.update(PROBS[:5], LABELS[:5], ids=[f"img{i}" for i in range(5)])
    acc.update(PROBS[5:], LABELS[5:], ids=[f"img{i}" for i in range(5, 8)])
    return acc, acc.compute()


def _close(actual, expected, atol=1e-9):
    torch.testing.assert_close(torch.tensor(float(actual), dtype=torch.float64),
                               torch.tensor(float(expected), dtype=torch.float64), rtol=0.0, atol=atol)


def test_top1_is_percent_of_correct_images():
    _, r = _hand_result()
    _close(r["top1"], 100 * 5 / 8)


def test_per_class_counts_and_accuracy():
    _, r = _hand_result()
    assert [(c["class_name"], c["correct"], c["total"]) for c in r["per_class"]] == [
        ("ani", 2, 3), ("bo", 1, 2), ("cu", 1, 2), ("du", 1, 1)]
    torch.testing.assert_close(torch.tensor([c["accuracy"] for c in r["per_class"]], dtype=torch.float64),
                               torch.tensor([200 / 3, 50.0, 50.0, 100.0], dtype=torch.float64), **TOL)


def test_mean_per_class_accuracy():
    _, r = _hand_result()
    _close(r["mean_per_class_acc"], (200 / 3 + 50 + 50 + 100) / 4)  # = 200/3


def test_class_deviation_is_sample_std():
    _, r = _hand_result()
    # deviations from 200/3: 0, -50/3, -50/3, +100/3 -> sum of squares 5000/3, / (n-1 = 3) -> 5000/9
    _close(r["class_deviation"], math.sqrt(5000 / 9))


def test_macro_f1():
    _, r = _hand_result()
    # per class F1 = 2tp / (2tp + fp + fn): 4/5, 2/4, 2/4, 2/3
    _close(r["macro_f1"], 100 * (4 / 5 + 1 / 2 + 1 / 2 + 2 / 3) / 4, atol=1e-4)


def test_ece_fifteen_bins_l1():
    _, r = _hand_result()
    # occupied bins: {0.45 wrong}, {0.62 right, 0.62 wrong}, {0.70 wrong, 0.70 right},
    # {0.78 right}, {0.85 right}, {0.90 right}; ECE = sum over bins of |acc - conf| * n_bin / N
    gaps = [0.45 * 1, abs(0.5 - 0.62) * 2, abs(0.5 - 0.70) * 2,
            (1 - 0.78) * 1, (1 - 0.85) * 1, (1 - 0.90) * 1]
    _close(r["ece"], 100 * sum(gaps) / 8, atol=1e-4)


def test_ece_equals_torchmetrics_multiclass_calibration_error():
    probs = torch.randn(300, 7).mul(3).softmax(1)
    labels = torch.randint(0, 7, (300,))
    acc = MetricAccumulator(7)
    acc.update(probs, labels)
    reference = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")(probs, labels)
    _close(acc.compute()["ece"], 100 * float(reference), atol=1e-4)


def test_nll_is_mean_negative_log_prob_of_true_class():
    _, r = _hand_result()
    p_true = [0.90, 0.62, 0.20, 0.78, 0.35, 0.85, 0.28, 0.70]
    _close(r["nll"], -sum(math.log(p) for p in p_true) / 8, atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*no test images")
def test_top5_counts_label_among_five_highest():
    acc = MetricAccumulator(6)
    acc.update(torch.tensor([[0.30, 0.25, 0.20, 0.15, 0.08, 0.02],    # label 5 ranked 6th: miss
                             [0.20, 0.50, 0.25, 0.02, 0.02, 0.01]]),  # label 0 ranked 3rd: hit
               torch.tensor([5, 0]))
    r = acc.compute()
    _close(r["top1"], 0.0)
    _close(r["top5"], 50.0)


def test_top5_omitted_below_five_classes():
    _, r = _hand_result()
    assert "top5" not in r


def test_logits_and_probabilities_give_the_same_metrics():
    logits = torch.randn(40, 5)
    labels = torch.randint(0, 5, (40,))
    a, b = MetricAccumulator(5), MetricAccumulator(5)
    a.update(logits, labels)
    b.update(logits.softmax(1), labels)
    ra, rb = a.compute(), b.compute()
    for key in ("top1", "top5", "mean_per_class_acc", "macro_f1", "ece", "nll"):
        _close(ra[key], rb[key], atol=1e-4)


def test_empty_class_is_skipped_with_a_warning():
    acc = MetricAccumulator(4)
    acc.update(PROBS[:7], LABELS[:7])  # no image of class 3
    with pytest.warns(UserWarning, match="no test images"):
        r = acc.compute()
    assert r["per_class"][3]["accuracy"] is None and r["empty_classes"] == [3]
    _close(r["mean_per_class_acc"], (200 / 3 + 50 + 50) / 3)
    _close(r["class_deviation"], math.sqrt(((200 / 3 - 500 / 9) ** 2 + 2 * (50 - 500 / 9) ** 2) / 2))


def test_no_warning_when_every_class_has_images():
    acc = MetricAccumulator(4)
    acc.update(PROBS, LABELS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc.compute()


def test_confusion_matrix_rows_are_true_classes():
    acc = MetricAccumulator(3)
    acc.update(torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]), torch.tensor([0, 0, 1]))
    with pytest.warns(UserWarning):  # class 2 has no images
        cm = acc.compute()["confusion_matrix"]
    torch.testing.assert_close(cm, torch.tensor([[0, 2, 0], [0, 0, 1], [0, 0, 0]]), rtol=0, atol=0)


def test_soft_labels_are_rejected():
    acc = MetricAccumulator(4)
    with pytest.raises(TypeError, match="soft targets"):
        acc.update(PROBS, torch.nn.functional.one_hot(LABELS, 4).float())


def test_wrong_class_count_is_rejected():
    acc = MetricAccumulator(5)
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        acc.update(PROBS, LABELS)


def test_per_class_csv(tmp_path):
    _, r = _hand_result()
    path = write_per_class_csv(tmp_path / "per_class.csv", r)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(row["class_id"], row["class_name"], row["correct"], row["total"]) for row in rows] == [
        ("0", "ani", "2", "3"), ("1", "bo", "1", "2"), ("2", "cu", "1", "2"), ("3", "du", "1", "1")]
    _close(float(rows[0]["accuracy"]), 200 / 3, atol=0.0)  # full precision, not rounded


def test_predictions_csv(tmp_path):
    acc, _ = _hand_result()
    path = write_predictions_csv(tmp_path / "predictions.csv", acc)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image_id", "path", "true_id", "true_name", "pred_id", "pred_name", "prob", "correct",
                             "top1_name", "top1_prob", "top2_name", "top2_prob", "top3_name", "top3_prob",
                             "top4_name", "top4_prob"]
    assert len(rows) == 8
    r = rows[2]
    assert (r["path"], r["true_id"], r["true_name"], r["pred_id"], r["pred_name"], r["correct"]) == (
        "img2", "0", "ani", "1", "bo", "0")
    assert [r[f"top{k}_name"] for k in range(1, 5)] == ["bo", "ani", "cu", "du"]
    _close(float(r["top1_prob"]), 0.70, atol=1e-6)
    _close(float(r["prob"]), 0.70, atol=1e-6)


def test_summary_line_rounds_to_two_decimals():
    _, r = _hand_result()
    line = summary_line(r)
    assert "top1 62.50" in line and "mpca 66.67 ± 23.57" in line and "N 8" in line


def _ddp_worker(rank, world, store, out, probs, labels, ids):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        acc = MetricAccumulator(4)
        # rank 0 sees 3 images, rank 1 sees 6 (the last one a sampler-padding repeat of img0)
        sl = slice(0, 3) if rank == 0 else slice(3, 9)
        acc.update(probs[sl], labels[sl], ids=ids[sl])
        r = acc.compute()
        torch.save({"top1": r["top1"], "cm": r["confusion_matrix"], "n": r["num_images"],
                    "dropped": acc.duplicates_dropped, "ids": acc.predictions()["image_id"]}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_distributed_compute_gathers_unequal_ranks_and_drops_repeats(tmp_path):
    probs = torch.cat([PROBS, PROBS[:1]])
    labels = torch.cat([LABELS, LABELS[:1]])
    ids = list(range(8)) + [0]
    args = (2, str(tmp_path / "store"), str(tmp_path / "res"), probs, labels, ids)
    mp.start_processes(_ddp_worker, args=args, nprocs=2, start_method="fork")
    single = MetricAccumulator(4)
    single.update(PROBS, LABELS)
    expected = single.compute()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"res.{rank}")
        assert (got["n"], got["dropped"], got["ids"]) == (8, 1, list(range(8)))
        _close(got["top1"], expected["top1"])
        torch.testing.assert_close(got["cm"], expected["confusion_matrix"], rtol=0, atol=0)


def test_class_deviation_of_a_single_class_is_json_null_and_a_dash_in_the_summary():
    import json

    from fgir.engine.metrics import summary_line

    acc = MetricAccumulator(2)
    acc.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]))
    with pytest.warns(UserWarning, match="1 of 2 classes have no test images"):
        r = acc.compute()
    assert r["class_deviation"] is None and '"class_deviation": null' in json.dumps(r, default=str)
    assert "mpca 50.00 ± –" in summary_line(r)
