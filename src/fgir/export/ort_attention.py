"""Export timm's self-attention as onnxruntime's fused ``MultiHeadAttention`` operator.

The standard exporters write ``F.scaled_dot_product_attention`` as separate MatMul, scaling,
Softmax and MatMul nodes, with the Transposes that move heads in and out of the batch axes, and
onnxruntime's transformer fusions do not recognise that pattern for timm's packed ``qkv`` layer.
:func:`with_ort_attention` returns a copy of a model in which every plain timm ``Attention`` (no
hooks, no replaced ``forward``, no q/k norm, no gate) computes ``qkv``, splits it on the channel
axis into three ``B x N x C`` tensors and calls :class:`OrtMultiHeadAttention`: in PyTorch that is
``scaled_dot_product_attention`` on the same numbers; in the exported graph it is one
``com.microsoft::MultiHeadAttention`` node (heads and scale as attributes), so no Transposes are
left around attention.

The file then runs on onnxruntime only (the contrib operator domain ``com.microsoft``), which is
why ``fgir export`` does this only with ``--ort-attention``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["OrtMultiHeadAttention", "with_ort_attention", "ORT_OPSETS"]

ORT_OPSETS = {"com.microsoft": 1}
"""Custom opset imports a graph with :class:`OrtMultiHeadAttention` nodes needs."""


class OrtMultiHeadAttention(torch.autograd.Function):
    """Self-attention of ``B x N x C`` q, k, v with ``num_heads`` heads and ``scale``, exported as
    ``com.microsoft::MultiHeadAttention`` (inference only: no backward)."""

    @staticmethod
    def forward(ctx, q, k, v, num_heads: int, scale: float):
        b, n, c = q.shape

        def heads(t):
            return t.reshape(b, t.shape[1], num_heads, c // num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale)
        return out.transpose(1, 2).reshape(b, n, c)

    @staticmethod
    def symbolic(g, q, k, v, num_heads: int, scale: float):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=num_heads, scale_f=scale)
        out.setType(q.type())
        return out


class _OrtAttention(nn.Module):
    """timm ``Attention.forward`` (eval, no mask) through :class:`OrtMultiHeadAttention`."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        a = self.attn
        if attn_mask is not None or is_causal:
            return a(x, attn_mask=attn_mask, is_causal=is_causal)
        q, k, v = a.qkv(x).split(a.attn_dim, dim=-1)
        out = OrtMultiHeadAttention.apply(q, k, v, a.num_heads, float(a.scale))
        return a.proj(a.norm(out))


def _plain_attention(m: nn.Module) -> bool:
    from timm.models.vision_transformer import Attention

    return (type(m) is Attention and "forward" not in m.__dict__ and not m._forward_hooks
            and not m._forward_pre_hooks and isinstance(m.q_norm, nn.Identity) and isinstance(m.k_norm, nn.Identity)
            and getattr(m, "gate", None) is None and isinstance(m.qkv, nn.Linear) and not m.training
            and m.attn_dim == m.num_heads * m.head_dim)


def with_ort_attention(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of eval-mode ``module`` whose plain timm attentions export as onnxruntime's fused
    operator; returns ``(copy, attentions replaced)`` (``(module, 0)`` when there are none)."""
    if not any(_plain_attention(m) for m in module.modules()):
        return module, 0
    out = copy.deepcopy(module)
    n = 0
    for name, m in list(out.named_modules()):  # a snapshot: the wrappers added are not visited
        if name and _plain_attention(m):
            parent_name, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent_name) if parent_name else out, attr, _OrtAttention(m))
            n += 1
    return out, n
