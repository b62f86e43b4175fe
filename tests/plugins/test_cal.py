"""CAL head and teacher-guided augmentation operators (tgda.md §3-4, checklist 15-20)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TinyNet as _TinyNet
from torch.testing import assert_close

from fgir.benchmarks.flops import count_params
from fgir.models.plugins.cal import (
    CALConfig,
    CALHead,
    CALModel,
    apply_cal,
    attention_boxes,
    attention_crop,
    attention_drop,
    attention_mix,
    bilinear_attention_pool,
    cal_teacher_cost,
    draw_thresholds,
    sample_part_maps,
)


class TinyNet(_TinyNet):
    def __init__(self, num_classes: int = 0, width: int = 8):
        super().__init__(num_classes, width, pretrained_cfg={"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)})


def tiny_cal(num_classes=3, num_maps=4, **kw) -> CALModel:
    return apply_cal(TinyNet(), CALConfig(num_maps=num_maps, **kw), num_classes=num_classes)


# ----------------------------------------------------------------------------- BAP and head
def test_bap_shape_and_unit_norm():
    feats, attn = torch.randn(3, 16, 5, 5), torch.rand(3, 4, 5, 5)
    f = bilinear_attention_pool(feats, attn)
    assert f.shape == (3, 4 * 16)
    assert_close(f.norm(dim=1), torch.ones(3), atol=1e-6, rtol=0)


def test_bap_matches_definition():
    feats, attn = torch.randn(2, 3, 4, 4), torch.rand(2, 2, 4, 4)
    raw = torch.einsum("bmhw,bchw->bmc", attn, feats) / 16
    ref = torch.sign(raw) * torch.sqrt(raw.abs() + 1e-6)
    ref = ref.flatten(1) / ref.flatten(1).norm(dim=1, keepdim=True)
    assert_close(bilinear_attention_pool(feats, attn), ref, atol=1e-6, rtol=1e-5)


def test_logits_are_scaled_linear_map_of_bap_features():
    head = CALHead(16, 5, num_maps=4).eval()
    out = head(torch.randn(2, 16, 3, 3))
    assert_close(out["logits"], (100.0 * out["features"]) @ head.fc.weight.T, atol=1e-5, rtol=1e-5)


def test_head_layout_attention_conv_bn_relu_bias_free_fc():
    head = CALHead(16, 5, num_maps=4)
    conv, bn, act = head.attention
    assert conv.bias is None and conv.kernel_size == (1, 1) and bn.eps == 1e-3 and isinstance(act, nn.ReLU)
    assert head.fc.bias is None and head.fc.weight.shape == (5, 64)
    assert "centers" in dict(head.named_buffers()) and head.centers.shape == (5, 64)


def test_param_census_small_backbone():
    k = 7
    trunk = count_params(TinyNet())
    model = tiny_cal(num_classes=k, num_maps=32)
    assert count_params(model) == trunk + 8 * 32 + 2 * 32 + 32 * 8 * k


def test_param_census_resnet18_trunk():
    import timm

    trunk = count_params(timm.create_model("resnet18", num_classes=0))
    with torch.device("meta"):
        model = apply_cal(timm.create_model("resnet18", num_classes=10))
    assert count_params(model) == trunk + 512 * 32 + 64 + 32 * 512 * 10


def test_param_census_resnet101_teacher_k200():
    # checklist 15 (params); the 31.30 GMACs count at 448 is cal_teacher_cost(macs=True), not run here
    assert cal_teacher_cost("resnet101", 200, macs=False)["params"] == 55_672_960


@pytest.mark.parametrize("bn_train", [True, False])
@pytest.mark.parametrize("mode,channels", [("sample", 2), ("mean", 1)])
def test_pam_sampling_shape_independent_of_bn_mode(mode, channels, bn_train):
    head = CALHead(8, 3, num_maps=4, pam_sampling=mode).train(bn_train)
    maps = head(torch.randn(2, 8, 5, 5))["maps"]
    assert maps.shape == (2, channels, 5, 5) and not maps.requires_grad


def test_mean_maps_are_channel_mean():
    head = CALHead(8, 3, num_maps=4, pam_sampling="mean").eval()
    out = head(torch.randn(2, 8, 5, 5))
    assert_close(out["maps"][:, 0], out["attention"].mean(1), atol=1e-6, rtol=0)


def test_sampling_probability_proportional_to_sqrt_mass():
    attn = torch.zeros(1, 3, 2, 2)
    attn[0, 1] = 0.75  # mass 3
    attn[0, 2] = 3.0  # mass 12
    g = torch.Generator().manual_seed(0)
    _, idx = sample_part_maps(attn.expand(4000, -1, -1, -1), 2, generator=g, return_indices=True)
    freq = torch.bincount(idx.flatten(), minlength=3).float() / idx.numel()
    w = torch.tensor([1e-6, 3 + 1e-6, 12 + 1e-6]).sqrt()
    assert_close(freq, w / w.sum(), atol=0.02, rtol=0)


def test_sampling_gathers_the_drawn_maps():
    attn = torch.rand(3, 5, 4, 4)
    maps, idx = sample_part_maps(attn, 2, return_indices=True)
    assert_close(maps, torch.stack([attn[b, idx[b]] for b in range(3)]), atol=0, rtol=0)


def test_sampling_without_replacement_gives_distinct_maps():
    _, idx = sample_part_maps(torch.rand(64, 4, 3, 3), 3, with_replacement=False, return_indices=True)
    assert all(len(set(row)) == 3 for row in idx.tolist())


def test_thresholds_drawn_per_sample_in_range_and_reproducible():
    a = draw_thresholds([0.4, 0.6], 256, generator=torch.Generator().manual_seed(1))
    b = draw_thresholds([0.4, 0.6], 256, generator=torch.Generator().manual_seed(1))
    assert a.min() >= 0.4 and a.max() <= 0.6 and a.std() > 0.03
    assert_close(a, b, atol=0, rtol=0)


def test_center_update_uses_mean_of_duplicate_labels():
    head = CALHead(2, 3, num_maps=1, center_beta=0.5).train()
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cbar = head.update_centers(feats, torch.tensor([0, 0, 2]))
    assert_close(cbar, torch.zeros(3, 2), atol=0, rtol=0)  # centres start at zero
    assert_close(head.centers, torch.tensor([[0.25, 0.25], [0.0, 0.0], [0.5, 0.5]]), atol=1e-7, rtol=0)


def test_center_update_is_frozen_in_eval():
    head = CALHead(2, 3, num_maps=1).eval()
    head.update_centers(torch.ones(2, 2), torch.tensor([0, 1]))
    assert head.centers.abs().sum() == 0


def test_counterfactual_uses_ones_in_eval():
    head = CALHead(8, 3, num_maps=4).eval()
    x = torch.randn(2, 8, 5, 5)
    out = head(x)
    f_hat = bilinear_attention_pool(x, torch.ones_like(out["attention"]))
    assert_close(out["logits_eff"], out["logits"] - head.fc(100 * f_hat), atol=1e-5, rtol=1e-5)


def test_counterfactual_is_random_in_train():
    head = CALHead(8, 3, num_maps=4).train()
    x = torch.randn(2, 8, 5, 5)
    assert not torch.allclose(head(x)["logits_eff"], head(x)["logits_eff"])


# ----------------------------------------------------------------------------- CALModel
def test_cal_model_forward_backward_shapes_and_gradient_census():
    model = tiny_cal(num_classes=3, num_maps=4).train()
    out = model.forward_cal(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, 3) and out["logits_eff"].shape == (2, 3)
    assert out["features"].shape == (2, 4 * 8) and out["attention"].shape == (2, 4, 4, 4)
    assert out["maps"].shape == (2, 2, 4, 4)
    (out["logits"].sum() + out["logits_eff"].sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_cal_model_forward_is_raw_logits():
    model = tiny_cal().eval()
    x = torch.randn(2, 3, 32, 32)
    assert_close(model(x), model.forward_cal(x)["logits"], atol=0, rtol=0)


def test_cal_model_exposes_classifier_contract():
    model = tiny_cal(num_classes=3, num_maps=4)
    assert model.num_classes == 3 and model.num_features == 32
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    model.reset_classifier(5)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5) and model.head.centers.shape == (5, 32)


def test_apply_cal_removes_backbone_classifier():
    model = apply_cal(TinyNet(num_classes=10), CALConfig(num_maps=2), num_classes=3)
    assert isinstance(model.backbone.fc, nn.Identity)


def test_predict_tta_shape_and_flip_invariance():
    model = tiny_cal().eval()
    x = torch.randn(2, 3, 32, 32)
    assert_close(model.predict_tta(x), model.predict_tta(x.flip(-1)), atol=1e-5, rtol=1e-5)
    assert model.predict_tta(x).shape == (2, 3)


def test_token_backbone_is_rejected_with_clear_error():
    class Tokens(TinyNet):
        def forward_features(self, x):
            return super().forward_features(x).flatten(2).transpose(1, 2)

    with pytest.raises(TypeError, match="B x C x h x w"):
        apply_cal(Tokens(), CALConfig(num_maps=2), num_classes=3)(torch.randn(1, 3, 32, 32))


# ----------------------------------------------------------------------------- crop
def _single_pixel(size: int, r: int, c: int) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    m[0, r, c] = 1.0
    return m


@pytest.mark.parametrize("size,r,c", [(448, 100, 200), (448, 10, 440), (40, 20, 3)])
def test_crop_single_pixel_box_rule(size, r, c):
    img = torch.rand(1, 3, size, size)
    pad = 0.1 * size
    top, bottom = max(int(r - pad), 0), min(int(r + pad), size)
    left, right = max(int(c - pad), 0), min(int(c + pad), size)
    boxes = attention_boxes(_single_pixel(size, r, c), (size, size), 0.5, 0.1)
    assert boxes.tolist() == [[top, bottom, left, right]]
    expected = F.interpolate(img[..., top:bottom, left:right], size=(size, size), mode="bilinear",
                             align_corners=True)
    assert_close(attention_crop(img, _single_pixel(size, r, c), 0.5, 0.1), expected, atol=1e-6, rtol=0)


def test_crop_all_ones_map_returns_full_image():
    img = torch.rand(2, 3, 40, 40)
    assert_close(attention_crop(img, torch.ones(2, 5, 5), (0.4, 0.6), 0.1), img, atol=1e-6, rtol=0)


def test_crop_fast_path_matches_exact_reference_path():
    img = torch.rand(4, 3, 48, 48)
    maps = torch.rand(4, 6, 6) ** 3
    th = draw_thresholds((0.4, 0.6), 4)
    fast = attention_crop(img, maps, th, 0.1)
    exact = attention_crop(img, maps, th, 0.1, exact=True)
    assert_close(fast, exact, atol=1e-6, rtol=0)


def test_crop_does_not_mutate_input():
    img = torch.rand(2, 3, 32, 32)
    before = img.clone()
    attention_crop(img, torch.rand(2, 4, 4), (0.4, 0.6))
    assert torch.equal(img, before)


# ----------------------------------------------------------------------------- drop
def test_drop_zeroes_exactly_the_thresholded_pixels():
    img = torch.rand(2, 3, 24, 24) + 0.1
    maps = torch.rand(2, 4, 4)
    th = torch.tensor([0.3, 0.45])
    up = F.interpolate(maps[:, None], size=(24, 24), mode="bilinear", align_corners=True)
    dropped = up >= th[:, None, None, None] * maps.flatten(1).amax(1)[:, None, None, None]
    out = attention_drop(img, maps, th)
    assert torch.equal(out, torch.where(dropped, torch.zeros_like(img), img))
    assert 0 < dropped.float().mean() < 1


def test_drop_block_map_at_full_resolution():
    img = torch.rand(1, 3, 8, 8) + 0.1
    m = torch.zeros(1, 8, 8)
    m[0, 2:4, 5:7] = 1.0
    out = attention_drop(img, m, 0.5)
    assert (out[0, :, 2:4, 5:7] == 0).all()
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[2:4, 5:7] = False
    assert torch.equal(out[0][:, keep], img[0][:, keep])


def test_drop_guard_zero_map_returns_input():
    img = torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 4, 4)
    maps[1] = 0.0
    out = attention_drop(img, maps, 0.3)
    assert torch.equal(out[1], img[1]) and not torch.equal(out[0], img[0])


# ----------------------------------------------------------------------------- mix
def _block_maps(size: int, blocks) -> torch.Tensor:
    m = torch.zeros(len(blocks), size, size)
    for i, (r0, r1, c0, c1) in enumerate(blocks):
        m[i, r0:r1, c0:c1] = 1.0
    return m


def test_mix_swaps_box_contents_and_keeps_the_rest():
    img = torch.rand(2, 3, 16, 16)
    maps = _block_maps(16, [(2, 7, 3, 8), (8, 13, 9, 14)])  # padding 0 -> boxes [2,6)x[3,7), [8,12)x[9,13)
    assert attention_boxes(maps, (16, 16), 0.5, 0.0).tolist() == [[2, 6, 3, 7], [8, 12, 9, 13]]
    out = attention_mix(img, maps, 0.5, 0.0)
    assert_close(out[0, :, 2:6, 3:7], img[1, :, 8:12, 9:13], atol=1e-6, rtol=0)
    assert_close(out[1, :, 8:12, 9:13], img[0, :, 2:6, 3:7], atol=1e-6, rtol=0)
    outside0 = torch.ones(16, 16, dtype=torch.bool)
    outside0[2:6, 3:7] = False
    outside1 = torch.ones(16, 16, dtype=torch.bool)
    outside1[8:12, 9:13] = False
    assert torch.equal(out[0][:, outside0], img[0][:, outside0])
    assert torch.equal(out[1][:, outside1], img[1][:, outside1])


def test_mix_fast_path_matches_exact_path_for_unequal_boxes():
    img = torch.rand(4, 3, 32, 32)
    maps = torch.rand(4, 5, 5) ** 4
    th = draw_thresholds((0.4, 0.6), 4)
    assert_close(attention_mix(img, maps, th), attention_mix(img, maps, th, exact=True), atol=1e-6, rtol=0)


def test_mix_raises_on_odd_batch():
    with pytest.raises(ValueError, match="even batch"):
        attention_mix(torch.rand(3, 3, 16, 16), torch.rand(3, 4, 4))
