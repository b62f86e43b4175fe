"""LRNet students (tgda.md §6.1; checklist §15 items 1-8)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models.resnet import BasicBlock, Bottleneck

from fgir.benchmarks.flops import count_macs, count_params
from fgir.models import create_model
from fgir.models.backbones.lrnet import LRNet

# name: (params K=200, params K=0, GMACs @128, feature width F, per-stage params stem..layer5)
REFERENCE = {
    "lrnet14": (5_135_720, 5_033_120, 0.5713, 512, (928, 57_728, 152_192, 230_144, 919_040, 3_673_088)),
    "lrnet18": (5_505_128, 5_402_528, 0.9494, 512, (928, 131_712, 152_192, 525_568, 919_040, 3_673_088)),
    "lrnet26": (8_964_200, 8_554_400, 1.2520, 2048, (928, 135_168, 206_848, 659_456, 1_512_448, 6_039_552)),
    "lrnet50": (21_661_800, 21_252_000, 2.0389, 2048,
                (928, 205_568, 277_248, 939_520, 4_864_000, 14_964_736)),
}
NAMES = list(REFERENCE)


@pytest.fixture(scope="module")
def models() -> dict[str, LRNet]:
    torch.manual_seed(0)
    return {n: create_model(n, num_classes=200) for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_params_and_macs_at_128(models, name):
    """Checklist 1-4: exact params with K=200, GMACs at 128 within ±0.0005."""
    params, _, gmacs, _, _ = REFERENCE[name]
    model = models[name]
    assert count_params(model) == params
    assert abs(count_macs(model, 128) / 1e9 - gmacs) <= 0.0005


@pytest.mark.parametrize("name", NAMES)
def test_backbone_params_and_head_formula(models, name):
    """Checklist 5: K=0 backbone params; the head adds (F + 1) * K; per-stage counts."""
    _, backbone, _, width, stages = REFERENCE[name]
    model = create_model(name, num_classes=0)
    assert count_params(model) == backbone
    assert isinstance(model.get_classifier(), nn.Identity)
    assert model.num_features == width
    for k in (1, 100, 200):
        assert count_params(create_model(name, num_classes=k)) == backbone + (width + 1) * k
    m = models[name]
    stem = sum(p.numel() for mod in (m.conv1, m.bn1) for p in mod.parameters())
    assert (stem, *(count_params(s) for s in m.stages)) == stages
    assert count_params(m.fc) == (width + 1) * 200


def test_lrnet14_stage_shapes_and_no_maxpool(models):
    """Checklist 6: stem 32x64x64 and stage maps at 128 px; no max-pool module anywhere."""
    model = models["lrnet14"].eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        out = model.forward_features(x)
    expected = [(32, 64, 64), (64, 64, 64), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    assert [tuple(f.shape[1:]) for f in feats] == expected
    assert [(i["num_chs"], i["reduction"]) for i in model.feature_info] == [
        (32, 2), (64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]
    torch.testing.assert_close(final, out, rtol=0, atol=0)
    for name in NAMES:
        assert not any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for m in models[name].modules())
        assert not hasattr(models[name], "maxpool")


def test_lrnet14_macs_scale_with_area(models):
    """Checklist 7: 0.0358 / 0.1429 / 1.7494 / 6.9971 GMACs at 32 / 64 / 224 / 448 (±0.5 %)."""
    model = models["lrnet14"]
    for size, gmacs in ((32, 0.0358), (64, 0.1429), (224, 1.7494), (448, 6.9971)):
        assert count_macs(model, size) / 1e9 == pytest.approx(gmacs, rel=0.005), size


@pytest.mark.parametrize("name", NAMES)
def test_stem_and_zero_init_last_bn(models, name):
    """Checklist 8: stem conv 3x3/s2/32/no bias + BN + ReLU; last BN of every branch is zero."""
    m = models[name]
    assert (m.conv1.kernel_size, m.conv1.stride, m.conv1.padding) == ((3, 3), (2, 2), (1, 1))
    assert (m.conv1.in_channels, m.conv1.out_channels, m.conv1.bias) == (3, 32, None)
    assert isinstance(m.bn1, nn.BatchNorm2d) and isinstance(m.act1, nn.ReLU)
    blocks = [b for b in m.modules() if isinstance(b, (BasicBlock, Bottleneck))]
    assert len(blocks) == sum(len(s) for s in m.stages)
    for b in blocks:
        last = b.bn2 if isinstance(b, BasicBlock) else b.bn3
        assert torch.count_nonzero(last.weight) == 0
        assert torch.all(b.bn1.weight == 1)
    # layer1 needs a projection shortcut (32 -> 64 * e), stride 1
    ds = m.layer1[0].downsample
    assert ds is not None and ds[0].stride == (1, 1) and ds[0].in_channels == 32


def test_no_zero_init_when_disabled():
    m = create_model("lrnet14", num_classes=10, zero_init_last=False)
    assert torch.all(m.layer1[0].bn2.weight == 1)


def test_drop_path_linear_over_all_blocks():
    m = create_model("lrnet14", num_classes=10, drop_path_rate=0.3)
    blocks = [b for s in m.stages for b in s]
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for b in blocks]
    assert rates == pytest.approx([0.3 * i / (len(blocks) - 1) for i in range(len(blocks))])
    assert blocks[0].drop_path is None  # rate 0: no module


def test_stem_bn_compat_flag():
    m = create_model("lrnet14", num_classes=200, stem_bn=False)
    assert isinstance(m.bn1, nn.Identity) and isinstance(m.act1, nn.Identity)
    assert not any(k.startswith("bn1.") for k in m.state_dict())
    assert count_params(m) == REFERENCE["lrnet14"][0] - 64
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 200)


@pytest.mark.parametrize("name", NAMES)
def test_timm_create_model_and_cfg(name):
    m = timm.create_model(name, num_classes=7)
    assert isinstance(m, LRNet) and m.num_classes == 7
    cfg = m.pretrained_cfg
    assert cfg is m.default_cfg
    assert cfg["input_size"] == (3, 128, 128) and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert cfg["std"] == pytest.approx((0.229, 0.224, 0.225))
    assert cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc" and cfg["num_classes"] == 7
    data_cfg = timm.data.resolve_data_config({}, model=m)
    assert data_cfg["input_size"] == (3, 128, 128) and data_cfg["interpolation"] == "bicubic"
    with pytest.raises(ValueError, match="pretrained"):
        create_model(name, pretrained=True)


def test_forward_backward_and_contract():
    m = create_model("lrnet14", num_classes=5, drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    logits = m(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (2, 512, 2, 2)
        pooled = m.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, feats.mean((2, 3)), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(m.forward_head(feats), m(x), rtol=1e-6, atol=1e-6)
        last2 = m.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[1] for t in last2] == [256, 512]
        final, early = m.forward_intermediates(x, indices=[1], stop_early=True)
        assert final.shape == early[0].shape == (2, 64, 32, 32)
    m.reset_classifier(3)
    assert m.get_classifier().out_features == 3 and m.num_classes == 3
    assert m(x).shape == (2, 3)
    m.reset_classifier(0, global_pool="")
    assert m(x).shape == (2, 512, 2, 2)
    with pytest.raises(ValueError, match="NCHW"):
        m.forward_intermediates(x, output_fmt="NLC")
