"""ViTFS students (tgda.md §6.2, §8.3; checklist §15 items 9-14)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import LayerScale

from fgir.benchmarks.flops import count_macs, count_params
from fgir.models import create_model
from fgir.models.backbones.vitfs import TokenBatchNorm1d, ViTFS, posemb_sincos_2d

VARIANTS = ("nano", "micro", "tiny", "small", "base")
PARAMS_K200 = {"nano": 643_592, "micro": 2_523_208, "tiny": 5_639_048, "small": 22_403_912,
               "base": 89_311_688}
PARAMS_K0 = {"nano": 630_592, "micro": 2_497_408, "tiny": 5_600_448, "small": 22_326_912, "base": 89_157_888}
WIDTH = {"nano": 64, "micro": 128, "tiny": 192, "small": 384, "base": 768}
# Full counts (attention matmuls included), GMACs at 128 / 224 / 448 (checklist 10).
GMACS = {"nano": (0.0522, 0.1947, 1.4798), "micro": (0.1923, 0.6487, 3.9823),
         "tiny": (0.4202, 1.3618, 7.5075)}


def _vitfs(variant: str, **kw) -> ViTFS:
    return create_model(f"vitfs_{variant}", **kw)


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_exact(variant):
    """Checklist 9: exact params with K=200 (and K=0), independent of the input size."""
    m = _vitfs(variant, num_classes=200)
    assert count_params(m) == PARAMS_K200[variant]
    assert PARAMS_K0[variant] + (WIDTH[variant] + 1) * 200 == PARAMS_K200[variant]
    if variant in ("nano", "tiny"):
        assert count_params(_vitfs(variant, num_classes=0)) == PARAMS_K0[variant]
        assert count_params(_vitfs(variant, num_classes=200, img_size=448)) == PARAMS_K200[variant]
        assert count_params(_vitfs(variant, num_classes=200, img_size=128)) == PARAMS_K200[variant]


def test_long_names_equal_aliases():
    for v in VARIANTS[:3]:
        long = create_model(f"vitfs_{v}_patch16_gap_reg4_dinov2_bn", num_classes=200)
        assert count_params(long) == PARAMS_K200[v]
        assert long.pretrained_cfg["architecture"] == f"vitfs_{v}_patch16_gap_reg4_dinov2_bn"


@pytest.mark.parametrize("variant", list(GMACS))
@pytest.mark.parametrize("size_idx", [0, 1, 2])
def test_macs_full_count(variant, size_idx):
    """Checklist 10: MACs with attention counted, ±0.5 %."""
    size = (128, 224, 448)[size_idx]
    m = _vitfs(variant, num_classes=200, img_size=size)
    assert count_macs(m, size) / 1e9 == pytest.approx(GMACS[variant][size_idx], rel=0.005)


@pytest.mark.parametrize(("variant", "size", "gmacs"), [("nano", 448, 0.5254), ("micro", 448, 2.0735),
                                                        ("tiny", 224, 1.1771)])
def test_macs_without_attention_matmuls(variant, size, gmacs):
    """Checklist 11: the paper's flagged cells equal the count without QK^T, AV and q-scaling."""
    m = _vitfs(variant, num_classes=200, img_size=size)
    assert count_macs(m, size, attention=False) / 1e9 == pytest.approx(gmacs, rel=0.005)
    # the dropped terms are exactly 2 L T^2 D + L T D (tgda.md §8.3)
    t, d, depth = (size // 16) ** 2 + 4, WIDTH[variant], 12
    full = {("nano", 448): 1.4798, ("micro", 448): 3.9823, ("tiny", 224): 1.3618}[(variant, size)]
    assert (full - gmacs) * 1e9 == pytest.approx(2 * depth * t * t * d + depth * t * d, rel=0.005)


def test_token_layout_and_sincos_buffer():
    """Checklist 12: 4 registers + 784 patches at 448; patchifier B x 196 x 192 at 224;
    the sin-cos table is a 196 x 192 buffer, not a parameter."""
    m = _vitfs("tiny", num_classes=200).eval()
    with torch.no_grad():
        assert m.patch_embed(torch.randn(2, 3, 224, 224)).shape == (2, 196, 192)
        seq = {}

        def record(mod, inp, out):
            seq["in"] = inp[0].shape

        m.blocks[0].register_forward_hook(record)
        m.forward_features(torch.randn(1, 3, 448, 448))
    assert seq["in"] == (1, 4 + 784, 192)
    assert m.pos_embed.shape == (196, 192)
    assert any(b is m.pos_embed for b in m.buffers())
    assert all(p is not m.pos_embed for p in m.parameters())
    assert "pos_embed" not in m.state_dict()  # rebuilt, so not saved
    assert "pos_embed" not in dict(m.named_parameters())


def test_sincos_formula():
    d, g = 16, 3
    pe = posemb_sincos_2d(g, g, d)
    omega = [10000 ** (-j / (d // 4 - 1)) for j in range(d // 4)]
    for r in range(g):
        for c in range(g):
            row = pe[r * g + c]
            expect = ([math.sin(c * w) for w in omega] + [math.cos(c * w) for w in omega]
                      + [math.sin(r * w) for w in omega] + [math.cos(r * w) for w in omega])
            torch.testing.assert_close(row, torch.tensor(expect), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        posemb_sincos_2d(2, 2, 10)


def test_pos_embed_rebuilt_for_input_grid():
    """A model built for 224 gives the same outputs at 128 as one built for 128."""
    a = _vitfs("nano", num_classes=5, img_size=224).eval()
    b = _vitfs("nano", num_classes=5, img_size=128).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)
        assert a(torch.randn(1, 3, 96, 160)).shape == (1, 5)  # non-square grid 6 x 10
    torch.testing.assert_close(b.pos_embed, posemb_sincos_2d(8, 8, 64), rtol=0, atol=0)


def test_no_layernorm_batchnorm_layerscale_registers():
    """Checklist 13: no LayerNorm; all block norms and the final norm are BatchNorm1d over
    channels; LayerScale starts at 1e-5 (24 vectors); registers std <= 1e-5."""
    m = _vitfs("tiny", num_classes=200)
    assert not any(isinstance(x, nn.LayerNorm) for x in m.modules())
    norms = [blk.norm1 for blk in m.blocks] + [blk.norm2 for blk in m.blocks] + [m.norm]
    assert all(isinstance(n, nn.BatchNorm1d) and n.num_features == 192 for n in norms)
    assert sum(isinstance(x, nn.BatchNorm1d) for x in m.modules()) == 25
    assert all((n.eps, n.momentum) == (1e-5, 0.1) for n in norms)
    scales = [x for x in m.modules() if isinstance(x, LayerScale)]
    assert len(scales) == 24
    for ls in scales:
        torch.testing.assert_close(ls.gamma.detach(), torch.full((192,), 1e-5), rtol=0, atol=0)
    assert m.reg_token.shape == (1, 4, 192)
    assert 0 < m.reg_token.std().item() <= 1e-5
    # BN statistics run over batch x tokens, per channel
    x = torch.randn(3, 7, 192) * 4 + 2
    bn = TokenBatchNorm1d(192).train()
    y = bn(x)
    torch.testing.assert_close(y.mean((0, 1)), torch.zeros(192), rtol=0, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.1 * x.mean((0, 1)), rtol=1e-4, atol=1e-5)


def test_patchifier_and_block_structure():
    m = _vitfs("tiny", num_classes=200)
    layers = m.patch_embed.conv3x3layers
    assert [(c.conv.in_channels, c.conv.out_channels, c.conv.stride) for c in layers] == [
        (3, 24, (2, 2)), (24, 48, (2, 2)), (48, 96, (2, 2)), (96, 192, (2, 2))]
    assert all(c.conv.bias is not None and isinstance(c.norm, nn.BatchNorm2d) for c in layers)
    assert list(dict(layers[0].named_children())) == ["conv", "activation", "norm"]  # ReLU, then BN
    assert m.patch_embed.conv1x1.kernel_size == (1, 1) and m.patch_embed.conv1x1.bias is None
    attn = m.blocks[0].attn
    assert (attn.num_heads, attn.head_dim) == (3, 64) and isinstance(attn.fused_attn, bool)
    assert m.blocks[0].mlp.fc1.out_features == 768
    assert not hasattr(m, "cls_token")


def _selection(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Which sequence indices reach the final norm, and what the pool averages.

    The last block is hooked to emit a sequence whose token i equals i; the final norm is
    hooked to pass its input through unchanged.
    """
    m = _vitfs("nano", num_classes=0, img_size=64, legacy_register_slice=mode).eval()  # N = 16
    seen = {}

    def index_tokens(mod, inp, out):
        return torch.arange(out.shape[1], dtype=out.dtype).view(1, -1, 1).expand_as(out).clone()

    def identity_norm(mod, inp, out):
        seen["norm_in"] = inp[0]
        return inp[0]

    m.blocks[-1].register_forward_hook(index_tokens)
    m.norm.register_forward_hook(identity_norm)
    with torch.no_grad():
        pooled = m.forward_head(m.forward_features(torch.randn(2, 3, 64, 64)), pre_logits=True)
    return seen["norm_in"][0, :, 0], pooled[0, 0]


def test_token_selection_legacy_modes():
    """Checklist 14 on a 4 + 16 token sequence."""
    n = 16
    norm_in, pooled = _selection("off")
    torch.testing.assert_close(norm_in, torch.arange(4, n + 4, dtype=torch.float32))
    torch.testing.assert_close(pooled, torch.arange(4, n + 4, dtype=torch.float32).mean())
    norm_in, pooled = _selection("wrapper")
    torch.testing.assert_close(norm_in, torch.arange(0, n, dtype=torch.float32))
    torch.testing.assert_close(pooled, torch.arange(0, n, dtype=torch.float32).mean())
    norm_in, pooled = _selection("timm")
    torch.testing.assert_close(norm_in, torch.arange(0, n, dtype=torch.float32))
    torch.testing.assert_close(pooled, torch.arange(4, n, dtype=torch.float32).mean())
    with pytest.raises(ValueError, match="legacy_register_slice"):
        _vitfs("nano", legacy_register_slice="on")


def test_legacy_modes_same_params_and_state_keys():
    keys = {mode: set(_vitfs("nano", num_classes=3, legacy_register_slice=mode).state_dict())
            for mode in ("off", "wrapper", "timm")}
    assert keys["off"] == keys["wrapper"] == keys["timm"]


@pytest.mark.parametrize("name", ["vitfs_nano", "vitfs_tiny_patch16_gap_reg4_dinov2_bn"])
def test_timm_create_model_and_cfg(name):
    m = timm.create_model(name, num_classes=7, img_size=128)
    assert isinstance(m, ViTFS) and m.num_classes == 7
    cfg = m.pretrained_cfg
    assert cfg is m.default_cfg
    assert cfg["input_size"] == (3, 128, 128) and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert cfg["std"] == pytest.approx((0.229, 0.224, 0.225))
    assert cfg["classifier"] == "head" and cfg["num_classes"] == 7
    assert m.get_submodule(cfg["first_conv"]).in_channels == 3
    assert timm.create_model(name).pretrained_cfg["input_size"] == (3, 224, 224)
    with pytest.raises(ValueError, match="pretrained"):
        create_model(name, pretrained=True)


def test_forward_backward_gradient_census():
    m = _vitfs("nano", num_classes=5, img_size=64, drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    logits = m(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.sum().backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None]
    assert not no_grad
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, "drop_prob") else 0.0 for blk in m.blocks]
    assert rates == pytest.approx([0.1 * i / 11 for i in range(12)])


def test_fused_and_unfused_attention_agree():
    m = _vitfs("nano", num_classes=5, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.fused_attn = True
        fused = m(x)
        for blk in m.blocks:
            blk.attn.fused_attn = False
        unfused = m(x)
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-5)


def test_contract_features_head_intermediates():
    m = _vitfs("nano", num_classes=5, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (2, 16, 64)
        pooled = m.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, feats.mean(1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(m.forward_head(feats), m(x), rtol=1e-6, atol=1e-6)
        final, inter = m.forward_intermediates(x)
        torch.testing.assert_close(final, feats, rtol=0, atol=0)
        assert len(inter) == 12 and inter[0].shape == (2, 64, 4, 4)
        nlc = m.forward_intermediates(x, indices=[-1], output_fmt="NLC", return_prefix_tokens=True,
                                      intermediates_only=True)
        assert nlc[0][0].shape == (2, 16, 64) and nlc[0][1].shape == (2, 4, 64)
        _, early = m.forward_intermediates(x, indices=[2], stop_early=True)
        assert len(early) == 1
    assert len(m.feature_info) == 12 and m.feature_info[-1]["reduction"] == 16
    m.reset_classifier(3)
    assert m.get_classifier().out_features == 3 and m(x).shape == (2, 3)
    m.reset_classifier(0, global_pool="")
    assert m(x).shape == (2, 16, 64)
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(3, global_pool="token")
