"""Long-tail options: samplers, balanced-softmax / logit-adjusted loss, head/medium/tail accuracy."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_cfg

from fgir.config import ConfigError, load_config
from fgir.data.loader import epoch_indices, sampling_weights
from fgir.data.manifest import read_split, write_split
from fgir.engine import train as train_mod
from fgir.engine.build import build_task
from fgir.engine.checkpoint import read_tensors
from fgir.engine.classification import log_prior
from fgir.engine.metrics import longtail_accuracy, summary_line

COUNTS = [1000, 100, 10, 1]
LABELS = torch.repeat_interleave(torch.arange(4), torch.tensor(COUNTS))


def _class_freq(sampler: str, epochs: int = 60) -> torch.Tensor:
    w = sampling_weights(LABELS, sampler)
    idx = torch.cat([epoch_indices(len(LABELS), e, 0, True, 0, 1, False, 32, w) for e in range(epochs)])
    return torch.bincount(LABELS[idx], minlength=4).double() / len(idx)


def test_class_balanced_sampler_draws_every_class_equally():
    torch.testing.assert_close(_class_freq("class_balanced"), torch.full((4,), 0.25, dtype=torch.float64),
                               atol=0.01, rtol=0)


def test_sqrt_sampler_draws_classes_in_proportion_to_sqrt_count():
    expected = torch.tensor(COUNTS, dtype=torch.float64).sqrt()
    torch.testing.assert_close(_class_freq("sqrt"), expected / expected.sum(), atol=0.01, rtol=0)


def test_uniform_sampler_keeps_the_permutation():
    assert sampling_weights(LABELS, "uniform") is None
    idx = epoch_indices(len(LABELS), 3, 7, True, 0, 1, False, 32, None)
    assert sorted(idx.tolist()) == list(range(len(LABELS)))


def test_weighted_draw_is_seeded_and_sharded_across_ranks():
    w = sampling_weights(LABELS, "class_balanced")
    full = epoch_indices(len(LABELS), 2, 5, True, 0, 1, False, 8, w)
    assert torch.equal(full, epoch_indices(len(LABELS), 2, 5, True, 0, 1, False, 8, w))
    assert not torch.equal(full, epoch_indices(len(LABELS), 3, 5, True, 0, 1, False, 8, w))
    ranks = [epoch_indices(len(LABELS), 2, 5, True, r, 2, True, 8, w) for r in range(2)]
    n = (len(LABELS) // 2) * 2
    per = (n // 2 // 4) * 4
    for r in range(2):  # each rank takes its stride of the one global draw (DDP: disjoint parts)
        assert torch.equal(ranks[r], full[:n][r::2][:per])


def test_balanced_softmax_is_ce_on_logits_plus_log_prior():
    cfg = load_config(overrides=["task.loss=balanced_softmax", "data.name=fonts", "optim.label_smoothing=0"])
    model = torch.nn.Linear(2, 3, bias=False)
    task = build_task(cfg, model, 3, class_counts=torch.tensor([6, 3, 1]))
    x = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    y = torch.tensor([2, 0])
    z = model(x)
    prior = [0.6, 0.3, 0.1]
    by_hand = []
    for zi, yi in zip(z.tolist(), y.tolist()):
        adj = [a + math.log(p) for a, p in zip(zi, prior)]
        by_hand.append(-adj[yi] + math.log(sum(math.exp(a) for a in adj)))
    out = task({"image": x, "target": y})
    torch.testing.assert_close(out["loss"], torch.tensor(sum(by_hand) / 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["logits"], z, atol=0, rtol=0)  # predictions use the raw logits


def test_logit_adjusted_scales_the_log_prior_by_tau():
    cfg = load_config(overrides=["task.loss=logit_adjusted", "task.tau=2.0", "data.name=fonts",
                                 "optim.label_smoothing=0"])
    model = torch.nn.Linear(2, 3)
    counts = torch.tensor([6, 3, 1])
    task = build_task(cfg, model, 3, class_counts=counts)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 2])
    expected = F.cross_entropy(model(x) + 2.0 * torch.log(counts / 10.0), y)
    torch.testing.assert_close(task({"image": x, "target": y})["loss"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_prior(torch.tensor([0, 4])), torch.log(torch.tensor([0.2, 0.8])),
                               atol=1e-6, rtol=0)


def test_long_tail_loss_without_class_counts_is_refused():
    cfg = load_config(overrides=["task.loss=balanced_softmax", "data.name=fonts"])
    with pytest.raises(ValueError, match="needs the training split's class counts"):
        build_task(cfg, torch.nn.Linear(2, 3), 3)


def test_bucket_accuracy_by_training_frequency():
    # train counts: class 0 head (150), 1 and 2 medium (20, 100), 3 and 4 tail (19, 0)
    per_class = [{"class_id": c, "total": t, "accuracy": a}
                 for c, t, a in [(0, 10, 90.0), (1, 4, 50.0), (2, 2, 100.0), (3, 5, 20.0), (4, 0, None)]]
    res = longtail_accuracy(per_class, [150, 20, 100, 19, 0])
    assert (res["head_acc"], res["medium_acc"], res["tail_acc"]) == (90.0, 75.0, 20.0)
    assert (res["head_classes"], res["medium_classes"], res["tail_classes"]) == (1, 2, 2)
    assert (res["head_images"], res["medium_images"], res["tail_images"]) == (10, 6, 5)
    assert (res["longtail_tail_below"], res["longtail_head_above"]) == (20, 100)
    assert "head > 100, medium 20-100, tail < 20" in res["longtail_buckets"]


def test_empty_bucket_is_null_not_nan():
    # a bucket without classes has no accuracy: None, which json writes as a valid null (NaN is not JSON)
    per_class = [{"class_id": c, "total": 2, "accuracy": 50.0} for c in range(3)]
    res = longtail_accuracy(per_class, [1, 1, 1], (5, 10))
    assert (res["head_acc"], res["medium_acc"], res["tail_acc"]) == (None, None, 50.0)
    assert '"head_acc": null' in json.dumps(res, allow_nan=False)


def test_summary_line_shows_an_empty_bucket_as_a_dash():
    r = {"top1": 80.0, "mean_per_class_acc": 70.0, "class_deviation": 5.0, "macro_f1": 60.0, "ece": 3.0,
         "nll": 0.5, "num_images": 10, "head_acc": None, "medium_acc": 75.0, "tail_acc": 20.0,
         "longtail_tail_below": 20, "longtail_head_above": 100}
    assert "train imgs) –/75.00/20.00" in summary_line(r)


def test_summary_line_states_the_bucket_thresholds():
    r = {"top1": 80.0, "top5": 95.0, "mean_per_class_acc": 70.0, "class_deviation": 5.0, "macro_f1": 60.0,
         "ece": 3.0, "nll": 0.5, "num_images": 10, "head_acc": 90.0, "medium_acc": 75.0, "tail_acc": 20.0,
         "longtail_tail_below": 20, "longtail_head_above": 100}
    assert "head/med/tail (>100/20-100/<20 train imgs) 90.00/75.00/20.00" in summary_line(r)


@pytest.mark.parametrize(("override", "key"), [
    ("data.sampler=balanced", "data.sampler"),
    ("task.loss=focal", "task.loss"),
    ("task.tau=0", "task.tau"),
    ("data.longtail_thresholds=[100,20]", "data.longtail_thresholds"),
    ("data.longtail_thresholds=[20]", "data.longtail_thresholds"),
])
def test_long_tail_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=["data.name=fonts", override]).validate()


@pytest.fixture(scope="module")
def skewed_root(tiny_root, tmp_path_factory):
    """The tiny set with 6 / 4 / 1 training images for classes 0 / 1 / 2."""
    root = tmp_path_factory.mktemp("skewed") / "tiny"
    shutil.copytree(tiny_root, root)
    left = {0: 6, 1: 4, 2: 1}
    rows = []
    for r in read_split(root / "train.csv"):
        if left[r.class_id]:
            rows.append(r)
            left[r.class_id] -= 1
    write_split(root / "train.csv", rows)
    return root


def test_long_tail_training_reports_buckets_and_resumes_exactly(skewed_root, tmp_path, monkeypatch):
    extra = ("optim.epochs=2", "data.sampler=class_balanced", "task.loss=balanced_softmax",
             "data.longtail_thresholds=[2,5]", "optim.batch_size=4")
    res = train_mod.train(tiny_cfg(skewed_root, tmp_path / "a", *extra))
    final = json.loads((tmp_path / "a" / "t" / "final.json").read_text())
    assert final["test_head_classes"] == final["test_medium_classes"] == final["test_tail_classes"] == 1
    assert (final["test_longtail_tail_below"], final["test_longtail_head_above"]) == (2, 5)
    assert res["test_tail_acc"] == final["test_tail_acc"]
    ref = read_tensors(tmp_path / "a" / "t" / "last.safetensors")

    cfg_b = tiny_cfg(skewed_root, tmp_path / "b", *extra)
    orig_iter = train_mod.ArrayLoader.__iter__

    def interrupted_iter(self):
        for i, batch in enumerate(orig_iter(self)):
            if self.shuffle and self.epoch == 2 and i == 1:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(train_mod.ArrayLoader, "__iter__", interrupted_iter)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg_b)
    monkeypatch.setattr(train_mod.ArrayLoader, "__iter__", orig_iter)
    train_mod.train(cfg_b, resume=str(tmp_path / "b" / "t"))
    got = read_tensors(tmp_path / "b" / "t" / "last.safetensors")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_order_covers_every_dafre_test_image(world):
    # Spec animesion.md §11 item 15: 94,440 predictions for any batch size, batch 64 included
    # (the reference dropped the last 40 images); evaluation never drops or draws with replacement.
    n, bs = 94440, 64
    seen = []
    for rank in range(world):
        idx = epoch_indices(n, 0, 0, False, rank, world, False, bs)
        local = max(1, bs // world)
        steps = math.ceil(len(idx) / local)
        seen += torch.cat([idx[s * local:(s + 1) * local] for s in range(steps)]).tolist()
    assert sorted(seen) == list(range(n))
