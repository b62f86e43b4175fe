"""VPT: visual prompt tuning (shallow and deep) on a timm ViT.

Paper: "Visual Prompt Tuning", M. Jia et al., arXiv 2203.12119; used as the VPT-S / VPT-D
baselines of ILA (arXiv 2409.11051, spec ``shared/specs/ila.md`` §6, §12.11).

* shallow: ``num_prompts`` learnable tokens are inserted between the prefix tokens (class token,
  registers) and the patch tokens after the position embedding (prompts get no position
  embedding);
* deep: fresh prompts per block; block ``i >= 1`` sees its own prompts *in place of* the previous
  block's prompt outputs (the sequence stays prefix + P + N tokens).

Prompts are removed again before the final norm, so ``forward_features`` keeps the backbone's token
layout and every pooling (class token, patch average) ignores them. Init U(-v, v) with
v = sqrt(6 / (3 * p^2 + D)) (p = patch size); prompt dropout on the inserted prompts.
Attached with forward hooks on ``norm_pre``, the blocks and ``norm``; prompts live in ``model.vpt``.
Counts at ViT-B/16, 100 prompts: shallow 76,800, deep 921,600.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...config import Config, ConfigError, PluginConfig
from .adapters import mark_only_trainable, prefix_count, vit_blocks
from .base import register_plugin

__all__ = ["VPTConfig", "Prompts", "apply_vpt", "mark_only_vpt_trainable", "insert_prompts", "replace_prompts",
           "remove_prompts"]


# ============================================================================ functional core
def insert_prompts(x: torch.Tensor, prompts: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """``B x (n + N) x D`` tokens and ``P x D`` prompts -> ``B x (n + P + N) x D``."""
    return torch.cat([x[:, :n_prefix], prompts.expand(x.shape[0], -1, -1), x[:, n_prefix:]], dim=1)


def replace_prompts(x: torch.Tensor, prompts: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """Replace the ``P`` tokens after the ``n_prefix`` prefix tokens by ``prompts``."""
    p = prompts.shape[-2]
    return torch.cat([x[:, :n_prefix], prompts.expand(x.shape[0], -1, -1), x[:, n_prefix + p:]], dim=1)


def remove_prompts(x: torch.Tensor, num_prompts: int, n_prefix: int) -> torch.Tensor:
    return torch.cat([x[:, :n_prefix], x[:, n_prefix + num_prompts:]], dim=1)


# ============================================================================ module and hooks
class Prompts(nn.Module):
    """``layers x P x D`` prompt tokens (layers = 1 for VPT-shallow) with prompt dropout."""

    def __init__(self, layers: int, num_prompts: int, dim: int, patch_size: int = 16, dropout: float = 0.1):
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(layers, num_prompts, dim))
        v = math.sqrt(6.0 / float(3 * patch_size * patch_size + dim))
        nn.init.uniform_(self.prompts, -v, v)
        self.drop = nn.Dropout(dropout)
        self.num_prompts = num_prompts

    def layer(self, i: int) -> torch.Tensor:
        return self.drop(self.prompts[i])


class _Insert:
    def __init__(self, prompts: Prompts, n_prefix: int) -> None:
        self.prompts, self.n = prompts, n_prefix

    def __call__(self, module, args, out):
        return insert_prompts(out, self.prompts.layer(0), self.n)


class _Replace:
    def __init__(self, prompts: Prompts, layer: int, n_prefix: int) -> None:
        self.prompts, self.layer, self.n = prompts, layer, n_prefix

    def __call__(self, module, args):
        return (replace_prompts(args[0], self.prompts.layer(self.layer), self.n), *args[1:])


class _Remove:
    def __init__(self, prompts: Prompts, n_prefix: int) -> None:
        self.prompts, self.n = prompts, n_prefix

    def __call__(self, module, args):
        return (remove_prompts(args[0], self.prompts.num_prompts, self.n), *args[1:])


# ============================================================================ plug-in
@dataclass
class VPTConfig(PluginConfig):
    """Visual prompt tuning (arXiv 2203.12119): VPT-shallow (deep=false) or VPT-deep, ILA spec §6."""

    name: str = "vpt"
    num_prompts: int = 100
    """Prompt tokens P per layer."""
    deep: bool = False
    """VPT-deep: fresh prompts for every block (else prompts are inserted once, after the embedding)."""
    dropout: float = 0.1
    """Prompt dropout."""

    def validate(self, cfg: Config, key: str) -> None:
        if self.num_prompts < 1:
            raise ConfigError(f"{key}.num_prompts must be >= 1, got {self.num_prompts}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{key}.dropout must be in [0, 1), got {self.dropout}.")


@register_plugin("vpt", VPTConfig, families=("vit",))
def apply_vpt(model: nn.Module, cfg: VPTConfig | None = None) -> nn.Module:
    """Add prompts (``model.vpt``) to a timm-style ViT; see the module docstring."""
    cfg = cfg or VPTConfig()
    blocks = vit_blocks(model, "VPT")
    if hasattr(model, "vpt"):
        raise ValueError("VPT is already applied to this model (model.vpt exists); apply the plug-in once.")
    for attr in ("norm_pre", "norm"):
        if not isinstance(getattr(model, attr, None), nn.Module):
            raise TypeError(f"VPT needs the timm VisionTransformer modules norm_pre and norm; "
                            f"{type(model).__name__} has no '{attr}'.")
    ps = getattr(getattr(model, "patch_embed", None), "patch_size", 16)
    ps = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
    n = prefix_count(model)
    ref = next(iter(model.parameters()))
    prompts = Prompts(len(blocks) if cfg.deep else 1, cfg.num_prompts, int(model.embed_dim), ps, cfg.dropout)
    model.vpt = prompts.to(device=ref.device, dtype=ref.dtype)
    model.norm_pre.register_forward_hook(_Insert(model.vpt, n))
    if cfg.deep:
        for i in range(1, len(blocks)):
            blocks[i].register_forward_pre_hook(_Replace(model.vpt, i, n))
    model.norm.register_forward_pre_hook(_Remove(model.vpt, n))
    return model


def mark_only_vpt_trainable(model: nn.Module, include_head: bool = True, include_prefix_tokens: bool = True
                            ) -> nn.Module:
    """Only the prompts (and head, class/register tokens) train."""
    return mark_only_trainable(model, "vpt", ("vpt",), include_head, include_prefix_tokens)
