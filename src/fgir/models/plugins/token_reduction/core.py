"""Pure functional core of the token-reduction methods (tensors in, tensors out).

Every function here works on ``B x N x D`` token tensors (and ``B x H x N x N`` attention
probabilities where needed) and knows nothing about modules or models. The keep-count rules use
the reference float expressions (spec ``clca.md`` §6): ``math.ceil(kr * (n - 1))`` for EViT/Top-K,
``int(P * kr ** (s + 1))`` for the absolute rules; do not "repair" them in faithful mode.

Keep rates: ``keep_rate`` is a float ``kr`` or a list with one value per location (spec §5). A
float is expanded per stage ``s`` by :func:`stage_rate` (``kr`` for the relative rules: EViT /
Top-K and DynamicViT's CLC rule) and :func:`cumulative_rate` (``kr ** (s + 1)`` for the absolute
rules: DynamicViT base, ATS, SiT, PatchMerger, DPC-KNN, ToMe's ``t_s``); a list gives those
per-stage values directly (entry ``s`` replaces ``kr`` or ``kr ** (s + 1)``), so for an absolute
method ``[0.5, 0.25, 0.125]`` equals ``0.5``, and for EViT ``[0.5, 0.5, 0.5]`` does.

Assignment maps (``assign``, optional outputs used by ``fgir viz tokens`` and by the clca plug-in's
tracked CLR read-out) map every input candidate token to the index of the output candidate it went
into, or -1 when it was dropped.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "stage_rate", "cumulative_rate", "expand_keep_rate", "is_disabled", "ABSOLUTE", "RELATIVE",
    "evit_keep", "absolute_target", "dynamicvit_keep", "ats_budget", "ats_quantiles", "dpc_target",
    "tome_schedule", "class_attention", "evit_reduce", "topk_reduce", "bipartite_soft_matching",
    "merge_wavg", "ats_sample", "dynamicvit_ratio_loss", "softmax_with_policy", "dpc_knn_cluster",
    "merge_clusters", "soft_assign", "token_schedule", "BEFORE_BLOCK",
]


# ============================================================================ keep rates per stage
RELATIVE = ("evit", "topk")
"""Methods whose keep rule is relative to the current count (``ceil(kr_s * (n - 1))``)."""
ABSOLUTE = ("dynamicvit", "ats", "sit", "patchmerger", "dpcknn", "tome")
"""Methods with an absolute per-stage target (``kr ** (s + 1)`` of the patch count; DynamicViT's
faithful CLC rule is relative, its base rule and ratio-loss targets absolute)."""


def stage_rate(keep_rate: float | list[float], stage: int) -> float:
    """Relative keep rate at ``stage``: ``kr`` for a float, entry ``stage`` of a list."""
    if isinstance(keep_rate, (list, tuple)):
        return keep_rate[stage]
    return keep_rate


def cumulative_rate(keep_rate: float | list[float], stage: int) -> float:
    """Absolute (cumulative) keep fraction at ``stage``: ``kr ** (s + 1)`` for a float (Python's
    ``**``, the reference expression), entry ``stage`` of a list."""
    if isinstance(keep_rate, (list, tuple)):
        return keep_rate[stage]
    return keep_rate ** (stage + 1)


def expand_keep_rate(method: str, keep_rate: float | list[float], n_stages: int) -> list[float]:
    """The per-location values ``method``'s rule uses: ``[kr] * n`` for EViT / Top-K, ``[kr ** (s + 1)]``
    for the absolute methods (DynamicViT: its base rule and ratio-loss targets); a list is returned
    as it is (its length must be ``n_stages``)."""
    if isinstance(keep_rate, (list, tuple)):
        if len(keep_rate) != n_stages:
            raise ValueError(f"keep_rate {list(keep_rate)} needs one value per location ({n_stages}).")
        return list(keep_rate)
    rule = stage_rate if method in RELATIVE else cumulative_rate
    return [rule(keep_rate, s) for s in range(n_stages)]


def is_disabled(keep_rate: float | list[float]) -> bool:
    """Keep rate 1.0, or a list of 1.0 only: the reducer is off (framework rule, spec §15 item 12)."""
    if isinstance(keep_rate, (list, tuple)):
        return all(v == 1.0 for v in keep_rate)
    return keep_rate == 1.0


# ============================================================================ keep-count rules
def evit_keep(n: int, keep_rate: float) -> int:
    """EViT / Top-K: non-CLS tokens kept out of ``n`` tokens (CLS included): ``ceil(kr * (n - 1))``."""
    return math.ceil(keep_rate * (n - 1))


def absolute_target(num_patches: int, keep_rate: float | list[float], stage: int, fixed: bool = False) -> int:
    """SiT / PatchMerger / DynamicViT-base rule ``int(P * kr ** (s + 1))`` (can be 0; ``fixed``: >= 1).
    ``keep_rate``: a float or a per-location list (entry ``s`` replaces ``kr ** (s + 1)``)."""
    k = int(num_patches * cumulative_rate(keep_rate, stage))
    return max(1, k) if fixed else k


def dynamicvit_keep(num_patches: int, current: int, keep_rate: float | list[float], stage: int, clc: bool,
                    fixed: bool = False) -> int:
    """DynamicViT eval keep count: ``int(P * kr**(s+1))`` (base) or ``int((S - 1) * kr)`` with CLC,
    ``S`` the current non-CLS count (faithful reference off-by-one). ``fixed``: the base rule, >= 1.
    A list ``keep_rate`` gives ``kr ** (s + 1)`` (base) and ``kr`` (CLC) at stage ``s`` alike."""
    if fixed or not clc:
        return absolute_target(num_patches, keep_rate, stage, fixed)
    return int((current - 1) * stage_rate(keep_rate, stage))


def ats_budget(num_patches: int, keep_rate: float | list[float], stage: int) -> int:
    """ATS sample budget ``K = int(kr ** (s + 1) * P) + 1`` (a list: entry ``s`` replaces ``kr ** (s + 1)``)."""
    return int(cumulative_rate(keep_rate, stage) * num_patches) + 1


def ats_quantiles(k: int, fixed: bool = False, device=None) -> torch.Tensor:
    """ATS inverse-CDF quantiles: faithful float32 ``arange(1/(2K), (2K-1)/(2K), 1/K)`` (K-1 or K
    points, 0 for K=1); ``fixed``: ``linspace(1/(2K), 1 - 1/(2K), K)`` (always K points)."""
    if fixed:
        return torch.linspace(1 / (2 * k), 1 - 1 / (2 * k), k, device=device)
    return torch.arange(1 / (2 * k), (2 * k - 1) / (2 * k), 1 / k, dtype=torch.float32, device=device)


def dpc_target(num_patches: int, keep_rate: float | list[float], stage: int, last: bool) -> int:
    """DPC-KNN clusters: ``int(P * kr ** (s + 1))``, at least 5 on non-last stages, at least 1 on the last
    (a list: entry ``s`` replaces ``kr ** (s + 1)``)."""
    k = int(num_patches * cumulative_rate(keep_rate, stage))
    if not last and k <= 5:
        return 5
    return max(k, 1)


def tome_schedule(num_patches: int, keep_rate: float | list[float], n_stages: int) -> list[int]:
    """ToMe nominal merges per stage: ``r_s = t_{s-1} - t_s``, ``t_s = int(P * kr ** (s + 1))``, ``t_{-1} = P``
    (a list: entry ``s`` replaces ``kr ** (s + 1)``)."""
    t = [num_patches] + [int(num_patches * cumulative_rate(keep_rate, s)) for s in range(n_stages)]
    return [t[s] - t[s + 1] for s in range(n_stages)]


# ============================================================================ helpers
def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, j]]`` for ``B x N x D`` x and ``B x M`` idx."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def class_attention(attn: torch.Tensor, num_prefix: int, start: int, stop: int) -> torch.Tensor:
    """Attention the prefix tokens pay to tokens ``start:stop``, averaged over heads (and over the
    prefix rows when there are several; over all rows when there is no prefix): ``B x (stop-start)``."""
    if num_prefix == 1:
        return attn[:, :, 0, start:stop].mean(dim=1)
    rows = attn[:, :, :num_prefix] if num_prefix > 1 else attn
    return rows[..., start:stop].mean(dim=(1, 2))


# ============================================================================ EViT / Top-K
def evit_reduce(x: torch.Tensor, scores: torch.Tensor, k: int, fuse: bool = True, record: bool = False):
    """Keep the ``k`` candidates with the highest ``scores`` (descending order); with ``fuse`` append
    the score-weighted sum of the others (weights not renormalised).

    Args:
        x: ``B x M x D`` candidate tokens (post-attention residual stream).
        scores: ``B x M`` attention-derived scores.
        k: tokens to keep (``0 <= k <= M``).
        fuse: EViT (True) or Top-K (False).
        record: also return the assignment map.

    Returns:
        ``B x (k + fuse) x D`` tokens (and ``B x M`` assignment when ``record``).
    """
    order = torch.argsort(scores, dim=1, descending=True)
    keep = order[:, :k]
    out = [_gather(x, keep)]
    if fuse:
        comp = order[:, k:].sort(dim=1).values
        w = scores.gather(1, comp).unsqueeze(-1)
        out.append(torch.sum(_gather(x, comp) * w, dim=1, keepdim=True))
    y = torch.cat(out, dim=1)
    if not record:
        return y
    assign = torch.full_like(scores, -1, dtype=torch.long)
    assign.scatter_(1, keep, torch.arange(k, device=x.device).expand(x.shape[0], -1))
    if fuse:
        assign[assign < 0] = k
    return y, assign


def topk_reduce(x: torch.Tensor, scores: torch.Tensor, k: int, record: bool = False):
    """Top-K pruning: :func:`evit_reduce` without the fused token."""
    return evit_reduce(x, scores, k, fuse=False, record=record)


# ============================================================================ ToMe
def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: torch.Tensor | None = None):
    """ToMe bipartite soft matching (Bolya et al., arXiv 2210.09461), written from the paper.

    Tokens are split alternately (A = even indices, B = odd); each A token's best cosine partner in
    B is found, the ``r`` A tokens with the best scores are merged into their partners.

    Args:
        metric: ``B x N x C`` matching features (keys averaged over heads).
        r: tokens to remove (already capped by the caller).
        protected: optional ``N`` bool, True for tokens that must neither merge nor be merged into.

    Returns:
        ``(unm_idx, src_idx, dst_idx)``: unmerged A indices (sorted, positions in A), merged A
        indices and their B partners (positions in B); all ``B x * x 1``.
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    if protected is not None:
        scores = scores.masked_fill(protected[::2].view(1, -1, 1), -math.inf)
        scores = scores.masked_fill(protected[1::2].view(1, 1, -1), -math.inf)
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx = edge_idx[:, r:].sort(dim=1).values
    src_idx = edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(1, src_idx)
    return unm_idx, src_idx, dst_idx


def merge_wavg(x: torch.Tensor, size: torch.Tensor, unm_idx, src_idx, dst_idx, record: bool = False):
    """Size-weighted average merge: ``x_b <- (s_b x_b + sum s_a x_a) / (s_b + sum s_a)``.

    Output order: the unmerged A tokens (original order), then every B token. Returns ``(x, size)``
    (and the ``B x N`` assignment when ``record``)."""
    d = x.shape[-1]
    xs = x * size
    a, b = xs[:, ::2], xs[:, 1::2]
    sa, sb = size[:, ::2], size[:, 1::2]
    unm = a.gather(1, unm_idx.expand(-1, -1, d))
    src = a.gather(1, src_idx.expand(-1, -1, d))
    b = b.scatter_reduce(1, dst_idx.expand(-1, -1, d), src, reduce="sum")
    s_unm = sa.gather(1, unm_idx)
    sb = sb.scatter_reduce(1, dst_idx, sa.gather(1, src_idx), reduce="sum")
    y = torch.cat([unm, b], dim=1)
    s = torch.cat([s_unm, sb], dim=1)
    y = y / s
    if not record:
        return y, s
    n, u = x.shape[1], unm_idx.shape[1]
    bsz = x.shape[0]
    assign = torch.empty(bsz, n, dtype=torch.long, device=x.device)
    a_pos = torch.arange(0, n, 2, device=x.device)
    b_pos = torch.arange(1, n, 2, device=x.device)
    assign[:, b_pos] = u + torch.arange(len(b_pos), device=x.device)
    a_assign = torch.empty(bsz, len(a_pos), dtype=torch.long, device=x.device)
    a_assign.scatter_(1, unm_idx[..., 0], torch.arange(u, device=x.device).expand(bsz, -1))
    a_assign.scatter_(1, src_idx[..., 0], u + dst_idx[..., 0])
    assign[:, a_pos] = a_assign
    return y, s, assign


# ============================================================================ ATS
def ats_sample(attn: torch.Tensor, v: torch.Tensor, num_prefix: int, start: int, stop: int,
               quantiles: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ATS inverse-transform sampling of candidates ``start:stop`` (Fayyaz et al., arXiv 2111.15667).

    Significance ``s_j = sum_h A[h, cls, j] * ||v_hj||``, normalised, cumulated; each quantile
    picks the candidate whose CDF is nearest. Per sample the unique ids (ascending) are kept and
    padded with id 0 (a copy of the first prefix token) to the batch maximum.

    Returns:
        ``B x U`` sampled token indices into the full sequence (0 = padding).
    """
    vn = v.norm(dim=-1)  # B x H x N
    if num_prefix == 1:
        s = (attn[:, :, 0, start:stop] * vn[..., start:stop]).sum(1)
    else:
        rows = attn[:, :, :num_prefix] if num_prefix > 1 else attn
        s = (rows[..., start:stop].mean(2) * vn[..., start:stop]).sum(1)
    s = s / (s.sum(-1, keepdim=True) + 1e-6)
    cdf = torch.cumsum(s, dim=-1)
    if mask is not None:
        cdf = cdf + 0.1 * (~mask[:, start:stop]).to(cdf.dtype)
    if quantiles.numel() == 0:
        return torch.zeros(attn.shape[0], 0, dtype=torch.long, device=attn.device)
    ids = torch.cdist(quantiles.view(1, -1, 1).expand(attn.shape[0], -1, -1).to(cdf.dtype),
                      cdf.unsqueeze(-1)).argmin(-1) + start
    ids = ids.sort(dim=1).values
    dup = torch.zeros_like(ids, dtype=torch.bool)
    dup[:, 1:] = ids[:, 1:] == ids[:, :-1]
    ids = ids.masked_fill(dup, 0)
    # unique ids first (ascending), padding (0) last
    key = torch.where(ids == 0, torch.full_like(ids, torch.iinfo(torch.long).max), ids)
    ids = ids.gather(1, key.argsort(dim=1))
    width = int((~dup).sum(1).max())
    return ids[:, :width]


# ============================================================================ DynamicViT
def softmax_with_policy(logits: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DynamicViT masked softmax (Rao et al., arXiv 2106.02034), fp32; a token always sees itself.

    ``a_ij = (exp(s_ij - max_j s_ij) * P_ij + eps/N) / (sum_j exp(...) * P_ij + eps)`` with
    ``P_ij = p_j + (1 - p_j) * delta_ij``."""
    b, _, n, _ = logits.shape
    p = policy.reshape(b, 1, 1, n)
    eye = torch.eye(n, dtype=p.dtype, device=p.device).view(1, 1, n, n)
    p = p + (1.0 - p) * eye
    z = logits - logits.max(dim=-1, keepdim=True).values
    z = z.float().exp() * p.float()
    return ((z + eps / n) / (z.sum(dim=-1, keepdim=True) + eps)).to(logits.dtype)


def dynamicvit_ratio_loss(decisions: list[torch.Tensor], targets: list[float]) -> torch.Tensor:
    """``mean_s mean_b (mean_tokens(keep_s) - target_s)^2`` (the ratio weight is applied by the caller)."""
    if not decisions:
        raise ValueError("dynamicvit_ratio_loss needs at least one keep decision (train-mode forward).")
    terms = [((d.flatten(1).mean(1) - t) ** 2).mean() for d, t in zip(decisions, targets, strict=True)]
    return torch.stack(terms).mean()


# ============================================================================ DPC-KNN
@torch.no_grad()
def dpc_knn_cluster(x: torch.Tensor, n_clusters: int, k: int = 5):
    """DPC-KNN clustering (TCFormer CTM, Zeng et al., arXiv 2204.08680): ``B x M`` cluster ids
    (cluster order = centre rank)."""
    b, m, d = x.shape
    k = min(k, m)
    dist = torch.cdist(x.float(), x.float()) / math.sqrt(d)
    knn = dist.topk(k, dim=-1, largest=False).values
    noise = torch.rand(b, m, device=x.device)  # reference tie-breaking noise (global torch RNG)
    density = (-(knn ** 2).mean(-1)).exp() + noise * 1e-6
    higher = density[:, None, :] > density[:, :, None]
    dmax = dist.flatten(1).max(-1).values[:, None, None]
    parent = torch.where(higher, dist, dmax).min(-1).values
    centres = (parent * density).topk(n_clusters, dim=-1).indices
    idx = dist.gather(1, centres.unsqueeze(-1).expand(-1, -1, m)).argmin(1)
    idx.scatter_(1, centres, torch.arange(n_clusters, device=x.device).expand(b, -1))
    return idx


def merge_clusters(x: torch.Tensor, idx: torch.Tensor, n_clusters: int, weight: torch.Tensor) -> torch.Tensor:
    """``y_c = sum_{j in c} w_j / (sum_{j in c} w_j + 1e-6) * x_j``: ``B x n_clusters x D``."""
    b, m, d = x.shape
    total = torch.zeros(b, n_clusters, 1, dtype=weight.dtype, device=x.device).scatter_add(1, idx[..., None], weight)
    w = weight / (total.gather(1, idx[..., None]) + 1e-6)
    return torch.zeros(b, n_clusters, d, dtype=x.dtype, device=x.device).scatter_add(
        1, idx[..., None].expand(-1, -1, d), x * w)


def soft_assign(weights: torch.Tensor) -> torch.Tensor:
    """Assignment map of a soft pooling (``B x M x K`` weights): each input to the output in which it has
    the largest weight (the first on ties; -1 when there are no outputs)."""
    return weights.argmax(-1) if weights.shape[-1] else torch.full(weights.shape[:2], -1, dtype=torch.long,
                                                                    device=weights.device)


# ============================================================================ closed-form schedule
BEFORE_BLOCK = ("dynamicvit", "sit", "patchmerger", "dpcknn")
"""Methods that reduce before the block (the others reduce inside it)."""


def token_schedule(method: str | None, keep_rate: float | list[float], num_patches: int, depth: int = 12,
                   locations: tuple[int, ...] = (3, 6, 9), clca: bool = False, num_clr: int = 1,
                   include_gap: bool = True, recover_at_last: bool = True, protect: bool | None = None,
                   fixed: bool = False) -> tuple[list[int], list[int]]:
    """The closed-form token walk of spec ``clca.md`` §7 (eval mode; ATS gives its upper bound).

    Returns ``(tokens entering attention per block, tokens entering the MLP per block)``; a test can
    compare both with :attr:`TokenPath.last_counts`. ``method=None`` (or keep rate 1.0, or a list of
    1.0) = no reduction. ``keep_rate``: a float or one value per location (see :func:`expand_keep_rate`).
    """
    active = method is not None and not is_disabled(keep_rate)
    if active and isinstance(keep_rate, (list, tuple)) and len(keep_rate) != len(locations):
        raise ValueError(f"keep_rate {list(keep_rate)} needs one value per location {list(locations)}.")
    locs = list(locations) if active else []
    clr = num_clr if clca else 0
    protect = (method == "dpcknn") if protect is None else protect
    recovery = sorted(set(locations) | ({depth - 2} if recover_at_last else set())) if clca else []
    carriers = int(include_gap) + clr
    n, prot = 1 + num_patches + clr, clr if (protect and clca) else 0
    attn, mlp, prev_r = [], [], 0
    for i in range(depth):
        n_attn = n
        if i in locs:
            s, m = locs.index(i), n - 1 - prot
            last = s == len(locs) - 1
            if method in ("evit", "topk"):
                k = min(m, evit_keep(m + 1, stage_rate(keep_rate, s)))
                if k < m:
                    n = 1 + k + (method == "evit") + prot
            elif method == "tome":
                r = tome_schedule(num_patches, keep_rate, len(locs))[s]
                n = n - max(0, min(r, (n - prot - 1) // 2))
            elif method == "ats":
                points = ats_quantiles(ats_budget(num_patches, keep_rate, s), fixed).numel()
                n = 1 + min(points, m) + prot
            elif method == "dynamicvit":
                n = 1 + max(0, min(m, dynamicvit_keep(num_patches, m + prot, keep_rate, s, clca, fixed))) + prot
            elif method in ("sit", "patchmerger"):
                n = 1 + absolute_target(num_patches, keep_rate, s, fixed) + prot
            elif method == "dpcknn":
                n = 1 + min(m, dpc_target(num_patches, keep_rate, s, last)) + prot
            else:
                raise ValueError(f"unknown method '{method}'.")
            if method in BEFORE_BLOCK:
                n_attn = n
        attn.append(n_attn)
        mlp.append(n)
        if i in recovery:
            f = carriers * (i - prev_r)
            prev_r = i
            n += f
            if protect and clca:
                prot += f
    return attn, mlp
