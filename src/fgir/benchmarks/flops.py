"""Parameter and MAC counting with the papers' conventions (spec evaluation.md §2).

MACs come from ``torchprofile.profile_macs`` (>= 0.1.0, which counts fused attention) on a
batch-1 ``torch.rand`` input in eval mode. Attention modules that expose timm's ``fused_attn``
switch are profiled on their unfused path (as the TGDA authors' counting script did), so
QK^T, AV and the q-scaling multiply are all counted. ``attention=False`` drops exactly those
terms to reproduce counts made by torchprofile 0.0.4 on fused attention (tgda.md §8.3).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.nn as nn


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """All ``nn.Parameter`` elements (buffers excluded); ``trainable_only`` keeps requires_grad ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def _unfused_attention(model: nn.Module) -> Iterator[None]:
    saved = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    for m, _ in saved:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, v in saved:
            m.fused_attn = v


def _is_attention_node(node) -> bool:
    """QK^T / AV products (matmuls with 4-D outputs, or fused SDPA) and the q-scaling multiply
    (a 4-D tensor times a Python scalar)."""
    op = node.operator
    out = node.outputs[0].shape if node.outputs else None
    if op == "aten::scaled_dot_product_attention":
        return True
    if out is None or len(out) < 4:
        return False
    if op in ("aten::matmul", "aten::bmm"):
        return True
    if op in ("aten::mul", "aten::mul_"):
        return any(i.shape is None or len(i.shape) == 0 for i in node.inputs)
    return False


def count_macs(model: nn.Module, img_size: int | tuple[int, int] = 224, attention: bool = True,
               in_chans: int = 3) -> int:
    """MACs of one forward on a ``(1, in_chans, H, W)`` random input, torchprofile conventions."""
    from torchprofile import profile_macs

    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    was_training = model.training
    model.eval()
    x = torch.rand(1, in_chans, h, w, device=next(iter(model.parameters()), torch.empty(0)).device)
    try:
        with torch.no_grad(), _unfused_attention(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_node = profile_macs(model, x, reduction=None)
            return int(sum(v for n, v in per_node.items() if attention or not _is_attention_node(n)))
    finally:
        model.train(was_training)


def cost_report(model: nn.Module, img_size: int, name: str = "") -> dict:
    """Params total/trainable and GMACs for one model at one resolution."""
    macs = count_macs(model, img_size)
    return {"model": name, "img_size": img_size, "params": count_params(model),
            "params_trainable": count_params(model, trainable_only=True), "macs": macs,
            "gmacs": round(macs / 1e9, 4)}
