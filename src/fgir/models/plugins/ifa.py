"""Plug-in ``ifa``: the Intermediate Features Aggregation head for any timm ViT (and ViTFS).

Paper: E. A. Rios, M.-C. Hu, B.-C. Lai, "Anime Character Recognition using Intermediate Features
Aggregation", ISCAS 2022 (Animesion, arXiv 2101.08674). Spec: ``shared/specs/animesion.md`` §3.4.

The CLS token of every block output (before any final norm) is stacked into ``B x D x L``, mixed
over the layer axis by a learned Linear(L -> 1), then ReLU, LayerNorm(D, eps 1e-12) and
Linear(D -> K). The backbone's own final norm (and ``fc_norm``) is dropped and its head replaced,
so against a LayerNorm + Linear head the plug-in adds exactly L + 1 parameters.

The head is :class:`fgir.models.plugins.clca.heads.IFAHead` (the same module CLCA uses with its
group taps); the CLS taps come from the shared token path (:mod:`...token_reduction.path`), so
``ifa`` composes with ``token_reduction``. Backbones without a class token (ViTFS) tap the mean of
the patch tokens instead (the token path's ``tap``).

Optional exclusion loss (spec §3.5, off by default as in the headline runs): with taps c_1..c_L,
E = sum_{i=1}^{L-d} KL(softmax(c_{i+d}/T) || softmax(c_i/T)) (softmax over the D feature dims,
batch means) and the training loss gains ``-w T^2 E`` (logged as ``loss_exclusion``), which pushes
the layers' CLS features apart.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import Config, ConfigError, PluginConfig
from .base import plugin_class_count, register_plugin
from .clca.heads import IFAHead
from .token_reduction.path import ensure_token_path

__all__ = ["IFAConfig", "apply_ifa", "exclusion_term", "mark_only_ifa_trainable"]


@dataclass
class IFAConfig(PluginConfig):
    """IFA (Rios et al., ISCAS 2022): Linear(L -> 1) over the CLS of every block, ReLU, LayerNorm, Linear(D -> K)."""

    name: str = "ifa"
    layers: list[int] = field(default_factory=list)
    """Blocks (0-based) whose CLS is aggregated; empty = every block (the paper)."""
    eps: float = 1e-12
    """LayerNorm epsilon of the head (reference: 1e-12)."""
    exclusion_weight: float = 0.0
    """Weight w of the exclusion loss -w T^2 E (0 = off; reference when on: 0.01)."""
    exclusion_temperature: float = 1.0
    """Softmax temperature T of the exclusion loss."""
    exclusion_distance: int = 2
    """Layer distance d of the exclusion loss's KL pairs (i, i + d)."""

    def validate(self, cfg: Config, key: str) -> None:
        if not self.eps > 0:
            raise ConfigError(f"{key}.eps must be > 0, got {self.eps}.")
        if self.exclusion_weight < 0 or not self.exclusion_temperature > 0 or self.exclusion_distance < 1:
            raise ConfigError(f"{key}: exclusion_weight must be >= 0, exclusion_temperature > 0 and "
                              f"exclusion_distance >= 1, got {self.exclusion_weight}, {self.exclusion_temperature}, "
                              f"{self.exclusion_distance}.")
        bad = [v for v in self.layers if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if bad or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"{key}.layers must be unique block indices >= 0 (empty = every block), "
                              f"got {self.layers}.")


def exclusion_term(taps: list[torch.Tensor], temperature: float = 1.0, distance: int = 2) -> torch.Tensor:
    """``E = sum_i KL(softmax(c_{i+d}/T) || softmax(c_i/T))`` over the B x D taps, each KL a batch mean."""
    total = taps[0].new_zeros(())
    for i in range(len(taps) - distance):
        log_q = F.log_softmax(taps[i].float() / temperature, dim=-1)
        log_p = F.log_softmax(taps[i + distance].float() / temperature, dim=-1)
        total = total + F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return total


def _aux_losses(self: nn.Module) -> dict:
    w, t, d = self.fgir_ifa_exclusion
    if not (self.training and w > 0 and self.token_path.last_taps):
        return {}
    return {"loss_exclusion": -w * t * t * exclusion_term(self.token_path.last_taps, t, d)}


def _forward_head(self: nn.Module, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    taps = self.token_path.last_taps
    if not taps:
        raise RuntimeError("the ifa head reads the CLS taps of forward_features; call forward_features first.")
    return self.head(torch.stack(taps, dim=-1), pre_logits=pre_logits)


@register_plugin("ifa", IFAConfig, families=("vit",))
def apply_ifa(model: nn.Module, cfg: IFAConfig, num_classes: int | None = None) -> nn.Module:
    """Replace ``model``'s final norm and head by the IFA head over the CLS of ``cfg.layers``."""
    path = ensure_token_path(model, "ifa")
    if path.taps is not None:
        raise ValueError(f"ifa: the token path already feeds a head from taps {path.taps} (clca?); "
                         "use one of clca (head: ifa) and ifa.")
    depth = len(model.blocks)
    layers = sorted(int(v) for v in cfg.layers) if cfg.layers else list(range(depth))
    if layers[0] < 0 or layers[-1] > depth - 1:
        raise ValueError(f"ifa layers {layers} must lie in [0, {depth - 1}] for a {depth}-block model.")
    k = plugin_class_count("ifa", model, num_classes)
    dim, eps, g = model.embed_dim, float(cfg.eps), len(layers)
    path.taps = layers
    model.norm = nn.Identity()
    if isinstance(getattr(model, "fc_norm", None), nn.Module):
        model.fc_norm = nn.Identity()
    model.num_classes = k
    model.head = IFAHead(dim, g, k, eps=eps).train(model.training)
    model.forward_head = types.MethodType(_forward_head, model)

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        self.num_classes = num_classes
        self.head = IFAHead(dim, g, num_classes, eps=eps).train(self.training)

    model.reset_classifier = types.MethodType(reset_classifier, model)
    model.fgir_ifa_exclusion = (float(cfg.exclusion_weight), float(cfg.exclusion_temperature),
                                int(cfg.exclusion_distance))
    if cfg.exclusion_weight > 0:
        model.fgir_aux_losses = types.MethodType(_aux_losses, model)
    return model


def mark_only_ifa_trainable(model: nn.Module) -> nn.Module:
    """Freeze everything but the IFA head (an IFA linear probe)."""
    from .base import mark_only_plugin_trainable

    return mark_only_plugin_trainable(model, "ifa")
