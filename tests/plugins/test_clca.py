"""CLCA plug-in: Cross-Layer Cache, CLR token, CLA / IFA heads on ViT, DeiT-3 and ViTFS
(spec clca.md §3-4, §12, §17 items 1-11, 19-22, 27, 28)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from test_token_reduction import BACKBONES, counts, narrow, plug, tiny, tr
from torch.testing import assert_close

from fgir.config import load_config
from fgir.models.plugins.clca import clca_recovery, flush_sizes
from fgir.models.plugins.clca.heads import CLAHead, IFAHead, cla_param_count, ifa_param_count
from fgir.models.plugins.token_reduction import METHODS


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- items 1-2: recovery and flushes
def test_item1_recovery_blocks_and_flush_sizes():
    r = clca_recovery([3, 6, 9], 12)
    assert r == [3, 6, 9, 10]
    assert flush_sizes(r, 2) == [6, 6, 6, 2] and sum(flush_sizes(r, 2)) == 20


def test_item2_flush_sizes_with_one_carrier():
    assert flush_sizes(clca_recovery([3, 6, 9], 12), 1) == [3, 3, 3, 1]


@pytest.mark.parametrize("entry, flushes", [
    ("{name: clca, num_clr: 0}", [3, 3, 3, 1]),
    ("{name: clca, include_gap: false}", [3, 3, 3, 1]),
    ("{name: clca}", [6, 6, 6, 2]),
])
def test_item2_realised_flushes(entry, flushes):
    m = plug(narrow(64), entry)
    got = [a for a, _ in counts(m, 64)]
    assert [got[i + 1] - got[i] for i in (3, 6, 9, 10)] == flushes


# ----------------------------------------------------------------------------- items 3-4: CLR token
@pytest.mark.parametrize("backbone", ["vit", "deit3"])
def test_item3_clr_is_last_and_copies_cls(backbone):
    m = tiny(backbone)
    plug(m, "{name: clca, locations: [1, 2]}")
    assert counts(m, 64)[0][0] == 1 + 16 + 1
    assert_close(m.clr.detach(), m.cls_token.detach(), atol=0, rtol=0)


def test_item4_position_row_only_for_class_pos_backbones():
    vit = plug(tiny("vit"), "{name: clca, locations: [1, 2]}")
    assert vit.clr_pos.shape == (1, 1, 64) and vit.pos_embed.shape[1] == 1 + 16
    deit3 = plug(tiny("deit3"), "{name: clca, locations: [1, 2]}")
    assert deit3.clr_pos is None and deit3.pos_embed.shape[1] == 16


# ----------------------------------------------------------------------------- items 5-7: cache and taps
def test_item5_cache_entry_is_gap_and_last_token():
    m = plug(narrow(64), tr("evit", 0.5, "[3, 6, 9]"), "{name: clca}")
    m.token_path.record = True
    outs = {}
    m.blocks[0].register_forward_hook(lambda mod, i, o: outs.setdefault(0, o))
    counts(m, 64, batch=2)
    block, entry = m.token_path.last_cache[0]
    x0 = outs[0]
    n0 = x0.shape[1]
    assert block == 0 and entry.shape == (2, 2, 32)
    assert_close(entry[:, 0], x0[:, 1:n0 - 1].mean(1), atol=0, rtol=0)
    assert_close(entry[:, 1], x0[:, -1], atol=0, rtol=0)


def test_item6_clr_readout_is_positional_after_recovery():
    m = plug(narrow(64), tr("evit", 0.5, "[3, 6, 9]"), "{name: clca}")
    m.token_path.record = True
    counts(m, 64)
    log = dict(m.token_path.last_cache)
    assert_close(log[3][:, -1], log[2][:, -1], atol=0, rtol=0)


def test_item7_four_taps_feed_the_cla_head():
    m = plug(narrow(64), tr("evit", 0.5, "[3, 6, 9]"), "{name: clca}")
    counts(m, 64, batch=2)
    taps = m.token_path.last_taps
    assert m.token_path.taps == [3, 6, 9, 11] and torch.stack(taps, -1).shape == (2, 32, 4)


# ----------------------------------------------------------------------------- items 8-11: parameters
@pytest.mark.parametrize("k, expect", [(1110, 1_718_358), (80, 135_248), (200, 319_688)])
def test_item8_cla_parameters(k, expect):
    assert n_params(CLAHead(768, 4, 2, k)) == expect == cla_param_count(768, 4, 2, k) == 1537 * k + 12288


@pytest.mark.parametrize("name, delta", [("vit_base_patch16_224", 864_768), ("deit3_base_patch16_224", 864_000)])
def test_item9_parameter_delta(name, delta):
    base = timm.create_model(name, img_size=32, depth=5, num_classes=1110)  # G = 4 taps (blocks 1, 2, 3, 4)
    before = n_params(base)
    plug(base, "{name: clca}")
    assert n_params(base) - before == delta == 768 * 1110 + 12288 - (0 if "vit_" in name else 768)


def test_item10_clip_448_totals():
    m = timm.create_model("vit_base_patch16_clip_224", img_size=448, num_classes=1110)
    assert n_params(m) == 87_104_598
    plug(m, "{name: clca}")
    assert n_params(m) == 87_969_366  # the reference's 88,738,366 adds the stale Linear(768, 1000)


def test_item11_ifa_parameters():
    assert n_params(IFAHead(768, 4, 1110)) == ifa_param_count(768, 4, 1110) == 4 + 1 + 2 * 768 + 768 * 1110 + 1110


# ----------------------------------------------------------------------------- items 19-20
@pytest.mark.parametrize("backbone", BACKBONES)
def test_item19_everything_off_is_plain_forward(backbone):
    m = tiny(backbone)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        plug(m, "{name: clca, cache: false, num_clr: 0, head: linear, locations: [1, 2]}")
        assert_close(m(x), ref, atol=0, rtol=0)


def test_item20_clca_at_keep_rate_one_224():
    with pytest.warns(UserWarning, match="disabled"):
        m = plug(narrow(224), tr("evit", 1.0, "[3, 6, 9]"), "{name: clca}")
    assert [a for a, _ in counts(m, 224)] == [198] * 4 + [204] * 3 + [210] * 3 + [216, 218]


# ----------------------------------------------------------------------------- every method x backbone
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", [None, *METHODS])
def test_clca_with_each_method_trains(method, backbone):
    torch.manual_seed(0)
    entries = ([tr(method, 0.5)] if method else []) + ["{name: clca, locations: [1, 2]}"]
    m = plug(tiny(backbone), *entries).train()
    out = m(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(-1).sum().backward()
    assert m.clr.grad is not None and m.head.pw.weight.grad is not None


@pytest.mark.parametrize("head", ["ifa", "linear"])
def test_other_heads(head):
    m = plug(tiny("vit"), tr("evit", 0.5), f"{{name: clca, head: {head}}}")
    assert m(torch.rand(2, 3, 64, 64)).shape == (2, 5)


def test_reset_classifier_rebuilds_cla_head():
    m = plug(tiny("vit"), "{name: clca, locations: [1, 2]}")
    m.reset_classifier(7)
    assert isinstance(m.head, CLAHead) and m(torch.rand(2, 3, 64, 64)).shape == (2, 7)


def test_applying_twice_raises():
    m = plug(tiny("vit"), "{name: clca, locations: [1, 2]}")
    with pytest.raises(ValueError, match="already applied"):
        plug(m, "{name: clca, locations: [1, 2]}")


def test_mismatched_locations_raise():
    m = plug(tiny("vit"), tr("evit", 0.5, "[1, 2]"))
    with pytest.raises(ValueError, match="differ"):
        plug(m, "{name: clca, locations: [0, 1]}")


def test_fixed_mode_protects_clr_lineage():
    m = plug(narrow(64), tr("evit", 0.1, "[3, 6, 9]"), "{name: clca, mode: fixed}")
    got = [a for a, _ in counts(m, 64)]
    # the CLR and the cache are kept out of the top-k, so every flush survives the next reduction
    assert m.token_path.protect_suffix and got[4] == 1 + math.ceil(0.1 * 16) + 1 + 1 + 6


# ----------------------------------------------------------------------------- items 21-22: MACs
def test_item21_plain_clip_224_macs_exact():
    from fgir.benchmarks.flops import count_macs

    m = timm.create_model("vit_base_patch16_clip_224", num_classes=1110)
    assert count_macs(m, 224) == 17_569_661_952


def test_item22_evit_clca_224_macs_match_reference():
    from fgir.benchmarks.flops import count_macs

    m = plug(timm.create_model("vit_base_patch16_clip_224", num_classes=1110), tr("evit", 0.1, "[3, 6, 9]"),
             "{name: clca}")
    assert abs(count_macs(m, 224) / 1e9 - 5.964) < 0.005


# ----------------------------------------------------------------------------- items 27-28: recipe
def _groups(model):
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    return {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}, opt


def test_item27_no_decay_for_tokens_in_tr_models():
    m = plug(tiny("vit"), tr("evit", 0.5), "{name: clca}")
    wd, opt = _groups(m)
    assert wd[id(m.clr)] == wd[id(m.clr_pos)] == wd[id(m.pos_embed)] == wd[id(m.cls_token)] == 0
    assert wd[id(m.blocks[0].attn.qkv.weight)] == 0.05
    assert {g["lr"] for g in opt.param_groups} == {1e-4}


def test_item27_faithful_no_tr_model_decays_clr():
    m = plug(tiny("vit"), "{name: clca, locations: [1, 2]}")
    assert _groups(m)[0][id(m.clr)] == 0.05
    m = plug(tiny("vit"), "{name: clca, locations: [1, 2], mode: fixed}")
    assert _groups(m)[0][id(m.clr)] == 0


def test_item28_per_epoch_cosine_with_cooldown():
    from fgir.engine.train import build_scheduler

    cfg = load_config(overrides=["optim.lr=1e-4", "optim.min_lr=1e-5", "optim.warmup_lr=1e-6", "optim.epochs=50",
                                 "optim.warmup_epochs=2", "optim.cooldown_epochs=5", "optim.sched_unit=epoch"])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = build_scheduler(cfg, opt, steps_per_epoch=3)
    lrs, step = [], 0
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        for _ in range(3):
            step += 1
            sched.step_update(step)
    expect = [1e-6, 5.05e-5] + [1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi * e / 45)) for e in range(2, 45)] + [1e-5] * 5
    assert_close(torch.tensor(lrs, dtype=torch.float64), torch.tensor(expect, dtype=torch.float64), atol=1e-12, rtol=0)
    assert round(lrs[2], 7) == 9.96e-5 and round(lrs[10], 7) == 8.95e-5 and round(lrs[44], 7) == 1.01e-5


# ----------------------------------------------------------------------------- items 26, 31, 32
def test_item26_dynamicvit_train_mode_saves_no_macs():
    from torchprofile import profile_macs

    plain = tiny("vit")
    m = plug(tiny("vit"), tr("dynamicvit", 0.25))
    m.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        train_macs = profile_macs(m.train(), x)
        eval_macs = profile_macs(m.eval(), x)
        plain_macs = profile_macs(plain.eval(), x)
    assert train_macs >= plain_macs > eval_macs


@pytest.mark.parametrize("size, stored", [(224, 256), (448, 512)])
def test_item31_recipe_resize_and_normalisation(size, stored):
    from pathlib import Path

    from fgir.data.transforms import stored_size

    root = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "clca"
    cfg = load_config([str(root / f"cotton_evit_clca_{size}.yaml")])
    assert stored_size(cfg.data.img_size, cfg.data.resize_ratio) == stored and cfg.data.img_size == size
    assert (cfg.data.mean, cfg.data.std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    o = cfg.optim
    assert (o.opt, o.lr, o.weight_decay, o.batch_size) == ("adamw", 1e-4, 0.05, 32)
    assert (o.epochs, o.cooldown_epochs, o.sched_unit) == (50, 5, "epoch")


@pytest.mark.parametrize("name, k, train_val, test, train, val", [
    ("cotton", 80, 240, 240, 160, 80), ("soylocal", 200, 600, 600, 400, 200),
    ("soygene", 1110, 12763, 11143, 9562, 3201), ("soyageing", 198, 4950, 4950, 3960, 990),
    ("soyglobal", 1938, 5814, 5814, 3876, 1938)])
def test_item32_ufgir_catalog_counts(name, k, train_val, test, train, val):
    from fgir.data.catalog import get_spec

    s = get_spec(name)
    assert s.num_classes == k
    c = s.counts
    assert (c["train_val"], c["test"], c["train"], c["val"]) == (train_val, test, train, val)
