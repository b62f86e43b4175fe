"""Token reduction plug-in: keep rules, the closed-form token walk (spec clca.md §7-8), each method
on ViT / DeiT-3 / ViTFS, keep rate 1.0 == plain, gradients, determinism (checklist items 12-18, 25, 29, 30)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch.testing import assert_close

from fgir.config import ConfigError, load_config
from fgir.models import create_model
from fgir.models.plugins import apply_plugins
from fgir.models.plugins.token_reduction import METHODS, core
from fgir.models.plugins.token_reduction.path import attention_output, attention_probs

BACKBONES = ["vit", "deit3", "vitfs"]


def tiny(kind: str, img: int = 64, depth: int = 4, num_classes: int = 5):
    """Tiny models of the real classes (ViT, DeiT-3 without class pos row, ViTFS with 4 registers)."""
    if kind == "vit":
        m = timm.create_model("vit_tiny_patch16_224", img_size=img, depth=depth, embed_dim=64, num_heads=2,
                              num_classes=num_classes)
    elif kind == "deit3":
        m = timm.create_model("deit3_small_patch16_224", img_size=img, depth=depth, embed_dim=64, num_heads=2,
                              num_classes=num_classes)
    else:
        m = create_model("vitfs_nano", num_classes=num_classes, depth=depth, img_size=img)
    return m.eval()


def narrow(img: int, name: str = "vit_base_patch16_224"):
    """ViT-B/16 geometry (12 blocks, patch 16) with width 32: the token counts of the oracle tables."""
    return timm.create_model(name, img_size=img, embed_dim=32, num_heads=2, num_classes=10).eval()


def plug(model, *entries: str):
    cfg = load_config(overrides=[f"model.plugins=[{', '.join(entries)}]"])
    return apply_plugins(model, cfg.model.plugins)


def tr(method: str, kr: float, locs="[1, 2]", extra: str = "") -> str:
    return f"{{name: token_reduction, method: {method}, keep_rate: {kr}, locations: {locs}{extra}}}"


def counts(model, img: int, batch: int = 1):
    with torch.no_grad():
        model(torch.rand(batch, 3, img, img))
    return model.token_path.last_counts


# ----------------------------------------------------------------------------- item 16: keep rules
def test_item16_keep_count_expressions():
    assert core.evit_keep(786, 0.1) == 79 == math.ceil(0.1 * 785)
    assert core.absolute_target(784, 0.1, 2) == 0          # int(784 * 0.1**3) = int(0.784)
    assert core.absolute_target(784, 0.1, 2, fixed=True) == 1
    assert [core.dpc_target(196, 0.1, s, s == 2) for s in range(3)] == [19, 5, 1]


@pytest.mark.parametrize("k, points", [(197, 197), (549, 548), (1, 0), (20, 19), (385, 385)])
def test_item16_ats_quantile_counts(k, points):
    assert core.ats_quantiles(k).numel() == points
    assert core.ats_quantiles(k, fixed=True).numel() == k


def test_tome_schedule_references_patch_count():
    assert core.tome_schedule(784, 0.1, 3) == [706, 71, 7]


# ----------------------------------------------------------------------------- item 12: the 136 oracle rows
@pytest.mark.parametrize("row", range(136))
def test_item12_closed_form_walk_matches_oracle_row(row):
    method, img, kr, variant, tokens, mlp, _ = ORACLE[row]
    attn, mlp_all = core.token_schedule(method, kr, (img // 16) ** 2, clca=variant == "CLCA")
    assert attn == tokens
    if mlp is not None:
        assert [mlp_all[i] for i in (3, 6, 9)] == mlp


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("variant", ["base", "CLCA"])
def test_item12_forward_counts_equal_walk_224(method, variant):
    m = plug(narrow(224), tr(method, 0.25, "[3, 6, 9]"), *(["{name: clca}"] if variant == "CLCA" else []))
    got = counts(m, 224)
    attn, mlp = core.token_schedule(method, 0.25, 196, clca=variant == "CLCA")
    if method == "ats":  # data dependent: the walk is an upper bound (item 13)
        assert all(a <= b for (a, _), b in zip(got, attn, strict=True))
    else:
        assert [a for a, _ in got] == attn and [b for _, b in got] == mlp


@pytest.mark.parametrize("method, kr, clca, expect", [
    ("evit", 0.1, True, ([786] * 4 + [87] * 3 + [17] * 3 + [10, 12], [81, 11, 4])),
    ("evit", 0.7, True, ([786] * 4 + [558] * 3 + [398] * 3 + [286, 288], None)),
    ("tome", 0.1, False, (None, [393, 322, 315])),
    ("sit", 0.1, False, ([785] * 3 + [79] * 3 + [8] * 3 + [1] * 3, None)),
])
def test_item14_spot_values_448(method, kr, clca, expect):
    m = plug(narrow(448), tr(method, kr, "[3, 6, 9]"), *(["{name: clca}"] if clca else []))
    got = counts(m, 448)
    tokens, mlp = expect
    if tokens is not None:
        assert [a for a, _ in got] == tokens
    if mlp is not None:
        assert [got[i][1] for i in (3, 6, 9)] == mlp


def test_item14_dpcknn_224_clca_spot_value():
    m = plug(narrow(224), tr("dpcknn", 0.1, "[3, 6, 9]"), "{name: clca}")
    assert [a for a, _ in counts(m, 224)] == [198] * 3 + [21, 27, 27, 13, 19, 19, 15, 21, 23]


@pytest.mark.parametrize("seed", [0, 1])
def test_item13_ats_counts_bounded(seed):
    torch.manual_seed(seed)
    m = plug(narrow(224), tr("ats", 0.5, "[3, 6, 9]"), "{name: clca}")
    bound, _ = core.token_schedule("ats", 0.5, 196, clca=True)
    got = [a for a, _ in counts(m, 224, batch=2)]
    assert all(a <= b for a, b in zip(got, bound, strict=True))


def test_item15_tome_six_locations():
    m = plug(narrow(224), tr("tome", 0.5, "[2, 3, 5, 6, 8, 9]"), "{name: clca}")
    got = counts(m, 224)
    assert [a for a, _ in got] == [198, 198, 198, 104, 57, 57, 36, 26, 26, 24, 23, 25]
    assert [got[i][1] for i in (2, 3, 5, 6, 8, 9)] == [100, 55, 32, 24, 20, 21]


# ----------------------------------------------------------------------------- items 17-18: keep 1.0 / off
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_item18_keep_rate_one_is_plain_model(method, backbone):
    torch.manual_seed(0)
    m = tiny(backbone)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        with pytest.warns(UserWarning, match="disabled"):
            plug(m, tr(method, 1.0))
        out = m(x)
    assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize("method", ["evit", "topk"])
def test_item17_evit_topk_full_keep_in_every_block_is_identity(method):
    # a keep rate so close to 1 that ceil keeps every token: the block runs unchanged (atol 0)
    m = tiny("vit")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        plug(m, tr(method, 0.999))
        assert_close(m(x), ref, atol=0, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_item17_explicit_attention_matches_fused(backbone):
    blk = tiny(backbone).blocks[0]
    h = torch.rand(2, 17, 64)
    blk.attn.fused_attn = True
    with torch.no_grad():
        ref = blk.attn(h)
        _, probs, _, v = attention_probs(blk.attn, h)
        out = attention_output(blk.attn, probs, v, h)
    assert_close(out, ref, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- every method x backbone
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_counts_shrink_at_locations(method, backbone):
    m = plug(tiny(backbone), tr(method, 0.5))
    got = counts(m, 64)
    if method == "dynamicvit":  # before-block: the reduced count enters block 1
        assert got[1][0] < got[0][0] and got[2][0] < got[1][0]
    elif method in ("sit", "patchmerger", "dpcknn"):
        assert got[1][0] < got[0][0]
    else:
        assert got[1][1] < got[1][0] and got[2][1] < got[2][0]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_gradient_reaches_every_trainable_parameter(method, backbone):
    torch.manual_seed(0)
    m = plug(tiny(backbone), tr(method, 0.5)).train()
    m(torch.rand(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


@pytest.mark.parametrize("method", METHODS)
def test_eval_forward_is_deterministic(method):
    m = plug(tiny("vit"), tr(method, 0.5))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(m(x), m(x), atol=0, rtol=0)


def test_applying_twice_raises():
    m = plug(tiny("vit"), tr("evit", 0.5))
    with pytest.raises(ValueError, match="already applied"):
        plug(m, tr("topk", 0.5))


def test_rejects_last_block_location():
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        plug(tiny("vit"), tr("evit", 0.5, "[3]"))


def test_rejects_non_vit():
    with pytest.raises(TypeError, match="needs a timm VisionTransformer"):
        plug(create_model("test_resnet", num_classes=3), tr("evit", 0.5))


# ----------------------------------------------------------------------------- item 29: DynamicViT training
def test_item29_dynamicvit_training_masks_without_removing_tokens():
    m = plug(narrow(64), tr("dynamicvit", 0.5, "[3, 6, 9]")).train()
    m(torch.rand(2, 3, 64, 64))
    path = m.token_path
    assert len(path.last_decisions) == 3
    assert all(a == 17 and b == 17 for a, b in path.last_counts)
    assert "loss_dynvit_ratio" in m.fgir_aux_losses()


def test_item29_ratio_loss_zero_at_target():
    d = [torch.ones(2, 8, 1) * t for t in (0.5, 0.25, 0.125)]
    assert core.dynamicvit_ratio_loss(d, [0.5, 0.25, 0.125]).item() == 0.0


def test_dynamicvit_loss_reaches_classification_task():
    from fgir.engine.classification import ClassificationTask

    m = plug(tiny("vit"), tr("dynamicvit", 0.5)).train()
    out = ClassificationTask(m)({"image": torch.rand(2, 3, 64, 64), "target": torch.tensor([0, 1])})
    assert "loss_dynvit_ratio" in out and out["loss"] > out["loss_dynvit_ratio"]


# ----------------------------------------------------------------------------- item 30: one step lowers loss
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("variant", ["base", "clca"])
def test_item30_one_step_lowers_loss(method, variant):
    torch.manual_seed(0)
    m = plug(tiny("vit"), tr(method, 0.5), *(["{name: clca}"] if variant == "clca" else [])).train()
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(m.parameters(), lr=0.05)

    def loss():
        torch.manual_seed(1)  # same Gumbel / DPC noise for both evaluations
        return torch.nn.functional.cross_entropy(m(x), y)

    before = loss()
    before.backward()
    if variant == "clca":
        missing = [n for n, p in m.named_parameters() if p.grad is None]
        assert not missing
    opt.step()
    with torch.no_grad():
        assert loss() < before


# ----------------------------------------------------------------------------- item 25: MACs fused == explicit
def test_item25_macs_same_with_fused_attention():
    from fgir.benchmarks.flops import count_macs

    m = plug(tiny("vit"), tr("evit", 0.5))
    fused = count_macs(m, 64)
    for mod in m.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = False
    assert fused == count_macs(m, 64) and fused > 0


def test_macs_follow_reduced_tokens():
    from fgir.benchmarks.flops import count_macs

    plain = count_macs(tiny("vit"), 64)
    assert count_macs(plug(tiny("vit"), tr("evit", 0.25)), 64) < plain


ORACLE = [  # (method, img_size, keep_rate, variant, tokens entering blocks 0-11, MLP tokens at 3/6/9, GMACs ref)
    (None, 224, 1.0, 'base', [197, 197, 197, 197, 197, 197, 197, 197, 197, 197, 197, 197], None, 17.57),
    (None, 224, 1.0, 'CLCA', [198, 198, 198, 198, 204, 204, 204, 210, 210, 210, 216, 218], None, 18.372),
    (None, 448, 1.0, 'base', [785, 785, 785, 785, 785, 785, 785, 785, 785, 785, 785, 785], None, 78.518),
    (None, 448, 1.0, 'CLCA', [786, 786, 786, 786, 792, 792, 792, 798, 798, 798, 804, 806], None, 79.508),
    ('evit', 224, 0.1, 'base', [197, 197, 197, 197, 22, 22, 22, 5, 5, 5, 3, 3], [22, 5, 3], 5.637),
    ('evit', 224, 0.1, 'CLCA', [198, 198, 198, 198, 28, 28, 28, 11, 11, 11, 9, 11], [22, 5, 3], 5.964),
    ('evit', 224, 0.25, 'base', [197, 197, 197, 197, 51, 51, 51, 15, 15, 15, 6, 6], [51, 15, 6], 6.533),
    ('evit', 224, 0.25, 'CLCA', [198, 198, 198, 198, 58, 58, 58, 23, 23, 23, 14, 16], [52, 17, 8], 6.964),
    ('evit', 224, 0.5, 'base', [197, 197, 197, 197, 100, 100, 100, 52, 52, 52, 28, 28], [100, 52, 28], 8.823),
    ('evit', 224, 0.5, 'CLCA', [198, 198, 198, 198, 107, 107, 107, 61, 61, 61, 38, 40], [101, 55, 32], 9.321),
    ('evit', 224, 0.7, 'base', [197, 197, 197, 197, 140, 140, 140, 100, 100, 100, 72, 72], [140, 100, 72], 11.614),
    ('evit', 224, 0.7, 'CLCA', [198, 198, 198, 198, 146, 146, 146, 110, 110, 110, 85, 87], [140, 104, 79], 12.18),
    ('evit', 224, 1.0, 'base', [197, 197, 197, 197, 197, 197, 197, 197, 197, 197, 197, 197], [197, 197, 197], 17.57),
    ('evit', 224, 1.0, 'CLCA', [198, 198, 198, 198, 204, 204, 204, 210, 210, 210, 216, 218], [198, 204, 210], 18.372),
    ('evit', 448, 0.1, 'base', [785, 785, 785, 785, 81, 81, 81, 10, 10, 10, 3, 3], [81, 10, 3], 24.798),
    ('evit', 448, 0.1, 'CLCA', [786, 786, 786, 786, 87, 87, 87, 17, 17, 17, 10, 12], [81, 11, 4], 25.175),
    ('evit', 448, 0.25, 'base', [785, 785, 785, 785, 198, 198, 198, 52, 52, 52, 15, 15], [198, 52, 15], 28.565),
    ('evit', 448, 0.25, 'CLCA', [786, 786, 786, 786, 205, 205, 205, 59, 59, 59, 23, 25], [199, 53, 17], 28.994),
    ('evit', 448, 0.5, 'base', [785, 785, 785, 785, 394, 394, 394, 199, 199, 199, 101, 101], [394, 199, 101], 38.209),
    ('evit', 448, 0.5, 'CLCA', [786, 786, 786, 786, 401, 401, 401, 208, 208, 208, 112, 114], [395, 202, 106], 38.771),
    ('evit', 448, 0.7, 'base', [785, 785, 785, 785, 551, 551, 551, 387, 387, 387, 273, 273], [551, 387, 273], 50.174),
    ('evit', 448, 0.7, 'CLCA', [786, 786, 786, 786, 558, 558, 558, 398, 398, 398, 286, 288], [552, 392, 280], 50.864),
    ('evit', 448, 1.0, 'base', [785, 785, 785, 785, 785, 785, 785, 785, 785, 785, 785, 785], [785, 785, 785], 78.518),
    ('evit', 448, 1.0, 'CLCA', [786, 786, 786, 786, 792, 792, 792, 798, 798, 798, 804, 806], [786, 792, 798], 79.508),
    ('topk', 224, 0.1, 'base', [197, 197, 197, 197, 21, 21, 21, 3, 3, 3, 2, 2], [21, 3, 2], 5.554),
    ('topk', 224, 0.1, 'CLCA', [198, 198, 198, 198, 27, 27, 27, 10, 10, 10, 8, 10], [21, 4, 2], 5.902),
    ('topk', 224, 0.25, 'base', [197, 197, 197, 197, 50, 50, 50, 14, 14, 14, 5, 5], [50, 14, 5], 6.471),
    ('topk', 224, 0.25, 'CLCA', [198, 198, 198, 198, 57, 57, 57, 21, 21, 21, 12, 14], [51, 15, 6], 6.861),
    ('topk', 224, 0.5, 'base', [197, 197, 197, 197, 99, 99, 99, 50, 50, 50, 26, 26], [99, 50, 26], 8.719),
    ('topk', 224, 0.5, 'CLCA', [198, 198, 198, 198, 106, 106, 106, 60, 60, 60, 37, 39], [100, 54, 31], 9.258),
    ('topk', 224, 0.7, 'base', [197, 197, 197, 197, 139, 139, 139, 98, 98, 98, 69, 69], [139, 98, 69], 11.489),
    ('topk', 224, 0.7, 'CLCA', [198, 198, 198, 198, 145, 145, 145, 108, 108, 108, 82, 84], [139, 102, 76], 12.054),
    ('topk', 448, 0.1, 'base', [785, 785, 785, 785, 80, 80, 80, 9, 9, 9, 2, 2], [80, 9, 2], 24.735),
    ('topk', 448, 0.1, 'CLCA', [786, 786, 786, 786, 86, 86, 86, 16, 16, 16, 9, 11], [80, 10, 3], 25.112),
    ('topk', 448, 0.25, 'base', [785, 785, 785, 785, 197, 197, 197, 50, 50, 50, 14, 14], [197, 50, 14], 28.479),
    ('topk', 448, 0.25, 'CLCA', [786, 786, 786, 786, 204, 204, 204, 58, 58, 58, 22, 24], [198, 52, 16], 28.93),
    ('topk', 448, 0.5, 'base', [785, 785, 785, 785, 393, 393, 393, 197, 197, 197, 99, 99], [393, 197, 99], 38.099),
    ('topk', 448, 0.5, 'CLCA', [786, 786, 786, 786, 400, 400, 400, 207, 207, 207, 110, 112], [394, 201, 104], 38.683),
    ('topk', 448, 0.7, 'base', [785, 785, 785, 785, 550, 550, 550, 386, 386, 386, 271, 271], [550, 386, 271], 50.081),
    ('topk', 448, 0.7, 'CLCA', [786, 786, 786, 786, 557, 557, 557, 397, 397, 397, 285, 287], [551, 391, 279], 50.792),
    ('dynamicvit', 224, 0.1, 'base', [197, 197, 197, 20, 20, 20, 2, 2, 2, 1, 1, 1], None, 5.178),
    ('dynamicvit', 224, 0.1, 'CLCA', [198, 198, 198, 20, 26, 26, 3, 9, 9, 1, 7, 9], None, 5.507),
    ('dynamicvit', 224, 0.25, 'base', [197, 197, 197, 50, 50, 50, 13, 13, 13, 4, 4, 4], None, 6.162),
    ('dynamicvit', 224, 0.25, 'CLCA', [198, 198, 198, 50, 56, 56, 14, 20, 20, 5, 11, 13], None, 6.514),
    ('dynamicvit', 224, 0.5, 'base', [197, 197, 197, 99, 99, 99, 50, 50, 50, 25, 25, 25], None, 8.565),
    ('dynamicvit', 224, 0.5, 'CLCA', [198, 198, 198, 99, 105, 105, 52, 58, 58, 29, 35, 37], None, 9.008),
    ('dynamicvit', 224, 0.7, 'base', [197, 197, 197, 138, 138, 138, 97, 97, 97, 68, 68, 68], None, 11.48),
    ('dynamicvit', 224, 0.7, 'CLCA', [198, 198, 198, 138, 144, 144, 100, 106, 106, 73, 79, 81], None, 11.977),
    ('dynamicvit', 448, 0.1, 'base', [785, 785, 785, 79, 79, 79, 8, 8, 8, 1, 1, 1], None, 22.71),
    ('dynamicvit', 448, 0.1, 'CLCA', [786, 786, 786, 79, 85, 85, 9, 15, 15, 2, 8, 10], None, 23.068),
    ('dynamicvit', 448, 0.25, 'base', [785, 785, 785, 197, 197, 197, 50, 50, 50, 13, 13, 13], None, 26.679),
    ('dynamicvit', 448, 0.25, 'CLCA', [786, 786, 786, 197, 203, 203, 51, 57, 57, 14, 20, 22], None, 27.044),
    ('dynamicvit', 448, 0.5, 'base', [785, 785, 785, 393, 393, 393, 197, 197, 197, 99, 99, 99], None, 36.865),
    ('dynamicvit', 448, 0.5, 'CLCA', [786, 786, 786, 393, 399, 399, 199, 205, 205, 102, 108, 110], None, 37.317),
    ('dynamicvit', 448, 0.7, 'base', [785, 785, 785, 549, 549, 549, 385, 385, 385, 269, 269, 269], None, 49.583),
    ('dynamicvit', 448, 0.7, 'CLCA', [786, 786, 786, 549, 555, 555, 388, 394, 394, 275, 281, 283], None, 50.16),
    ('ats', 224, 0.1, 'base', [197, 197, 197, 197, 20, 20, 20, 2, 2, 2, 1, 1], [20, 2, 1], 5.14),
    ('ats', 224, 0.1, 'CLCA', [198, 198, 198, 198, 26, 26, 26, 8, 8, 8, 7, 9], [20, 2, 1], 5.454),
    ('ats', 224, 0.25, 'base', [197, 197, 197, 197, 50, 50, 50, 13, 13, 13, 4, 4], [50, 13, 4], 6.07),
    ('ats', 224, 0.25, 'CLCA', [198, 198, 198, 198, 56, 56, 56, 19, 19, 19, 10, 12], [50, 13, 4], 6.384),
    ('ats', 224, 0.5, 'base', [197, 197, 197, 197, 99, 99, 99, 50, 50, 50, 25, 25], [99, 50, 25], 8.307),
    ('ats', 224, 0.5, 'CLCA', [198, 198, 198, 198, 105, 105, 105, 56, 56, 56, 31, 33], [99, 50, 25], 8.621),
    ('ats', 224, 0.7, 'base', [197, 197, 197, 197, 138, 138, 138, 97, 97, 97, 68, 68], [138, 97, 68], 10.972),
    ('ats', 224, 0.7, 'CLCA', [198, 198, 198, 198, 144, 144, 144, 103, 103, 103, 74, 76], [138, 97, 68], 11.286),
    ('ats', 448, 0.1, 'base', [785, 785, 785, 785, 79, 79, 79, 8, 8, 8, 1, 1], [79, 8, 1], 20.408),
    ('ats', 448, 0.1, 'CLCA', [786, 786, 786, 786, 85, 85, 85, 14, 14, 14, 7, 9], [79, 8, 1], 20.723),
    ('ats', 448, 0.25, 'base', [785, 785, 785, 785, 198, 198, 198, 50, 50, 50, 13, 13], [198, 50, 13], 24.064),
    ('ats', 448, 0.25, 'CLCA', [786, 786, 786, 786, 204, 204, 204, 56, 56, 56, 19, 21], [198, 50, 13], 24.378),
    ('ats', 448, 0.5, 'base', [785, 785, 785, 785, 393, 393, 393, 198, 198, 198, 99, 99], [393, 198, 99], 33.029),
    ('ats', 448, 0.5, 'CLCA', [786, 786, 786, 786, 399, 399, 399, 204, 204, 204, 105, 107], [393, 198, 99], 33.343),
    ('ats', 448, 0.7, 'base', [785, 785, 785, 785, 549, 549, 549, 386, 386, 386, 270, 270], [549, 386, 270], 43.671),
    ('ats', 448, 0.7, 'CLCA', [786, 786, 786, 786, 555, 555, 555, 392, 392, 392, 276, 278], [549, 386, 270], 43.985),
    ('tome', 224, 0.1, 'base', [197, 197, 197, 197, 99, 99, 99, 81, 81, 81, 80, 80], [99, 81, 80], 10.435),
    ('tome', 224, 0.1, 'CLCA', [198, 198, 198, 198, 106, 106, 106, 94, 94, 94, 99, 101], [100, 88, 93], 11.202),
    ('tome', 224, 0.25, 'base', [197, 197, 197, 197, 99, 99, 99, 62, 62, 62, 53, 53], [99, 62, 53], 9.498),
    ('tome', 224, 0.25, 'CLCA', [198, 198, 198, 198, 106, 106, 106, 75, 75, 75, 72, 74], [100, 69, 66], 10.26),
    ('tome', 224, 0.5, 'base', [197, 197, 197, 197, 99, 99, 99, 50, 50, 50, 26, 26], [99, 50, 26], 8.72),
    ('tome', 224, 0.5, 'CLCA', [198, 198, 198, 198, 106, 106, 106, 63, 63, 63, 44, 46], [100, 57, 38], 9.458),
    ('tome', 224, 0.7, 'base', [197, 197, 197, 197, 138, 138, 138, 97, 97, 97, 68, 68], [138, 97, 68], 11.427),
    ('tome', 224, 0.7, 'CLCA', [198, 198, 198, 198, 145, 145, 145, 110, 110, 110, 87, 89], [139, 104, 81], 12.197),
    ('tome', 448, 0.1, 'base', [785, 785, 785, 785, 393, 393, 393, 322, 322, 322, 315, 315], [393, 322, 315], 45.421),
    ('tome', 448, 0.1, 'CLCA', [786, 786, 786, 786, 400, 400, 400, 335, 335, 335, 334, 336], [394, 329, 328], 46.273),
    ('tome', 448, 0.25, 'base', [785, 785, 785, 785, 393, 393, 393, 246, 246, 246, 209, 209], [393, 246, 209], 41.435),
    ('tome', 448, 0.25, 'CLCA', [786, 786, 786, 786, 400, 400, 400, 259, 259, 259, 228, 230], [394, 253, 222], 42.265),
    ('tome', 448, 0.5, 'base', [785, 785, 785, 785, 393, 393, 393, 197, 197, 197, 99, 99], [393, 197, 99], 38.113),
    ('tome', 448, 0.5, 'CLCA', [786, 786, 786, 786, 400, 400, 400, 210, 210, 210, 118, 120], [394, 204, 112], 38.923),
    ('tome', 448, 0.7, 'base', [785, 785, 785, 785, 549, 549, 549, 385, 385, 385, 269, 269], [549, 385, 269], 50.007),
    ('tome', 448, 0.7, 'CLCA', [786, 786, 786, 786, 556, 556, 556, 398, 398, 398, 288, 290], [550, 392, 282], 50.871),
    ('sit', 224, 0.1, 'base', [197, 197, 197, 20, 20, 20, 2, 2, 2, 1, 1, 1], None, 5.038),
    ('sit', 224, 0.1, 'CLCA', [198, 198, 198, 20, 26, 26, 2, 8, 8, 1, 7, 9], None, 5.336),
    ('sit', 224, 0.25, 'base', [197, 197, 197, 50, 50, 50, 13, 13, 13, 4, 4, 4], None, 6.003),
    ('sit', 224, 0.25, 'CLCA', [198, 198, 198, 50, 56, 56, 13, 19, 19, 4, 10, 12], None, 6.302),
    ('sit', 224, 0.5, 'base', [197, 197, 197, 99, 99, 99, 50, 50, 50, 25, 25, 25], None, 8.365),
    ('sit', 224, 0.5, 'CLCA', [198, 198, 198, 99, 105, 105, 50, 56, 56, 25, 31, 33], None, 8.669),
    ('sit', 224, 0.7, 'base', [197, 197, 197, 138, 138, 138, 97, 97, 97, 68, 68, 68], None, 11.247),
    ('sit', 224, 0.7, 'CLCA', [198, 198, 198, 138, 144, 144, 97, 103, 103, 68, 74, 76], None, 11.557),
    ('sit', 448, 0.1, 'base', [785, 785, 785, 79, 79, 79, 8, 8, 8, 1, 1, 1], None, 22.202),
    ('sit', 448, 0.1, 'CLCA', [786, 786, 786, 79, 85, 85, 8, 14, 14, 1, 7, 9], None, 22.508),
    ('sit', 448, 0.25, 'base', [785, 785, 785, 197, 197, 197, 50, 50, 50, 13, 13, 13], None, 26.182),
    ('sit', 448, 0.25, 'CLCA', [786, 786, 786, 197, 203, 203, 50, 56, 56, 13, 19, 21], None, 26.495),
    ('sit', 448, 0.5, 'base', [785, 785, 785, 393, 393, 393, 197, 197, 197, 99, 99, 99], None, 36.415),
    ('sit', 448, 0.5, 'CLCA', [786, 786, 786, 393, 399, 399, 197, 203, 203, 99, 105, 107], None, 36.746),
    ('sit', 448, 0.7, 'base', [785, 785, 785, 549, 549, 549, 385, 385, 385, 269, 269, 269], None, 49.295),
    ('sit', 448, 0.7, 'CLCA', [786, 786, 786, 549, 555, 555, 385, 391, 391, 269, 275, 277], None, 49.648),
    ('patchmerger', 224, 0.1, 'base', [197, 197, 197, 20, 20, 20, 2, 2, 2, 1, 1, 1], None, 4.976),
    ('patchmerger', 224, 0.1, 'CLCA', [198, 198, 198, 20, 26, 26, 2, 8, 8, 1, 7, 9], None, 5.27),
    ('patchmerger', 224, 0.25, 'base', [197, 197, 197, 50, 50, 50, 13, 13, 13, 4, 4, 4], None, 5.931),
    ('patchmerger', 224, 0.25, 'CLCA', [198, 198, 198, 50, 56, 56, 13, 19, 19, 4, 10, 12], None, 6.227),
    ('patchmerger', 224, 0.5, 'base', [197, 197, 197, 99, 99, 99, 50, 50, 50, 25, 25, 25], None, 8.273),
    ('patchmerger', 224, 0.5, 'CLCA', [198, 198, 198, 99, 105, 105, 50, 56, 56, 25, 31, 33], None, 8.574),
    ('patchmerger', 224, 0.7, 'base', [197, 197, 197, 138, 138, 138, 97, 97, 97, 68, 68, 68], None, 11.139),
    ('patchmerger', 224, 0.7, 'CLCA', [198, 198, 198, 138, 144, 144, 97, 103, 103, 68, 74, 76], None, 11.445),
    ('patchmerger', 448, 0.1, 'base', [785, 785, 785, 79, 79, 79, 8, 8, 8, 1, 1, 1], None, 21.969),
    ('patchmerger', 448, 0.1, 'CLCA', [786, 786, 786, 79, 85, 85, 8, 14, 14, 1, 7, 9], None, 22.271),
    ('patchmerger', 448, 0.25, 'base', [785, 785, 785, 197, 197, 197, 50, 50, 50, 13, 13, 13], None, 25.941),
    ('patchmerger', 448, 0.25, 'CLCA', [786, 786, 786, 197, 203, 203, 50, 56, 56, 13, 19, 21], None, 26.25),
    ('patchmerger', 448, 0.5, 'base', [785, 785, 785, 393, 393, 393, 197, 197, 197, 99, 99, 99], None, 36.165),
    ('patchmerger', 448, 0.5, 'CLCA', [786, 786, 786, 393, 399, 399, 197, 203, 203, 99, 105, 107], None, 36.493),
    ('patchmerger', 448, 0.7, 'base', [785, 785, 785, 549, 549, 549, 385, 385, 385, 269, 269, 269], None, 49.074),
    ('patchmerger', 448, 0.7, 'CLCA', [786, 786, 786, 549, 555, 555, 385, 391, 391, 269, 275, 277], None, 49.425),
    ('dpcknn', 224, 0.1, 'base', [197, 197, 197, 20, 20, 20, 6, 6, 6, 2, 2, 2], None, 5.076),
    ('dpcknn', 224, 0.1, 'CLCA', [198, 198, 198, 21, 27, 27, 13, 19, 19, 15, 21, 23], None, 5.82),
    ('dpcknn', 224, 0.25, 'base', [197, 197, 197, 50, 50, 50, 13, 13, 13, 4, 4, 4], None, 5.915),
    ('dpcknn', 224, 0.25, 'CLCA', [198, 198, 198, 51, 57, 57, 20, 26, 26, 17, 23, 25], None, 6.661),
    ('dpcknn', 224, 0.5, 'base', [197, 197, 197, 99, 99, 99, 50, 50, 50, 25, 25, 25], None, 8.235),
    ('dpcknn', 224, 0.5, 'CLCA', [198, 198, 198, 100, 106, 106, 57, 63, 63, 38, 44, 46], None, 8.99),
    ('dpcknn', 224, 0.7, 'base', [197, 197, 197, 138, 138, 138, 97, 97, 97, 68, 68, 68], None, 11.068),
    ('dpcknn', 224, 0.7, 'CLCA', [198, 198, 198, 139, 145, 145, 104, 110, 110, 81, 87, 89], None, 11.836),
    ('dpcknn', 448, 0.1, 'base', [785, 785, 785, 79, 79, 79, 8, 8, 8, 2, 2, 2], None, 21.897),
    ('dpcknn', 448, 0.1, 'CLCA', [786, 786, 786, 80, 86, 86, 15, 21, 21, 15, 21, 23], None, 22.649),
    ('dpcknn', 448, 0.25, 'base', [785, 785, 785, 197, 197, 197, 50, 50, 50, 13, 13, 13], None, 25.691),
    ('dpcknn', 448, 0.25, 'CLCA', [786, 786, 786, 198, 204, 204, 57, 63, 63, 26, 32, 34], None, 26.454),
    ('dpcknn', 448, 0.5, 'base', [785, 785, 785, 393, 393, 393, 197, 197, 197, 99, 99, 99], None, 35.548),
    ('dpcknn', 448, 0.5, 'CLCA', [786, 786, 786, 394, 400, 400, 204, 210, 210, 112, 118, 120], None, 36.349),
    ('dpcknn', 448, 0.7, 'base', [785, 785, 785, 549, 549, 549, 385, 385, 385, 269, 269, 269], None, 47.935),
    ('dpcknn', 448, 0.7, 'CLCA', [786, 786, 786, 550, 556, 556, 392, 398, 398, 282, 288, 290], None, 48.79),
]


# ----------------------------------------------------------------------------- fgir viz tokens
@pytest.mark.parametrize("method", METHODS)
def test_token_fate_accounts_for_every_patch(method):
    from fgir.models.plugins.token_reduction.viz import token_fate

    m = plug(tiny("vit"), tr(method, 0.5), "{name: clca, locations: [1, 2]}")
    fates = token_fate(m, torch.rand(1, 3, 64, 64))
    assert [f["block"] for f in fates] == [1, 2] and all(f["token"].numel() == 16 for f in fates)
    first = fates[0]
    if method in ("evit", "topk"):
        k = core.evit_keep(17, 0.5)  # 16 patches + CLR compete
        assert int((first["share"] == 1).sum()) <= k
    assert (first["token"] < first["n_out"]).all()


def test_viz_tokens_is_registered():
    from fgir.report.viz import viz_names

    assert "tokens" in viz_names()


# ----------------------------------------------------------------------------- keep_rate as a per-location list
ABSOLUTE_METHODS = [m for m in METHODS if m not in core.RELATIVE]


def _seeded(method: str, keep_rate, img: int = 64):
    torch.manual_seed(0)
    kr = f"[{', '.join(repr(v) for v in keep_rate)}]" if isinstance(keep_rate, list) else keep_rate
    return plug(tiny("vit", img), tr(method, kr))


def _eval_forward(model, x):
    torch.manual_seed(1)  # DPC-KNN's density noise
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("kr", [0.3, 0.7])
@pytest.mark.parametrize("method", METHODS)
def test_keep_rate_list_of_expanded_scalar_gives_identical_outputs(method, kr):
    expanded = core.expand_keep_rate(method, kr, 2)
    assert all(isinstance(v, float) for v in expanded)
    x = torch.rand(2, 3, 64, 64)
    ref = _eval_forward(_seeded(method, kr), x)
    assert_close(_eval_forward(_seeded(method, expanded), x), ref, atol=0, rtol=0)


@pytest.mark.parametrize("kr", [0.3, 0.7])
@pytest.mark.parametrize("method", METHODS)
def test_keep_rate_list_of_expanded_scalar_gives_identical_token_counts(method, kr):
    x = torch.rand(2, 3, 64, 64)
    scalar, listed = _seeded(method, kr), _seeded(method, core.expand_keep_rate(method, kr, 2))
    _eval_forward(scalar, x)
    _eval_forward(listed, x)
    assert listed.token_path.last_counts == scalar.token_path.last_counts


@pytest.mark.parametrize("row", [r for r in range(136) if ORACLE[r][0] is not None
                                 and not (ORACLE[r][0] == "dynamicvit" and ORACLE[r][3] == "CLCA")])
def test_keep_rate_list_of_expanded_scalar_walks_like_oracle_row(row):
    # DynamicViT + CLCA (faithful) reads the list entry as its relative CLC rate, not kr**(s+1): left out
    method, img, kr, variant, tokens, mlp, _ = ORACLE[row]
    listed = core.expand_keep_rate(method, kr, 3)
    walk = core.token_schedule(method, listed, (img // 16) ** 2, clca=variant == "CLCA")
    assert walk == core.token_schedule(method, kr, (img // 16) ** 2, clca=variant == "CLCA")
    assert walk[0] == tokens


def test_expand_keep_rate_rules():
    assert core.expand_keep_rate("evit", 0.7, 3) == [0.7, 0.7, 0.7]
    assert core.expand_keep_rate("topk", 0.7, 3) == [0.7, 0.7, 0.7]
    for method in ABSOLUTE_METHODS:  # Python's ** as the reference: 0.7 ** 2 = 0.48999999999999994
        assert core.expand_keep_rate(method, 0.7, 3) == [0.7, 0.48999999999999994, 0.3429999999999999]
    assert core.expand_keep_rate("sit", [0.5, 0.2, 0.1], 3) == [0.5, 0.2, 0.1]


def test_evit_keep_rate_list_gives_hand_computed_counts():
    # ViT-B/16 geometry at 224: 196 patches; EViT keeps ceil(kr_s * (n - 1)) and adds one fused token:
    # block 3: ceil(0.7 * 196) = 138 -> 140; block 6: ceil(0.5 * 139) = 70 -> 72; block 9: ceil(0.3 * 71) = 22 -> 24
    m = plug(narrow(224), tr("evit", "[0.7, 0.5, 0.3]", "[3, 6, 9]"))
    got = counts(m, 224)
    assert [a for a, _ in got] == [197] * 4 + [140] * 3 + [72] * 3 + [24] * 2
    assert [got[i][1] for i in (3, 6, 9)] == [140, 72, 24]


def test_evit_keep_rate_list_walk_gives_hand_computed_counts():
    attn, mlp = core.token_schedule("evit", [0.7, 0.5, 0.3], 196)
    assert attn == [197] * 4 + [140] * 3 + [72] * 3 + [24] * 2
    assert [mlp[i] for i in (3, 6, 9)] == [140, 72, 24]


@pytest.mark.parametrize("method, tokens", [
    # targets int(196 * a_s) for a = [0.7, 0.5, 0.4]: 137, 98, 78 (+ CLS), reduced before blocks 3, 6, 9
    ("sit", [197] * 3 + [138] * 3 + [99] * 3 + [79] * 3),
    ("patchmerger", [197] * 3 + [138] * 3 + [99] * 3 + [79] * 3),
    ("dynamicvit", [197] * 3 + [138] * 3 + [99] * 3 + [79] * 3),
    ("dpcknn", [197] * 3 + [138] * 3 + [99] * 3 + [79] * 3),
    # ToMe: t = 196, 137, 98, 78 -> r = 59, 39, 20 (under the half cap), merged inside blocks 3, 6, 9
    ("tome", [197] * 4 + [138] * 3 + [99] * 3 + [79] * 2),
])
def test_absolute_keep_rate_list_gives_hand_computed_counts(method, tokens):
    m = plug(narrow(224), tr(method, "[0.7, 0.5, 0.4]", "[3, 6, 9]"))
    assert [a for a, _ in counts(m, 224)] == tokens


def test_ats_keep_rate_list_gives_hand_computed_budgets():
    # K_s = int(a_s * 196) + 1 for a = [0.7, 0.5, 0.4]
    assert [core.ats_budget(196, [0.7, 0.5, 0.4], s) for s in range(3)] == [138, 99, 79]
    m = plug(narrow(224), tr("ats", "[0.7, 0.5, 0.4]", "[3, 6, 9]"))
    bound = [1 + core.ats_quantiles(k).numel() for k in (138, 99, 79)]
    got = counts(m, 224)
    assert all(got[i][1] <= b for i, b in zip((3, 6, 9), bound))


def test_dynamicvit_ratio_loss_targets_follow_keep_rate_list():
    # the list entries are the targets (a scalar 0.75 would give [0.75, 0.5625]); both exact in float32
    m = plug(tiny("vit"), tr("dynamicvit", "[0.75, 0.25]")).train()
    assert m.token_path.reducer.targets() == [0.75, 0.25]
    d = [torch.ones(2, 8, 1) * t for t in (0.75, 0.25)]
    assert m.token_path.reducer.ratio_loss(d).item() == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_all_ones_keep_rate_list_is_plain_model(method):
    torch.manual_seed(0)
    m = tiny("vit")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        with pytest.warns(UserWarning, match=r"keep_rate=\[1\.0, 1\.0\] is disabled"):
            plug(m, tr(method, "[1.0, 1.0]"))
        assert m.token_path.reducer is None
        assert_close(m(x), ref, atol=0, rtol=0)


_EXPECTED = r"expected a number in \(0, 1\] or a list of 2 numbers in \(0, 1\], one per location \[1, 2\]"


@pytest.mark.parametrize("kr, message", [
    ("[0.5, 0.5, 0.5]", r"keep_rate=\[0\.5, 0\.5, 0\.5\] is not allowed; " + _EXPECTED),   # wrong length
    ("[0.5]", r"keep_rate=\[0\.5\] is not allowed; " + _EXPECTED),
    ("0", r"keep_rate=0\.0 is not allowed; " + _EXPECTED),
    ("1.5", r"keep_rate=1\.5 is not allowed; " + _EXPECTED),
    ("[0.5, 0]", r"keep_rate=\[0\.5, 0\] is not allowed; " + _EXPECTED),
    ("[1.5, 0.5]", r"keep_rate=\[1\.5, 0\.5\] is not allowed; " + _EXPECTED),
    ("abc", r"keep_rate expects a number or a list, got 'abc'"),
    ("[0.5, abc]", r"keep_rate=\[0\.5, 'abc'\] is not allowed; " + _EXPECTED),
    ("[0.5, true]", r"keep_rate=\[0\.5, True\] is not allowed; " + _EXPECTED),
])
def test_bad_keep_rate_is_refused_naming_the_key(kr, message):
    with pytest.raises(ConfigError, match=r"^model\.plugins\[0\]\." + message):
        plug(tiny("vit"), tr("evit", kr))


@pytest.mark.parametrize("method", ABSOLUTE_METHODS)
def test_increasing_keep_rate_list_is_refused_for_absolute_methods(method):
    with pytest.raises(ConfigError, match=rf"^model\.plugins\[0\]\.keep_rate=\[0\.25, 0\.5\] is not allowed; "
                       rf"method '{method}' uses absolute .* must be non-increasing"):
        plug(tiny("vit"), tr(method, "[0.25, 0.5]"))


@pytest.mark.parametrize("method", core.RELATIVE)
def test_increasing_keep_rate_list_is_accepted_for_relative_methods(method):
    m = plug(tiny("vit"), tr(method, "[0.25, 0.5]"))
    assert m.token_path.reducer.keep_rate == [0.25, 0.5]


def test_keep_rate_list_override_through_load_config():
    cfg = load_config(overrides=["model.plugins=[{name: token_reduction, method: evit, keep_rate: [0.7, 0.5, 0.3], "
                                 "locations: [3, 6, 9]}]"])
    assert cfg.model.plugins[0].keep_rate == [0.7, 0.5, 0.3]


def test_keep_rate_list_override_of_a_recipe_entry():
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "configs/recipes/clca/cotton_evit_clca_448.yaml"
    cfg = load_config([str(recipe)], ["model.plugins.0.keep_rate=[0.7,0.5,0.3]"])
    assert cfg.model.plugins[0].name == "token_reduction" and cfg.model.plugins[0].keep_rate == [0.7, 0.5, 0.3]


def test_keep_rate_list_shown_by_reducer_repr():
    m = plug(tiny("vit"), tr("evit", "[0.7, 0.3]"))
    assert "keep_rate=[0.7, 0.3], locations=[1, 2]" in repr(m.token_path.reducer)


def test_keep_rate_list_token_fate_follows_counts():
    from fgir.models.plugins.token_reduction.viz import token_fate

    # 16 patches: block 1 keeps ceil(0.7 * 16) = 12 (+ CLS + fused), block 2 ceil(0.3 * 13) = 4 (+ CLS + fused)
    m = plug(tiny("vit"), tr("evit", "[0.7, 0.3]"))
    fates = token_fate(m, torch.rand(1, 3, 64, 64))
    assert [f["n_out"] for f in fates] == [14, 6]


def test_cli_cost_accepts_keep_rate_list(capsys):
    from fgir.cli.main import main

    def gmacs(kr: str) -> float:
        assert main(["cost", "vit_tiny_patch16_224", "--img-size", "64", "--num-classes", "5", "--plugins",
                     f"[{{name: token_reduction, method: evit, keep_rate: {kr}, locations: [3, 6, 9]}}]"]) == 0
        line = [ln for ln in capsys.readouterr().out.splitlines() if "GMACs" in ln and "px" in ln][0]
        return float(line.split("GMACs")[0].split()[-1])

    assert gmacs("[0.7, 0.7, 0.7]") == gmacs("0.7")
    assert gmacs("[0.7, 0.5, 0.3]") < gmacs("0.7")
