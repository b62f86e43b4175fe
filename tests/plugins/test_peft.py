"""PEFT baselines of ILA (VPT-S/D, ConvPass, ADPT, LoRA) and the parameter counts / TTP of ila.md."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fgir.benchmarks.cost import (
    PAPER_EFFECTIVE_CLASSES,
    UFGIR5_CLASSES,
    total_trainable_params,
    ttp_census,
    ttp_paper_convention,
)
from fgir.config import PluginConfig
from fgir.models import create_model
from fgir.models.plugins import apply_plugins
from fgir.models.trainable import apply_trainable
from fgir.registry import PLUGINS

PEFT = {  # name -> config overrides for tiny models
    "adapter": {}, "convpass": {}, "vpt": {"num_prompts": 3}, "vpt_deep": {"num_prompts": 3, "deep": True},
    "lora": {}, "ila": {"ds_locs": [1]},
}


def entry(name: str, **kw) -> PluginConfig:
    base = "vpt" if name == "vpt_deep" else name
    return PLUGINS.meta(base)["config"](**{**PEFT.get(name, {}), **kw})


def tiny_vit(classes=5, **kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, embed_dim=64,
                             depth=3, num_heads=2, num_classes=classes, **kw)


def tiny_vitfs(classes=5):
    torch.manual_seed(0)
    return create_model("vitfs_nano", num_classes=classes)


BACKBONES = {"vit": (tiny_vit, 64), "vitfs": (tiny_vitfs, 96)}


def prefix_param(model):
    return "cls_token" if "cls_token" in dict(model.named_parameters()) else "reg_token"


def vitb(plugins=()):
    with torch.device("meta"):
        return apply_plugins(timm.create_model("vit_base_patch16_224", num_classes=200), list(plugins))


# ----------------------------------------------------------------------------- checklist 10, 11, 13
NON_HEAD = [("linear", [], 768), ("ds_only", [entry("ila", variant="ds_only", ds_locs=[3, 7])], 41_264),
            ("ila_plus", [entry("ila", variant="ila_plus", ds_locs=[3, 7])], 174_624),
            ("ila_pp", [entry("ila", variant="ila_pp", ds_locs=[3, 7])], 354_800),
            ("adpt", [entry("adapter")], 314_304), ("convpass", [entry("convpass")], 328_320),
            ("vpt_shallow", [entry("vpt", num_prompts=100)], 77_568),
            ("vpt_deep", [entry("vpt", num_prompts=100, deep=True)], 922_368)]


@pytest.mark.parametrize("name,plugins,expect", NON_HEAD, ids=[n for n, _, _ in NON_HEAD])
def test_item10_non_head_trainable_per_task_on_vit_b16(name, plugins, expect):
    m = vitb(plugins)
    apply_trainable(m, (["plugins"] if plugins else []) + ["cls_token", "head"])
    assert ttp_census(m, 200)["non_head_trainable"] == expect


@pytest.mark.parametrize("name,plugins,expect", [("vit", [], 85_952_456),
                                                  ("ila_plus", [entry("ila", variant="ila_plus", ds_locs=[3, 7])],
                                                   86_126_312),
                                                  ("ila_pp", [entry("ila", variant="ila_pp", ds_locs=[3, 7])],
                                                   86_306_488)])
def test_item11_total_parameters_with_200_classes_at_224(name, plugins, expect):
    assert sum(p.numel() for p in vitb(plugins).parameters()) == expect


def test_item13_ttp_helper_for_ila_pp():
    assert total_trainable_params(354_800, 769, UFGIR5_CLASSES) == 4_485_494
    assert ttp_paper_convention(354_800, 769) == 3_509_633
    assert sum(UFGIR5_CLASSES) == 3_526 and PAPER_EFFECTIVE_CLASSES == 2_257


def test_lora_rank8_qv_count_on_vit_b16():
    m = vitb([entry("lora")])
    assert sum(p.numel() for p in m.lora.parameters()) == 12 * 2 * (8 * 768 + 768 * 8)


# ----------------------------------------------------------------------------- every plug-in x backbone
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("name", list(PEFT))
def test_plugin_runs_and_only_its_parameters_get_gradients(name, backbone):
    make, size = BACKBONES[backbone]
    m = apply_plugins(make(), [entry(name)])
    apply_trainable(m, ["plugins", "head", prefix_param(m)])
    m.train()
    out = m(torch.rand(2, 3, size, size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n


@pytest.mark.parametrize("name", list(PEFT))
def test_frozen_backbone_is_bit_identical_after_optimizer_steps(name):
    m = apply_plugins(tiny_vit(), [entry(name)])
    apply_trainable(m, ["plugins", "head", "cls_token"])
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-4)
    m.train()
    for _ in range(2):
        F.cross_entropy(m(torch.rand(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
        opt.step()
        opt.zero_grad()
    assert frozen and all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)


@pytest.mark.parametrize("name", list(PEFT))
def test_applying_twice_raises(name):
    m = apply_plugins(tiny_vit(), [entry(name)])
    with pytest.raises(ValueError, match="already applied"):
        apply_plugins(m, [entry(name)])


@pytest.mark.parametrize("name", ["adapter", "convpass", "lora", "vpt"])
def test_plugins_refuse_a_cnn(name):
    with pytest.raises(TypeError, match="timm-style ViT"):
        apply_plugins(create_model("test_resnet", num_classes=3), [entry(name)])


# ----------------------------------------------------------------------------- init equality
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("name,kw", [("adapter", {"zero_init_up": True}), ("convpass", {"zero_init_up": True}),
                                     ("lora", {})])
def test_zero_initialised_plugin_starts_equal_to_the_backbone(name, kw, backbone):
    make, size = BACKBONES[backbone]
    base = make().eval()
    m = apply_plugins(copy.deepcopy(base), [entry(name, **kw)]).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert_close(m(x), base(x), rtol=0, atol=0)


def test_adapter_reads_the_layer_normed_input():
    m = apply_plugins(tiny_vit(), [entry("adapter")]).eval()
    seen = {}
    m.blocks[1].norm2.register_forward_hook(lambda mod, a, out: seen.__setitem__("ln2", out))
    m.adapter["1_mlp"].register_forward_hook(lambda mod, a, out: seen.__setitem__("in", a[0]))
    with torch.no_grad():
        m(torch.rand(1, 3, 64, 64))
    assert torch.equal(seen["in"], seen["ln2"])


# ----------------------------------------------------------------------------- VPT
def test_vpt_blocks_see_prompts_and_features_keep_the_backbone_layout():
    m = apply_plugins(tiny_vit(), [entry("vpt", num_prompts=7)]).eval()
    seen = []
    m.blocks[0].register_forward_pre_hook(lambda mod, a: seen.append(a[0].shape[1]))
    with torch.no_grad():
        feats = m.forward_features(torch.rand(1, 3, 64, 64))
    assert seen == [1 + 7 + 64] and feats.shape == (1, 1 + 64, 64)


def test_vpt_deep_replaces_the_previous_prompts_with_its_own():
    m = apply_plugins(tiny_vit(), [entry("vpt", num_prompts=4, deep=True)]).eval()
    seen = {}
    m.blocks[2].register_forward_pre_hook(lambda mod, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        m(torch.rand(2, 3, 64, 64))
    assert seen["x"].shape[1] == 1 + 4 + 64
    assert torch.equal(seen["x"][1, 1:5], m.vpt.prompts[2])


def test_vpt_prompt_init_range():
    m = apply_plugins(tiny_vit(), [entry("vpt", num_prompts=50)])
    v = (6.0 / (3 * 8 * 8 + 64)) ** 0.5
    assert m.vpt.prompts.abs().max() <= v


# ----------------------------------------------------------------------------- LoRA
def test_lora_merge_equals_the_hooked_model():
    from fgir.models.plugins.lora import merge_lora

    m = apply_plugins(tiny_vit(), [entry("lora", targets=["q", "v", "fc1"])]).eval()
    with torch.no_grad():
        for u in m.lora.values():
            u.B.normal_()
    merged = tiny_vit().eval()
    merged.load_state_dict(merge_lora(m))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(m(x), merged(x), rtol=1e-5, atol=1e-5)


def test_lora_only_changes_the_q_and_v_slices():
    m = apply_plugins(tiny_vit(), [entry("lora")]).eval()
    with torch.no_grad():
        for u in m.lora.values():
            u.B.normal_()
    qkv, out = m.blocks[0].attn.qkv, {}
    qkv.register_forward_hook(lambda mod, a, o: out.__setitem__("o", (a[0], o)))
    with torch.no_grad():
        m(torch.rand(1, 3, 64, 64))
    x, o = out["o"]
    plain = F.linear(x, qkv.weight, qkv.bias)
    assert torch.equal(o[..., 64:128], plain[..., 64:128])
    assert not torch.equal(o[..., :64], plain[..., :64]) and not torch.equal(o[..., 128:], plain[..., 128:])


def test_mark_only_helpers_select_plugin_head_and_prefix_tokens():
    from fgir.models.plugins.adapters import mark_only_adapter_trainable
    from fgir.models.plugins.lora import apply_lora, mark_only_lora_trainable
    from fgir.models.plugins.vpt import apply_vpt, mark_only_vpt_trainable

    for apply, mark, attr in ((apply_lora, mark_only_lora_trainable, "lora"),
                              (apply_vpt, mark_only_vpt_trainable, "vpt")):
        m = mark(apply(tiny_vit()))
        assert {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad} == {attr, "head", "cls_token"}
    from fgir.models.plugins.adapters import apply_adapter

    m = mark_only_adapter_trainable(apply_adapter(tiny_vit()), include_head=False, include_prefix_tokens=False)
    assert {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad} == {"adapter"}


# ----------------------------------------------------------------------------- fgir cost prints TTP
def test_fgir_cost_prints_the_ttp_census(capsys):
    from fgir.cli.main import main

    assert main(["cost", "test_vit", "--img-size", "64", "--plugins", "[{name: ila, variant: ila_pp, ds_locs: [1]}]",
                 "--trainable", "plugins", "head", "cls_token"]) == 0
    out = capsys.readouterr().out
    m = apply_plugins(create_model("test_vit", num_classes=200), [entry("ila", variant="ila_pp", ds_locs=[1])])
    apply_trainable(m, ["plugins", "cls_token"])
    non_head = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert f"trainable non-head {non_head:,} + head 65/class" in out
    assert f"TTP over the 5 UFGIR tasks (3,526 classes) {5 * non_head + 65 * 3526:,}" in out
    assert f"(C_eff 2,257) {5 * non_head + 65 * 2257:,}" in out
