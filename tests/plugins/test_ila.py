"""ILA plug-in (arXiv 2409.11051): the conformance checklist of shared/specs/ila.md, item by item."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fgir.models import create_model
from fgir.models.plugins import apply_plugins
from fgir.models.plugins.ila import (
    ILAConfig,
    ILAdapter,
    apply_ila,
    ds_grid_size,
    ila_token_counts,
    mark_only_ila_trainable,
    rsds,
)


def tiny_vit(img=64, patch=8, dim=64, depth=4, classes=10, **kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img, patch_size=patch,
                             embed_dim=dim, depth=depth, num_heads=2, num_classes=classes, **kw)


def ila(model, **kw):
    return apply_plugins(model, [ILAConfig(**kw)])


def _zero_up(module):
    with torch.no_grad():
        for m in module.modules():
            if hasattr(m, "up"):
                m.up.weight.zero_()
                m.up.bias.zero_()


# ----------------------------------------------------------------------------- 1. parameter counts
def test_item01_plain_ila_has_13336_and_ds_ila_20248_parameters():
    plain = ILAdapter(768, 8, 3, padding=True, ds_conv=False)
    ds = ILAdapter(768, 8, 3, padding=False, ds_conv=True)
    assert sum(p.numel() for p in plain.parameters()) == 13_336
    assert sum(p.numel() for p in ds.parameters()) == 20_248


# ----------------------------------------------------------------------------- 2. shapes
@pytest.mark.parametrize("tokens_in,tokens_out", [(197, 145), (145, 101), (785, 677), (677, 577)])
def test_item02_ds_ila_shrinks_the_grid_by_two_per_side(tokens_in, tokens_out):
    ds = ILAdapter(768, 8, padding=False, ds_conv=True).eval()
    assert ds(torch.rand(2, tokens_in, 768)).shape == (2, tokens_out, 768)


def test_item02_plain_ila_keeps_197_tokens():
    plain = ILAdapter(768, 8, padding=True, ds_conv=False).eval()
    assert plain(torch.rand(2, 197, 768)).shape == (2, 197, 768)


# ----------------------------------------------------------------------------- 3-4. residual branch
def test_item03_ds_ila_cls_row_is_the_input_cls_with_zero_up_projection():
    torch.manual_seed(0)
    ds = ILAdapter(64, 4, padding=False, ds_conv=True).eval()
    _zero_up(ds)
    z = torch.randn(2, 1 + 8 * 8, 64)
    assert torch.equal(ds(z)[:, 0], z[:, 0])


def test_item03_ds_ila_cls_row_is_cls_plus_u_in_eval():
    torch.manual_seed(0)
    ds = ILAdapter(64, 4, padding=False, ds_conv=True).eval()
    z = torch.randn(2, 1 + 8 * 8, 64)
    zero = copy.deepcopy(ds)
    _zero_up(zero)
    # U_cls = output CLS - input CLS; it must not depend on the RSDS weights
    with torch.no_grad():
        ds2 = copy.deepcopy(ds)
        ds2.rsds.mul_(2.0)
    assert_close(ds(z)[:, 0], ds2(z)[:, 0], rtol=0, atol=0)
    assert not torch.equal(ds(z)[:, 0], z[:, 0])


def test_item04_plain_ila_with_zero_up_projection_is_identity():
    torch.manual_seed(0)
    plain = ILAdapter(64, 4, padding=True, ds_conv=False).eval()
    _zero_up(plain)
    z = torch.randn(2, 1 + 6 * 6, 64)
    assert torch.equal(plain(z), z)


def test_item04_ds_ila_with_zero_up_projection_is_rsds_on_the_grid():
    torch.manual_seed(0)
    ds = ILAdapter(64, 4, padding=False, ds_conv=True).eval()
    _zero_up(ds)
    z = torch.randn(2, 1 + 6 * 6, 64)
    grid = z[:, 1:].transpose(1, 2).reshape(2, 64, 6, 6)
    expect = F.conv2d(grid, ds.rsds, groups=64).flatten(2).transpose(1, 2)
    assert_close(ds(z)[:, 1:], expect, rtol=0, atol=0)


# ----------------------------------------------------------------------------- 5. RSDS init
def test_item05_rsds_is_near_ones_without_bias():
    torch.manual_seed(0)
    ds = ILAdapter(768, 8, padding=False, ds_conv=True)
    w = ds.rsds.detach()
    assert abs(w.mean().item() - 1.0) <= 1e-3
    assert abs(w.std().item() - 1e-3) <= 2e-4
    assert w.shape == (768, 1, 3, 3)
    assert not any("rsds" in n and n.endswith("bias") for n, _ in ds.named_parameters())


# ----------------------------------------------------------------------------- 6. refused combinations
@pytest.mark.parametrize("kw", [dict(cls_conv=False, padding=False, ds_conv=True),
                                dict(padding=False, ds_conv=False), dict(padding=True, ds_conv=True)])
def test_item06_silent_fallbacks_of_the_reference_raise(kw):
    with pytest.raises(ValueError, match="ILAdapter"):
        ILAdapter(64, 4, **kw)


# ----------------------------------------------------------------------------- 7. placement
def _placement(model):
    return ({int(k) for k, a in model.ila.items() if not a.downsample},
            {int(k) for k, a in model.ila.items() if a.downsample})


def test_item07_ila_plus_places_plain_and_ds_adapters_as_the_reference():
    with torch.device("meta"):
        m = ila(timm.create_model("vit_base_patch16_224", num_classes=200), variant="ila_plus")
    assert _placement(m) == ({0, 1, 2, 4, 5, 6, 8, 9, 10, 11}, {3, 7})


@pytest.mark.parametrize("variant", ["ds_only", "ila_pp"])
def test_item07_ds_only_and_ila_pp_place_ds_adapters_only(variant):
    with torch.device("meta"):
        m = ila(timm.create_model("vit_base_patch16_224", num_classes=200), variant=variant)
    assert _placement(m) == (set(), {3, 7})


# ----------------------------------------------------------------------------- 8. token counts
@pytest.mark.parametrize("img,expect", [(224, [197] * 4 + [145] * 4 + [101] * 4),
                                        (448, [785] * 4 + [677] * 4 + [577] * 4)])
def test_item08_tokens_seen_by_each_block(img, expect):
    # ViT-B/16 geometry (patch 16, 12 blocks) at a small width
    m = ila(tiny_vit(img=img, patch=16, dim=32, depth=12), variant="ila_plus").eval()
    seen = []
    for blk in m.blocks:
        blk.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        m(torch.rand(1, 3, img, img))
    assert seen == expect == ila_token_counts(img // 16, 12, [3, 7])


def test_ds_ila_on_a_too_small_grid_raises_a_clear_error():
    m = apply_plugins(create_model("vitfs_nano", num_classes=5), [ILAConfig(variant="ds_only", ds_locs=[3, 7])])
    with pytest.raises(ValueError, match="cannot down-sample a 2x2"):
        m.eval()(torch.rand(1, 3, 64, 64))


def test_ds_grid_size_refuses_a_grid_smaller_than_the_kernel():
    assert ds_grid_size(14) == 12
    with pytest.raises(ValueError, match="cannot down-sample a 2x2"):
        ds_grid_size(2)


# ----------------------------------------------------------------------------- 9. trainable census
@pytest.mark.parametrize("variant", ["ila_plus", "ila_pp"])
def test_item09_trainable_set_is_head_ila_inblock_and_cls_token(variant):
    m = mark_only_ila_trainable(ila(tiny_vit(), variant=variant, ds_locs=[1]))
    names = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    expect = {"head", "ila", "cls_token"} | ({"ila_inblock"} if variant == "ila_pp" else set())
    assert names == expect
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert {"pos_embed", "norm.weight", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= frozen


def test_item09_every_trainable_param_gets_a_gradient_and_no_frozen_one():
    m = mark_only_ila_trainable(ila(tiny_vit(), variant="ila_pp", ds_locs=[1]))
    m.train()
    F.cross_entropy(m(torch.rand(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3])).backward()
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_trainable_config_presets_match_mark_only_ila_trainable():
    from fgir.models.trainable import apply_trainable

    a = mark_only_ila_trainable(ila(tiny_vit(), variant="ila_plus", ds_locs=[1]))
    b = apply_trainable(ila(tiny_vit(), variant="ila_plus", ds_locs=[1]), ["plugins", "head", "cls_token"])
    assert [n for n, p in a.named_parameters() if p.requires_grad] == \
        [n for n, p in b.named_parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- 14. train-mode behaviour
def _step(m, lr=0.1):
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    torch.manual_seed(1)
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    m.train()
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    return x, y, loss.item()


def test_item14_backbone_dropout_is_active_in_train_mode():
    m = mark_only_ila_trainable(ila(tiny_vit(proj_drop_rate=0.1), variant="ila_plus", ds_locs=[1])).train()
    x = torch.rand(2, 3, 64, 64)
    assert not torch.equal(m(x), m(x))


def test_item14_adapter_bn_statistics_update_and_backbone_stays_bit_identical():
    m = mark_only_ila_trainable(ila(tiny_vit(proj_drop_rate=0.1), variant="ila_plus", ds_locs=[1]))
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    bn = m.ila["1"].norm1.running_mean.clone()
    _step(m)
    assert not torch.equal(bn, m.ila["1"].norm1.running_mean)
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


# ----------------------------------------------------------------------------- 15. ILA++ in-block adapters
def test_item15_ila_pp_with_zero_inblock_up_projections_equals_ds_only():
    pp = ila(tiny_vit(), variant="ila_pp", ds_locs=[1]).eval()
    ds = ila(tiny_vit(), variant="ds_only", ds_locs=[1]).eval()
    ds.load_state_dict({k: v for k, v in pp.state_dict().items() if not k.startswith("ila_inblock.")})
    _zero_up(pp.ila_inblock)
    x = torch.rand(2, 3, 64, 64)
    assert_close(pp(x), ds(x), rtol=0, atol=0)


def test_item15_inblock_adapter_reads_the_layer_normed_input_with_scale_one():
    m = ila(tiny_vit(depth=2), variant="ila_pp", ds_locs=[0]).eval()
    blk, seen = m.blocks[1], {}
    blk.norm1.register_forward_hook(lambda mod, a, out: seen.__setitem__("ln1", out))
    m.ila_inblock["1_attn"].register_forward_hook(lambda mod, a, out: seen.__setitem__("in", a[0]))
    with torch.no_grad():
        m(torch.rand(1, 3, 64, 64))
    assert torch.equal(seen["in"], seen["ln1"])


# ----------------------------------------------------------------------------- 16. save -> load
def test_item16_trainable_subset_save_load_restores_outputs(tmp_path):
    from safetensors.torch import load_file, save_file

    m = mark_only_ila_trainable(ila(tiny_vit(), variant="ila_pp", ds_locs=[1]))
    _step(m)
    m.eval()
    keep = {n for n, p in m.named_parameters() if p.requires_grad} | {n for n, _ in m.named_buffers()}
    save_file({k: v for k, v in m.state_dict().items() if k in keep}, str(tmp_path / "a.safetensors"))
    fresh = ila(tiny_vit(), variant="ila_pp", ds_locs=[1])  # backbone reloaded from its own (seeded) weights
    missing, unexpected = fresh.load_state_dict(load_file(str(tmp_path / "a.safetensors")), strict=False)
    assert not unexpected and all(k not in keep for k in missing)
    fresh.eval()
    x = torch.rand(2, 3, 64, 64)
    assert_close(fresh(x), m(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- 17. learning
def test_item17_one_sgd_step_lowers_the_loss_on_a_tiny_config():
    m = mark_only_ila_trainable(ila(tiny_vit(img=64, patch=8, dim=64, depth=4), variant="ila_plus", ds_locs=[1],
                                    bottleneck=4, dropout=0.0))
    x, y, before = _step(m, lr=0.05)
    m.train()
    with torch.no_grad():
        after = F.cross_entropy(m(x), y).item()
    assert after < before


# ----------------------------------------------------------------------------- plug-in mechanics
def test_ila_on_vitfs_keeps_registers_out_of_the_convolutions():
    torch.manual_seed(0)
    m = apply_plugins(create_model("vitfs_nano", num_classes=5), [ILAConfig(variant="ila_plus", ds_locs=[3, 7])])
    m.eval()
    seen = []
    m.blocks[4].register_forward_pre_hook(lambda mod, a: seen.append(a[0].shape[1]))
    with torch.no_grad():
        out = m(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert seen == [4 + 4 * 4]  # 4 registers + (6-2)^2 patches after one DS-ILA on a 6x6 grid
    assert m.ila["3"].n_prefix == 4


def test_ila_on_vitfs_with_zero_up_and_no_ds_is_the_backbone():
    torch.manual_seed(0)
    base = create_model("vitfs_nano", num_classes=5).eval()
    m = apply_ila(copy.deepcopy(base), ILAConfig(variant="ila_plus", ds_locs=[], zero_init_up=True)).eval()
    x = torch.rand(2, 3, 64, 64)
    assert_close(m(x), base(x), rtol=0, atol=0)


def test_zero_init_up_plain_ila_starts_equal_to_the_backbone():
    base = tiny_vit().eval()
    m = apply_ila(copy.deepcopy(base), ILAConfig(variant="ila_plus", ds_locs=[], zero_init_up=True)).eval()
    x = torch.rand(2, 3, 64, 64)
    assert_close(m(x), base(x), rtol=0, atol=0)


def test_applying_ila_twice_raises():
    m = ila(tiny_vit(), ds_locs=[1])
    with pytest.raises(ValueError, match="already applied"):
        ila(m, ds_locs=[1])


def test_ila_refuses_a_cnn():
    with pytest.raises(TypeError, match="timm-style ViT"):
        apply_ila(create_model("test_resnet", num_classes=3), ILAConfig())


def test_ila_refuses_out_of_range_locations():
    with pytest.raises(ValueError, match="out of range for a 4-block"):
        ila(tiny_vit(), ds_locs=[7])


def test_deepcopy_keeps_adapters_attached_to_the_copy():
    m = ila(tiny_vit(), variant="ila_plus", ds_locs=[1]).eval()
    c = copy.deepcopy(m)
    _zero_up(c.ila)
    with torch.no_grad():
        c.ila["1"].rsds.fill_(0.0)
    x = torch.rand(1, 3, 64, 64)
    assert not torch.equal(m(x), c(x))
    m2 = copy.deepcopy(c)
    assert_close(m2(x), c(x), rtol=0, atol=0)


def test_rsds_functional_core_matches_conv2d():
    g, w = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3)
    assert rsds(g, w).shape == (1, 4, 3, 3)


def test_config_validation_names_the_key():
    from fgir.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model.plugins\[0\].variant"):
        load_config(overrides=["model.plugins=[{name: ila, variant: ila_ppp}]"])


# ----------------------------------------------------------------------------- recipes
def test_ila_recipes_build_ila_pp_with_the_reference_trainable_set():
    from pathlib import Path

    from fgir.config import load_config
    from fgir.engine.build import build_model
    from fgir.models.trainable import parameter_census

    root = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "ila"
    files = sorted(root.glob("ila_*_224.yaml")) + sorted(root.glob("ila_*_448.yaml"))
    assert len(files) == 20
    cfg = load_config([str(root / "ila_cotton_224.yaml")], ["model.pretrained=false"])
    assert (cfg.optim.opt, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == ("momentum", 0.1, 8, 50)
    with torch.device("meta"):
        m = build_model(cfg, 80)
    assert parameter_census(m)["trainable"] == 354_800 + 769 * 80


# ----------------------------------------------------------------------------- timm's feature API after a DS-ILA
@pytest.mark.parametrize("backbone", ["vit", "vitfs"])
def test_forward_intermediates_nchw_uses_each_blocks_down_sampled_grid(backbone):
    # 64 px, patch 8: an 8x8 grid; the unpadded 3x3 DS-ILAs after blocks 1 and 2 give 6x6, then 4x4
    base = tiny_vit() if backbone == "vit" else create_model("vitfs_nano", num_classes=5, depth=4, img_size=64,
                                                             patch_size=8)
    m = ila(base, variant="ds_only", ds_locs=[1, 2]).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats, maps = m.forward_intermediates(x)
        _, tokens = m.forward_intermediates(x, output_fmt="NLC")
        ref = m.forward_features(x)
    assert [tuple(t.shape[-2:]) for t in maps] == [(8, 8), (6, 6), (4, 4), (4, 4)]
    assert_close(feats, ref, atol=0, rtol=0)
    for grid, seq in zip(maps, tokens):  # the same numbers, only laid out on the grid
        assert_close(grid.flatten(2).transpose(1, 2), seq, atol=0, rtol=0)


def test_forward_intermediates_survives_deepcopy_as_ema_does():
    m = ila(tiny_vit(), variant="ds_only", ds_locs=[1]).eval()
    twin = copy.deepcopy(m)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
        x = torch.rand(1, 3, 64, 64)
        assert_close(twin.forward_intermediates(x)[0], twin.forward_features(x), atol=0, rtol=0)
