"""The token path: one block loop over a timm ``VisionTransformer`` shared by token reduction and CLCA.

:class:`TokenPath` is a small module attached to the model as ``model.token_path``; the model's
``forward_features`` is re-bound (on the instance, not the class) to run its loop, which owns
the order "before-block reduction -> block (mid-block / in-attention reduction) -> cache
recovery -> cache push -> tap" (spec ``clca.md`` §3.2-3.3). The backbone is not forked: blocks
are timm's own ``Block``/``Attention`` and are called as they are (``blk(x)``, fused attention)
unless a block needs the attention probabilities, the keys or a bias; then the loop runs that
block's own sub-modules (``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1``, ``mlp`` ...) with
explicit attention (q scaled by hd^-1/2, softmax(q k^T)), numerically the same as SDPA.

Side outputs of the last forward live on the path: ``last_counts`` (per block: tokens entering
attention, tokens entering the MLP), ``last_taps`` (for the CLA/IFA head), ``last_decisions``
(DynamicViT training masks) and, when ``record`` is on, ``last_assign`` (for ``fgir viz tokens``).

``forward_intermediates`` is re-bound too, so timm's feature API follows the same loop: it returns
each chosen block's output *as the next block sees it* (after that block's reduction and any cache
recovery), as ``NLC`` token sequences whose length changes from block to block (``NCHW`` has no
meaning once tokens are dropped or merged and is refused with a one-line error).

CLR read-out (``clr_readout``, set by the clca plug-in): ``positional`` pushes the last ``num_clr``
tokens as the CLR carriers (the reference, spec §3.2; after the first recovery these are re-injected
cache copies, spec §17 item 6); ``tracked`` gives every token a role (the original CLR tokens, at the
end of the initial sequence, carry "CLR"; re-injected cache tokens are new tokens with cache roles and
never become the CLR) and keeps a per-sample index of the token descended from each original CLR
(``TokenState.clr``), moved by every reduction through the reducer's own assignment map (see
:meth:`TokenState.follow`) and not by a recovery (the cache is appended at the end). The push reads
the token at that index (gathered per sample). Once a CLR has no descendant (dropped) its index is
``-1`` for the rest of the forward and the push reads the positional token instead. The indices
read at each push are kept in ``last_clr_index``.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn as nn

__all__ = ["TokenPath", "TokenState", "ReduceCtx", "Reducer", "ensure_token_path", "check_vit",
           "attention_probs", "attention_output"]


class TokenState:
    """Per-forward side state of a reducer (kept in sync at every cache recovery)."""

    def __init__(self, protected: int = 0):
        self.sizes: torch.Tensor | None = None          # ToMe: B x N x 1
        self.mask: torch.Tensor | None = None           # ATS: B x N bool (False = padding)
        self.policy: torch.Tensor | None = None         # DynamicViT train: B x N x 1
        self.prev_decision: torch.Tensor | None = None  # DynamicViT: B x (N - prefix) x 1
        self.decisions: list[torch.Tensor] = []
        self.protected = protected                      # length of the protected suffix
        self.assign: list[dict] = []
        self.clr: torch.Tensor | None = None            # tracked CLR read-out: B x num_clr indices (-1: none)

    def follow(self, full: torch.Tensor) -> None:
        """Move the tracked CLR indices through one reduction: ``full`` (``B x N_in``) maps every input
        token to its output index (-1: dropped); an index already -1 stays -1."""
        idx = self.clr
        self.clr = torch.where(idx >= 0, full.gather(1, idx.clamp_min(0)), idx)


class ReduceCtx:
    """What a reducer sees at one location."""

    def __init__(self, block: int, stage: int, n_stages: int, num_patches: int, num_prefix: int,
                 state: TokenState, clc: bool, record: bool):
        self.block, self.stage, self.n_stages = block, stage, n_stages
        self.num_patches, self.num_prefix = num_patches, num_prefix
        self.state, self.clc, self.record = state, clc, record
        self.attn: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def last(self) -> bool:
        return self.stage == self.n_stages - 1

    @property
    def want_assign(self) -> bool:
        """Whether the reducer must produce its assignment map (``record`` on, or the CLR is tracked)."""
        return self.record or self.state.clr is not None


class Reducer(nn.Module):
    """Interface of a token-reduction method.

    ``where``: ``before`` (reduce x before the block), ``mid`` (after the attention residual,
    before the MLP) or ``attn`` (inside the attention: only sampled rows continue, ATS).
    """

    method = ""
    where = "mid"
    needs_attention = True
    protect_default = False

    def __init__(self, locations: list[int], keep_rate: float | list[float], fixed: bool):
        super().__init__()
        self.locations = list(locations)
        if isinstance(keep_rate, (list, tuple)):  # one value per location (core.expand_keep_rate)
            if len(keep_rate) != len(self.locations):
                raise ValueError(f"{type(self).__name__}: keep_rate {list(keep_rate)} needs one value per location "
                                 f"{self.locations}.")
            self.keep_rate: float | list[float] = [float(v) for v in keep_rate]
        else:
            self.keep_rate = float(keep_rate)
        self.fixed = bool(fixed)

    def skip(self, n: int, ctx: ReduceCtx) -> bool:
        """True when the reduction at this location would change nothing (the block runs as is)."""
        return False

    def reduce(self, x: torch.Tensor, ctx: ReduceCtx) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def select_rows(self, ctx: ReduceCtx, n: int) -> torch.Tensor:  # pragma: no cover - ATS only
        raise NotImplementedError

    def init_state(self, state: TokenState, x: torch.Tensor, num_prefix: int) -> None:
        """Called once per forward with the initial sequence."""

    def extend_state(self, state: TokenState, f: int, batch: int, device) -> None:
        """Called when ``f`` cache tokens are appended at a recovery."""

    def attention_bias(self, state: TokenState) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(additive bias, fill mask) every block must apply once the method created side state."""
        return None, None

    def extra_repr(self) -> str:
        return f"method={self.method}, keep_rate={self.keep_rate}, locations={self.locations}, fixed={self.fixed}"


# ============================================================================ attention
def attention_probs(attn: nn.Module, h: torch.Tensor, bias: torch.Tensor | None = None,
                    fill: torch.Tensor | None = None, policy: torch.Tensor | None = None):
    """Explicit attention probabilities of a timm ``Attention`` on normalised tokens ``h``.

    Returns ``(probs, probs_after_dropout, k, v)`` with probs ``B x H x N x N``."""
    b, n, _ = h.shape
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    q = q * attn.scale
    logits = q @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    if fill is not None:
        logits = logits.masked_fill(fill, -torch.finfo(logits.dtype).max)
    if policy is not None:
        from .core import softmax_with_policy

        probs = softmax_with_policy(logits, policy)
    else:
        probs = logits.softmax(dim=-1)
    return probs, attn.attn_drop(probs), k, v


def attention_output(attn: nn.Module, probs: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``proj(norm(probs @ v))`` (plus timm's optional output gate computed from the rows ``h``)."""
    b, _, n, _ = probs.shape
    x = (probs @ v).transpose(1, 2).reshape(b, n, attn.num_heads * attn.head_dim)
    x = attn.norm(x)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        x = x * gate(h).sigmoid()
    return attn.proj_drop(attn.proj(x))


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ============================================================================ model checks
_NEEDED_ATTN = ("qkv", "num_heads", "head_dim", "scale", "q_norm", "k_norm", "attn_drop", "norm", "proj",
                "proj_drop")
_NEEDED_BLOCK = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


def check_vit(model: nn.Module, plugin: str) -> None:
    """Raise ``TypeError`` unless ``model`` is a timm ``VisionTransformer``-style model with pre-norm
    blocks and timm ``Attention`` (ViT, DeiT, DeiT-3, CLIP, ViTFS, ...)."""
    missing = [a for a in ("patch_embed", "_pos_embed", "blocks", "norm", "num_prefix_tokens", "forward_head")
               if not hasattr(model, a)]
    if missing:
        raise TypeError(f"plug-in '{plugin}' needs a timm VisionTransformer (patch_embed, blocks, norm, ...); "
                        f"{type(model).__name__} lacks {missing}. Use a ViT such as vit_base_patch16_224, "
                        "deit3_base_patch16_224 or vitfs_tiny.")
    for i, blk in enumerate(model.blocks):
        bad = [a for a in _NEEDED_BLOCK if not hasattr(blk, a)] + \
              [f"attn.{a}" for a in _NEEDED_ATTN if not hasattr(getattr(blk, "attn", None), a)]
        if bad:
            raise TypeError(f"plug-in '{plugin}': block {i} ({type(blk).__name__}) is not a timm pre-norm Block "
                            f"with timm Attention (missing {bad}).")


# ============================================================================ the loop
class TokenPath(nn.Module):
    """The block loop (see the module docstring). Configured by the plug-ins that use it."""

    def __init__(self, depth: int):
        super().__init__()
        self.depth = depth
        self.reducer: Reducer | None = None
        self.locations: list[int] | None = None   # reduction / CLCA group boundaries
        # Cross-Layer Cache (set by the clca plug-in)
        self.cache = False
        self.include_gap = True
        self.pool_cls = False
        self.pool_clr = False
        self.num_clr = 0
        self.recovery: list[int] = []
        self.taps: list[int] | None = None
        self.protect_cache: bool | None = None   # None: the reducer's default (DPC-KNN protects)
        self.clr_readout = "positional"           # or "tracked" (set by the clca plug-in)
        self.record = False
        self.last_counts: list[tuple[int, int]] = []
        self.last_taps: list[torch.Tensor] = []
        self.last_decisions: list[torch.Tensor] = []
        self.last_assign: list[dict] = []
        self.last_cache: list[tuple[int, torch.Tensor]] = []   # (block, carriers) pushed, when record is on
        self.last_clr_index: list[tuple[int, torch.Tensor]] = []  # (block, B x num_clr tracked index), tracked
        self.keep_blocks: set[int] | None = None    # forward_intermediates: blocks whose output is kept
        self.last_blocks: list[torch.Tensor] = []

    @property
    def protect_suffix(self) -> bool:
        """Whether the CLR and cache tokens are excluded from reduction (kept as a suffix)."""
        if self.protect_cache is not None:
            return self.protect_cache
        return bool(self.reducer is not None and self.reducer.protect_default)

    def export_note(self) -> str | None:
        """For ``fgir export``: the token counts the traced graph fixes (from the last forward)."""
        if (self.reducer is None and not self.cache) or not self.last_counts:
            return None
        what = f"token_reduction {self.reducer.method}" if self.reducer is not None else "clca cache"
        per = ",".join(str(a) if a == m else f"{a}>{m}" for a, m in self.last_counts)
        return f"{what}: static token counts per block {per}"

    def extra_repr(self) -> str:
        return (f"locations={self.locations}, cache={self.cache}, num_clr={self.num_clr}, recovery={self.recovery}, "
                f"taps={self.taps}, protect_suffix={self.protect_suffix}, clr_readout={self.clr_readout}")

    # ------------------------------------------------------------------ embedding
    def embed(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        x = model.patch_embed(images)
        x = model._pos_embed(x)
        if self.num_clr:
            clr = model.clr
            if getattr(model, "clr_pos", None) is not None:
                clr = clr + model.clr_pos
            x = torch.cat([x, clr.expand(x.shape[0], -1, -1)], dim=1)
        x = model.patch_drop(x)
        return model.norm_pre(x)

    def tap(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The class token; for class-token-free backbones (ViTFS) the mean of the non-prefix tokens."""
        if getattr(model, "cls_token", None) is not None:
            return x[:, 0]
        return x[:, model.num_prefix_tokens:].mean(dim=1)

    # ------------------------------------------------------------------ one block
    def _block(self, blk: nn.Module, x: torch.Tensor, state: TokenState, red: Reducer | None,
               ctx: ReduceCtx | None) -> tuple[torch.Tensor, int]:
        bias, fill = self.reducer.attention_bias(state) if self.reducer is not None else (None, None)
        policy = state.policy
        if red is None and bias is None and fill is None and policy is None:
            x = blk(x)
            return x, x.shape[1]
        h = blk.norm1(x)
        probs, probs_d, k, v = attention_probs(blk.attn, h, bias, fill, policy)
        if red is not None and red.where == "attn":
            ctx.attn, ctx.keys, ctx.values = probs, k, v
            ids = red.select_rows(ctx, x.shape[1])
            rows = probs_d.gather(2, ids[:, None, :, None].expand(-1, probs_d.shape[1], -1, probs_d.shape[-1]))
            x = _gather(x, ids) + blk.drop_path1(blk.ls1(attention_output(blk.attn, rows, v, _gather(h, ids))))
        else:
            x = x + blk.drop_path1(blk.ls1(attention_output(blk.attn, probs_d, v, h)))
            if red is not None:
                ctx.attn, ctx.keys, ctx.values = probs, k, v
                x = red.reduce(x, ctx)
        n_mlp = x.shape[1]
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return x, n_mlp

    # ------------------------------------------------------------------ forward
    def forward(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(model, images)
        npt = model.num_prefix_tokens
        num_patches = x.shape[1] - npt - self.num_clr
        red = self.reducer
        loc = red.locations if red is not None else []
        stage_of = {b: s for s, b in enumerate(loc)}
        state = TokenState(protected=self.num_clr if self.protect_suffix else 0)
        if red is not None:
            red.init_state(state, x, npt)
        cache_on = self.cache
        recovery = set(self.recovery) if cache_on else set()
        last_push = max(self.recovery) if cache_on and self.recovery else -1
        taps_at = set(self.taps) if self.taps is not None else set()
        pool_end = x.shape[1] - (self.num_clr if (self.num_clr and not self.pool_clr) else 0)
        start = 0 if self.pool_cls else npt
        cache: list[torch.Tensor] = []
        taps: list[torch.Tensor] = []
        counts: list[tuple[int, int]] = []
        blocks_out: list[torch.Tensor] = []
        cache_log: list[tuple[int, torch.Tensor]] = []
        clr_log: list[tuple[int, torch.Tensor]] = []
        track = cache_on and self.num_clr > 0 and self.clr_readout == "tracked"
        if track:  # the CLR tokens sit at the end of the initial sequence
            state.clr = self._last(x)
        for i, blk in enumerate(model.blocks):
            s = stage_of.get(i)
            ctx = None
            active = None
            if s is not None:
                ctx = ReduceCtx(i, s, len(loc), num_patches, npt, state, cache_on, self.record)
                if not red.skip(x.shape[1], ctx):
                    if red.where == "before":
                        x = red.reduce(x, ctx)
                    else:
                        active = red
            n_attn = x.shape[1]
            x, n_mlp = self._block(blk, x, state, active, ctx)
            counts.append((n_attn, n_mlp))
            if i in recovery:
                pool_end = x.shape[1]
                if cache:  # a reduction at block 0 would flush an empty cache (the reference crashes)
                    flush = torch.cat(cache, dim=1)
                    x = torch.cat([x, flush], dim=1)
                    f = flush.shape[1]
                    if red is not None:
                        red.extend_state(state, f, x.shape[0], x.device)
                    if self.protect_suffix:
                        state.protected += f
                    # tracked: appending at the end moves no token, and the re-injected cache tokens are new
                    # tokens (cache roles), never the CLR, so state.clr is left as it is
                cache = []
            if cache_on and i < last_push:
                carriers = []
                if self.include_gap:
                    carriers.append(x[:, start:pool_end].mean(dim=1, keepdim=True))
                if track:
                    idx = torch.where(state.clr >= 0, state.clr, self._last(x))
                    carriers.append(_gather(x, idx))
                    clr_log.append((i, state.clr.detach()))
                elif self.num_clr:
                    carriers.append(x[:, x.shape[1] - self.num_clr:])
                cache.append(torch.cat(carriers, dim=1))
                if self.record:
                    cache_log.append((i, cache[-1]))
            if i in taps_at:
                taps.append(self.tap(model, x))
            if self.keep_blocks is not None and i in self.keep_blocks:
                blocks_out.append(x)
        self.last_counts, self.last_taps, self.last_blocks = counts, taps, blocks_out
        self.last_decisions, self.last_assign, self.last_cache = state.decisions, state.assign, cache_log
        self.last_clr_index = clr_log
        return model.norm(x)

    def _last(self, x: torch.Tensor) -> torch.Tensor:
        """``B x num_clr`` indices of the last ``num_clr`` tokens of ``x`` (the positional CLR carriers)."""
        n = x.shape[1]
        return torch.arange(n - self.num_clr, n, device=x.device).expand(x.shape[0], -1)


def _forward_features(self: nn.Module, x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False) -> torch.Tensor:
    if attn_mask is not None or is_causal:
        raise ValueError("token_reduction / clca do not support attn_mask or is_causal.")
    return self.token_path(self, x)


def _forward_intermediates(self: nn.Module, x: torch.Tensor, indices: int | list[int] | None = None,
                           return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                           output_fmt: str = "NCHW", intermediates_only: bool = False, output_dict: bool = False,
                           attn_mask: Any = None, is_causal: bool = False):
    """timm's ``forward_intermediates`` through the token path (``NLC`` only; ``stop_early`` runs every
    block all the same, the final features need them). Intermediates are the chosen blocks' outputs
    without the prefix tokens (with ``return_prefix_tokens``: ``(tokens, prefix)`` pairs, as timm)."""
    from timm.models._features import feature_take_indices

    if attn_mask is not None or is_causal:
        raise ValueError("token_reduction / clca do not support attn_mask or is_causal.")
    if output_fmt != "NLC":
        raise ValueError(f"forward_intermediates(output_fmt={output_fmt!r}): with token_reduction / clca the "
                         "token count changes from block to block, so only output_fmt='NLC' is defined.")
    take, _ = feature_take_indices(len(self.blocks), indices)
    path = self.token_path
    path.keep_blocks = set(take)
    try:
        feats = path(self, x)
    finally:
        path.keep_blocks = None
    outs = [self.norm(y) if norm else y for y in path.last_blocks]
    path.last_blocks = []  # the caller owns them now; do not keep their graph alive until the next forward
    npt = self.num_prefix_tokens
    prefix = [y[:, :npt] for y in outs] if npt else None
    outs = [y[:, npt:] for y in outs]
    if output_dict:
        res: dict[str, Any] = {"image_intermediates": outs}
        if prefix is not None and return_prefix_tokens:
            res["image_intermediates_prefix"] = prefix
        if not intermediates_only:
            res["image_features"] = feats
        return res
    if prefix is not None and return_prefix_tokens:
        outs = list(zip(outs, prefix))
    return outs if intermediates_only else (feats, outs)


def ensure_token_path(model: nn.Module, plugin: str) -> TokenPath:
    """The model's :class:`TokenPath`, attached (and ``forward_features`` re-bound) on first use."""
    check_vit(model, plugin)
    path = getattr(model, "token_path", None)
    if isinstance(path, TokenPath):
        return path
    if getattr(model, "grad_checkpointing", False):
        raise ValueError(f"plug-in '{plugin}': gradient checkpointing is not supported with the token path.")
    path = TokenPath(len(model.blocks))
    model.token_path = path
    model.forward_features = types.MethodType(_forward_features, model)
    model.forward_intermediates = types.MethodType(_forward_intermediates, model)
    return path


def default_locations(depth: int) -> list[int]:
    """[3, 6, 9] for 12 blocks; ``depth * k // 4`` (k = 1..3, at most depth - 2) otherwise."""
    return sorted({depth * k // 4 for k in (1, 2, 3) if 0 <= depth * k // 4 <= depth - 2})


def check_locations(locations: list[int], depth: int, plugin: str) -> list[int]:
    locs = [int(v) for v in locations]
    if locs != sorted(set(locs)) or not locs:
        raise ValueError(f"plug-in '{plugin}': locations must be a non-empty sorted list of unique block "
                         f"indices, got {locations}.")
    if locs[0] < 0 or locs[-1] > depth - 2:
        raise ValueError(f"plug-in '{plugin}': locations {locs} must lie in [0, {depth - 2}] for a "
                         f"{depth}-block model (the last block cannot reduce; spec clca.md §3.6).")
    return locs
