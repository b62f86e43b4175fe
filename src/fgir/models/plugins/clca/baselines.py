"""Intermediate-feature baselines of the CLCA paper (arXiv 2501.00243, spec ``clca.md`` §13): H2T and VQT.

* ``h2t`` — Head2Toe (Evci et al., ICML 2022, arXiv 2201.03529) as the CLCA authors implemented it:
  every selected block emits the token means of LN1(x), the attention branch, the MLP hidden
  activation (4D) and the MLP branch, L2-normalised jointly (7D per block); plus the normalised
  means of the embeddings and of the final-norm output; one Linear head over all of them. No
  Head2Toe feature-selection stage (as in the reference). Optional group lasso on the head.
* ``vqt`` — Visual Query Tuning (Tu et al., CVPR 2023, arXiv 2212.03220), implemented *correctly*
  (a deviation from the reference, whose slicing bug replaces the CLS, spec §13.2): ``q`` learnable
  query tokens per selected block attend to the block's tokens as queries only (keys and values
  come from the original tokens, which are left untouched), pass the block's MLP, and their
  L2-normalised outputs plus the normalised final CLS feed one Linear head.

Both read the backbone through forward hooks (the backbone forward is timm's own) and replace
``head`` / ``forward_head``. NOTE: the hooks close over the model they were attached to, so a
deep copy (EMA) reads the original's features; train these baselines without ``optim.ema``.
``locations: []`` taps every block (``*_all``), ``[3, 6, 9, 11]`` the
groups (``*_groups``).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ....config import Config, ConfigError, PluginConfig
from ..base import register_plugin
from ..token_reduction.path import check_vit

__all__ = ["H2TConfig", "VQTConfig", "apply_h2t", "apply_vqt", "group_lasso"]


def group_lasso(weight: torch.Tensor) -> torch.Tensor:
    """``sum_c ||W[:, c]||_2``: the L2 norm over classes of each input channel, summed over channels."""
    return weight.norm(dim=0).sum()


def _blocks(model: nn.Module, locations: list, plugin: str) -> list[int]:
    depth = len(model.blocks)
    locs = sorted({int(i) for i in locations}) if locations else list(range(depth))
    if locs[0] < 0 or locs[-1] >= depth:
        raise ValueError(f"plug-in '{plugin}': locations {locs} must lie in [0, {depth - 1}].")
    return locs


def _aux(self: nn.Module) -> dict:
    w = self.fgir_lasso_weight
    if self.training and w > 0:
        return {"loss_group_lasso": w * group_lasso(self.head.weight)}
    return {}


# ============================================================================ H2T
@dataclass
class H2TConfig(PluginConfig):
    """H2T (Head2Toe, arXiv 2201.03529) as in the CLCA reference: pooled block features -> Linear."""

    name: str = "h2t"
    locations: list[int] = field(default_factory=list)
    """Blocks whose features are used; empty = every block (h2t_all), [3, 6, 9, 11] = h2t_groups."""
    lasso_weight: float = 0.0
    """Group-lasso weight on the head (reference *_lasso runs: 1e-4); logged as loss_group_lasso."""

    def validate(self, cfg: Config, key: str) -> None:
        if self.lasso_weight < 0:
            raise ConfigError(f"{key}.lasso_weight must be >= 0, got {self.lasso_weight}.")


def h2t_features(store: dict, blocks: list[int]) -> torch.Tensor:
    """Concatenate the per-block jointly normalised features and the two global features."""
    feats = [F.normalize(store["embed"].mean(1), dim=-1)]
    for i in blocks:
        parts = [store[(i, k)].mean(1) for k in ("ln1", "attn", "hidden", "mlp")]
        feats.append(F.normalize(torch.cat(parts, dim=-1), dim=-1))
    feats.append(F.normalize(store["final"].mean(1), dim=-1))
    return torch.cat(feats, dim=-1)


@register_plugin("h2t", H2TConfig, families=("vit",))
def apply_h2t(model: nn.Module, cfg: H2TConfig) -> nn.Module:
    """Hook the H2T features into ``model`` and replace its head by Linear(G*7D + 2D, K)."""
    check_vit(model, "h2t")
    if not model.num_classes:
        raise ValueError("h2t needs num_classes > 0.")
    blocks = _blocks(model, cfg.locations, "h2t")
    store: dict = {}

    def keep(key):
        def hook(mod, inp, out):
            store[key] = out
        return hook

    handles = [model.norm_pre.register_forward_hook(keep("embed")), model.norm.register_forward_hook(keep("final"))]
    for i in blocks:
        blk = model.blocks[i]
        act = getattr(blk.mlp, "act", None)
        if act is None:
            raise TypeError(f"h2t: block {i}'s MLP has no 'act' module to read the hidden activation from.")
        handles += [blk.norm1.register_forward_hook(keep((i, "ln1"))),
                    blk.drop_path1.register_forward_hook(keep((i, "attn"))),
                    act.register_forward_hook(keep((i, "hidden"))),
                    blk.drop_path2.register_forward_hook(keep((i, "mlp")))]
    d = model.embed_dim
    hidden = model.blocks[blocks[0]].mlp.fc1.out_features
    model.head = nn.Linear(len(blocks) * (3 * d + hidden) + 2 * d, model.num_classes)
    model.fgir_h2t_handles = handles
    model.fgir_lasso_weight = float(cfg.lasso_weight)

    def forward_head(self, x, pre_logits: bool = False):
        f = h2t_features(store, blocks)
        return f if pre_logits else self.head(f)

    model.forward_head = types.MethodType(forward_head, model)
    model.fgir_aux_losses = types.MethodType(_aux, model)
    return model


# ============================================================================ VQT
@dataclass
class VQTConfig(PluginConfig):
    """VQT (Visual Query Tuning, arXiv 2212.03220), correct query-only prompts (deviation from the buggy reference)."""

    name: str = "vqt"
    locations: list[int] = field(default_factory=list)
    """Blocks with query tokens; empty = every block (vqt_all), [3, 6, 9, 11] = vqt_groups."""
    num_queries: int = 5
    """Query tokens per selected block."""
    lasso_weight: float = 0.0
    """Group-lasso weight on the head (reference *_lasso runs: 1e-4)."""

    def validate(self, cfg: Config, key: str) -> None:
        if self.num_queries < 1:
            raise ConfigError(f"{key}.num_queries must be >= 1, got {self.num_queries}.")
        if self.lasso_weight < 0:
            raise ConfigError(f"{key}.lasso_weight must be >= 0, got {self.lasso_weight}.")


def query_block(blk: nn.Module, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Run ``prompts`` (B x q x D) through ``blk`` as queries only: keys/values come from ``x``."""
    attn = blk.attn
    b, n, _ = x.shape
    q_len = prompts.shape[1]
    hx, hp = blk.norm1(x), blk.norm1(prompts)
    hd, nh = attn.head_dim, attn.num_heads
    w_q, w_k, w_v = attn.qkv.weight.chunk(3, dim=0)
    b_q, b_k, b_v = attn.qkv.bias.chunk(3) if attn.qkv.bias is not None else (None, None, None)
    q = F.linear(hp, w_q, b_q).reshape(b, q_len, nh, hd).transpose(1, 2)
    k = F.linear(hx, w_k, b_k).reshape(b, n, nh, hd).transpose(1, 2)
    v = F.linear(hx, w_v, b_v).reshape(b, n, nh, hd).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    o = attn.proj_drop(attn.proj(attn.norm((attn.attn_drop(a) @ v).transpose(1, 2).reshape(b, q_len, nh * hd))))
    p = prompts + blk.drop_path1(blk.ls1(o))
    return p + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(p))))


@register_plugin("vqt", VQTConfig, families=("vit",))
def apply_vqt(model: nn.Module, cfg: VQTConfig) -> nn.Module:
    """Add query tokens to the selected blocks of ``model`` and replace its head by Linear((G*q + 1) D, K)."""
    check_vit(model, "vqt")
    if not model.num_classes:
        raise ValueError("vqt needs num_classes > 0.")
    blocks = _blocks(model, cfg.locations, "vqt")
    d, q = model.embed_dim, cfg.num_queries
    patch = model.patch_embed.patch_size[0] if hasattr(model.patch_embed, "patch_size") else 16
    val = math.sqrt(6.0 / float(3 * patch * patch + d))  # VPT uniform init
    model.vqt_prompts = nn.Parameter(torch.empty(len(blocks), q, d).uniform_(-val, val))
    store: dict = {}
    handles = []
    for j, i in enumerate(blocks):
        def hook(mod, args, j=j):
            x = args[0]
            store[j] = query_block(mod, x, model.vqt_prompts[j].expand(x.shape[0], -1, -1))
        handles.append(model.blocks[i].register_forward_pre_hook(hook))
    model.head = nn.Linear((len(blocks) * q + 1) * d, model.num_classes)
    model.fgir_vqt_handles = handles
    model.fgir_lasso_weight = float(cfg.lasso_weight)

    def forward_head(self, x, pre_logits: bool = False):
        feats = [F.normalize(store[j].flatten(1), dim=-1) for j in range(len(blocks))]
        feats.append(F.normalize(self.pool(x), dim=-1))
        f = torch.cat(feats, dim=-1)
        return f if pre_logits else self.head(f)

    model.forward_head = types.MethodType(forward_head, model)
    model.fgir_aux_losses = types.MethodType(_aux, model)
    return model
