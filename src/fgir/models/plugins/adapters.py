"""Parallel in-block adapters for timm ViTs: the ADPT bottleneck adapter and ConvPass.

Papers: "Parameter-Efficient Transfer Learning for NLP" (Houlsby et al., arXiv 1902.00751; the
parallel bottleneck form of AdaptFormer, arXiv 2205.13535) and "Convolutional Bypasses Are Better
Vision Transformer Adapters" (ConvPass, Jie & Deng, arXiv 2207.07039), as used as baselines (ADPT,
ConvP) and as ILA++'s in-block adapters by ILA (arXiv 2409.11051). Spec:
``shared/specs/ila.md`` §4 (ILA++ in-block adapters) and §6 (ADPT, ConvP rows).

Two adapters per block, parallel to attention and to the MLP, both reading the LN'd input and
added with ``scale`` (1.0 in the reference)::

    x <- x + ls1(attn(norm1 x)) + scale * Drop(A_attn(norm1 x))
    x <- x + ls2(mlp(norm2 x))  + scale * Drop(A_ffn(norm2 x))

They are attached with forward hooks (a pre-hook on ``attn``/``mlp`` keeps the LN'd input, a hook
on ``ls1``/``ls2`` adds the adapter output), so the backbone's modules and state-dict keys are
untouched and every path through the blocks (``forward_features``, ``forward_intermediates``,
gradient checkpointing) sees the adapters. On backbones with LayerScale (ViTFS) the adapter output
is added after the LayerScale, i.e. it is not scaled by it.

* bottleneck ``adapter`` (ADPT): Linear(D->r) -> GELU -> Linear(r->D); 13,064 parameters at
  D = 768, r = 8;
* ``convpass``: Linear(D->r) -> GELU -> 3x3 conv (r->r, pad 1, on the patch grid; each prefix
  token goes through the same conv as a 1x1 image) -> GELU -> Linear(r->D); 13,648 parameters.

Initialisation (reference, ila.md §1): Xavier-uniform weights, biases N(0, 1e-6);
``zero_init_up=True`` zeroes the up-projection so the adapted model starts as the backbone.
The shared helpers (:func:`vit_blocks`, :func:`prefix_count`, :func:`split_grid`,
:func:`reference_linear_init`, :func:`attach_parallel_adapters`) are also used by ILA, VPT and LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import Config, ConfigError, PluginConfig
from .base import mark_only_plugin_trainable, register_plugin

__all__ = ["AdapterConfig", "ConvPassConfig", "BottleneckAdapter", "ConvPassAdapter", "apply_adapter",
           "apply_convpass", "mark_only_adapter_trainable", "mark_only_convpass_trainable",
           "attach_parallel_adapters", "vit_blocks", "prefix_count", "split_grid", "merge_grid",
           "reference_linear_init", "prefix_token_names"]


# ============================================================================ functional core
def split_grid(x: torch.Tensor, n_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``B x (n_prefix + h*h) x C`` tokens -> prefix ``B x n_prefix x C`` and grid ``B x C x h x h``.

    Raises ``ValueError`` when the patch tokens are not a square grid."""
    b, t, c = x.shape
    n = t - n_prefix
    h = math.isqrt(max(n, 0))
    if n <= 0 or h * h != n:
        raise ValueError(f"expected {n_prefix} prefix token(s) followed by a square patch grid, got {t} tokens "
                         f"({n} patch tokens are not a square h x h grid).")
    return x[:, :n_prefix], x[:, n_prefix:].transpose(1, 2).reshape(b, c, h, h)


def merge_grid(prefix: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_grid`: ``B x n x C`` and ``B x C x h x w`` -> ``B x (n + h*w) x C``."""
    return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)


def reference_linear_init(lin: nn.Linear, zero: bool = False) -> None:
    """Xavier-uniform weight and N(0, 1e-6) bias (the ILA/GLSim reference re-init); zeros if ``zero``."""
    if zero:
        nn.init.zeros_(lin.weight)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)
        return
    nn.init.xavier_uniform_(lin.weight)
    if lin.bias is not None:
        nn.init.normal_(lin.bias, std=1e-6)


# ============================================================================ backbone helpers
def vit_blocks(model: nn.Module, who: str) -> nn.Sequential:
    """``model.blocks`` of a timm-style ViT (``VisionTransformer``, ViTFS), or a clear TypeError."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not len(blocks) or not hasattr(model, "embed_dim"):
        raise TypeError(f"{who} needs a timm-style ViT (``blocks`` = nn.Sequential of transformer blocks and "
                        f"``embed_dim``); {type(model).__name__} is not one. Use a vit_* or vitfs_* model.")
    return blocks


def prefix_count(model: nn.Module) -> int:
    """Number of prefix tokens (class token + registers) ahead of the patch tokens."""
    return int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))


def prefix_token_names(model: nn.Module) -> list[str]:
    """Parameter names of the learnable prefix tokens (``cls_token``, ``reg_token``) that exist."""
    have = dict(model.named_parameters())
    return [n for n in ("cls_token", "reg_token") if n in have]


def check_locations(locs: list[int], depth: int, key: str) -> list[int]:
    out = []
    for v in locs:
        i = int(v)
        if not -depth <= i < depth:
            raise ValueError(f"{key}: block index {v} is out of range for a {depth}-block ViT "
                             f"(0..{depth - 1}, or negative from the end).")
        out.append(i % depth)
    if len(set(out)) != len(out):
        raise ValueError(f"{key}: repeated block index in {list(locs)}.")
    return sorted(out)


class _Stash:
    """Forward pre-hook keeping the input of ``attn``/``mlp`` (the LN'd tokens) for the adapter."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None

    def __call__(self, module, args):
        self.x = args[0]

    def __deepcopy__(self, memo):
        return _Stash()


class _AddParallel:
    """Forward hook on ``ls1``/``ls2`` (or ``attn``/``mlp``): adds ``scale * adapter(stashed input)``."""

    def __init__(self, adapter: nn.Module, stash: _Stash, scale: float) -> None:
        self.adapter, self.stash, self.scale = adapter, stash, float(scale)

    def __call__(self, module, args, out):
        x, self.stash.x = self.stash.x, None
        if x is None:
            raise RuntimeError("parallel adapter: the attention/MLP input was not recorded (the block was "
                               "called in an unexpected order).")
        return out + self.scale * self.adapter(x)


def attach_parallel_adapters(model: nn.Module, attr: str, make: Callable[[int], nn.Module], scale: float,
                             who: str) -> nn.ModuleDict:
    """Build two adapters per block with ``make(dim)`` and hook them in parallel to attention and MLP.

    The adapters are registered as ``model.<attr>`` (an ``nn.ModuleDict`` keyed ``"<block>_attn"`` /
    ``"<block>_mlp"``) and returned."""
    blocks = vit_blocks(model, who)
    if hasattr(model, attr):
        raise ValueError(f"{who}: the model already has '{attr}' adapters (apply the plug-in once).")
    dim = int(model.embed_dim)
    adapters = nn.ModuleDict()
    for i, blk in enumerate(blocks):
        for branch, inner, after in (("attn", "attn", "ls1"), ("mlp", "mlp", "ls2")):
            sub = getattr(blk, inner, None)
            if not isinstance(sub, nn.Module):
                raise TypeError(f"{who}: block {i} ({type(blk).__name__}) has no '{inner}' module.")
            ad = make(dim)
            adapters[f"{i}_{branch}"] = ad
            stash = _Stash()
            sub.register_forward_pre_hook(stash)
            target = getattr(blk, after, None)
            (target if isinstance(target, nn.Module) else sub).register_forward_hook(_AddParallel(ad, stash, scale))
    # keep the new parameters on the backbone's device/dtype
    ref = next(iter(model.parameters()))
    adapters.to(device=ref.device, dtype=ref.dtype)
    setattr(model, attr, adapters)
    return adapters


# ============================================================================ modules
class BottleneckAdapter(nn.Module):
    """Linear(D->r) -> GELU -> Linear(r->D) -> Dropout (ADPT / ILA++ in-block adapter)."""

    def __init__(self, dim: int, bottleneck: int = 8, dropout: float = 0.1, zero_init_up: bool = False):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.drop = nn.Dropout(dropout)
        reference_linear_init(self.down)
        reference_linear_init(self.up, zero=zero_init_up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.up(F.gelu(self.down(x))))


class ConvPassAdapter(nn.Module):
    """ConvPass: Linear(D->r) -> GELU -> 3x3 conv on the patch grid (prefix tokens as 1x1 images)
    -> GELU -> Linear(r->D) -> Dropout."""

    def __init__(self, dim: int, bottleneck: int = 8, n_prefix: int = 1, dropout: float = 0.1,
                 zero_init_up: bool = False):
        super().__init__()
        self.n_prefix = n_prefix
        self.down = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv2d(bottleneck, bottleneck, 3, padding=1)
        self.up = nn.Linear(bottleneck, dim)
        self.drop = nn.Dropout(dropout)
        reference_linear_init(self.down)
        reference_linear_init(self.up, zero=zero_init_up)
        nn.init.xavier_uniform_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.gelu(self.down(x))
        pre, grid = split_grid(a, self.n_prefix)
        b, n, r = pre.shape
        grid = self.conv(grid)
        if n:
            pre = self.conv(pre.reshape(b * n, r, 1, 1)).reshape(b, n, r)
        a = merge_grid(pre, grid)
        return self.drop(self.up(F.gelu(a)))


# ============================================================================ plug-ins
def _check_common(cfg, key: str) -> None:
    if cfg.bottleneck < 1:
        raise ConfigError(f"{key}.bottleneck must be >= 1, got {cfg.bottleneck}.")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"{key}.dropout must be in [0, 1), got {cfg.dropout}.")


@dataclass
class AdapterConfig(PluginConfig):
    """ADPT: parallel bottleneck adapters in every block (ILA spec §6, 13,064 parameters each at D=768, r=8)."""

    name: str = "adapter"
    bottleneck: int = 8
    """Bottleneck width r."""
    dropout: float = 0.1
    """Dropout on the adapter output (the backbone's residual dropout in the reference)."""
    scale: float = 1.0
    """Factor of the adapter output (reference 1.0)."""
    zero_init_up: bool = False
    """Zero the up-projection so the adapted model starts equal to the backbone (reference: Xavier)."""

    def validate(self, cfg: Config, key: str) -> None:
        _check_common(self, key)


@dataclass
class ConvPassConfig(AdapterConfig):
    """ConvPass: parallel convolutional bypasses in every block (ILA spec §6, 13,648 parameters each at D=768, r=8)."""

    name: str = "convpass"


@register_plugin("adapter", AdapterConfig, families=("vit",))
def apply_adapter(model: nn.Module, cfg: AdapterConfig | None = None) -> nn.Module:
    """Attach two :class:`BottleneckAdapter` per block as ``model.adapter`` (see module docstring)."""
    cfg = cfg or AdapterConfig()
    attach_parallel_adapters(model, "adapter", lambda d: BottleneckAdapter(d, cfg.bottleneck, cfg.dropout,
                                                                           cfg.zero_init_up),
                             cfg.scale, "adapter")
    return model


@register_plugin("convpass", ConvPassConfig, families=("vit",))
def apply_convpass(model: nn.Module, cfg: ConvPassConfig | None = None) -> nn.Module:
    """Attach two :class:`ConvPassAdapter` per block as ``model.convpass``."""
    cfg = cfg or ConvPassConfig()
    n = prefix_count(model)
    attach_parallel_adapters(model, "convpass", lambda d: ConvPassAdapter(d, cfg.bottleneck, n, cfg.dropout,
                                                                          cfg.zero_init_up),
                             cfg.scale, "convpass")
    return model


def mark_only_trainable(model: nn.Module, name: str, attrs: tuple[str, ...], include_head: bool,
                        include_prefix_tokens: bool) -> nn.Module:
    """Freeze all but plug-in ``name``'s parameters (the modules ``model.<attrs>`` when the plug-in
    was applied directly, not through :func:`apply_plugins`), optionally the head and prefix tokens."""
    owned = dict(getattr(model, "fgir_plugin_params", {}))
    if not owned.get(name):
        mods = [getattr(model, a) for a in attrs if isinstance(getattr(model, a, None), nn.Module)]
        owned[name] = [p for m in mods for p in m.parameters()]
        model.fgir_plugin_params = owned
    mark_only_plugin_trainable(model, name, include_head=include_head)
    if include_prefix_tokens:
        params = dict(model.named_parameters())
        for n in prefix_token_names(model):
            params[n].requires_grad_(True)
    return model


def mark_only_adapter_trainable(model: nn.Module, include_head: bool = True,
                                include_prefix_tokens: bool = True) -> nn.Module:
    """Only the ADPT adapters (and the head and class/register tokens, as in the reference) train."""
    return mark_only_trainable(model, "adapter", ("adapter",), include_head, include_prefix_tokens)


def mark_only_convpass_trainable(model: nn.Module, include_head: bool = True,
                                 include_prefix_tokens: bool = True) -> nn.Module:
    """Only the ConvPass adapters (and the head and class/register tokens) train."""
    return mark_only_trainable(model, "convpass", ("convpass",), include_head, include_prefix_tokens)
