"""Export timm's self-attention as onnxruntime's fused ``Attention`` operator.

The standard exporters write ``F.scaled_dot_product_attention`` as separate MatMul, scaling,
Softmax and MatMul nodes, with the Transposes that move heads in and out of the batch axes, and
onnxruntime's transformer fusions do not recognise that pattern for timm's packed ``qkv`` layer.
:func:`with_ort_attention` returns a copy of a model in which every plain timm ``Attention`` (no
hooks, no replaced ``forward``, no q/k norm, no gate) calls :class:`OrtAttention` on its input
with the ``qkv`` weight (transposed, ``C x 3C``) and bias: in PyTorch that is the ``qkv``
projection and ``scaled_dot_product_attention`` on the same numbers; in the exported graph it is
one ``com.microsoft::Attention`` node (projection, heads and scale inside; onnxruntime's BERT
attention kernel), so no Split or Transposes are left around attention. (Its sibling
``MultiHeadAttention`` takes q, k, v already projected and measured slower here; the packed-qkv
form of it is not implemented on the CPU.)

The file then runs on onnxruntime only (the contrib operator domain ``com.microsoft``), which is
why ``fgir export`` does this only with ``--ort-attention``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["OrtAttention", "with_ort_attention", "ORT_OPSETS"]

ORT_OPSETS = {"com.microsoft": 1}
"""Custom opset imports a graph with :class:`OrtAttention` nodes needs."""


class OrtAttention(torch.autograd.Function):
    """Self-attention of ``x`` (``B x N x C``) with the packed projection ``w`` (``C x 3C``, q | k | v
    on the columns) and bias ``b`` (``3C``), ``num_heads`` heads and ``scale``; exported as
    ``com.microsoft::Attention`` (inference only: no backward)."""

    @staticmethod
    def forward(ctx, x, w, b, num_heads: int, scale: float):
        bsz, n, c = x.shape[0], x.shape[1], w.shape[1] // 3
        q, k, v = torch.addmm(b, x.reshape(bsz * n, -1), w).reshape(bsz, n, 3 * c).split(c, dim=-1)

        def heads(t):
            return t.reshape(bsz, n, num_heads, c // num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale)
        return out.transpose(1, 2).reshape(bsz, n, c)

    @staticmethod
    def symbolic(g, x, w, b, num_heads: int, scale: float):
        out = g.op("com.microsoft::Attention", x, w, b, num_heads_i=num_heads, scale_f=scale)
        out.setType(x.type())  # B x N x C, as the input (only attentions with qkv C -> 3C are replaced)
        return out


class _OrtAttention(nn.Module):
    """timm ``Attention.forward`` (eval, no mask) through :class:`OrtAttention`."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn
        qkv = attn.qkv
        self.register_buffer("w", qkv.weight.detach().t().contiguous(), persistent=False)
        self.register_buffer("b", qkv.bias.detach().clone() if qkv.bias is not None
                             else torch.zeros(qkv.out_features, dtype=qkv.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        a = self.attn
        if attn_mask is not None or is_causal:
            return a(x, attn_mask=attn_mask, is_causal=is_causal)
        out = OrtAttention.apply(x, self.w, self.b, a.num_heads, float(a.scale))
        return a.proj(a.norm(out))


def _plain_attention(m: nn.Module) -> bool:
    from timm.models.vision_transformer import Attention

    return (type(m) is Attention and "forward" not in m.__dict__ and not m._forward_hooks
            and not m._forward_pre_hooks and isinstance(m.q_norm, nn.Identity) and isinstance(m.k_norm, nn.Identity)
            and getattr(m, "gate", None) is None and isinstance(m.qkv, nn.Linear) and not m.training
            and m.attn_dim == m.num_heads * m.head_dim
            and m.qkv.out_features == 3 * m.qkv.in_features == 3 * m.attn_dim)


def with_ort_attention(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of eval-mode ``module`` whose plain timm attentions export as onnxruntime's fused
    ``Attention`` operator; returns ``(copy, attentions replaced)`` (``(module, 0)`` when there are none)."""
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
