"""Plug-in ``clca``: Cross-Layer Cache Aggregation for token-reduced ViTs.

Paper: E. A. Rios et al., "Cross-Layer Cache Aggregation for Token Reduction in Ultra-Fine-Grained
Image Recognition", ICASSP 2025, arXiv 2501.00243. Spec: ``shared/specs/clca.md`` §2-4, §15.

Two parts, usable with any ``token_reduction`` method or without one:

* the **Cross-Layer Cache** (CLC): after each block up to the last recovery block, push the GAP of
  the current tokens and the last ``num_clr`` tokens (the **CLR** token at first) to a cache; at
  every recovery block (the reduction locations plus block L-2) append the cache to the end of the
  sequence and empty it;
* the **Cross-Layer Aggregation** (CLA) head: the CLS token tapped after every group
  (``locations`` and the last block) -> BatchNorm -> depth-wise conv over the taps -> BatchNorm ->
  GELU -> point-wise conv (``head: cla``); ``head: ifa`` is the IFA head (m = 0: Linear over the
  taps, ReLU, LayerNorm, Linear); ``head: linear`` keeps the backbone's head.

``mode: faithful`` (the default, because it reproduces the paper's token tables and MACs) reads
the CLR carrier positionally (the last token after each recovery, spec §3.2) and lets every
method except DPC-KNN reduce the CLR and cache tokens; the reference's no-TR model decays the CLR
(its ``no_weight_decay`` typo). ``mode: fixed`` protects the CLR and cache tokens from reduction
(``protect_cache``), reads the CLR carrier tracked (``clr_readout: auto``, below) and never decays
the CLR. In both modes the stale 1000-class head is not kept, empty flushes are skipped and ToMe
sizes are extended only once they exist (spec §15 items 9, 10, 19).

``clr_readout`` (spec §15 item 5) picks the CLR carrier each cache push reads. ``positional`` (what
``auto`` means in faithful mode, so every faithful count and output is the reference's) reads the
last ``num_clr`` tokens; after the first recovery those are the re-injected cache copies, not the
CLR (spec §17 item 6), even with the cache protected. ``tracked`` (what ``auto`` means in fixed
mode; allowed in faithful mode as a deliberate deviation) gives the tokens roles: the original CLR
tokens (appended after the patches at the start, index P+1.. for P patches and one prefix token)
carry "CLR", re-injected cache tokens are new tokens with cache roles and never become the CLR. It
carries, per sample, the index of the token descended from each original CLR through every
reduction, using the reducer's own assignment map (built only while tracking or ``record`` is on),
and pushes that token (a per-sample gather, so the gradient reaches ``clr`` through it). A recovery
does not move the index (the cache is appended at the end). "Descended" per method:

* EViT: kept -> its new index (CLS-attention order); not kept -> the fused token (the only output
  that receives it). Top-K: kept -> its new index; not kept -> dropped.
* ToMe: unmerged -> its new index; merged -> its destination token (the only one it goes into).
* ATS: sampled -> its index among the sampled tokens (ascending, padding after); not sampled ->
  dropped.
* DynamicViT, eval: kept -> its new index (keep-score order); not kept -> dropped. Training
  (masks, no gather): the index never moves; a masked-out CLR (hard decision 0) counts as dropped.
* SiT / PatchMerger (soft pooling): the output in which it has the largest weight (argmax over
  outputs of its weight column; the first on ties); dropped when a stage keeps 0 tokens.
* DPC-KNN: its cluster (hard assignment), or its own index when the suffix is protected.
* Protected suffix (``protect_cache``, fixed mode): kept in place behind the candidates.

Dropped (no descendant): the index becomes -1 for the rest of the forward (a later recovery does
not bring the CLR back) and every later push reads the positional token (the last ``num_clr``
tokens, as ``positional`` does). Several CLRs can end in the same token (it is then read twice).
Before the first non-empty recovery tracked equals positional exactly (the original CLR is still
the last token) unless a reduction at block 0 (its flush is empty) moved the reducible CLR. After it
they differ, with or without reduction and with or without ``protect_cache``: without reduction
tracked reads the original CLR at its fixed index P+1.. at every push, positional the cache copy
pushed at block ``locations[0] - 1``. Token
counts and MACs are the same (only the token read changes); ``TokenPath.last_clr_index`` holds the
tracked index at each push (-1: the positional token was read).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ....config import Config, ConfigError, PluginConfig, check_choice
from ..base import register_plugin
from ..token_reduction.path import check_locations, default_locations, ensure_token_path
from .heads import CLAHead, IFAHead

__all__ = ["CLCAConfig", "apply_clca", "clca_recovery", "flush_sizes"]


@dataclass
class CLCAConfig(PluginConfig):
    """CLCA (arXiv 2501.00243): Cross-Layer Cache of GAP + CLR carriers and the CLA / IFA head."""

    name: str = "clca"
    mode: str = "faithful"
    """faithful (default: reference behaviour, positional CLR read-out) or fixed (CLR/cache protected)."""
    head: str = "cla"
    """Classifier over the CLS taps: cla (CLA head), ifa (IFA head, m = 0) or linear (the backbone's head)."""
    cla_kernels: int = 2
    """CLA depth-wise kernels per channel m (reference ifa_dws_conv_groups = 2)."""
    cache: bool = True
    """Enable the Cross-Layer Cache (CLC)."""
    num_clr: int = 1
    """Learnable CLR tokens appended to the sequence (paper CLCA: 1; clca_no_clr: 0)."""
    include_gap: bool = True
    """Cache the GAP carrier (mean of the tokens after the prefix, up to the current main length)."""
    pool_cls: bool = False
    """Include the CLS (prefix) tokens in the GAP carrier."""
    pool_clr: bool = False
    """Include the initial CLR in the GAP carrier until the first recovery."""
    recover_at_last: bool = True
    """Add block L-2 as a final recovery block (reference default)."""
    locations: list[int] = field(default_factory=list)
    """Group boundaries; empty = the token_reduction locations, else [3, 6, 9] (depth*k//4 for other depths)."""
    taps: list[int] = field(default_factory=list)
    """Blocks whose CLS feeds the head; empty = locations + the last block."""
    protect_cache: str = "auto"
    """Keep the CLR and cache tokens out of reduction: auto (faithful: DPC-KNN only; fixed: always), on or off."""
    clr_readout: str = "auto"
    """CLR carrier each cache push reads: auto (faithful: positional; fixed: tracked), positional (the last num_clr tokens: cache copies after the first recovery) or tracked (the original CLR's descendant; positional once dropped)."""  # noqa: E501

    def validate(self, cfg: Config, key: str) -> None:
        check_choice(f"{key}.mode", self.mode, ["faithful", "fixed"])
        check_choice(f"{key}.head", self.head, ["cla", "ifa", "linear"])
        check_choice(f"{key}.protect_cache", self.protect_cache, ["auto", "on", "off"])
        check_choice(f"{key}.clr_readout", self.clr_readout, ["auto", "positional", "tracked"])
        if self.clr_readout == "tracked" and not (self.cache and self.num_clr > 0):
            raise ConfigError(f"{key}: clr_readout=tracked needs cache=true and num_clr > 0 (no CLR carrier to read).")
        if self.num_clr < 0:
            raise ConfigError(f"{key}.num_clr must be >= 0, got {self.num_clr}.")
        if self.cla_kernels < 1:
            raise ConfigError(f"{key}.cla_kernels must be >= 1, got {self.cla_kernels}.")
        if self.cache and not (self.num_clr > 0 or self.include_gap):
            raise ConfigError(f"{key}: cache=true needs num_clr > 0 or include_gap=true (nothing to cache).")


def clca_recovery(locations: list[int], depth: int, recover_at_last: bool = True) -> list[int]:
    """Recovery blocks R = locations (+ [L-2]), sorted and de-duplicated."""
    return sorted(set(locations) | ({depth - 2} if recover_at_last else set()))


def flush_sizes(recovery: list[int], carriers: int) -> list[int]:
    """Tokens appended at each recovery block: ``c * (R_j - R_{j-1})`` with ``R_{-1} = 0``."""
    prev, out = 0, []
    for r in recovery:
        out.append(carriers * (r - prev))
        prev = r
    return out


def _forward_head(self: nn.Module, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    taps = self.token_path.last_taps
    if not taps:
        raise RuntimeError("the clca head reads the CLS taps of forward_features; call forward_features first.")
    return self.head(torch.stack(taps, dim=-1), pre_logits=pre_logits)


def _make_head(kind: str, dim: int, taps: int, kernels: int, num_classes: int) -> nn.Module:
    return CLAHead(dim, taps, kernels, num_classes) if kind == "cla" else IFAHead(dim, taps, num_classes)


@register_plugin("clca", CLCAConfig, families=("vit",))
def apply_clca(model: nn.Module, cfg: CLCAConfig) -> nn.Module:
    """Attach the CLC (+ CLR token) and the CLA/IFA head to ``model`` (a timm ViT); returns the same model."""
    path = ensure_token_path(model, "clca")
    depth = len(model.blocks)
    if cfg.locations and path.locations is not None and list(cfg.locations) != path.locations:
        raise ValueError(f"clca locations {list(cfg.locations)} differ from token_reduction's {path.locations}.")
    locs = list(cfg.locations) or path.locations or default_locations(depth)
    locs = check_locations(locs, depth, "clca")
    taps = sorted(set(int(t) for t in cfg.taps)) if cfg.taps else sorted(set(locs) | {depth - 1})
    if taps[0] < 0 or taps[-1] > depth - 1:
        raise ValueError(f"clca taps {taps} must lie in [0, {depth - 1}].")
    has_cls = getattr(model, "cls_token", None) is not None
    if cfg.head != "linear" and not model.num_classes:
        raise ValueError("clca head 'cla'/'ifa' needs a classifier (num_classes > 0); build the model with "
                         "num_classes or use head: linear.")
    dim = model.embed_dim
    path.locations = locs
    path.cache = bool(cfg.cache)
    path.include_gap, path.pool_cls, path.pool_clr = cfg.include_gap, cfg.pool_cls, cfg.pool_clr
    path.num_clr = int(cfg.num_clr)
    path.recovery = clca_recovery(locs, depth, cfg.recover_at_last) if cfg.cache else []
    path.protect_cache = {"on": True, "off": False}.get(cfg.protect_cache, True if cfg.mode == "fixed" else None)
    tracked = cfg.clr_readout == "tracked" or (cfg.clr_readout == "auto" and cfg.mode == "fixed")
    path.clr_readout = "tracked" if tracked and cfg.cache and cfg.num_clr > 0 else "positional"
    if cfg.num_clr:
        # a copy of the (pretrained) CLS token; class-token-free backbones copy their first register
        src = model.cls_token if has_cls else getattr(model, "reg_token", None)
        init = src[:, :1].detach().clone() if src is not None else torch.zeros(1, 1, dim).normal_(std=1e-6)
        model.clr = nn.Parameter(init.expand(1, cfg.num_clr, dim).clone())
        class_pos = getattr(model, "pos_embed", None) is not None and not getattr(model, "no_embed_class", False)
        model.clr_pos = nn.Parameter(torch.randn(1, cfg.num_clr, dim) * 0.02) if class_pos else None
    if cfg.head != "linear":
        path.taps = taps
        model.norm = nn.Identity()
        model.head = _make_head(cfg.head, dim, len(taps), cfg.cla_kernels, model.num_classes).train(model.training)
        model.forward_head = types.MethodType(_forward_head, model)
        kind, kernels, g = cfg.head, cfg.cla_kernels, len(taps)

        def reset_classifier(self, num_classes: int, global_pool=None) -> None:
            self.num_classes = num_classes
            self.head = _make_head(kind, dim, g, kernels, num_classes).train(self.training)

        model.reset_classifier = types.MethodType(reset_classifier, model)
    base_nwd = model.no_weight_decay
    faithful = cfg.mode == "faithful"

    def no_weight_decay(self) -> set[str]:
        names = set(base_nwd()) | {"clr_pos"}
        # faithful quirk: the reference no-TR model lists 'clc' (a typo), so there the CLR is decayed
        if not (faithful and self.token_path.reducer is None):
            names.add("clr")
        return names

    model.no_weight_decay = types.MethodType(no_weight_decay, model)
    return model
