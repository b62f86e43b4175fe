"""Fold inference-time BatchNorms of token models into the Linear layer that reads them.

ViTFS (and any timm ViT built with ``norm_layer=TokenBatchNorm1d``) normalises tokens with a
BatchNorm over channels before attention and before the MLP. In eval mode that norm is a fixed
per-channel affine map ``y = a * x + c`` (``a = w / sqrt(running_var + eps)``,
``c = b - running_mean * a``), and in timm's pre-norm ``Block`` its output feeds one Linear only
(``attn.qkv`` and ``mlp.fc1``), so ``W (a * x + c) + d = (W diag(a)) x + (W c + d)``: the norm can
be folded into that Linear, as onnxruntime folds a BatchNorm into the convolution before it. In an
exported graph this removes every such norm with the two transposes around it (the BatchNorm
runs on ``B x D x T``).

:func:`fold_token_norms` works on a copy and folds only where the structure guarantees the
identity: an exact timm ``Block`` whose ``forward`` is not replaced and which carries no hooks,
an eval-mode :class:`~fgir.models.backbones.vitfs.TokenBatchNorm1d` with running statistics, and
an exact ``nn.Linear`` as ``attn.qkv`` / ``mlp.fc1`` of timm's own ``Attention`` / ``Mlp``. A
plug-in may still read a block's norm from outside (an adapter beside the attention, say), so the
caller compares the folded copy with the original on a batch and keeps the original when they
differ (:func:`fold_if_equal`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["fold_token_norms", "fold_if_equal"]


def _plain(m: nn.Module, cls: type) -> bool:
    """``m`` is exactly ``cls``, with its class's forward and no hooks."""
    return (type(m) is cls and "forward" not in m.__dict__ and not m._forward_hooks and not m._forward_pre_hooks
            and not getattr(m, "_forward_hooks_with_kwargs", None))


def _norm_affine(norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.rsqrt(norm.running_var.double() + norm.eps)
    c = -norm.running_mean.double() * a
    if norm.affine:
        a, c = a * norm.weight.double(), c * norm.weight.double() + norm.bias.double()
    return a, c


def _fold_into(norm: nn.BatchNorm1d, linear: nn.Linear) -> None:
    a, c = _norm_affine(norm)
    w = linear.weight.double()
    bias = w @ c + (linear.bias.double() if linear.bias is not None else 0.0)
    with torch.no_grad():
        linear.weight.copy_((w * a[None, :]).to(linear.weight.dtype))
        if linear.bias is None:
            linear.bias = nn.Parameter(bias.to(linear.weight.dtype), requires_grad=False)
        else:
            linear.bias.copy_(bias.to(linear.bias.dtype))


def fold_token_norms(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of eval-mode ``module`` with every foldable token BatchNorm folded (see the module
    docstring); returns ``(copy, number of norms folded)``. ``module`` itself is not changed; with
    nothing to fold the module itself is returned."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block

    from ..models.backbones.vitfs import TokenBatchNorm1d

    def foldable_norm(n: nn.Module) -> bool:
        return (_plain(n, TokenBatchNorm1d) and not n.training and n.track_running_stats
                and n.running_mean is not None)

    def pairs(root: nn.Module):
        for name, blk in root.named_modules():
            if not _plain(blk, Block) or blk.training:
                continue
            if (foldable_norm(blk.norm1) and _plain(blk.attn, Attention) and _plain(blk.attn.qkv, nn.Linear)):
                yield name, "norm1", blk.attn.qkv
            if (foldable_norm(blk.norm2) and _plain(blk.mlp, Mlp) and _plain(blk.mlp.fc1, nn.Linear)):
                yield name, "norm2", blk.mlp.fc1

    if next(pairs(module), None) is None:
        return module, 0
    folded = copy.deepcopy(module)
    n = 0
    for name, attr, linear in list(pairs(folded)):
        blk = folded.get_submodule(name)
        _fold_into(getattr(blk, attr), linear)
        setattr(blk, attr, nn.Identity())
        n += 1
    return folded, n


def fold_if_equal(module: nn.Module, x: torch.Tensor, atol: float) -> tuple[nn.Module, int, float]:
    """:func:`fold_token_norms`, kept only when the folded copy's output on ``x`` is within ``atol``
    of the original's; returns ``(module to export, norms folded, max |folded - original|)``
    (``(module, 0, 0.0)`` when nothing was folded or the outputs differed)."""
    folded, n = fold_token_norms(module)
    if n == 0:
        return module, 0, 0.0
    with torch.no_grad():
        ref, got = module(x), folded(x)
    if not (isinstance(ref, torch.Tensor) and isinstance(got, torch.Tensor)) or got.shape != ref.shape:
        return module, 0, 0.0
    diff = float((got.float() - ref.float()).abs().max())
    return (folded, n, diff) if diff <= atol else (module, 0, 0.0)
