"""LoRA: low-rank updates of the frozen Linear layers of a timm ViT.

Paper: "LoRA: Low-Rank Adaptation of Large Language Models", E. J. Hu et al., arXiv 2106.09685;
a PEFT baseline for ILA (arXiv 2409.11051; not in its Table 1).

``W x`` becomes ``W x + (alpha / rank) * B A x`` with A (rank x in) Kaiming-uniform and B
(out x rank) zero, so the adapted model starts equal to the backbone. Targets: ``q``, ``k``, ``v``
(slices of timm's fused ``attn.qkv``), ``proj`` (``attn.proj``), ``fc1``, ``fc2`` (``mlp``). The update
is added by a forward hook on the target Linear: the backbone's modules and state-dict keys stay
as they are (so a frozen-backbone checkpoint and the adapter-only checkpoints keep their keys),
and merging (:func:`merge_lora`) is a plain ``W += scale * B A``.

NOTE: written as a plug-in instead of using the ``peft`` library: ``peft`` replaces each target
Linear by a wrapper (``qkv.base_layer.weight``), which renames backbone keys, and it cannot target
the q and v slices of timm's fused qkv Linear.
"""

from __future__ import annotations

import copy
import math
import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ...config import Config, ConfigError, PluginConfig
from .adapters import check_locations, mark_only_trainable, vit_blocks
from .base import register_plugin

__all__ = ["LoRAConfig", "LoRAUpdate", "apply_lora", "mark_only_lora_trainable", "merge_lora", "TARGETS"]

TARGETS = ("q", "k", "v", "proj", "fc1", "fc2")


class LoRAUpdate(nn.Module):
    """``scale * B(A(dropout(x)))`` with A ``rank x in`` and B ``out x rank`` (B zero-initialised)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = float(alpha) / rank
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.drop(x) @ self.A.t() @ self.B.t()) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scale


class _AddLoRA:
    """Forward hook on a Linear: adds the updates; ``slices`` = output slices for fused qkv."""

    def __init__(self, updates: list[tuple[nn.Module, int, int]]) -> None:
        self.updates = updates

    def __call__(self, module, args, out):
        x = args[0]
        if len(self.updates) == 1 and self.updates[0][1] == 0 and self.updates[0][2] == out.shape[-1]:
            return out + self.updates[0][0](x)
        pieces, pos = [], 0
        for upd, lo, hi in sorted(self.updates, key=lambda t: t[1]):
            if lo > pos:
                pieces.append(out[..., pos:lo])
            pieces.append(out[..., lo:hi] + upd(x))
            pos = hi
        if pos < out.shape[-1]:
            pieces.append(out[..., pos:])
        return torch.cat(pieces, dim=-1)


@dataclass
class LoRAConfig(PluginConfig):
    """LoRA low-rank updates (arXiv 2106.09685) of a timm ViT's Linear layers."""

    name: str = "lora"
    rank: int = 8
    """Rank r of every update."""
    alpha: float = 8.0
    """Scale alpha: updates are multiplied by alpha / r."""
    targets: list = field(default_factory=lambda: ["q", "v"])
    """Linear layers to adapt: q, k, v (slices of attn.qkv), proj, fc1, fc2."""
    blocks: list = field(default_factory=lambda: [-1])
    """Blocks to adapt; [-1] = all."""
    dropout: float = 0.0
    """Dropout on the update's input."""

    def validate(self, cfg: Config, key: str) -> None:
        if self.rank < 1:
            raise ConfigError(f"{key}.rank must be >= 1, got {self.rank}.")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"{key}.targets={self.targets}: expected distinct entries of {list(TARGETS)}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{key}.dropout must be in [0, 1), got {self.dropout}.")


def _target_linear(blk: nn.Module, t: str, i: int) -> tuple[nn.Linear, int, int]:
    attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
    if t in ("q", "k", "v"):
        lin = getattr(attn, "qkv", None)
        if not isinstance(lin, nn.Linear):
            raise TypeError(f"LoRA target '{t}': block {i} has no fused attn.qkv Linear.")
        d = lin.out_features // 3
        j = "qkv".index(t)
        return lin, j * d, (j + 1) * d
    owner = attn if t == "proj" else mlp
    lin = getattr(owner, t, None)
    if not isinstance(lin, nn.Linear):
        raise TypeError(f"LoRA target '{t}': block {i} has no Linear '{t}'.")
    return lin, 0, lin.out_features


@register_plugin("lora", LoRAConfig, families=("vit",))
def apply_lora(model: nn.Module, cfg: LoRAConfig | None = None) -> nn.Module:
    """Add LoRA updates (``model.lora``, keyed ``"<block>_<target>"``) to a timm-style ViT."""
    cfg = cfg or LoRAConfig()
    cfg.validate(None, "lora")  # type: ignore[arg-type]
    blocks = vit_blocks(model, "LoRA")
    if hasattr(model, "lora"):
        raise ValueError("LoRA is already applied to this model (model.lora exists); apply the plug-in once.")
    idx = list(range(len(blocks))) if list(cfg.blocks) == [-1] else check_locations(cfg.blocks, len(blocks),
                                                                                  "lora.blocks")
    updates = nn.ModuleDict()
    per_linear: dict[int, tuple[nn.Linear, list]] = {}
    for i in idx:
        for t in cfg.targets:
            lin, lo, hi = _target_linear(blocks[i], t, i)
            upd = LoRAUpdate(lin.in_features, hi - lo, cfg.rank, cfg.alpha, cfg.dropout)
            updates[f"{i}_{t}"] = upd
            per_linear.setdefault(id(lin), (lin, []))[1].append((upd, lo, hi))
    ref = next(iter(model.parameters()))
    model.lora = updates.to(device=ref.device, dtype=ref.dtype)
    for lin, ups in per_linear.values():
        lin.register_forward_hook(_AddLoRA(ups))
    from ...export.forms import register_export_form

    model.lora_merged_copy = types.MethodType(lora_merged_copy, model)
    register_export_form(model, "lora_merged_copy", "default (LoRA merged into the weights)")
    return model


@torch.no_grad()
def lora_merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every update merged into its Linear weights and the LoRA hooks
    removed (the graph ``fgir export`` traces); ``model`` is unchanged."""
    sd = merge_lora(model)
    m = copy.deepcopy(model)
    for mod in m.modules():
        for k in [k for k, h in mod._forward_hooks.items() if isinstance(h, _AddLoRA)]:
            del mod._forward_hooks[k]
    del m.lora, m.lora_merged_copy, m.fgir_export
    m.load_state_dict(sd)
    return m


@torch.no_grad()
def merge_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone state dict with every update merged (``W += scale * B A``); the model is unchanged."""
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("lora.")}
    names = {id(m): n for n, m in model.named_modules()}
    blocks = vit_blocks(model, "merge_lora")
    for key, upd in model.lora.items():
        i, t = key.split("_", 1)
        lin, lo, hi = _target_linear(blocks[int(i)], t, int(i))
        sd[f"{names[id(lin)]}.weight"][lo:hi] += upd.delta_weight()
    return sd


def mark_only_lora_trainable(model: nn.Module, include_head: bool = True, include_prefix_tokens: bool = True
                             ) -> nn.Module:
    """Only the LoRA updates (and head, class/register tokens) train."""
    return mark_only_trainable(model, "lora", ("lora",), include_head, include_prefix_tokens)
