"""CLCA plug-in: Cross-Layer Cache, CLR token, CLA / IFA heads on ViT, DeiT-3 and ViTFS
(spec clca.md §3-4, §12, §17 items 1-11, 19-22, 27, 28)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from test_token_reduction import BACKBONES, counts, narrow, plug, tiny, tr
from torch.testing import assert_close

from fgir.config import ConfigError, load_config
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


# ----------------------------------------------------------------------------- clr_readout (spec §15 item 5)
# Tracked follows the original CLR token (index P + 1 = 17 at the start: 16 patches after the CLS); re-injected
# cache tokens never become the CLR, and a recovery (appended at the end) does not move the index. So the two
# read-outs agree before the first non-empty recovery (unless a reduction at block 0 moved the CLR) and differ
# after it, with or without reduction. The per-method cases below reduce at blocks 0 and 2 of a tiny ViT
# (16 patches, D = 64, 2 heads) with the CLR reducible, and read block 0's push (the flush there is empty).
_D = 64
_V = torch.tensor([1.0, -1.0] * 32) / 8              # centred unit vector, half its norm in each head
_W = torch.tensor([1.0, 1.0, -1.0, -1.0] * 16) / 8   # centred unit vector, orthogonal to _V in each head


def _tracked_model(method: str, img: int = 64, readout: str = "tracked", clca: str = "", depth: int = 4):
    """Reduction at [0, 2], CLR reducible, weights set so each method's decision about the CLR is known.

    The CLR is 10 V + 3 W (LayerNorm: alignment 80 / sqrt(109) = 7.66 with V). The patch embedding
    maps channel 0's mean to 100 V (a lit patch aligns 8 with V; a dark one is its position row,
    alignment ~ N(0, 1)). Block 0's queries are 20 V and its keys the normalised tokens, so the CLS
    attends most to lit patches, then the CLR, then dark patches (EViT, Top-K, ATS), and the ToMe
    metric pairs the CLR with a lit patch (cosine 0.96). DynamicViT's keep score, SiT's first slim
    token and PatchMerger's first query rise with the same alignment. For DPC-KNN the CLR is a far,
    sparse point: the second cluster centre.
    """
    torch.manual_seed(0)
    m = plug(tiny("vit", img, depth=depth), tr(method, 0.5, "[0, 2]"),
             f"{{name: clca, clr_readout: {readout}, protect_cache: 'off'{clca}}}")
    red = m.token_path.reducer
    with torch.no_grad():
        m.clr.copy_((10 * _V + 3 * _W).view(1, 1, _D))
        m.clr_pos.zero_()
        pe = m.patch_embed.proj
        pe.weight.zero_()
        pe.weight[:, 0] = _V.view(_D, 1, 1) * 100 / 256
        pe.bias.zero_()
        qkv = m.blocks[0].attn.qkv
        qkv.weight[:2 * _D] = torch.cat([torch.zeros(_D, _D), torch.eye(_D)])
        qkv.bias[:2 * _D] = torch.cat([20 * _V, torch.zeros(_D)])
        if method == "dynamicvit":
            p = red.predictors[0]
            lins = (p.in_conv[1], p.out_conv[0], p.out_conv[2], p.out_conv[4])
            for lin in lins:
                lin.weight.zero_()
                lin.bias.zero_()
            p.in_conv[1].weight[0] = _V / 2      # local feature 0 = GELU(alignment / 2) -> keep logit
            for lin in lins[1:]:
                lin.weight[0, 0] = 1
        elif method == "sit":
            slim = red.slims[0].mlp
            for lin in (slim[1], slim[3]):
                lin.weight.zero_()
                lin.bias.zero_()
            slim[1].weight[0] = 5 * _V           # slim token 0 pools by GELU(5 * alignment), the others uniformly
            slim[3].weight[0, 0] = 1
        elif method == "patchmerger":
            red.queries[0].zero_()
            red.queries[0][0] = 20 * _V
    return m


def _images(*lit, img: int = 64) -> torch.Tensor:
    """One image per entry: channel 0 is 1 on the listed patches (``"all"``: every patch), 0 elsewhere."""
    g = img // 16
    out = torch.zeros(len(lit), 3, img, img)
    for b, patches in enumerate(lit):
        for j in range(g * g) if patches == "all" else patches:
            r, c = divmod(j, g)
            out[b, 0, 16 * r:16 * r + 16, 16 * c:16 * c + 16] = 1
    return out


def _block0_push(m, x):
    """One forward: (the sequence after block 0, the tracked index and the CLR carrier of block 0's push)."""
    seen = {}
    hook = m.blocks[1].norm1.register_forward_pre_hook(lambda mod, a: seen.setdefault("x", a[0]))
    m.token_path.record = True
    try:
        torch.manual_seed(1)  # DPC-KNN's density noise
        m(x)
    finally:
        hook.remove()
    path = m.token_path
    (block, idx), (cblock, carriers) = path.last_clr_index[0], path.last_cache[0]
    assert block == cblock == 0
    return seen["x"], idx, carriers[:, -1]


def _read(x1: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The token each sample's tracked index points at (the last token where it is -1)."""
    i = torch.where(idx[:, 0] >= 0, idx[:, 0], x1.shape[1] - 1)
    return x1[torch.arange(x1.shape[0]), i]


MOVES = {  # method -> (image size, lit patches per sample, tracked index per sample after block 0)
    "evit": (64, [[]], [1]),          # the CLR has the top CLS attention: first of the kept tokens
    "topk": (64, [[]], [1]),
    "tome": (48, [[0]], [1]),         # 9 patches: the CLR (index 10) is in set A and merges into lit patch 0 (B0)
    "ats": (64, [[], "all"], [2, -1]),  # sampled: [CLS, one patch, CLR, 6 paddings]; not sampled next to lit patches
    "dynamicvit": (64, [[]], [1]),    # the top keep score
    "sit": (64, [[]], [1]),           # slim token 0
    "patchmerger": (64, [[]], [1]),   # query 0
    "dpcknn": (64, [[]], [2]),        # cluster 1: its own (the densest dark patch is centre 0)
}


@pytest.mark.parametrize("method", METHODS)
def test_tracked_clr_moves_and_its_token_is_cached(method):
    img, lit, expect = MOVES[method]
    m = _tracked_model(method, img)
    with torch.no_grad():
        x1, idx, carrier = _block0_push(m, _images(*lit, img=img))
    assert idx[:, 0].tolist() == expect
    kept = idx[:, 0] >= 0
    assert (idx[kept, 0] < x1.shape[1] - 1).all()  # not the last token: the positional read-out differs
    assert_close(carrier, _read(x1, idx), atol=0, rtol=0)
    assert not torch.equal(carrier[kept], x1[kept, -1])


@pytest.mark.parametrize("method, lit, expect", [
    ("evit", [[], [0, 5, 9]], [1, 4]),        # three lit patches outrank the CLR in the second image
    ("topk", [[], [0, 5, 9]], [1, 4]),
    ("dynamicvit", [[], [0, 5, 9]], [1, 4]),
    ("ats", [[], "all"], [2, -1]),
])
def test_tracked_clr_differs_per_sample(method, lit, expect):
    m = _tracked_model(method)
    with torch.no_grad():
        x1, idx, carrier = _block0_push(m, _images(*lit))
    assert idx[:, 0].tolist() == expect
    assert_close(carrier, _read(x1, idx), atol=0, rtol=0)


def test_tracked_clr_follows_tome_merge_per_sample():
    m = _tracked_model("tome", 48)
    with torch.no_grad():
        x1, idx, carrier = _block0_push(m, _images([0], [2], img=48))  # lit B0 / B1: the CLR merges into it
    assert idx[:, 0].tolist() == [1, 2]
    assert_close(carrier, _read(x1, idx), atol=0, rtol=0)


@pytest.mark.parametrize("method", ["topk", "dynamicvit"])
def test_dropped_clr_falls_back_to_the_positional_token_for_the_rest_of_the_forward(method):
    m = _tracked_model(method, depth=6)  # pushes after blocks 0-3, a non-empty flush at block 2
    with torch.no_grad():
        _, pushes = _pushes(m, _images("all"))  # 16 lit patches outrank the CLR: not kept at block 0
    assert [pushes[b][1][:, 0].tolist() for b in range(4)] == [[-1]] * 4  # a recovery does not bring it back
    for b in (0, 2, 3):
        xb, _, carrier = pushes[b]
        assert_close(carrier[:, -1], xb[:, -1], atol=0, rtol=0)


@pytest.mark.parametrize("sign, expect", [(1, 17), (-1, -1)])
def test_dynamicvit_training_keeps_the_clr_in_place_or_drops_it_when_masked(sign, expect):
    m = _tracked_model("dynamicvit").train()
    with torch.no_grad():
        m.token_path.reducer.predictors[0].out_conv[4].weight[0, 0] = 20 * sign  # CLR keep logit +-77: no Gumbel flip
        x1, idx, carrier = _block0_push(m, _images([], []))
    assert x1.shape[1] == 18 and idx[:, 0].tolist() == [expect] * 2  # masks only: the CLR stays last
    assert_close(carrier, x1[:, -1], atol=0, rtol=0)


def _pair(entries: list[str], x: torch.Tensor, train: bool = False):
    """Logits, cache pushes and token counts of the same weights with the positional and the tracked
    read-out, on a 6-block tiny ViT (groups [0, 2]: recoveries at blocks 0 (empty), 2 and 4, so pushes
    after blocks 0-3 read before and after a non-empty flush)."""
    out = []
    for readout in ("positional", "tracked"):
        torch.manual_seed(0)
        *rest, last = entries
        m = plug(tiny("vit", depth=6), *rest, last[:-1] + f", clr_readout: {readout}}}").train(train)
        m.token_path.record = True
        torch.manual_seed(1)
        with torch.no_grad():
            logits = m(x)
        out.append((logits, [c for _, c in m.token_path.last_cache], m.token_path.last_counts))
    return out


def _pushes(m, x):
    """One forward with ``record`` on: the logits and, per push block ``b``, (the input of block ``b + 1``'s
    norm1: the sequence after block ``b`` and its flush unless block ``b + 1`` reduces before it, the tracked
    index or None, the carriers pushed)."""
    seen = {}
    hooks = [blk.norm1.register_forward_pre_hook(lambda mod, a, b=b: seen.setdefault(b - 1, a[0]))
             for b, blk in enumerate(m.blocks)]
    m.token_path.record = True
    try:
        torch.manual_seed(1)
        logits = m(x)
    finally:
        for h in hooks:
            h.remove()
    path = m.token_path
    idx = dict(path.last_clr_index)
    return logits, {b: (seen[b], idx.get(b), c) for b, c in path.last_cache}


def _plain(readout: str, mode: str = "faithful", reduction: str = ""):
    torch.manual_seed(0)
    entries = ([reduction] if reduction else []) + [f"{{name: clca, mode: {mode}, clr_readout: {readout}}}"]
    return plug(tiny("vit", depth=12), *entries)


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_tracked_reads_the_original_clr_without_reduction(mode):
    # no reduction, CLC on: R = [3, 6, 9, 10]; the original CLR stays at index P + 1 = 17 and every push reads it
    x = torch.rand(2, 3, 64, 64)
    m = _plain("tracked", mode)
    assert m.token_path.recovery == [3, 6, 9, 10]
    with torch.no_grad():
        logits, pushes = _pushes(m, x)
        pos_logits, pos = _pushes(_plain("positional", mode), x)
    assert sorted(pushes) == sorted(pos) == list(range(10))
    for b, (xb, idx, c) in pushes.items():
        assert idx.tolist() == [[17], [17]]
        assert_close(c[:, -1], xb[:, 17], atol=0, rtol=0)
        if b >= 3:  # from the first recovery on the last token is a re-injected cache copy, not the CLR
            assert xb.shape[1] > 18 and not torch.equal(c[:, -1], xb[:, -1])
            assert not torch.equal(c[:, -1], pos[b][2][:, -1])
        else:
            assert xb.shape[1] == 18
            assert_close(c, pos[b][2], atol=0, rtol=0)
    # spec §17 item 6: positional reads, after block 3, the cache entry pushed at block 2 (its last token)
    assert_close(pos[3][2][:, -1], pos[2][2][:, -1], atol=0, rtol=0)
    assert_close(pos[3][0][:, -1], pos[2][2][:, -1], atol=0, rtol=0)
    assert not torch.allclose(logits, pos_logits)


@pytest.mark.parametrize("mode, reduction", [
    ("faithful", ""),
    ("faithful", tr("evit", 0.5, "[3, 6, 9]")),
    ("faithful", tr("tome", 0.5, "[3, 6, 9]")),
    ("faithful", tr("dpcknn", 0.5, "[3, 6, 9]")),   # protects the suffix by default
    ("fixed", tr("evit", 0.5, "[3, 6, 9]")),
    ("fixed", tr("topk", 0.5, "[3, 6, 9]")),
])
def test_tracked_equals_positional_before_the_first_recovery_only(mode, reduction):
    x = torch.rand(2, 3, 64, 64)
    mp, mt = _plain("positional", mode, reduction), _plain("tracked", mode, reduction)
    with torch.no_grad():
        a, pa = _pushes(mp, x)
        b, pb = _pushes(mt, x)
    assert mt.token_path.last_counts == mp.token_path.last_counts
    assert sorted(pa) == sorted(pb) == list(range(10))
    for blk in range(3):  # pushes before the first (non-empty) recovery at block 3: bit-identical
        assert_close(pb[blk][2], pa[blk][2], atol=0, rtol=0)
    for blk in range(3, 10):  # from it on the tracked push is not the last token
        n = pb[blk][0].shape[1]
        assert (pb[blk][1] < n - 1).all() and (pb[blk][1] >= 0).all()
        assert not torch.equal(pb[blk][2][:, -1], pa[blk][2][:, -1])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_tracked_index_follows_the_clr_across_recoveries(method):
    # 6 blocks, reductions at [0, 2]: recoveries 0 (empty), 2, 4; pushes after blocks 0-3. The index moves only
    # through block 2's reduction map (not through its flush) and the push reads the token at it.
    img, lit, _ = MOVES[method]
    m = _tracked_model(method, img, depth=6)
    with torch.no_grad():
        _, pushes = _pushes(m, _images(*lit, img=img))
    assert sorted(pushes) == [0, 1, 2, 3]
    idx = {b: pushes[b][1][:, 0] for b in pushes}
    maps = [a["assign"] for a in m.token_path.last_assign if a["block"] == 2]
    assert len(maps) == 1
    moved = torch.where(idx[1] >= 0, maps[0].gather(1, idx[1].clamp_min(0)[:, None])[:, 0], idx[1])
    assert torch.equal(idx[1], idx[0]) and torch.equal(idx[2], moved) and torch.equal(idx[3], idx[2])
    n_before_flush = m.token_path.last_counts[2][1]  # tokens entering block 2's MLP: after its reduction
    assert (idx[2] < n_before_flush).all()          # never a re-injected cache token
    for b in (0, 2, 3):  # blocks 1 and 3 reduce nowhere, so the hook saw the pushed-from sequence
        xb, ib, c = pushes[b]
        assert_close(c[:, -1], _read(xb, ib), atol=0, rtol=0)


@pytest.mark.parametrize("method", ["evit", "tome", "dpcknn", "topk"])
def test_fixed_mode_auto_is_tracked_with_the_same_counts_and_macs(method):
    from fgir.benchmarks.flops import count_macs

    x = torch.rand(2, 3, 64, 64)
    runs = {}
    for readout in ("auto", "tracked", "positional"):
        torch.manual_seed(0)
        m = plug(tiny("vit"), tr(method, 0.5), f"{{name: clca, mode: fixed, clr_readout: {readout}}}")
        with torch.no_grad():
            logits, pushes = _pushes(m, x)
        runs[readout] = (logits, pushes, m.token_path.last_counts, count_macs(m, 64))
    (la, pa, na, ma), (lt, _, nt, mt), (lp, pp, np_, mp) = runs["auto"], runs["tracked"], runs["positional"]
    assert_close(la, lt, atol=0, rtol=0)
    assert na == nt == np_ and ma == mt == mp > 0
    # recoveries [1, 2]: block 0's push is the same, block 1's (after the flush at block 1) reads the CLR, not the copy
    assert_close(pa[0][2], pp[0][2], atol=0, rtol=0)
    assert not torch.equal(pa[1][2][:, -1], pp[1][2][:, -1])
    assert not torch.allclose(la, lp)


@pytest.mark.parametrize("method", METHODS)
def test_tracked_keeps_token_counts(method):
    x = torch.rand(2, 3, 64, 64)
    (_, _, na), (_, _, nb) = _pair([tr(method, 0.5, "[0, 2]"), "{name: clca, protect_cache: 'off'}"], x)
    assert na == nb


@pytest.mark.parametrize("method", ["evit", "tome", "dynamicvit", "sit"])
def test_tracked_keeps_macs(method):
    from fgir.benchmarks.flops import count_macs

    macs = [count_macs(_tracked_model(method, readout=r), 64) for r in ("positional", "tracked")]
    assert macs[0] == macs[1] > 0


@pytest.mark.parametrize("method", METHODS)
def test_tracked_readout_passes_gradient_to_clr(method):
    m = _tracked_model(method).train()
    torch.manual_seed(1)
    x = _images([], [0, 5, 9])
    m.token_path.record = True
    m(x).logsumexp(-1).sum().backward(retain_graph=True)
    assert m.clr.grad is not None and torch.isfinite(m.clr.grad).all() and m.clr.grad.abs().sum() > 0
    carrier = m.token_path.last_cache[0][1][:, -1]  # block 0's tracked CLR carrier, still in the graph
    g = torch.autograd.grad(carrier.sum(), m.clr)[0]
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_tracked_carrier_gradient_is_the_tracked_tokens():
    m = _tracked_model("evit").train()
    seen = {}
    m.blocks[1].norm1.register_forward_pre_hook(lambda mod, a: seen.setdefault("x", a[0]))
    m.token_path.record = True
    m(_images([], []))
    carrier = m.token_path.last_cache[0][1][:, -1]
    assert m.token_path.last_clr_index[0][1].tolist() == [[1], [1]]
    g_carrier = torch.autograd.grad(carrier.sum(), m.clr, retain_graph=True)[0]
    g_token = torch.autograd.grad(seen["x"][:, 1].sum(), m.clr, retain_graph=True)[0]
    g_last = torch.autograd.grad(seen["x"][:, -1].sum(), m.clr)[0]
    assert_close(g_carrier, g_token, atol=0, rtol=0)
    assert not torch.equal(g_carrier, g_last)


@pytest.mark.parametrize("method", METHODS)
def test_tracked_eval_is_deterministic(method):
    m = _tracked_model(method)
    x = _images([], [0, 5, 9])
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        with torch.no_grad():
            runs.append((m(x), [t.clone() for _, t in m.token_path.last_clr_index]))
    assert_close(runs[1][0], runs[0][0], atol=0, rtol=0)
    assert all(torch.equal(u, v) for u, v in zip(runs[0][1], runs[1][1]))


def test_bad_clr_readout_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.plugins\[1\]\.clr_readout='sideways' is not allowed"):
        load_config(overrides=["model.plugins=[{name: token_reduction}, {name: clca, clr_readout: sideways}]"])


def test_tracked_needs_a_cached_clr():
    with pytest.raises(ConfigError, match=r"model\.plugins\[0\].*clr_readout=tracked needs cache=true and num_clr"):
        load_config(overrides=["model.plugins=[{name: clca, num_clr: 0, clr_readout: tracked}]"])


@pytest.mark.parametrize("mode, readout, expect", [
    ("faithful", "auto", "positional"), ("faithful", "tracked", "tracked"), ("faithful", "positional", "positional"),
    ("fixed", "auto", "tracked"), ("fixed", "tracked", "tracked"), ("fixed", "positional", "positional"),
])
def test_clr_readout_combinations_are_allowed(mode, readout, expect):
    m = plug(tiny("vit"), tr("evit", 0.5), f"{{name: clca, mode: {mode}, clr_readout: {readout}}}")
    assert m.token_path.clr_readout == expect  # auto: positional in faithful mode, tracked in fixed mode


def test_fixed_auto_without_a_clr_carrier_is_positional():
    m = plug(tiny("vit"), tr("evit", 0.5), "{name: clca, mode: fixed, num_clr: 0}")
    assert m.token_path.clr_readout == "positional"
