"""ViTFS: ViT From Scratch, the TGDA token students (arXiv 2507.12157, spec tgda.md §6.2).

A ViT for training from random init on small fine-grained sets:

1. a conv patchifier: 4 x (conv3x3 stride 2 with bias -> ReLU -> BatchNorm2d), channels
   3 -> D/8 -> D/4 -> D/2 -> D, then a bias-free 1x1 conv; flattened row-major to ``B x N x D``;
2. a fixed 2-D sin-cos position embedding (a non-persistent buffer, rebuilt for the input grid)
   added to the patch tokens;
3. 4 learnable register tokens prepended (no position embedding), init N(0, 1e-6);
4. 12 pre-norm blocks whose norms are BatchNorm1d over channels (statistics over batch x tokens),
   with LayerScale (init 1e-5), head dim 64, MLP ratio 4, GELU;
5. a final BatchNorm1d, mean pooling over the patch tokens and a linear head. No class token.

``legacy_register_slice`` reproduces the reference's register-slicing bug (tgda.md §6.2, §13.10):

* ``"off"`` (default, correct): the final norm and the pool see the N patch tokens
  (sequence indices 4..N+3).
* ``"wrapper"``: the reference CAL student wrapper, which produced the published checkpoints:
  the final norm sees indices 0..N-1 (4 registers + first N-4 patches) and the pool averages all
  of them.
* ``"timm"``: the reference standalone model: the final norm sees 0..N-1 and the pool averages
  indices 4..N-1.

``forward_features`` returns the ``B x N x D`` tokens that the final norm normalised, in the
layout of the chosen mode (default: the N patch tokens in raster order, so they reshape to the
``H/16 x W/16`` grid). ``forward_intermediates`` returns the block outputs.

Registered names: ``vitfs_{nano,micro,tiny,small,base}_patch16_gap_reg4_dinov2_bn`` and the
aliases ``vitfs_{nano,micro,tiny,small,base}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, LayerScale, Mlp, use_fused_attn

from ..factory import register_model, timm_builder_kwargs
from .lrnet import IMAGENET_MEAN, IMAGENET_STD, TGDA_CROP_PCT, feature_take_indices

__all__ = ["ViTFS", "ConvPatchingStem", "TokenBatchNorm1d", "posemb_sincos_2d", "LEGACY_REGISTER_SLICE_MODES"]

LegacySlice = Literal["off", "wrapper", "timm"]
LEGACY_REGISTER_SLICE_MODES: tuple[str, ...] = ("off", "wrapper", "timm")


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

    A plain ``nn.BatchNorm1d`` subclass, so its state-dict keys are BatchNorm1d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            return super().forward(x)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvLayer(nn.Module):
    """conv3x3 (bias) -> ReLU -> BatchNorm2d; stride 1 when ``in_chs == out_chs``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2):
        super().__init__()
        stride = 1 if in_chs == out_chs else stride
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=True)
        self.activation = nn.ReLU(inplace=True)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.conv(x)))


class ConvPatchingStem(nn.Module):
    """Conv patchifier: ``log2(patch_size)`` stride-2 ConvLayers, then a bias-free 1x1 conv.

    Channels double up to ``embed_dim`` (16 px patches: D/8, D/4, D/2, D). Output ``B x N x D``
    (``flatten=True``) or ``B x D x h x w``. Attribute names (``conv3x3layers``, ``conv1x1``)
    follow the authors' ``ConvPatchingStem``.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192, flatten: bool = True):
        super().__init__()
        n = int(math.log2(patch_size)) if patch_size > 1 else 0
        if patch_size < 2 or 2 ** n != patch_size:
            raise ValueError("patch_size must be a power of 2 >= 2 (one stride-2 conv per halving), "
                             f"got {patch_size}.")
        if embed_dim % 2 ** (n - 1):
            raise ValueError(f"embed_dim={embed_dim} must be divisible by {2 ** (n - 1)} "
                             f"for patch_size={patch_size}.")
        self.patch_size = patch_size
        self.flatten = flatten
        chs = [in_chans] + [embed_dim // 2 ** (n - 1 - i) for i in range(n)]
        self.conv3x3layers = nn.ModuleList([ConvLayer(chs[i], chs[i + 1]) for i in range(n)])
        self.conv1x1 = nn.Conv2d(embed_dim, embed_dim, kernel_size=1, bias=False)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid for an ``H x W`` input (each stride-2 conv gives ``ceil(size / 2)``)."""
        h, w = img_size
        for _ in range(len(self.conv3x3layers)):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.conv3x3layers:
            x = layer(x)
        x = self.conv1x1(x)
        return x.flatten(2).transpose(1, 2) if self.flatten else x


class Attention(nn.Module):
    """Multi-head self-attention with timm's ``fused_attn`` switch.

    The unfused path (``q * scale``, ``q @ k^T``, softmax, ``@ v``) is what MAC counting profiles.
    """

    fused_attn: bool

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm block: ``x + DropPath(ls1 * Attn(BN(x)))``, ``x + DropPath(ls2 * MLP(BN(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, init_values: float | None = 1e-5,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = TokenBatchNorm1d(dim)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = TokenBatchNorm1d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class ViTFS(nn.Module):
    """ViT From Scratch (TGDA student).

    Args:
        img_size: default input size; builds the cached position table and ``pretrained_cfg``.
            Other sizes work (the table is rebuilt for the input's grid).
        patch_size: total stride of the conv patchifier (a power of 2).
        in_chans: input channels.
        num_classes: classifier width; 0 gives no classifier.
        global_pool: ``'avg'`` (mean over the pooled tokens) or ``''`` (no pooling).
        embed_dim, depth, num_heads, mlp_ratio: transformer shape (head dim 64 in all variants).
        reg_tokens: number of prepended register tokens (4).
        reg_init_std: std of the registers' normal init (1e-6; 0 gives zeros).
        init_values: LayerScale init (1e-5); ``None`` or 0 disables LayerScale.
        drop_path_rate: stochastic depth, linear from 0 to this value over the blocks.
        legacy_register_slice: ``"off"``, ``"wrapper"`` or ``"timm"`` (module docstring).
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", embed_dim: int = 192, depth: int = 12,
                 num_heads: int = 3, mlp_ratio: float = 4.0, reg_tokens: int = 4, reg_init_std: float = 1e-6,
                 init_values: float | None = 1e-5, drop_path_rate: float = 0.0,
                 legacy_register_slice: LegacySlice = "off"):
        super().__init__()
        if legacy_register_slice not in LEGACY_REGISTER_SLICE_MODES:
            raise ValueError(f"legacy_register_slice={legacy_register_slice!r}; expected one of "
                             f"{LEGACY_REGISTER_SLICE_MODES} ('off' is correct, 'wrapper' matches the "
                             "published TGDA checkpoints).")
        self._check_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_reg_tokens = self.num_prefix_tokens = reg_tokens
        self.has_class_token = False
        self.legacy_register_slice = legacy_register_slice
        self.grad_checkpointing = False

        self.patch_embed = ConvPatchingStem(patch_size, in_chans, embed_dim)
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.grid_size: tuple[int, int] = (0, 0)
        self._pos_cache: dict[tuple[int, int, str], torch.Tensor] = {}
        self.register_buffer("pos_embed", torch.empty(0, embed_dim), persistent=False)
        self.set_input_size(img_size)

        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, init_values, dpr[i])
                                      for i in range(depth)])
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size)
                             for i in range(depth)]
        self.norm = TokenBatchNorm1d(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(reg_init_std)

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r}; ViTFS supports 'avg' (mean over the pooled "
                             "tokens) or '' (no pooling).")

    @torch.no_grad()
    def init_weights(self, reg_init_std: float = 1e-6) -> None:
        """timm 'vit' init: Linear trunc-normal(0.02) and zero bias; registers N(0, reg_init_std);
        convs keep PyTorch's default init; BN (1, 0); LayerScale keeps its init value."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.reg_token is not None:
            if reg_init_std > 0:
                nn.init.normal_(self.reg_token, std=reg_init_std)
            else:
                nn.init.zeros_(self.reg_token)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild the cached position table for a new default input size."""
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid_size = self.patch_embed.dynamic_feat_size(self.img_size)
        self.pos_embed = posemb_sincos_2d(*self.grid_size, self.embed_dim, device=self.pos_embed.device)
        self._pos_cache.clear()
        if getattr(self, "pretrained_cfg", None):
            self.pretrained_cfg["input_size"] = (self.pretrained_cfg["input_size"][0], *self.img_size)

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

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``num_classes``-way linear layer (0: no classifier)."""
        if global_pool is not None:
            self._check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = self.patch_embed.dynamic_feat_size(x.shape[-2:])
        x = self.patch_embed(x)
        x = x + self._pos_embed_for(grid, x)
        if self.reg_token is not None:
            x = torch.cat([self.reg_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return x, grid

    def _run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> block output ``B x (R + N) x D`` (R registers first), before the final norm."""
        x, _ = self._embed(x)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return x

    def _select_and_norm(self, x: torch.Tensor) -> torch.Tensor:
        r = self.num_reg_tokens
        if self.legacy_register_slice == "off":
            x = x[:, r:]
        else:  # the reference keeps x[:, :N], i.e. the registers and the first N - R patches
            x = x[:, : x.shape[1] - r]
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> the ``B x N x D`` tokens after the final norm (see the module docstring)."""
        return self._select_and_norm(self.forward_tokens(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``forward_features`` tokens -> pooled ``B x D`` (``pre_logits``) or logits."""
        if self.global_pool == "avg":
            if self.legacy_register_slice == "timm":
                x = x[:, self.num_reg_tokens:]
            x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False,
                              stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """Block outputs, timm style.

        Args:
            indices: ``None`` for all blocks, ``n`` for the last ``n``, or explicit block indices.
            return_prefix_tokens: also return the registers, as ``(patches, registers)`` pairs.
            norm: apply the final norm to each intermediate's patch tokens. NOTE: the final norm is
                a BatchNorm, so in train mode this also updates its running statistics.
            stop_early: run blocks only up to the last requested one.
            output_fmt: ``'NCHW'`` (patch tokens as a ``B x D x h x w`` map) or ``'NLC'``.
            intermediates_only: return only the list.

        Returns:
            The list, or ``(forward_features output, list)``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; expected 'NCHW' or 'NLC'.")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x, (gh, gw) = self._embed(x)
        r = self.num_reg_tokens
        blocks = list(self.blocks)[: max_index + 1] if stop_early else list(self.blocks)
        out = []
        for i, blk in enumerate(blocks):
            x = self._run_block(blk, x)
            if i not in take:
                continue
            prefix, patches = x[:, :r], x[:, r:]
            if norm:
                patches = self.norm(patches)
            if output_fmt == "NCHW":
                patches = patches.reshape(x.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()
            out.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return out
        return self._select_and_norm(x), out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


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
    model = ViTFS(**{**_VARIANTS[variant], **kwargs})
    cfg = _pretrained_cfg(model.num_classes, model.img_size, architecture=name)
    model.pretrained_cfg = model.default_cfg = cfg
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
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
