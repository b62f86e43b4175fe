"""The eight token-reduction methods as :class:`~.path.Reducer` modules (spec ``clca.md`` §5).

Each reducer reduces the *candidate* tokens ``x[:, prefix : N - protected]``: the prefix (CLS,
registers) is always kept in front and the protected suffix (DPC-KNN's CLR and cache tokens, or
every method's with ``clca.protect_cache``) is kept at the end.

Assignment maps: when ``ctx.want_assign`` (``record`` on, or the clca CLR read-out is ``tracked``)
each reducer also builds the map "input candidate -> output candidate index, -1 dropped" from the
indices it already computed and hands it to :func:`_emit`, which stores it (``record``) and moves the
tracked CLR index (:meth:`~.path.TokenState.follow`); with both off no map is built. The map of a
merge or a soft pooling sends a token to the one output that received it: EViT's dropped tokens to
the fused token, a ToMe source to its destination, a DPC-KNN token to its cluster, a SiT /
PatchMerger token to the output in which it has the largest weight; Top-K / DynamicViT / ATS drop.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from . import core
from .path import ReduceCtx, Reducer, TokenState, _gather

__all__ = ["EViT", "TopK", "ToMe", "ATS", "DynamicViT", "SiT", "PatchMerger", "DPCKNN", "REDUCERS",
           "PredictorLG", "TokenSlimming"]


def _split(x: torch.Tensor, ctx: ReduceCtx):
    n, p, s = x.shape[1], ctx.num_prefix, ctx.state.protected
    return x[:, :p], x[:, p:n - s], x[:, n - s:]


def _emit(ctx: ReduceCtx, n_in: int, cand_assign: torch.Tensor, n_out_cand: int, kind: str,
          record: bool = True) -> None:
    """Build the full-sequence assignment map (input token -> output index, -1 dropped) from the
    candidate map; store it when ``record`` is on (and ``record`` here) and move the tracked CLR."""
    st = ctx.state
    keep = ctx.record and record
    if not keep and st.clr is None:
        return
    b, p, s = cand_assign.shape[0], ctx.num_prefix, st.protected
    dev = cand_assign.device
    pre = torch.arange(p, device=dev).expand(b, -1)
    cand = torch.where(cand_assign >= 0, cand_assign + p, cand_assign)
    suf = (p + n_out_cand + torch.arange(s, device=dev)).expand(b, -1)
    full = torch.cat([pre, cand, suf], dim=1)
    if keep:
        st.assign.append({"block": ctx.block, "stage": ctx.stage, "kind": kind, "n_in": n_in,
                          "assign": full.detach().cpu()})
    if st.clr is not None:
        st.follow(full)


def _init_linear(m: nn.Module) -> None:
    """timm's ViT init for new modules: trunc-normal(0.02) Linear weights, zero bias."""
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            trunc_normal_(mod.weight, std=0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


# ============================================================================ EViT / Top-K
class EViT(Reducer):
    """EViT (Liang et al., ICLR 2022, arXiv 2202.07800): keep the top ``ceil(kr (N-1))`` tokens by
    CLS attention (mid-block) and fuse the rest into one attention-weighted token."""

    method, where, fuse = "evit", "mid", True

    def _k(self, n: int, ctx: ReduceCtx) -> int:
        m = n - ctx.num_prefix - ctx.state.protected
        return min(m, core.evit_keep(m + 1, core.stage_rate(self.keep_rate, ctx.stage)))

    def skip(self, n: int, ctx: ReduceCtx) -> bool:
        return self._k(n, ctx) >= n - ctx.num_prefix - ctx.state.protected

    def reduce(self, x: torch.Tensor, ctx: ReduceCtx) -> torch.Tensor:
        n = x.shape[1]
        pre, cand, suf = _split(x, ctx)
        k = self._k(n, ctx)
        scores = core.class_attention(ctx.attn, ctx.num_prefix, ctx.num_prefix, n - ctx.state.protected)
        out = core.evit_reduce(cand, scores, k, fuse=self.fuse, record=ctx.want_assign)
        if ctx.want_assign:
            out, assign = out
            _emit(ctx, n, assign, out.shape[1], self.method)
        return torch.cat([pre, out, suf], dim=1)


class TopK(EViT):
    """Top-K pruning by CLS attention (EViT without the fused token; not among the paper's 7)."""

    method, fuse = "topk", False


# ============================================================================ ToMe
class ToMe(Reducer):
    """ToMe (Bolya et al., ICLR 2023, arXiv 2210.09461), written from the paper: bipartite soft
    matching on head-averaged keys, size-weighted merging, proportional attention (log size bias
    in every later block). ``r_s`` from :func:`~.core.tome_schedule`, capped at half the tokens."""

    method, where = "tome", "mid"

    def _r(self, n: int, ctx: ReduceCtx) -> int:
        r = core.tome_schedule(ctx.num_patches, self.keep_rate, ctx.n_stages)[ctx.stage]
        return max(0, min(r, (n - ctx.state.protected - ctx.num_prefix) // 2))

    def skip(self, n: int, ctx: ReduceCtx) -> bool:
        return self._r(n, ctx) == 0

    def reduce(self, x: torch.Tensor, ctx: ReduceCtx) -> torch.Tensor:
        n, st = x.shape[1], ctx.state
        s = st.protected
        main, suf = x[:, :n - s], x[:, n - s:]
        r = self._r(n, ctx)
        sizes = st.sizes if st.sizes is not None else torch.ones(x.shape[0], n, 1, dtype=x.dtype, device=x.device)
        metric = ctx.keys.mean(1)[:, :n - s]
        prot = torch.zeros(n - s, dtype=torch.bool, device=x.device)
        prot[:ctx.num_prefix] = True
        unm, src, dst = core.bipartite_soft_matching(metric, r, prot)
        out = core.merge_wavg(main, sizes[:, :n - s], unm, src, dst, record=ctx.want_assign)
        if ctx.want_assign:
            y, new_sizes, assign = out
            # merge_wavg's assignment covers prefix + candidates; express it over candidates for _emit
            p = ctx.num_prefix
            cand = assign[:, p:] - p
            _emit(ctx, n, cand, y.shape[1] - p, self.method)
        else:
            y, new_sizes = out
        st.sizes = torch.cat([new_sizes, sizes[:, n - s:]], dim=1)
        return torch.cat([y, suf], dim=1)

    def extend_state(self, state: TokenState, f: int, batch: int, device) -> None:
        if state.sizes is not None:  # fixed behaviour of the reference crash at kr 1.0 (sizes None)
            state.sizes = torch.cat([state.sizes, state.sizes.new_ones(batch, f, 1)], dim=1)

    def attention_bias(self, state: TokenState):
        if state.sizes is None:
            return None, None
        return state.sizes.log()[:, None, None, :, 0], None


# ============================================================================ ATS
class ATS(Reducer):
    """ATS (Fayyaz et al., ECCV 2022, arXiv 2111.15667): inverse-transform sampling of tokens by
    CLS-attention x value-norm significance, inside the attention (only sampled rows continue).
    Counts are data-dependent; the budget ``int(kr^(s+1) P) + 1`` is an upper bound."""

    method, where = "ats", "attn"
    export_unsupported = ("token_reduction method 'ats' keeps a data-dependent number of tokens per batch (the unique "
                          "inverse-CDF samples), so it has no static ONNX graph; the other methods export with static "
                          "keep counts")

    def select_rows(self, ctx: ReduceCtx, n: int) -> torch.Tensor:
        st, p = ctx.state, ctx.num_prefix
        if p < 1:
            raise ValueError("ATS needs a prefix token (CLS or register) to pad with.")
        stop = n - st.protected
        k = core.ats_budget(ctx.num_patches, self.keep_rate, ctx.stage)
        q = core.ats_quantiles(k, fixed=self.fixed, device=ctx.attn.device)
        sampled = core.ats_sample(ctx.attn, ctx.values, p, p, stop, q, st.mask)
        b, dev = sampled.shape[0], sampled.device
        ids = torch.cat([torch.arange(p, device=dev).expand(b, -1), sampled,
                         torch.arange(stop, n, device=dev).expand(b, -1)], dim=1)
        mask = torch.cat([torch.ones(b, p, dtype=torch.bool, device=dev), sampled != 0,
                          torch.ones(b, n - stop, dtype=torch.bool, device=dev)], dim=1)
        st.mask = mask
        if ctx.want_assign:
            cand = torch.full((b, stop - p + 1), -1, dtype=torch.long, device=dev)  # last column: padding dump
            pos = torch.arange(sampled.shape[1], device=dev).expand(b, -1)
            cand.scatter_(1, torch.where(sampled != 0, sampled - p, stop - p), pos)
            cand = cand[:, :-1]
            _emit(ctx, n, cand, sampled.shape[1], self.method)
        return ids

    def extend_state(self, state: TokenState, f: int, batch: int, device) -> None:
        if state.mask is not None:
            state.mask = torch.cat([state.mask, torch.ones(batch, f, dtype=torch.bool, device=device)], dim=1)

    def attention_bias(self, state: TokenState):
        if state.mask is None:
            return None, None
        m = state.mask
        return None, ~(m[:, None, :, None] & m[:, None, None, :])


# ============================================================================ DynamicViT
class PredictorLG(nn.Module):
    """DynamicViT's local-global keep predictor (log-probabilities, index 0 = keep)."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
                                      nn.Linear(dim // 4, 2), nn.LogSoftmax(dim=-1))

    def forward(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        b, n, c = x.shape
        local = x[:, :, :c // 2]
        glob = (x[:, :, c // 2:] * policy).sum(dim=1, keepdim=True) / torch.sum(policy, dim=1, keepdim=True) + 1e-6
        return self.out_conv(torch.cat([local, glob.expand(b, n, c // 2)], dim=-1))


class DynamicViT(Reducer):
    """DynamicViT (Rao et al., NeurIPS 2021, arXiv 2106.02034): a predictor per location; training
    masks tokens (Gumbel hard decisions, masked softmax in every later block), eval gathers the
    top-scored tokens before the block. The ratio loss is exposed through ``fgir_aux_losses``."""

    method, where, needs_attention = "dynamicvit", "before", False

    def __init__(self, locations, keep_rate, fixed, dim: int, ratio_weight: float = 2.0):
        super().__init__(locations, keep_rate, fixed)
        self.ratio_weight = ratio_weight
        self.predictors = nn.ModuleList(PredictorLG(dim) for _ in locations)
        _init_linear(self.predictors)

    def targets(self) -> list[float]:
        """Ratio-loss targets: ``kr ** (s + 1)`` per location (a keep-rate list gives them directly)."""
        return [core.cumulative_rate(self.keep_rate, s) for s in range(len(self.locations))]

    def init_state(self, state: TokenState, x: torch.Tensor, num_prefix: int) -> None:
        state.prev_decision = x.new_ones(x.shape[0], x.shape[1] - num_prefix, 1)

    def reduce(self, x: torch.Tensor, ctx: ReduceCtx) -> torch.Tensor:
        st, p = ctx.state, ctx.num_prefix
        n = x.shape[1]
        pre, cand, suf = _split(x, ctx)
        m = cand.shape[1]
        prev = st.prev_decision[:, :m]
        scores = self.predictors[ctx.stage](cand, prev)
        if self.training:
            keep = F.gumbel_softmax(scores, hard=True)[:, :, 0:1] * prev
            st.decisions.append(keep)
            if st.clr is not None:  # tokens stay in place; a masked-out token counts as dropped
                pos = torch.arange(m, device=x.device).expand(x.shape[0], -1)
                _emit(ctx, n, torch.where(keep[..., 0] > 0, pos, -1), m, self.method, record=False)
            st.prev_decision = torch.cat([keep, st.prev_decision[:, m:]], dim=1)
            st.policy = torch.cat([x.new_ones(x.shape[0], p, 1), st.prev_decision], dim=1)
            return x
        k = core.dynamicvit_keep(ctx.num_patches, m + st.protected, self.keep_rate, ctx.stage, ctx.clc, self.fixed)
        k = max(0, min(k, m))
        idx = torch.argsort(scores[:, :, 0], dim=1, descending=True)[:, :k]
        st.prev_decision = torch.cat([prev.gather(1, idx[..., None]), st.prev_decision[:, m:]], dim=1)
        if ctx.want_assign:
            assign = torch.full((x.shape[0], m), -1, dtype=torch.long, device=x.device)
            assign.scatter_(1, idx, torch.arange(k, device=x.device).expand(x.shape[0], -1))
            _emit(ctx, n, assign, k, self.method)
        return torch.cat([pre, _gather(cand, idx), suf], dim=1)

    def extend_state(self, state: TokenState, f: int, batch: int, device) -> None:
        # faithful: training extends with ones, eval with zeros (train/eval mismatch, spec §3.4)
        fill = 1.0 if (self.training or self.fixed) else 0.0
        pd = state.prev_decision
        state.prev_decision = torch.cat([pd, torch.full((batch, f, 1), fill, dtype=pd.dtype, device=device)], dim=1)
        if state.policy is not None:
            state.policy = torch.cat([state.policy, state.policy.new_ones(batch, f, 1)], dim=1)

    def ratio_loss(self, decisions: list[torch.Tensor]) -> torch.Tensor:
        return self.ratio_weight * core.dynamicvit_ratio_loss(decisions, self.targets())


# ============================================================================ SiT / PatchMerger
class TokenSlimming(nn.Module):
    """SiT token-slimming module: ``W = softmax_tokens(tau * MLP(LN x))``, output ``W^T x`` (un-normalised x)."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.k = k
        with warnings.catch_warnings():  # k can be 0 in faithful mode (a zero-element Linear)
            warnings.simplefilter("ignore", UserWarning)
            self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, k))
        self.tau = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = (self.tau * self.mlp(x)).softmax(dim=1)
        return w.transpose(1, 2) @ x, w


class _Pooling(Reducer):
    where, needs_attention = "before", False

    def reduce(self, x: torch.Tensor, ctx: ReduceCtx) -> torch.Tensor:
        if ctx.num_patches != self.num_patches:
            raise ValueError(f"{self.method} was built for {self.num_patches} patches (its slim-token counts are "
                             f"parameters) but the input has {ctx.num_patches}; build the model with that img_size.")
        n = x.shape[1]
        pre, cand, suf = _split(x, ctx)
        y, w = self.pool(cand, ctx.stage)
        if ctx.want_assign:
            _emit(ctx, n, core.soft_assign(w), y.shape[1], self.method)
        return torch.cat([pre, y, suf], dim=1)


class SiT(_Pooling):
    """SiT token slimming (Zong et al., ECCV 2022, arXiv 2111.12624): ``int(P kr^(s+1))`` slim tokens
    before the block (can be 0 in faithful mode)."""

    method = "sit"

    def __init__(self, locations, keep_rate, fixed, dim: int, num_patches: int):
        super().__init__(locations, keep_rate, fixed)
        self.num_patches = num_patches
        self.slims = nn.ModuleList(TokenSlimming(dim, core.absolute_target(num_patches, self.keep_rate, s, fixed))
                                   for s in range(len(locations)))
        _init_linear(self.slims)

    def pool(self, x, stage):
        return self.slims[stage](x)


class PatchMerger(_Pooling):
    """PatchMerger (Renggli et al., arXiv 2202.12015): ``K`` learnable queries (randn) attend over the
    layer-normed tokens (scale 1); the output is built from the normalised tokens."""

    method = "patchmerger"

    def __init__(self, locations, keep_rate, fixed, dim: int, num_patches: int):
        super().__init__(locations, keep_rate, fixed)
        self.num_patches = num_patches
        ks = [core.absolute_target(num_patches, self.keep_rate, s, fixed) for s in range(len(locations))]
        self.queries = nn.ParameterList(nn.Parameter(torch.randn(k, dim)) for k in ks)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in ks)

    def pool(self, x, stage):
        xh = self.norms[stage](x)
        a = (self.queries[stage] @ xh.transpose(1, 2)).softmax(dim=-1)
        return a @ xh, a.transpose(1, 2)


# ============================================================================ DPC-KNN
class DPCKNN(Reducer):
    """DPC-KNN token clustering (TCFormer CTM, Zeng et al., CVPR 2022, arXiv 2204.08680), before the
    block; the CLR and the cache tokens form a protected suffix that is never clustered."""

    method, where, needs_attention, protect_default = "dpcknn", "before", False, True

    def __init__(self, locations, keep_rate, fixed, dim: int, k_neighbors: int = 5, equal_weight: bool = False):
        super().__init__(locations, keep_rate, fixed)
        self.k_neighbors, self.equal_weight = k_neighbors, equal_weight
        self.scores = nn.ModuleList(nn.Linear(dim, 1) for _ in locations)
        _init_linear(self.scores)

    def reduce(self, x: torch.Tensor, ctx: ReduceCtx) -> torch.Tensor:
        n = x.shape[1]
        pre, cand, suf = _split(x, ctx)
        m = cand.shape[1]
        k = min(m, core.dpc_target(ctx.num_patches, self.keep_rate, ctx.stage, ctx.last))
        w = cand.new_ones(cand.shape[0], m, 1) if self.equal_weight else self.scores[ctx.stage](cand).exp()
        idx = core.dpc_knn_cluster(cand, k, self.k_neighbors)
        y = core.merge_clusters(cand, idx, k, w)
        if ctx.want_assign:
            _emit(ctx, n, idx, k, self.method)
        return torch.cat([pre, y, suf], dim=1)


REDUCERS = {c.method: c for c in (EViT, TopK, ToMe, ATS, DynamicViT, SiT, PatchMerger, DPCKNN)}
"""Method name -> reducer class."""
