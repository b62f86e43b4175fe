"""Discriminative-feature-selection (DFSM) baselines GLSim compares against, and their costs.

Paper: GLSim, arXiv 2407.12891, Table 1 and spec ``shared/specs/glsim.md`` §11-12. The selectors
(functional, batched, tensors in / tensors out):

* :func:`psm_indices` — TransFG's Part Selection Module (arXiv 2103.07976): product of the raw
  attention maps of all recorded layers, per head the arg-max of the CLS row over the patches;
* :func:`rollout` / :func:`rollout_scores` — attention rollout (Abnar & Zuidema 2020) as used by
  RAMS-Trans, DCAL and AF-Trans: head mean + identity, row renormalisation, chained products;
* :func:`maws_scores` — FFVT's mutual attention weight selection (arXiv 2107.02341): head-mean
  CLS->token attention times the head-mean column softmax of the raw scores (token->CLS);
* GLS itself is :func:`fgir.models.plugins.glsim.gls_scores`.

Attention of timm ViTs is recorded with :func:`record_attention`, which hooks each attention
module's ``q_norm`` / ``k_norm`` outputs and computes ``softmax(q·scale·kᵀ)`` explicitly, so it
works while timm's fused attention is on (timm's ``AttentionExtract`` sees nothing then).

Costs: :func:`dfsm_cost` and :func:`vit_backbone_cost` are the paper's analytic formulas
(``tools/calc_flops.py::FGFLOPS``, mixed MAC / element-op conventions, MFLOPs); never compare them
with profiler MACs. :func:`table1` builds the paper's Table 1 from them. SACM (AF-Trans),
RAMS-Trans and the PIM selector have cost formulas only (no selector implementation here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .base import find_backbone

__all__ = ["AttentionRecord", "record_attention", "attention_modules", "rollout", "rollout_scores", "rollout_map",
           "vit_root",
           "psm_indices", "maws_scores", "maws_indices", "DFSM_METHODS", "dfsm_cost", "vit_backbone_cost",
           "sequence_length", "table1"]


# ============================================================================ recording
@dataclass
class AttentionRecord:
    """Pre-softmax scores ``B x H x N x N`` of each recorded block, in call order."""

    scores: list[torch.Tensor]

    @property
    def probs(self) -> list[torch.Tensor]:
        return [s.softmax(dim=-1) for s in self.scores]

    def drain_probs(self) -> Iterator[torch.Tensor]:
        """The probabilities block by block, releasing each recorded score as it is used (one pass,
        e.g. a rollout: one softmax alive at a time instead of all L). Leaves the record empty."""
        while self.scores:
            yield self.scores.pop(0).softmax(dim=-1)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm-style attention modules (``q_norm``, ``k_norm``, ``scale``) of ``model.blocks`` in order
    (any submodule named ``backbone`` is searched when the model wraps one)."""
    root = vit_root(model)
    blocks = getattr(root, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has no transformer blocks to record attention from.")
    mods = [getattr(b, "attn", None) for b in blocks]
    bad = [i for i, m in enumerate(mods) if not all(hasattr(m, a) for a in ("q_norm", "k_norm", "scale"))]
    if bad:
        raise TypeError(f"blocks {bad} of {type(root).__name__} have no timm Attention (q_norm, k_norm, scale); "
                        "attention cannot be recorded.")
    return mods


@contextlib.contextmanager
def record_attention(model: nn.Module, blocks: Sequence[int] | None = None,
                     detach: bool = False) -> Iterator[AttentionRecord]:
    """Record the attention scores of ``blocks`` (default: all) during forwards inside the context.

    The scores are recomputed from the hooked ``q`` and ``k`` (``q·scale @ kᵀ``), independent of
    the fused-attention switch; the model's own outputs are unchanged. ``detach``: record them
    outside autograd (for a selection that carries no gradient).
    """
    mods = attention_modules(model)
    idx = range(len(mods)) if blocks is None else list(blocks)
    rec = AttentionRecord([])
    handles = []
    for i in idx:
        attn = mods[i]
        state: dict = {}

        def keep_q(_m, _inp, out, state=state):
            state["q"] = out

        def score(_m, _inp, k, state=state, attn=attn):
            q = state.pop("q")
            if detach:
                q, k = q.detach(), k.detach()
            rec.scores.append((q.float() * attn.scale) @ k.float().transpose(-2, -1))

        handles += [attn.q_norm.register_forward_hook(keep_q), attn.k_norm.register_forward_hook(score)]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


# ============================================================================ selectors
def rollout(attns: Iterable[torch.Tensor], add_identity: bool = True) -> torch.Tensor:
    """Attention rollout ``Â_L ··· Â_1`` with ``Â = norm_rows(mean_h(A) + I)`` (``B x N x N``).

    Args:
        attns: per layer ``B x H x N x N`` attention probabilities, first layer first.
    """
    joint = None
    for a in attns:
        m = a.float().mean(dim=1)
        if add_identity:
            m = m + torch.eye(m.shape[-1], device=m.device, dtype=m.dtype)
        m = m / m.sum(dim=-1, keepdim=True)
        joint = m if joint is None else m @ joint
    if joint is None:
        raise ValueError("rollout needs at least one attention map.")
    return joint


def rollout_scores(attns: Iterable[torch.Tensor], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Rollout CLS row over the patch tokens: ``B x g^2`` (larger = more relevant)."""
    return rollout(attns)[:, 0, num_prefix_tokens:]


def psm_indices(attns: Sequence[torch.Tensor], num_prefix_tokens: int = 1) -> torch.Tensor:
    """TransFG PSM: ``A_L ··· A_1`` per head (raw softmax maps, no head mean), then per head the
    arg-max of the CLS row over the patches: ``B x H`` patch indices (0-based over the grid)."""
    last = None
    for a in attns:
        last = a.float() if last is None else a.float() @ last
    if last is None:
        raise ValueError("psm_indices needs at least one attention map.")
    return last[:, :, 0, num_prefix_tokens:].argmax(dim=-1)


def maws_scores(scores: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """FFVT MAWS of one layer from raw scores ``B x H x N x N``: ``mean_h softmax_row(s)[0, j] ·
    mean_h softmax_col(s)[j, 0]`` over the patch tokens j: ``B x g^2``."""
    r = num_prefix_tokens
    row = scores.float().softmax(dim=-1)[:, :, 0, r:].mean(dim=1)
    col = scores.float().softmax(dim=-2)[:, :, r:, 0].mean(dim=1)
    return row * col


def maws_indices(layer_scores: Sequence[torch.Tensor], k: int = 12, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Top-k MAWS patches of every layer (``B x L x k``; FFVT keeps 12 per layer, 24 on Dogs)."""
    return torch.stack([maws_scores(s, num_prefix_tokens).topk(k, dim=-1).indices for s in layer_scores], dim=1)


# ============================================================================ analytic costs (Table 1)
DFSM_METHODS = ("transfg", "rollout", "ramstrans", "ffvt", "aftrans", "pim", "glsim")
"""transfg = PSM, rollout = "Various" (RAMS-Trans, DCAL, AF-Trans rollout), ffvt = MAWS,
aftrans = SACM, glsim = GLS; ramstrans and pim are not in the paper's Table 1."""

_STRIDE12 = ("transfg", "aftrans")
_L11 = ("transfg", "ffvt")


def sequence_length(method: str, img_size: int, patch: int = 16) -> int:
    """``N = floor((S - P) / stride + 1)^2 + 1`` with stride P - 4 for transfg / aftrans, else P."""
    stride = patch - 4 if method in _STRIDE12 else patch
    return ((img_size - patch) // stride + 1) ** 2 + 1


def _depth(method: str, depth: int) -> int:
    return depth - 1 if method in _L11 else depth


def vit_backbone_cost(img_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12,
                      num_classes: int = 200) -> float:
    """Analytic ViT backbone "FLOPs" of the paper (MFLOPs): ``2(N-1)·P²·3·D + L·[4ND² + 2N²D + 8ND²] + D·C``."""
    n = (img_size // patch) ** 2 + 1
    return (2 * (n - 1) * patch * patch * 3 * dim + depth * (4 * n * dim**2 + 2 * n * n * dim + 8 * n * dim**2)
            + dim * num_classes) / 1e6


def dfsm_cost(method: str, img_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12,
              num_classes: int = 200) -> float:
    """Analytic selection cost (MFLOPs) of ``method`` (:data:`DFSM_METHODS`) for a ViT of width
    ``dim`` (heads = dim/64) and ``depth`` blocks at ``img_size`` (spec §11)."""
    if method not in DFSM_METHODS:
        raise ValueError(f"unknown DFSM method {method!r}; expected one of {list(DFSM_METHODS)}.")
    n = sequence_length(method, img_size, patch)
    lyr = _depth(method, depth)
    h = dim // 64
    if method == "transfg":
        v = n * n * (2 * n - 1) * h * (lyr - 1)
    elif method == "rollout":
        v = lyr * ((h + 1) * n * n + n + 1) + (lyr - 1) * n * n * (2 * n - 1)
    elif method == "ramstrans":
        v = lyr * ((h + 1) * n * n + n * (n + 1) + 1) + (lyr - 1) * n * n * (2 * n - 1)
    elif method == "ffvt":
        v = lyr * (5 * n * h + 2 * h + n)
    elif method == "aftrans":
        v = lyr * (h - 1) * n * n + (n * n + 1) + 2 * 3 * lyr + lyr * (n - 1)
    elif method == "pim":
        v = 4 * n * dim * num_classes
    else:  # glsim
        v = (n - 1) * (dim + 2 * (dim + 1) + 1)
    return v / 1e6


def table1(sizes: Sequence[int] = (224, 448, 768, 1024),
           methods: Sequence[str] = ("transfg", "rollout", "ffvt", "aftrans", "glsim")) -> list[dict]:
    """Rows ``{method, img_size, mflops, pct_backbone}`` of the paper's Table 1 (ViT-B/16, C = 200);
    percentages against the backbone rounded to 0.01 MFLOPs and the DFSM value rounded to 1e-4."""
    rows = []
    for s in sizes:
        base = round(vit_backbone_cost(s), 2)
        rows.append({"method": "backbone", "img_size": s, "mflops": base, "pct_backbone": 100.0})
        for m in methods:
            v = dfsm_cost(m, s)
            rows.append({"method": m, "img_size": s, "mflops": v, "pct_backbone": 100.0 * round(v, 4) / base})
    return rows


# ============================================================================ visualisation
def vit_root(model: nn.Module) -> nn.Module:
    """The timm-style ViT holding ``blocks`` (``model`` itself, or the ``backbone`` a plug-in wraps)."""
    return find_backbone(model, "blocks")[0]


@torch.no_grad()
def rollout_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Attention rollout of a ViT over its patch grid: ``B x g x g`` (larger = more relevant).

    The CLS row of :func:`rollout` over the patches; for GAP models (no CLS token) the mean over the
    patch rows stands in for the global row. Only the first encoder pass counts (GLSim runs it twice).

    Raises:
        ValueError: the patch tokens at the end do not form a square grid (e.g. tokens dropped).
    """
    import math

    n_blocks = len(attention_modules(model))
    root = vit_root(model)
    prefix = int(getattr(root, "num_prefix_tokens", 1))
    with record_attention(model) as rec:
        model.eval()(x)
    try:
        m = rollout(rec.probs[:n_blocks])
    except RuntimeError as e:  # per-layer token counts differ: a token-reduction plug-in dropped tokens
        raise ValueError(f"attention rollout needs the same tokens in every block ({e}); "
                         "token-reduced models are not supported.") from e
    rows = m[:, 0, prefix:] if getattr(root, "cls_token", None) is not None else m[:, prefix:, prefix:].mean(1)
    g = math.isqrt(rows.shape[-1])
    if g * g != rows.shape[-1]:
        raise ValueError(f"attention rollout: {rows.shape[-1]} patch tokens do not form a square grid.")
    return rows.reshape(-1, g, g)


def _rollout_applies(model: nn.Module) -> str:
    try:
        attention_modules(model)
    except TypeError as e:
        return str(e)
    return ""


def _register_viz() -> None:
    from ...report.viz import register_viz

    @register_viz("rollout", help="Attention rollout (CLS row over the patches) of a ViT over the image.",
                  applies=_rollout_applies)
    def viz_rollout(model: nn.Module, image: str, out) -> list:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ...report.viz import model_input

        x, shown = model_input(model, image, device=str(next(model.parameters()).device))
        n_blocks = len(attention_modules(model))
        grid = rollout_map(model, x)[0]
        s = x.shape[-1]
        fig, axes = plt.subplots(1, 2, figsize=(8.2, 4.0), constrained_layout=True)
        axes[0].imshow(shown)
        axes[0].set_title("input (test transform)")
        axes[1].imshow(shown)
        im = axes[1].imshow(grid.cpu().numpy(), cmap="inferno", alpha=0.6, extent=(0, s, s, 0),
                            interpolation="bilinear")
        fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02, label="rollout weight")
        axes[1].set_title(f"attention rollout over {n_blocks} blocks")
        from ...report.viz import save_panels

        return save_panels(fig, axes, out)


_register_viz()
