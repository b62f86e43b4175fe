"""ViTFS: ViT From Scratch, the TGDA token students (arXiv 2507.12157, spec tgda.md §6.2).

A ViT for training from random init on small fine-grained sets, built as a thin subclass of
timm's ``VisionTransformer`` (timm's own ``Block``, ``Attention``, ``Mlp`` and ``LayerScale``),
so plug-ins written for timm ViTs apply unchanged. It is configured through timm's extension
points:

1. ``embed_layer=ConvPatchingStem``, a conv patchifier: 4 x (conv3x3 stride 2 with bias -> ReLU ->
   BatchNorm2d), channels 3 -> D/8 -> D/4 -> D/2 -> D, then a bias-free 1x1 conv. The stem also
   adds the fixed 2-D sin-cos position embedding (a non-persistent buffer, rebuilt for the input
   grid) to the patch tokens, so timm runs with ``pos_embed='none'`` and ``dynamic_img_size=True``
   (any input size works; the stem emits ``B x h x w x D`` as timm expects);
2. timm's ``_pos_embed`` prepends the 4 learnable registers (``reg_tokens=4``, no position
   embedding, init N(0, 1e-6)); no class token;
3. 12 timm pre-norm ``Block``s with ``norm_layer=TokenBatchNorm1d`` (BatchNorm1d over channels,
   statistics over batch x tokens), LayerScale (init 1e-5), head dim 64, MLP ratio 4, GELU;
4. a final BatchNorm1d (``PatchTokenBatchNorm1d``) whose statistics see only the N patch tokens;
   the registers pass through it unchanged, so ``forward_features`` returns ``B x (R + N) x D``
   (registers first) like every timm ViT;
5. timm's ``forward_head``: mean over the patch tokens (``global_pool='avg'``, no ``fc_norm``),
   head dropout, linear head.

``legacy_register_slice`` reproduces the reference's register-slicing bug (tgda.md §6.2, §13.10):

* ``"off"`` (default, correct): the final norm normalises the N patch tokens (sequence indices
  4..N+3) and the pool averages them.
* ``"wrapper"``: the reference CAL student wrapper, which produced the published checkpoints:
  the final norm keeps indices 0..N-1 (4 registers + first N-4 patches), normalises all of them
  and the pool averages all of them (``pool_include_prefix=True``).
* ``"timm"``: the reference standalone model: the final norm keeps and normalises 0..N-1 and the
  pool averages indices 4..N-1.

In both legacy modes ``forward_features`` returns those N normalised tokens (``B x N x D``).
NOTE: ``forward_intermediates(norm=True)`` is not supported in the legacy modes (the legacy final
norm drops tokens, so its output cannot be split into registers and a patch grid); it raises.

Registered names: ``vitfs_{nano,micro,tiny,small,base}_patch16_gap_reg4_dinov2_bn`` and the
aliases ``vitfs_{nano,micro,tiny,small,base}``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn as nn
from timm.layers import Format, to_2tuple
from timm.models.vision_transformer import VisionTransformer

from ..factory import register_model, timm_builder_kwargs
from .lrnet import IMAGENET_MEAN, IMAGENET_STD, TGDA_CROP_PCT

__all__ = ["ViTFS", "ConvPatchingStem", "TokenBatchNorm1d", "PatchTokenBatchNorm1d", "posemb_sincos_2d",
           "LEGACY_REGISTER_SLICE_MODES"]

LegacySlice = Literal["off", "wrapper", "timm"]
LEGACY_REGISTER_SLICE_MODES: tuple[str, ...] = ("off", "wrapper", "timm")
_POOLS = ("avg", "avgmax", "max", "")
# VisionTransformer arguments that define ViTFS and so cannot be overridden.
_FIXED = ("class_token", "pos_embed", "no_embed_class", "pre_norm", "final_norm", "fc_norm",
          "pool_include_prefix", "dynamic_img_size", "dynamic_img_pad", "embed_layer", "embed_norm_layer",
          "norm_layer", "qkv_bias")


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos table ``(h*w) x dim``, rows in raster order.

    For the patch at row ``r``, column ``c``: ``[sin(c*w), cos(c*w), sin(r*w), cos(r*w)]`` with
    ``w_j = temperature ** (-j / (dim/4 - 1))``, ``j = 0..dim/4-1``.
    """
    if dim % 4 or dim < 8:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4 and >= 8, got {dim}.")
    q = dim // 4
    omega = 1.0 / temperature ** (torch.arange(q, dtype=torch.float64, device=device) / (q - 1))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=device),
                                torch.arange(w, dtype=torch.float64, device=device), indexing="ij")
    y = rows.flatten()[:, None] * omega[None]
    x = cols.flatten()[:, None] * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


class TokenBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over the channels of ``B x T x D`` tokens (statistics over batch x tokens).

    A plain ``nn.BatchNorm1d`` subclass, so its state-dict keys are BatchNorm1d's; usable as
    timm's ``norm_layer``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            return super().forward(x)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class PatchTokenBatchNorm1d(TokenBatchNorm1d):
    """ViTFS's final norm: a :class:`TokenBatchNorm1d` whose statistics see only the patch tokens.

    On ``B x (R + N) x D`` input with ``R = num_prefix_tokens``:

    * default: normalises ``x[:, R:]`` and passes the R prefix tokens (registers) through
      unchanged, returning ``B x (R + N) x D``;
    * ``legacy_slice=True`` (the reference's register-slicing bug): keeps ``x[:, :N]`` (the R prefix
      tokens and the first N - R patches), normalises all of them and returns ``B x N x D``.

    State-dict keys are BatchNorm1d's (``weight``, ``bias``, ``running_mean``, ...).
    """

    def __init__(self, num_features: int, num_prefix_tokens: int = 0, legacy_slice: bool = False,
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, device=device, dtype=dtype)
        self.num_prefix_tokens = num_prefix_tokens
        self.legacy_slice = legacy_slice

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_prefix_tokens={self.num_prefix_tokens}, legacy_slice={self.legacy_slice}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.num_prefix_tokens
        if x.ndim != 3 or not r:
            return super().forward(x)
        if self.legacy_slice:
            return super().forward(x[:, : x.shape[1] - r])
        return torch.cat([x[:, :r], super().forward(x[:, r:])], dim=1)


class ConvLayer(nn.Module):
    """conv3x3 (bias) -> ReLU -> BatchNorm2d; stride 1 when ``in_chs == out_chs``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        stride = 1 if in_chs == out_chs else stride
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=True, **dd)
        self.activation = nn.ReLU(inplace=True)
        self.norm = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.conv(x)))


class ConvPatchingStem(nn.Module):
    """Conv patchifier with the fixed sin-cos position embedding; a timm ``embed_layer``.

    ``log2(patch_size)`` stride-2 ConvLayers (channels doubling up to ``embed_dim``: D/8, D/4, D/2, D
    for 16 px patches), then a bias-free 1x1 conv; the sin-cos table of the token grid is added to
    the tokens. Each stride-2 conv gives ``ceil(size / 2)``, so any input size works. Attribute
    names (``conv3x3layers``, ``conv1x1``) follow the authors' ``ConvPatchingStem``.

    Args:
        img_size: default input size; sets ``grid_size``, ``num_patches`` and the cached table.
        patch_size: total stride (a power of 2 >= 2; square).
        in_chans: input channels.
        embed_dim: output width D.
        flatten: with ``output_fmt=None``, return ``B x N x D`` (True) or ``B x D x h x w``.
        output_fmt: ``'NHWC'`` (what timm's ``dynamic_img_size`` asks for), ``'NLC'``, ``'NCHW'``
            or ``'NCL'``; overrides ``flatten``.
        bias: accepted for timm's ``embed_layer`` interface and ignored: the 3x3 convs always have
            a bias and the 1x1 conv never has one (tgda.md §6.2).
        strict_img_size: raise when the input is not ``img_size``.
        dynamic_img_pad: accepted for timm's interface; no padding is ever needed.
        device, dtype: factory kwargs.
    """

    output_fmt: Format

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16,
                 in_chans: int = 3, embed_dim: int = 192, flatten: bool = True, output_fmt: str | None = None,
                 bias: bool = True, strict_img_size: bool = False, dynamic_img_pad: bool = False,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        p = to_2tuple(patch_size)
        n = int(math.log2(p[0])) if p[0] > 1 else 0
        if p[0] != p[1] or p[0] < 2 or 2 ** n != p[0]:
            raise ValueError("patch_size must be a square power of 2 >= 2 (one stride-2 conv per halving), "
                             f"got {patch_size}.")
        if embed_dim % 2 ** (n - 1):
            raise ValueError(f"embed_dim={embed_dim} must be divisible by {2 ** (n - 1)} "
                             f"for patch_size={p[0]}.")
        self.patch_size = p
        self.embed_dim = embed_dim
        if output_fmt is not None:
            self.flatten = False
            self.output_fmt = Format(output_fmt)
        else:
            self.flatten = flatten
            self.output_fmt = Format.NCHW
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        chs = [in_chans] + [embed_dim // 2 ** (n - 1 - i) for i in range(n)]
        self.conv3x3layers = nn.ModuleList([ConvLayer(chs[i], chs[i + 1], **dd) for i in range(n)])
        self.conv1x1 = nn.Conv2d(embed_dim, embed_dim, kernel_size=1, bias=False, **dd)
        self._pos_cache: dict[tuple[int, int, str], torch.Tensor] = {}
        self.register_buffer("pos_embed", torch.empty(0, embed_dim, **dd), persistent=False)
        if img_size is None:
            raise ValueError("ConvPatchingStem needs an img_size (its default grid); any input size still works.")
        self.img_size: tuple[int, int] = (0, 0)
        self.set_input_size(img_size)

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """Total stride."""
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid for an ``H x W`` input (each stride-2 conv gives ``ceil(size / 2)``)."""
        h, w = img_size
        for _ in range(len(self.conv3x3layers)):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def set_input_size(self, img_size: int | tuple[int, int] | None = None,
                       patch_size: int | tuple[int, int] | None = None) -> None:
        """Set the default input size and rebuild the cached position table for its grid."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError(f"ConvPatchingStem cannot change patch_size ({self.patch_size} -> {patch_size}): "
                             "the stride is set by the number of convs; build a new model instead.")
        if img_size is None:
            return
        self.img_size = to_2tuple(img_size)
        self.grid_size = self.dynamic_feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        pe = self.pos_embed
        self.pos_embed = posemb_sincos_2d(*self.grid_size, self.embed_dim, device=pe.device).to(pe.dtype)
        self._pos_cache.clear()

    def _pos_embed_for(self, grid: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
        if grid == self.grid_size and self.pos_embed.device == ref.device:
            pe = self.pos_embed
        else:
            key = (*grid, str(ref.device))
            pe = self._pos_cache.get(key)
            if pe is None:
                if len(self._pos_cache) >= 8:
                    self._pos_cache.clear()
                with torch.no_grad():
                    pe = self._pos_cache[key] = posemb_sincos_2d(*grid, self.embed_dim, device=ref.device)
        return pe.to(ref.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} != img_size {self.img_size} "
                             "(strict_img_size=True); pass strict_img_size=False for any size.")
        for layer in self.conv3x3layers:
            x = layer(x)
        x = self.conv1x1(x)
        b, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = x + self._pos_embed_for((h, w), x)  # B x N x D
        if self.flatten or self.output_fmt == Format.NLC:
            return x
        if self.output_fmt == Format.NHWC:
            return x.reshape(b, h, w, d)
        if self.output_fmt == Format.NCL:
            return x.transpose(1, 2)
        return x.transpose(1, 2).reshape(b, d, h, w)


class ViTFS(VisionTransformer):
    """ViT From Scratch (TGDA student): timm's ``VisionTransformer`` with the ViTFS configuration.

    Args:
        img_size: default input size; sets the cached position table and ``pretrained_cfg``.
            Other sizes work (the table is rebuilt for the input's grid).
        patch_size: total stride of the conv patchifier (a power of 2).
        in_chans: input channels.
        num_classes: classifier width; 0 gives no classifier.
        global_pool: ``'avg'`` (mean over the pooled tokens), ``'max'``, ``'avgmax'`` or ``''``.
        embed_dim, depth, num_heads, mlp_ratio: transformer shape (head dim 64 in all variants).
        reg_tokens: number of prepended register tokens (4).
        reg_init_std: std of the registers' normal init (1e-6; 0 gives zeros).
        init_values: LayerScale init (1e-5); ``None`` or 0 disables LayerScale.
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth, linear from 0 to this value over the blocks.
        legacy_register_slice: ``"off"``, ``"wrapper"`` or ``"timm"`` (module docstring).
        device, dtype: factory kwargs.
        **kwargs: other ``VisionTransformer`` arguments (``attn_drop_rate``, ``proj_drop_rate``,
            ``block_fn``, ``attn_layer``, ``mlp_layer``, ``weight_init``, ...); the ones that define
            ViTFS (class token, position embedding, norms, embed layer) are refused.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", embed_dim: int = 192, depth: int = 12,
                 num_heads: int = 3, mlp_ratio: float = 4.0, reg_tokens: int = 4, reg_init_std: float = 1e-6,
                 init_values: float | None = 1e-5, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 legacy_register_slice: LegacySlice = "off", device=None, dtype=None, **kwargs: Any):
        if legacy_register_slice not in LEGACY_REGISTER_SLICE_MODES:
            raise ValueError(f"legacy_register_slice={legacy_register_slice!r}; expected one of "
                             f"{LEGACY_REGISTER_SLICE_MODES} ('off' is correct, 'wrapper' matches the "
                             "published TGDA checkpoints).")
        self._check_pool(global_pool)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}.")
        fixed = sorted(set(kwargs) & set(_FIXED))
        if fixed:
            raise ValueError(f"ViTFS fixes {fixed}; they cannot be overridden (build a timm "
                             "VisionTransformer for other configurations).")
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, qkv_bias=True, init_values=init_values, class_token=False,
            pos_embed="none", reg_tokens=reg_tokens, fc_norm=False,
            pool_include_prefix=legacy_register_slice == "wrapper", dynamic_img_size=True,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate, embed_layer=ConvPatchingStem,
            norm_layer=TokenBatchNorm1d, device=device, dtype=dtype, **kwargs)
        self.legacy_register_slice = legacy_register_slice
        # timm's final norm sees the whole sequence; ours keeps the registers out of its statistics.
        self.norm = PatchTokenBatchNorm1d(embed_dim, num_prefix_tokens=self.num_prefix_tokens,
                                          legacy_slice=legacy_register_slice != "off", device=device, dtype=dtype)
        self._reg_init_std = reg_init_std
        self._init_reg_token()

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool not in _POOLS:
            raise ValueError(f"global_pool={global_pool!r}; ViTFS (no class token, no attention pool) "
                             f"supports {_POOLS}.")

    @torch.no_grad()
    def _init_reg_token(self) -> None:
        std = getattr(self, "_reg_init_std", 1e-6)
        if self.reg_token is not None:
            if std > 0:
                nn.init.normal_(self.reg_token, std=std)
            else:
                nn.init.zeros_(self.reg_token)

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """timm's init (Linear trunc-normal(0.02) and zero bias for mode ''; convs keep PyTorch's
        default, BN (1, 0), LayerScale its init value), then registers N(0, ``reg_init_std``)."""
        super().init_weights(mode, needs_reset)
        self._init_reg_token()

    def set_input_size(self, img_size: int | tuple[int, int] | None = None,
                       patch_size: int | tuple[int, int] | None = None) -> None:
        """New default input size: rebuilds the cached position table, updates ``pretrained_cfg``."""
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        cfg = getattr(self, "pretrained_cfg", None)
        if cfg:
            cfg["input_size"] = (cfg["input_size"][0], *self.patch_embed.img_size)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``num_classes``-way linear layer (0: no classifier)."""
        if global_pool is not None:
            self._check_pool(global_pool)
        super().reset_classifier(num_classes, global_pool)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, **kwargs: Any):
        """timm's ``forward_intermediates`` (block outputs; ``NCHW`` maps or ``NLC`` patch tokens,
        registers as ``(patches, registers)`` pairs with ``return_prefix_tokens``).

        NOTE: ``norm=True`` applies the final BatchNorm, which in train mode also updates its
        running statistics; it is refused in the legacy register-slice modes.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; expected 'NCHW' or 'NLC'.")
        if norm and self.legacy_register_slice != "off":
            raise ValueError(f"forward_intermediates(norm=True) is not supported with legacy_register_slice="
                             f"{self.legacy_register_slice!r}: the legacy final norm drops the last "
                             f"{self.num_prefix_tokens} tokens. Use norm=False, or legacy_register_slice='off'.")
        return super().forward_intermediates(
            x, indices=indices, return_prefix_tokens=return_prefix_tokens, norm=norm, stop_early=stop_early,
            output_fmt=output_fmt, intermediates_only=intermediates_only, **kwargs)


_VARIANTS: dict[str, dict[str, Any]] = {
    "nano": dict(embed_dim=64, num_heads=1),
    "micro": dict(embed_dim=128, num_heads=2),
    "tiny": dict(embed_dim=192, num_heads=3),
    "small": dict(embed_dim=384, num_heads=6),
    "base": dict(embed_dim=768, num_heads=12),
}
_FULL = "vitfs_{}_patch16_gap_reg4_dinov2_bn"


def _pretrained_cfg(num_classes: int, img_size: tuple[int, int], **overrides: Any) -> dict[str, Any]:
    cfg = {
        "url": "", "num_classes": num_classes, "input_size": (3, *img_size), "pool_size": None,
        "crop_pct": TGDA_CROP_PCT, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "first_conv": "patch_embed.conv3x3layers.0.conv",
        "classifier": "head", "paper_ids": "arXiv:2507.12157",
    }
    cfg.update(overrides)
    return cfg


# Picked up by timm's register_model (``timm.models.get_pretrained_cfg``).
default_cfgs = {n: _pretrained_cfg(1000, (224, 224))
                for v in _VARIANTS for n in (_FULL.format(v), f"vitfs_{v}")}


def _create_vitfs(variant: str, name: str, pretrained: bool = False, **kwargs: Any) -> ViTFS:
    kwargs, device, dtype = timm_builder_kwargs(name, pretrained, kwargs)
    model = ViTFS(**{**_VARIANTS[variant], **kwargs}, device=device, dtype=dtype)
    cfg = _pretrained_cfg(model.num_classes, model.patch_embed.img_size, architecture=name)
    model.pretrained_cfg = model.default_cfg = cfg
    return model


@register_model
def vitfs_nano_patch16_gap_reg4_dinov2_bn(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """ViTFS-N: D 64, 1 head, 12 blocks (0.64 M params with 200 classes)."""
    return _create_vitfs("nano", _FULL.format("nano"), pretrained, **kwargs)


@register_model
def vitfs_micro_patch16_gap_reg4_dinov2_bn(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """ViTFS-M: D 128, 2 heads, 12 blocks (2.52 M params with 200 classes)."""
    return _create_vitfs("micro", _FULL.format("micro"), pretrained, **kwargs)


@register_model
def vitfs_tiny_patch16_gap_reg4_dinov2_bn(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """ViTFS-T: D 192, 3 heads, 12 blocks (5.64 M params with 200 classes)."""
    return _create_vitfs("tiny", _FULL.format("tiny"), pretrained, **kwargs)


@register_model
def vitfs_small_patch16_gap_reg4_dinov2_bn(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """ViTFS-S: D 384, 6 heads, 12 blocks."""
    return _create_vitfs("small", _FULL.format("small"), pretrained, **kwargs)


@register_model
def vitfs_base_patch16_gap_reg4_dinov2_bn(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """ViTFS-B: D 768, 12 heads, 12 blocks."""
    return _create_vitfs("base", _FULL.format("base"), pretrained, **kwargs)


@register_model
def vitfs_nano(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """Alias of ``vitfs_nano_patch16_gap_reg4_dinov2_bn``."""
    return _create_vitfs("nano", "vitfs_nano", pretrained, **kwargs)


@register_model
def vitfs_micro(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """Alias of ``vitfs_micro_patch16_gap_reg4_dinov2_bn``."""
    return _create_vitfs("micro", "vitfs_micro", pretrained, **kwargs)


@register_model
def vitfs_tiny(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """Alias of ``vitfs_tiny_patch16_gap_reg4_dinov2_bn``."""
    return _create_vitfs("tiny", "vitfs_tiny", pretrained, **kwargs)


@register_model
def vitfs_small(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """Alias of ``vitfs_small_patch16_gap_reg4_dinov2_bn``."""
    return _create_vitfs("small", "vitfs_small", pretrained, **kwargs)


@register_model
def vitfs_base(pretrained: bool = False, **kwargs: Any) -> ViTFS:
    """Alias of ``vitfs_base_patch16_gap_reg4_dinov2_bn``."""
    return _create_vitfs("base", "vitfs_base", pretrained, **kwargs)
