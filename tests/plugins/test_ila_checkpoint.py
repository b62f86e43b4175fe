"""Adapter-only checkpoints (model.save=trainable): what they hold, merging onto the frozen backbone,
refusing another backbone, and fgir eval on such a run."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import tiny_cfg
from torch.testing import assert_close

from fgir.engine import train as train_mod
from fgir.engine.checkpoint import CheckpointError, load_model, read_meta, read_tensors

ILA = "model.plugins=[{name: ila, variant: ila_plus, ds_locs: [1], dropout: 0.0}]"
VIT = ("model.name=test_vit", "data.img_size=64", "optim.epochs=1", "data.test_split=")


def _backbone(root, out, name="bb", seed=0):
    train_mod.train(tiny_cfg(root, out, *VIT, f"run.name={name}", f"run.seed={seed}"))
    return out / name


def _adapter(root, out, bb, name, save="trainable"):
    train_mod.train(tiny_cfg(root, out, *VIT, f"run.name={name}", f"model.checkpoint={bb}", ILA,
                             "model.trainable=[plugins, head, cls_token]", f"model.save={save}"))
    return out / name


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ila_runs")
    bb = _backbone(tiny_root, out)
    return {"out": out, "bb": bb, "ad": _adapter(tiny_root, out, bb, "ad"),
            "full": _adapter(tiny_root, out, bb, "full", save="full")}


def test_adapter_only_checkpoint_holds_only_trained_tensors_and_buffers(runs):
    sd = read_tensors(runs["ad"] / "last.safetensors")
    assert sd and all(k.startswith(("ila.", "head.")) or k == "cls_token" for k in sd)
    meta = read_meta(runs["ad"])["adapter_only"]
    assert meta["model"] == "test_vit" and len(meta["backbone_sha256"]) == 64
    assert meta["checkpoint"]["path"] == str(runs["bb"].resolve()) and len(meta["checkpoint"]["sha256"]) == 64


def test_adapter_only_load_reproduces_the_full_checkpoint_exactly(runs):
    a, f = load_model(runs["ad"]), load_model(runs["full"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(a(x), f(x), rtol=0, atol=0)


def test_adapter_only_checkpoint_refuses_another_backbone(runs, tiny_root):
    other = _backbone(tiny_root, runs["out"], "bb_other", seed=1)
    with pytest.raises(CheckpointError, match=r"trained on another backbone \(fingerprint [0-9a-f]{12}"):
        load_model(runs["ad"], backbone=str(other))


def test_adapter_only_checkpoint_with_missing_backbone_says_so(runs, tmp_path):
    moved = tmp_path / "ad"
    shutil.copytree(runs["ad"], moved)
    meta_bb = runs["bb"]
    hidden = meta_bb.with_name("bb_hidden")
    meta_bb.rename(hidden)
    try:
        with pytest.raises(CheckpointError, match="its frozen backbone .* is missing"):
            load_model(moved)
        assert load_model(moved, backbone=str(hidden)) is not None
    finally:
        hidden.rename(meta_bb)


def test_fgir_eval_works_on_an_adapter_only_run(runs):
    from fgir.engine.evaluate_cli import evaluate_checkpoint

    row = evaluate_checkpoint(str(runs["ad"]), split="val")
    assert 0.0 <= row["top1"] <= 100.0


def test_census_json_stores_the_ttp_split(runs):
    import json

    ttp = json.loads((runs["ad"] / "census.json").read_text())["ttp"]
    assert ttp["head_per_class"] == 64 + 1 and ttp["num_classes"] == 3
    assert ttp["non_head_trainable"] + ttp["head_trainable"] == ttp["trainable"]


def _continued(runs, *extra):
    from fgir.engine.build import build_model

    cfg = tiny_cfg(runs["out"], runs["out"], *VIT, f"model.checkpoint={runs['ad']}", ILA, *extra)
    torch.manual_seed(123)
    return build_model(cfg, 3)


def test_continuing_an_adapter_run_keeps_its_classifier_by_default(runs):
    m = _continued(runs)
    assert_close(m.head.weight, read_tensors(runs["ad"] / "last.safetensors")["head.weight"], rtol=0, atol=0)


def test_continuing_an_adapter_run_with_checkpoint_head_false_gives_a_fresh_classifier(runs):
    m = _continued(runs, "model.checkpoint_head=false")
    sd = read_tensors(runs["ad"] / "last.safetensors")
    assert not torch.equal(m.head.weight, sd["head.weight"])
    adapters = {k: v for k, v in m.state_dict().items() if k.startswith("ila.")}
    assert adapters and all(torch.equal(v, sd[k]) for k, v in adapters.items())
