"""optim.layer_decay: timm's layer-wise lr decay over the Task's parameters (the backbone grouped by its
own group_matcher, what it does not group at the full lr)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_cfg

from fgir.config import ConfigError, load_config
from fgir.engine import train as train_mod
from fgir.engine.build import build_model, build_task
from fgir.engine.train import base_lr, build_optimizer, build_scheduler


def _optimizer(*over: str, num_classes: int = 3):
    cfg = load_config(overrides=["data.img_size=32", "optim.warmup_epochs=0", "optim.lr=0.1", *over])
    model = build_model(cfg, num_classes)
    task = build_task(cfg, model, num_classes)
    opt = build_optimizer(cfg, task)
    build_scheduler(cfg, opt, steps_per_epoch=4)  # timm's scheduler applies each group's lr_scale
    return task, opt


def _lr_of(task, opt) -> dict[str, float]:
    ids = {id(p): n for n, p in task.named_parameters()}
    return {ids[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}


def test_vit_blocks_get_geometric_lr_scales():
    # depth 2, timm's grouping: stem, block 0, block 1 with the final norm (MATCH_PREV_GROUP), head -> d^3, d^2, d, 1
    task, opt = _optimizer("model.name=vit_tiny_patch16_224", "model.kwargs={depth: 2}", "optim.layer_decay=0.5")
    lr = _lr_of(task, opt)
    torch.testing.assert_close(lr["model.patch_embed.proj.weight"], 0.1 * 0.5 ** 3, atol=1e-12, rtol=0)
    torch.testing.assert_close(lr["model.cls_token"], 0.1 * 0.5 ** 3, atol=1e-12, rtol=0)
    torch.testing.assert_close(lr["model.blocks.0.attn.qkv.weight"], 0.1 * 0.5 ** 2, atol=1e-12, rtol=0)
    torch.testing.assert_close(lr["model.blocks.1.mlp.fc2.weight"], 0.1 * 0.5, atol=1e-12, rtol=0)
    torch.testing.assert_close(lr["model.norm.weight"], 0.1 * 0.5, atol=1e-12, rtol=0)
    torch.testing.assert_close(lr["model.head.weight"], 0.1, atol=1e-12, rtol=0)
    assert base_lr(opt) == pytest.approx(0.1)


def test_weight_decay_rules_still_hold_with_layer_decay():
    task, opt = _optimizer("model.name=vit_tiny_patch16_224", "model.kwargs={depth: 2}", "optim.layer_decay=0.5",
                           "optim.weight_decay=0.05")
    ids = {id(p): n for n, p in task.named_parameters()}
    wd = {ids[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd["model.blocks.0.attn.qkv.weight"] == 0.05
    assert wd["model.blocks.0.attn.qkv.bias"] == 0.0 and wd["model.cls_token"] == 0.0


def test_a_wrapping_plugin_groups_its_backbone_and_trains_its_own_modules_at_lr():
    task, opt = _optimizer("model.name=vit_tiny_patch16_224", "model.kwargs={depth: 2}", "optim.layer_decay=0.5",
                           "model.plugins=[{name: glsim, top_o: 2}]")
    lr = _lr_of(task, opt)
    torch.testing.assert_close(lr["model.backbone.blocks.0.attn.qkv.weight"], 0.1 * 0.5 ** 2, atol=1e-12, rtol=0)
    assert lr["model.aggregator.0.attn.qkv.weight"] == pytest.approx(0.1)
    assert lr["model.head.weight"] == pytest.approx(0.1)


def test_every_trainable_parameter_is_in_exactly_one_group():
    task, opt = _optimizer("model.name=vit_tiny_patch16_224", "model.kwargs={depth: 2}", "optim.layer_decay=0.7")
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in task.parameters() if p.requires_grad)


def test_off_by_default_gives_the_same_groups_as_before():
    _, opt = _optimizer("model.name=vit_tiny_patch16_224", "model.kwargs={depth: 2}")
    assert len(opt.param_groups) == 2 and all("lr_scale" not in g for g in opt.param_groups)


def test_a_model_without_group_matcher_is_a_config_error():
    with pytest.raises(ConfigError, match="optim.layer_decay=0.5: model 'lrnet14' has no timm group_matcher"):
        _optimizer("model.name=lrnet14", "optim.layer_decay=0.5")


def test_layer_decay_out_of_range_names_the_key():
    with pytest.raises(ConfigError, match="optim.layer_decay"):
        load_config(overrides=["optim.layer_decay=1.5"]).validate()


def test_logged_lr_is_the_schedule_not_a_scaled_group(tiny_root, tmp_path):
    import json

    train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.layer_decay=0.5", "optim.sched=constant", "optim.epochs=1",
                             "data.test_split="))
    row = json.loads((tmp_path / "t" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["lr"] == pytest.approx(0.01)
