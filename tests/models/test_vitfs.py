"""ViTFS students (tgda.md §6.2, §8.3; checklist §15 items 9-14)."""

from __future__ import annotations

import io
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, LayerScale, Mlp
from timm.models.vision_transformer import Block, VisionTransformer

from fgir.benchmarks.flops import count_macs, count_params
from fgir.models import create_model
from fgir.models.backbones.vitfs import (
    ConvPatchingStem,
    PatchTokenBatchNorm1d,
    TokenBatchNorm1d,
    ViTFS,
    posemb_sincos_2d,
)

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
    """Checklist 12: 4 registers + 784 patches at 448; patchifier 14 x 14 x 192 tokens at 224
    (NHWC, as timm's dynamic_img_size asks); the sin-cos table is a 196 x 192 buffer of the stem,
    not a parameter (timm's own pos_embed is None)."""
    m = _vitfs("tiny", num_classes=200).eval()
    with torch.no_grad():
        assert m.patch_embed(torch.randn(2, 3, 224, 224)).shape == (2, 14, 14, 192)
        seq = {}

        def record(mod, inp, out):
            seq["in"] = inp[0].shape

        m.blocks[0].register_forward_hook(record)
        m.forward_features(torch.randn(1, 3, 448, 448))
    assert seq["in"] == (1, 4 + 784, 192)
    pe = m.patch_embed.pos_embed
    assert m.pos_embed is None
    assert pe.shape == (196, 192)
    assert any(b is pe for b in m.buffers())
    assert all(p is not pe for p in m.parameters())
    assert not any("pos_embed" in k for k in m.state_dict())  # rebuilt, so not saved
    assert not any("pos_embed" in k for k in dict(m.named_parameters()))


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
    torch.testing.assert_close(b.patch_embed.pos_embed, posemb_sincos_2d(8, 8, 64), rtol=0, atol=0)
    # set_input_size rebuilds the default table and the config, and changes no output
    a.set_input_size(128)
    assert a.patch_embed.grid_size == (8, 8) and a.patch_embed.num_patches == 64
    assert a.pretrained_cfg["input_size"] == (3, 128, 128)
    torch.testing.assert_close(a.patch_embed.pos_embed, b.patch_embed.pos_embed, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="patch_size"):
        a.set_input_size(128, patch_size=8)


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
    assert m.cls_token is None and not m.has_class_token  # timm keeps the attribute, set to None


def _selection(mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which sequence indices the final norm normalises, what the pool averages, and which
    tokens the final norm's batch statistics see.

    The last block is hooked to emit a sequence whose token i equals i. The final norm is set to
    the eval-mode affine map ``x + 1000`` (mean 0, var 1, weight 1, bias 1000), so a normalised
    token reads ``1000 + i`` and a passed-through register reads ``i``. Then one train-mode pass
    with momentum 1 stores the mean of the tokens the statistics ran over.
    """
    m = _vitfs("nano", num_classes=0, img_size=64, legacy_register_slice=mode).eval()  # N = 16

    def index_tokens(mod, inp, out):
        return torch.arange(out.shape[1], dtype=out.dtype).view(1, -1, 1).expand_as(out).clone()

    m.blocks[-1].register_forward_hook(index_tokens)
    with torch.no_grad():
        m.norm.running_mean.zero_()
        m.norm.running_var.fill_(1.0 - m.norm.eps)
        m.norm.bias.fill_(1000.0)
        x = torch.randn(2, 3, 64, 64)
        feats = m.forward_features(x)
        pooled = m.forward_head(feats, pre_logits=True)
        m.norm.train()
        m.norm.momentum = 1.0
        m.forward_features(x)
    return feats[0, :, 0], pooled[0, 0], m.norm.running_mean[0].clone()


def test_token_selection_legacy_modes():
    """Checklist 14 on a 4 + 16 token sequence."""
    n, f = 16, torch.float32
    close = dict(rtol=0, atol=1e-3)
    feats, pooled, stats = _selection("off")  # registers pass through, the 16 patches are normalised
    torch.testing.assert_close(feats, torch.cat([torch.arange(4, dtype=f), 1000 + torch.arange(4, n + 4, dtype=f)]),
                               **close)
    torch.testing.assert_close(pooled, 1000 + torch.arange(4, n + 4, dtype=f).mean(), **close)
    torch.testing.assert_close(stats, torch.arange(4, n + 4, dtype=f).mean(), **close)
    feats, pooled, stats = _selection("wrapper")  # keeps 0..N-1, normalises and pools all of them
    torch.testing.assert_close(feats, 1000 + torch.arange(0, n, dtype=f), **close)
    torch.testing.assert_close(pooled, 1000 + torch.arange(0, n, dtype=f).mean(), **close)
    torch.testing.assert_close(stats, torch.arange(0, n, dtype=f).mean(), **close)
    feats, pooled, stats = _selection("timm")  # keeps and normalises 0..N-1, pools 4..N-1
    torch.testing.assert_close(feats, 1000 + torch.arange(0, n, dtype=f), **close)
    torch.testing.assert_close(pooled, 1000 + torch.arange(4, n, dtype=f).mean(), **close)
    torch.testing.assert_close(stats, torch.arange(0, n, dtype=f).mean(), **close)
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
        feats = m.forward_features(x)  # timm's contract: B x (R + N) x D, registers first
        assert feats.shape == (2, 4 + 16, 64)
        pooled = m.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, feats[:, 4:].mean(1), rtol=1e-6, atol=1e-6)
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
    assert m(x).shape == (2, 4 + 16, 64)
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(3, global_pool="token")


def _randomise(m: nn.Module) -> nn.Module:
    """Non-trivial BN statistics/affines, LayerScales and registers, so that a wrong token
    selection or norm placement shows in the outputs."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 2 - 1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 1.5 + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(mod.num_features, generator=g) - 0.5)
            elif isinstance(mod, LayerScale):
                mod.gamma.copy_(torch.rand(mod.gamma.shape, generator=g) * 0.8 + 0.2)
        m.reg_token.copy_(torch.randn(m.reg_token.shape, generator=g))
    return m


def test_is_timm_vision_transformer():
    """Built on timm's VisionTransformer with timm's own Block/Attention/Mlp/LayerScale, so
    plug-ins written for timm ViTs apply."""
    m = _vitfs("tiny", num_classes=200)
    assert isinstance(m, VisionTransformer) and isinstance(m, ViTFS)
    assert len(m.blocks) == 12
    for blk in m.blocks:
        assert type(blk) is Block and type(blk.attn) is Attention and type(blk.mlp) is Mlp
        assert type(blk.ls1) is LayerScale and type(blk.ls2) is LayerScale
        assert type(blk.norm1) is TokenBatchNorm1d and type(blk.norm2) is TokenBatchNorm1d
    assert isinstance(m.patch_embed, ConvPatchingStem) and isinstance(m.norm, PatchTokenBatchNorm1d)
    assert (m.num_prefix_tokens, m.num_reg_tokens, m.has_class_token) == (4, 4, False)
    assert m.global_pool == "avg" and isinstance(m.fc_norm, nn.Identity) and m.dynamic_img_size
    assert m.num_features == m.embed_dim == 192
    pe = m.patch_embed
    assert pe.img_size == (224, 224) and pe.grid_size == (14, 14) and pe.num_patches == 196
    assert pe.feat_ratio() == 16 and pe.feat_ratio(as_scalar=False) == (16, 16)
    assert pe.dynamic_feat_size((33, 47)) == (3, 3)  # ceil(ceil(ceil(ceil(s/2)/2)/2)/2)
    with pytest.raises(ValueError, match="cannot be overridden"):
        ViTFS(class_token=True)


def test_stem_output_formats_and_strict_size():
    stem = ConvPatchingStem(img_size=64, patch_size=16, in_chans=3, embed_dim=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        nlc = stem(x)
        assert nlc.shape == (2, 16, 64)
        for fmt, shape in [("NHWC", (2, 4, 4, 64)), ("NCHW", (2, 64, 4, 4)), ("NLC", (2, 16, 64)),
                           ("NCL", (2, 64, 16))]:
            s = ConvPatchingStem(img_size=64, embed_dim=64, output_fmt=fmt).eval()
            s.load_state_dict(stem.state_dict())
            y = s(x)
            assert y.shape == shape
            if fmt == "NHWC":
                torch.testing.assert_close(y.reshape(2, 16, 64), nlc, rtol=0, atol=0)
            if fmt == "NCHW":
                torch.testing.assert_close(y.flatten(2).transpose(1, 2), nlc, rtol=0, atol=0)
        strict = ConvPatchingStem(img_size=64, embed_dim=64, strict_img_size=True)
        with pytest.raises(ValueError, match="strict_img_size"):
            strict(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="power of 2"):
        ConvPatchingStem(patch_size=12)


def test_forward_intermediates_shapes():
    m = _vitfs("nano", num_classes=5, img_size=64).eval()
    x = torch.randn(2, 3, 96, 64)  # 6 x 4 grid
    with torch.no_grad():
        final, inter = m.forward_intermediates(x)
        assert final.shape == (2, 4 + 24, 64) and len(inter) == 12
        assert all(t.shape == (2, 64, 6, 4) for t in inter)
        pairs = m.forward_intermediates(x, indices=2, output_fmt="NLC", return_prefix_tokens=True,
                                        intermediates_only=True)
        assert len(pairs) == 2 and all(p.shape == (2, 24, 64) and r.shape == (2, 4, 64) for p, r in pairs)
        nchw_pairs = m.forward_intermediates(x, indices=[0, 11], return_prefix_tokens=True, intermediates_only=True)
        assert nchw_pairs[1][0].shape == (2, 64, 6, 4) and nchw_pairs[1][1].shape == (2, 4, 64)
        # norm=True applies the final norm to the patch tokens: the last one equals forward_features
        normed = m.forward_intermediates(x, indices=[11], norm=True, output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(normed[0], m.forward_features(x)[:, 4:], rtol=0, atol=0)
        d = m.forward_intermediates(x, indices=[3], output_dict=True, return_prefix_tokens=True)
        assert d["image_intermediates"][0].shape == (2, 64, 6, 4)
        assert d["image_intermediates_prefix"][0].shape == (2, 4, 64)
        assert d["image_features"].shape == (2, 28, 64)
        with pytest.raises(ValueError, match="output_fmt"):
            m.forward_intermediates(x, output_fmt="NHWC")
    for mode in ("wrapper", "timm"):
        legacy = _vitfs("nano", num_classes=5, img_size=64, legacy_register_slice=mode).eval()
        with torch.no_grad():
            final, inter = legacy.forward_intermediates(x)
            assert final.shape == (2, 24, 64) and inter[-1].shape == (2, 64, 6, 4)
            torch.testing.assert_close(final, legacy.forward_features(x), rtol=0, atol=0)
            with pytest.raises(ValueError, match="norm=True"):
                legacy.forward_intermediates(x, norm=True)


@pytest.mark.parametrize("mode", ["off", "wrapper"])
def test_built_at_224_runs_at_160_and_64(mode):
    m = _randomise(_vitfs("nano", num_classes=5, legacy_register_slice=mode)).eval()
    for size in (160, 64):
        ref = _vitfs("nano", num_classes=5, img_size=size, legacy_register_slice=mode).eval()
        ref.load_state_dict(m.state_dict())
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            y = m(x)
            assert y.shape == (2, 5) and torch.isfinite(y).all()
            torch.testing.assert_close(y, ref(x), rtol=0, atol=0)
            g = size // 16
            assert m.forward_features(x).shape == (2, g * g + (4 if mode == "off" else 0), 64)


@pytest.mark.parametrize("mode", ["off", "wrapper", "timm"])
def test_save_load_identical_outputs(mode):
    m = _randomise(_vitfs("nano", num_classes=5, img_size=64, legacy_register_slice=mode)).eval()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = _vitfs("nano", num_classes=5, img_size=64, legacy_register_slice=mode).eval()
    result = fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)


def _bn_ref(bn: nn.BatchNorm1d, t: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(t.transpose(1, 2), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        False, 0.0, bn.eps).transpose(1, 2)


def _reference_vitfs(m: ViTFS, x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-timm ViTFS forward, written out from the model's weights (eval mode): conv stem ->
    + sin-cos -> registers first -> 12 BN pre-norm blocks -> token selection -> final BN -> mean
    -> head. Returns (tokens the final norm normalised, logits)."""
    pe = m.patch_embed
    h = x
    for layer in pe.conv3x3layers:
        c, bn = layer.conv, layer.norm
        h = F.relu(F.conv2d(h, c.weight, c.bias, stride=c.stride, padding=c.padding))
        h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    h = F.conv2d(h, pe.conv1x1.weight)
    b, d, gh, gw = h.shape
    t = h.flatten(2).transpose(1, 2) + posemb_sincos_2d(gh, gw, d)
    t = torch.cat([m.reg_token.expand(b, -1, -1), t], dim=1)
    for blk in m.blocks:
        a, nh = blk.attn, blk.attn.num_heads
        q, k, v = F.linear(_bn_ref(blk.norm1, t), a.qkv.weight, a.qkv.bias).reshape(
            b, t.shape[1], 3, nh, d // nh).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (d // nh) ** -0.5).softmax(-1)
        o = F.linear((att @ v).transpose(1, 2).reshape(b, t.shape[1], d), a.proj.weight, a.proj.bias)
        t = t + blk.ls1.gamma * o
        u = _bn_ref(blk.norm2, t)
        u = F.linear(F.gelu(F.linear(u, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        t = t + blk.ls2.gamma * u
    r, n = 4, gh * gw
    kept = t[:, r:] if mode == "off" else t[:, :n]
    z = _bn_ref(m.norm, kept)
    pooled = z[:, r:].mean(1) if mode == "timm" else z.mean(1)
    return z, F.linear(pooled, m.head.weight, m.head.bias)


@pytest.mark.parametrize("mode", ["off", "wrapper", "timm"])
def test_golden_equals_reference_forward(mode):
    """The timm-based model computes exactly what the former stand-alone ViTFS did."""
    torch.manual_seed(0)
    m = _randomise(_vitfs("nano", num_classes=7, img_size=64, legacy_register_slice=mode)).eval()
    x = torch.randn(3, 3, 80, 48)  # 5 x 3 grid, not the built size
    with torch.no_grad():
        z_ref, logits_ref = _reference_vitfs(m, x, mode)
        feats = m.forward_features(x)
        logits = m(x)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats[:, 4:] if mode == "off" else feats, z_ref, **tol)
    torch.testing.assert_close(logits, logits_ref, **tol)
    assert logits.abs().max() > 1e-3  # not a degenerate comparison


def test_grad_checkpointing_and_reg_init():
    m = _vitfs("nano", num_classes=5, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = m(x)
    m.set_grad_checkpointing(True)
    assert m.grad_checkpointing
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain, rtol=1e-5, atol=1e-6)
    m.train()
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert (_vitfs("nano", reg_init_std=0.0).reg_token == 0).all()
    z = _vitfs("nano", reg_init_std=0.0)
    z.init_weights()  # timm's re-init keeps the configured register init
    assert (z.reg_token == 0).all()
