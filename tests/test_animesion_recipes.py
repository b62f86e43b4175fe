"""The Animesion recipes (spec animesion.md §4.3, checklist 16) and the warm-up-then-cosine schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fgir.config import load_config
from fgir.data.transforms import eval_resize_ratio, stored_size
from fgir.engine.train import build_scheduler

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "animesion"


def test_default_daf_recipe_matches_checklist_16():
    cfg = load_config([str(RECIPES / "daf_vit_b16_128.yaml")])
    o, d = cfg.optim, cfg.data
    assert (o.opt, o.momentum, o.lr, o.weight_decay, o.epochs, o.batch_size) == ("momentum", 0.9, 1e-3, 0.0, 50, 64)
    assert (o.sched, o.sched_unit, o.warmup_steps, o.warmup_lr, o.warmup_prefix, o.min_lr, o.label_smoothing) == \
        ("cosine", "step", 1000, 0.0, True, 0.0, 0.0)
    assert (d.name, d.img_size, stored_size(d.img_size, d.resize_ratio), d.train_crop, d.hflip) == \
        ("daf", 128, 160, "random", True)
    assert d.color_jitter == [0.1] * 4 and d.mean == [0.5] * 3 and d.std == [0.5] * 3
    assert cfg.model.name == "vit_base_patch16_224.orig_in21k" and cfg.model.pretrained


@pytest.mark.parametrize("recipe,model,batch,plugins", [
    ("daf_vit_b16_128_ifa", "vit_base_patch16_224.orig_in21k", 64, ["ifa"]),
    ("daf_vit_l16_ifa_128", "vit_large_patch16_224.orig_in21k", 16, ["ifa"]),
])
def test_ifa_recipes(recipe, model, batch, plugins):
    cfg = load_config([str(RECIPES / f"{recipe}.yaml")])
    assert (cfg.model.name, cfg.optim.batch_size, [p.name for p in cfg.model.plugins]) == (model, batch, plugins)


def test_vit_recipe_builds_with_dropout_jax_init_and_ifa():
    from fgir.engine.build import build_model
    from fgir.models.plugins.clca.heads import IFAHead

    cfg = load_config([str(RECIPES / "daf_vit_b16_128_ifa.yaml")], ["model.pretrained=false", "model.kwargs.depth=2"])
    m = build_model(cfg, 7)
    assert isinstance(m.head, IFAHead) and m.head.taps == 2 and m.blocks[0].attn.proj_drop.p == 0.1
    assert m.patch_embed.proj.weight.shape[-1] == 16 and m.pos_embed.shape[1] == 65  # /16 at 128 px + CLS


def test_moe_transfer_starts_from_a_daf_run():
    cfg = load_config([str(RECIPES / "moe_transfer.yaml")])
    assert cfg.data.name == "moeimouto" and cfg.model.checkpoint and not cfg.model.pretrained


def test_warmup_then_cosine_to_zero_over_the_remaining_steps():
    cfg = load_config([str(RECIPES / "daf_vit_b16_128.yaml")], ["optim.epochs=2"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = build_scheduler(cfg, opt, steps_per_epoch=1500)  # 3,000 steps: 1,000 warm-up + 2,000 cosine

    def lr(t):
        sched.step_update(t)
        return opt.param_groups[0]["lr"]

    assert [lr(0), lr(500), lr(1000)] == pytest.approx([0.0, 5e-4, 1e-3], abs=1e-12)
    assert lr(2000) == pytest.approx(5e-4, abs=1e-12)  # the midpoint of the cosine
    assert lr(3000) == pytest.approx(0.0, abs=1e-12)


def test_ifa_run_with_the_recipe_schedule_and_jitter_then_transfer_to_new_classes(tiny_root, tmp_path):
    from conftest import tiny_cfg

    from fgir.engine.build import build_model
    from fgir.engine.train import train

    cfg = tiny_cfg(tiny_root, tmp_path, "model.name=vit_tiny_patch16_224", "model.kwargs={depth: 2}",
                   "model.plugins=[{name: ifa}]", "data.color_jitter=[0.1,0.1,0.1,0.1]", "data.resize_ratio=1.25",
                   "optim.opt=momentum", "optim.warmup_steps=2", "optim.warmup_lr=0", "optim.warmup_prefix=true",
                   "optim.min_lr=0", "optim.epochs=1", "data.test_split=")
    out = train(cfg)
    saved = (Path(out["run_dir"]) / "config.yaml").read_text()
    assert "color_jitter:\n  - 0.1" in saved and "warmup_prefix: true" in saved
    # moe_transfer: the same model from that run with another class count keeps the backbone, new head
    new = load_config(overrides=[f"model.checkpoint={out['run_dir']}", "model.name=vit_tiny_patch16_224",
                                 "model.kwargs={depth: 2}", "model.plugins=[{name: ifa}]", "data.img_size=32"])
    src = build_model(cfg, 3)
    from fgir.engine.checkpoint import init_from_checkpoint

    init_from_checkpoint(src, out["run_dir"], 3)
    dst = build_model(new, 5)
    assert dst.head.fc.out_features == 5
    torch.testing.assert_close(dst.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight, rtol=0, atol=0)


def test_daf_recipe_evaluates_on_a_straight_resize():
    d = load_config([str(RECIPES / "daf_vit_b16_128.yaml")]).data
    assert stored_size(d.img_size, eval_resize_ratio(d)) == 128


@pytest.mark.parametrize("data,expected", [
    ({"resize_ratio": 1.25}, 1.25),                              # configs written before the key existed
    ({"resize_ratio": 1.25, "eval_resize_ratio": 0.0}, 1.25),
    ({"resize_ratio": 1.25, "eval_resize_ratio": 1.0}, 1.0),
])
def test_eval_resize_ratio_falls_back_to_the_training_resize(data, expected):
    assert eval_resize_ratio(data) == expected


def test_eval_loader_and_predictor_use_the_eval_resize(tiny_root, tmp_path):
    from conftest import tiny_cfg

    from fgir.data.datasets import ManifestDataset
    from fgir.engine.distributed import DistInfo
    from fgir.engine.train import make_loader
    from fgir.serve.predict import Predictor

    cfg = tiny_cfg(tiny_root, tmp_path, "data.resize_ratio=1.5", "data.eval_resize_ratio=1.0")
    ds = ManifestDataset.from_config(cfg.data, cfg.data.val_split)
    info = DistInfo()
    train_array = make_loader(cfg, ds, True, (0.5,) * 3, (0.5,) * 3, info).array
    eval_array = make_loader(cfg, ds, False, (0.5,) * 3, (0.5,) * 3, info).array
    assert train_array.shape[1] == int(1.5 * cfg.data.img_size) and eval_array.shape[1] == cfg.data.img_size
    meta = {"class_names": ["a"], "img_size": cfg.data.img_size, "mean": [0.5] * 3, "std": [0.5] * 3,
            "config": {"model": {}, "data": {"resize_ratio": 1.5, "eval_resize_ratio": 1.0}}}
    assert Predictor(torch.nn.Identity(), meta).stored == cfg.data.img_size


def test_eval_resize_ratio_below_one_is_a_config_error():
    from fgir.config import ConfigError

    with pytest.raises(ConfigError, match="data.eval_resize_ratio"):
        load_config(overrides=["data.eval_resize_ratio=0.5"])
