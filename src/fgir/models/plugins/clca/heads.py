"""Heads over stacked CLS taps ``B x D x G``: CLA (CLCA, arXiv 2501.00243) and IFA (Rios et al., ISCAS 2022)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CLAHead", "IFAHead", "cla_head", "cla_param_count", "ifa_param_count"]


def cla_head(feats: torch.Tensor, bn1: nn.BatchNorm1d, dw: nn.Conv1d, bn2: nn.BatchNorm1d, pw: nn.Conv1d | None
             ) -> torch.Tensor:
    """``pw(GELU(bn2(dw(bn1(F)))))`` on ``B x D x G`` taps; ``pw=None`` returns the ``B x mD`` pre-logits."""
    h = F.gelu(bn2(dw(bn1(feats))))
    return h.flatten(1) if pw is None else pw(h).flatten(1)


class CLAHead(nn.Module):
    """Cross-Layer Aggregation head: BatchNorm1d(D) -> depth-wise Conv1d(D -> mD, kernel G, groups D)
    -> BatchNorm1d(mD) -> GELU (erf) -> Conv1d(mD -> K, 1). ``1537 K + 12288`` parameters at D 768,
    G 4, m 2 (spec clca.md §4.3); PyTorch default init."""

    def __init__(self, dim: int, taps: int, kernels: int, num_classes: int):
        super().__init__()
        self.taps = taps
        self.bn1 = nn.BatchNorm1d(dim)
        self.dw = nn.Conv1d(dim, kernels * dim, kernel_size=taps, stride=taps, groups=dim)
        self.bn2 = nn.BatchNorm1d(kernels * dim)
        self.pw = nn.Conv1d(kernels * dim, num_classes, kernel_size=1)

    def forward(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if feats.ndim != 3 or feats.shape[-1] != self.taps:
            raise ValueError(f"CLAHead expects B x D x {self.taps} taps, got {tuple(feats.shape)}.")
        return cla_head(feats, self.bn1, self.dw, self.bn2, None if pre_logits else self.pw)


class IFAHead(nn.Module):
    """IFA head (m = 0): Linear(G -> 1) over the tap axis (shared by channels) -> ReLU -> LayerNorm(D)
    -> Linear(D -> K); ``G + 1 + 2D + DK + K`` parameters. The CLCA plug-in uses it over its group
    taps (LayerNorm eps 1e-5), the ``ifa`` plug-in over every block (Animesion: eps 1e-12)."""

    def __init__(self, dim: int, taps: int, num_classes: int, eps: float = 1e-5):
        super().__init__()
        self.taps = taps
        self.agg = nn.Linear(taps, 1)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if feats.ndim != 3 or feats.shape[-1] != self.taps:
            raise ValueError(f"IFAHead expects B x D x {self.taps} taps, got {tuple(feats.shape)}.")
        h = self.norm(F.relu(self.agg(feats).squeeze(-1)))
        return h if pre_logits else self.fc(h)


def cla_param_count(dim: int, taps: int, kernels: int, num_classes: int) -> int:
    """``2D + mDG + mD + 2mD + mDK + K``."""
    md = kernels * dim
    return 2 * dim + md * taps + md + 2 * md + md * num_classes + num_classes


def ifa_param_count(dim: int, taps: int, num_classes: int) -> int:
    """``G + 1 + 2D + DK + K``."""
    return taps + 1 + 2 * dim + dim * num_classes + num_classes
