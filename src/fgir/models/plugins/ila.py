"""ILA: down-sampling inter-layer adapters between the blocks of a frozen ViT.

Paper: "Down-Sampling Inter-Layer Adapter for Parameter and Computation Efficient Ultra-Fine-Grained
Image Recognition", E. A. Rios, F. Oyerinde, M.-C. Hu, B.-C. Lai, arXiv 2409.11051.
Spec: ``shared/specs/ila.md`` (reference: github.com/arkel23/DownSamplingInterLayerAdapter @9b2248cc21).

Layout (house style):

* functional core: :func:`ds_grid_size`, :func:`ila_token_counts`, :func:`ila_locations`,
  :func:`rsds` (tensors in, tensors out);
* :class:`ILAdapter`: one inter-layer adapter (spec §3). Plain ILA (``downsample=False``): padded
  3x3 depth-wise conv in the bottleneck, identity residual. DS-ILA (``downsample=True``): unpadded
  3x3 depth-wise conv in the bottleneck (SDS) *and* on the residual (RSDS, near-ones init), so the
  g x g patch grid becomes (g-2) x (g-2); prefix tokens (class token, registers) take their own
  1x1 conv in the bottleneck and bypass the RSDS;
* :func:`apply_ila` (plug-in ``ila``, config :class:`ILAConfig`): adapters are held in
  ``model.ila`` (``nn.ModuleDict`` keyed by block index) and run by a forward hook after their
  block, so the backbone's modules and state-dict keys are untouched. Variants (spec §4):
  ``ds_only`` (DS-ILAs after ``ds_locs``), ``ila_plus`` (+ plain ILAs after every other block),
  ``ila_pp`` (DS-ILAs + two parallel bottleneck adapters in every block, ``model.ila_inblock``);
* :func:`mark_only_ila_trainable`: ILA modules, in-block adapters, class/register tokens and head.

Counts at D = 768, r = 8: plain ILA 13,336, DS-ILA 20,248; non-head trainable on ViT-B/16
(with the class token): DS-only 41,264, ILA+ 174,624, ILA++ 354,800.

timm's ``forward_intermediates`` works on every variant (the adapters run as block hooks); after
a DS-ILA its ``NCHW`` output uses each block's own, down-sampled grid (re-bound on the instance).
"""

from __future__ import annotations

import math
import types
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import Config, ConfigError, PluginConfig, check_choice
from .adapters import (
    BottleneckAdapter,
    attach_parallel_adapters,
    check_locations,
    mark_only_trainable,
    merge_grid,
    prefix_count,
    reference_linear_init,
    split_grid,
    vit_blocks,
)
from .base import register_plugin

__all__ = ["ILAConfig", "ILAdapter", "apply_ila", "mark_only_ila_trainable", "ds_grid_size", "ila_token_counts",
           "ila_locations", "rsds", "VARIANTS"]

VARIANTS = ("ds_only", "ila_plus", "ila_pp")
"""ILA variants (spec §4): DS-ILAs only; + plain ILAs elsewhere (ILA+); DS-ILAs + in-block adapters (ILA++)."""


# ============================================================================ functional core
def ds_grid_size(grid: int, kernel_size: int = 3, padding: int = 0) -> int:
    """Side of the patch grid after one unpadded (``padding=0``) depth-wise ``k x k`` conv: g - k + 1 + 2p."""
    out = grid - kernel_size + 1 + 2 * padding
    if out < 1:
        raise ValueError(f"a {kernel_size}x{kernel_size} DS-ILA cannot down-sample a {grid}x{grid} patch grid "
                         f"(needs a grid of at least {kernel_size}); use larger inputs or fewer ds_locs.")
    return out


def ila_token_counts(grid: int, depth: int, ds_locs: Sequence[int], n_prefix: int = 1,
                     kernel_size: int = 3) -> list[int]:
    """Tokens seen by each of ``depth`` blocks when DS-ILAs follow blocks ``ds_locs`` (spec §2).

    ViT-B/16 at 224 (grid 14, DS after 3, 7): ``[197]*4 + [145]*4 + [101]*4``."""
    out, g = [], grid
    for i in range(depth):
        out.append(n_prefix + g * g)
        if i in ds_locs:
            g = ds_grid_size(g, kernel_size)
    return out


def ila_locations(variant: str, depth: int, ds_locs: Sequence[int], ila_locs: Sequence[int]
                  ) -> tuple[list[int], list[int]]:
    """(plain-ILA blocks, DS-ILA blocks) for ``variant``; ``ila_locs == [-1]`` means the variant's
    default (ILA+: every block not in ``ds_locs``, including the last; otherwise none)."""
    if variant not in VARIANTS:
        raise ValueError(f"ILA variant '{variant}' is not one of {list(VARIANTS)}.")
    ds = check_locations(list(ds_locs), depth, "ila.ds_locs")
    if list(ila_locs) == [-1]:
        plain = [i for i in range(depth) if i not in ds] if variant == "ila_plus" else []
    else:
        plain = check_locations(list(ila_locs), depth, "ila.ila_locs")
    both = sorted(set(plain) & set(ds))
    if both:
        # the reference applies at most one adapter per block: the plain one wins, silently; we refuse
        raise ValueError(f"blocks {both} are in both ila_locs and ds_locs; one adapter per block.")
    return plain, ds


def rsds(grid: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Residual spatial down-sampling: unpadded depth-wise conv without bias, ``B x D x h x h`` ->
    ``B x D x (h-k+1) x (h-k+1)``."""
    return F.conv2d(grid, weight, None, stride=1, padding=0, groups=grid.shape[1])


# ============================================================================ modules
class _TokenBN(nn.BatchNorm1d):
    """BatchNorm1d over the channels of ``B x T x C`` tokens (statistics over batch x tokens)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ILAdapter(nn.Module):
    """One inter-layer adapter (spec §3): ``Z' = R + Dropout(U)``.

    Args:
        dim: token width D.
        bottleneck: r (reference 8).
        kernel_size: k of the depth-wise convolutions (reference 3).
        n_prefix: prefix tokens (class token, registers) ahead of the square patch grid.
        padding: pad the bottleneck's depth-wise conv (plain ILA: True; DS-ILA: False).
        ds_conv: down-sample the residual with the RSDS conv (plain ILA: False; DS-ILA: True).
        cls_conv: separate 1x1 conv for prefix tokens (must be True; the reference's False silently
            disables down-sampling).
        dropout: on U (reference 0.1).
        rsds_init: ``near_ones`` (N(1, 1e-3), reference) or ``average`` (N(1/k^2, 1e-3/k^2), keeps the
            residual scale).
        zero_init_up: zero W_up, b_up (plain ILA then starts as the identity).

    Raises:
        ValueError: for ``cls_conv=False`` and for ``padding == ds_conv`` (neither: the reference drops
            the residual; both: the branches disagree on the grid size).
    """

    def __init__(self, dim: int, bottleneck: int = 8, kernel_size: int = 3, n_prefix: int = 1,
                 padding: bool = True, ds_conv: bool = False, cls_conv: bool = True, dropout: float = 0.1,
                 rsds_init: str = "near_ones", zero_init_up: bool = False):
        super().__init__()
        if not cls_conv:
            raise ValueError("ILAdapter(cls_conv=False) is not supported: the reference then forces padding on, "
                             "so a DS-ILA stops down-sampling. Keep cls_conv=True.")
        if padding and ds_conv:
            raise ValueError("ILAdapter(padding=True, ds_conv=True): the padded bottleneck keeps the grid while the "
                             "RSDS residual shrinks it. Use padding=True, ds_conv=False (plain ILA) or "
                             "padding=False, ds_conv=True (DS-ILA).")
        if not padding and not ds_conv:
            raise ValueError("ILAdapter(padding=False, ds_conv=False): the reference then returns the adapter "
                             "output without the residual. Use padding=True (plain ILA) or ds_conv=True (DS-ILA).")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ILAdapter kernel_size must be odd and >= 1, got {kernel_size}.")
        if rsds_init not in ("near_ones", "average"):
            raise ValueError(f"rsds_init='{rsds_init}' is not one of ['near_ones', 'average'].")
        self.dim, self.bottleneck, self.kernel_size, self.n_prefix = dim, bottleneck, kernel_size, n_prefix
        self.downsample = ds_conv
        r, k = bottleneck, kernel_size
        self.down = nn.Linear(dim, r)
        self.norm1 = _TokenBN(r)
        self.dwconv = nn.Conv2d(r, r, k, padding=(k // 2) if padding else 0, groups=r, bias=True)
        self.norm2 = nn.BatchNorm2d(r)
        self.pwconv = nn.Conv2d(r, r, 1)
        self.cls_conv = nn.Conv2d(r, r, 1)
        self.norm3 = _TokenBN(r)
        self.up = nn.Linear(r, dim)
        self.drop = nn.Dropout(dropout)
        for conv in (self.dwconv, self.pwconv, self.cls_conv):
            nn.init.xavier_uniform_(conv.weight)  # biases keep PyTorch's default (reference)
        # reference: ViT.init_weights re-initialises every Linear after construction (spec §1)
        reference_linear_init(self.down)
        reference_linear_init(self.up, zero=zero_init_up)
        if ds_conv:
            self.rsds = nn.Parameter(torch.empty(dim, 1, k, k))
            mean, std = (1.0, 1e-3) if rsds_init == "near_ones" else (1.0 / (k * k), 1e-3 / (k * k))
            with torch.no_grad():
                self.rsds.normal_(mean, std)
        else:
            self.register_parameter("rsds", None)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, bottleneck={self.bottleneck}, kernel_size={self.kernel_size}, "
                f"n_prefix={self.n_prefix}, downsample={self.downsample}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = self.n_prefix
        a = F.gelu(self.norm1(self.down(z)))
        a_pre, a_pat = split_grid(a, n)
        if self.downsample:
            ds_grid_size(a_pat.shape[-1], self.kernel_size)  # a clear error for a grid smaller than k
        a_pat = self.pwconv(F.gelu(self.norm2(self.dwconv(a_pat))))
        b, _, r = a_pre.shape
        if n:
            a_pre = self.cls_conv(a_pre.transpose(1, 2).reshape(b, r, n, 1)).reshape(b, r, n).transpose(1, 2)
        u = self.up(F.gelu(self.norm3(merge_grid(a_pre, a_pat))))
        if self.rsds is None:
            res = z
        else:
            z_pre, z_pat = split_grid(z, n)
            res = merge_grid(z_pre, rsds(z_pat, self.rsds))
        return res + self.drop(u)


class _AfterBlock:
    """Forward hook applying an inter-layer adapter to a block's output (deep-copy safe: the
    adapter reference is remapped with the model)."""

    def __init__(self, adapter: nn.Module) -> None:
        self.adapter = adapter

    def __call__(self, module, args, out):
        return self.adapter(out)


# ============================================================================ plug-in
@dataclass
class ILAConfig(PluginConfig):
    """ILA inter-layer adapters on a timm ViT / ViTFS (arXiv 2409.11051, spec ila.md §3-4)."""

    name: str = "ila"
    variant: str = "ila_plus"
    """ds_only (DS-ILAs only), ila_plus (+ plain ILAs after the other blocks), ila_pp (DS-ILAs + in-block adapters)."""
    ds_locs: list = field(default_factory=lambda: [3, 7])
    """Blocks (0-indexed) followed by a down-sampling ILA (reference: after blocks 4 and 8)."""
    ila_locs: list = field(default_factory=lambda: [-1])
    """Blocks followed by a plain ILA; [-1] = the variant's default (ila_plus: every block not in ds_locs)."""
    bottleneck: int = 8
    """Bottleneck width r of every adapter."""
    kernel_size: int = 3
    """Depth-wise kernel k (a DS-ILA shrinks the grid by k-1 per side)."""
    dropout: float = 0.1
    """Dropout on the adapter outputs (reference 0.1)."""
    rsds_init: str = "near_ones"
    """RSDS init: near_ones (N(1, 1e-3), reference: rescales the residual by up to k^2) or average (N(1/k^2, ...))."""
    zero_init_up: bool = False
    """Zero every up-projection (plain ILAs and in-block adapters start as the identity); reference: Xavier."""
    inblock: str = "auto"
    """In-block parallel adapters: auto (bottleneck adapters for ila_pp, none otherwise), none, adapter, convpass."""
    inblock_scale: float = 1.0
    """Factor of the in-block adapter outputs (reference 1.0)."""
    reinit_head: bool = False
    """Re-initialise the classifier like the reference (Xavier-uniform weight, N(0, 1e-6) bias)."""

    def validate(self, cfg: Config, key: str) -> None:
        check_choice(f"{key}.variant", self.variant, list(VARIANTS))
        check_choice(f"{key}.rsds_init", self.rsds_init, ["near_ones", "average"])
        check_choice(f"{key}.inblock", self.inblock, ["auto", "none", "adapter", "convpass"])
        if self.bottleneck < 1:
            raise ConfigError(f"{key}.bottleneck must be >= 1, got {self.bottleneck}.")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"{key}.kernel_size must be odd and >= 1, got {self.kernel_size}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{key}.dropout must be in [0, 1), got {self.dropout}.")
        for f in ("ds_locs", "ila_locs"):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in getattr(self, f)):
                raise ConfigError(f"{key}.{f} must be a list of block indices, got {getattr(self, f)!r}.")
        if self.variant != "ila_plus" and list(self.ila_locs) not in ([-1], []):
            raise ConfigError(f"{key}.ila_locs={self.ila_locs} with variant={self.variant}: plain ILAs are the "
                              "ila_plus variant; set variant=ila_plus.")


@register_plugin("ila", ILAConfig, families=("vit",))
def apply_ila(model: nn.Module, cfg: ILAConfig | None = None) -> nn.Module:
    """Insert ILA adapters into a timm-style ViT (``VisionTransformer``, ViTFS); see the module docstring.

    The backbone is not frozen here: use ``model.trainable: [plugins, head, cls_token]`` (ViTFS:
    ``reg_token``) or :func:`mark_only_ila_trainable`.
    """
    cfg = cfg or ILAConfig()
    cfg.validate(None, "ila")  # type: ignore[arg-type]
    blocks = vit_blocks(model, "ILA")
    if hasattr(model, "ila"):
        raise ValueError("ILA is already applied to this model (model.ila exists); apply the plug-in once.")
    plain, ds = ila_locations(cfg.variant, len(blocks), cfg.ds_locs, cfg.ila_locs)
    n, dim = prefix_count(model), int(model.embed_dim)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and not getattr(model, "dynamic_img_size", False):
        if grid[0] != grid[1]:
            raise ValueError(f"ILA needs a square patch grid, got {tuple(grid)}.")
        ila_token_counts(int(grid[0]), len(blocks), ds, n, cfg.kernel_size)  # raises if a grid gets too small
    ref = next(iter(model.parameters()))
    adapters = nn.ModuleDict()
    for i in sorted(plain + ds):
        down = i in ds
        adapters[str(i)] = ILAdapter(dim, cfg.bottleneck, cfg.kernel_size, n, padding=not down, ds_conv=down,
                                     dropout=cfg.dropout, rsds_init=cfg.rsds_init, zero_init_up=cfg.zero_init_up)
    adapters.to(device=ref.device, dtype=ref.dtype)
    model.ila = adapters
    for key, ad in adapters.items():
        blocks[int(key)].register_forward_hook(_AfterBlock(ad))
    inblock = ("adapter" if cfg.variant == "ila_pp" else "none") if cfg.inblock == "auto" else cfg.inblock
    if inblock == "adapter":
        attach_parallel_adapters(model, "ila_inblock", lambda d: BottleneckAdapter(d, cfg.bottleneck, cfg.dropout,
                                                                                   cfg.zero_init_up),
                                 cfg.inblock_scale, "ILA++")
    elif inblock == "convpass":
        from .adapters import ConvPassAdapter

        attach_parallel_adapters(model, "ila_inblock", lambda d: ConvPassAdapter(d, cfg.bottleneck, n, cfg.dropout,
                                                                                 cfg.zero_init_up),
                                 cfg.inblock_scale, "ILA++")
    if cfg.reinit_head and hasattr(model, "get_classifier") and isinstance(model.get_classifier(), nn.Linear):
        reference_linear_init(model.get_classifier())
    if ds:
        model.forward_intermediates = types.MethodType(_ds_forward_intermediates, model)
    model.ila_cfg = cfg
    return model


def _ds_forward_intermediates(self: nn.Module, x: torch.Tensor, indices: int | list[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, output_dict: bool = False,
                              **kwargs):
    """timm's ``forward_intermediates`` whose ``NCHW`` intermediates take each block's own grid (after a
    DS-ILA the patch tokens no longer fill the input grid timm would reshape them with). A plain
    function bound on the instance (no closure), so ``copy.deepcopy`` (EMA) keeps it working."""
    if output_fmt not in ("NCHW", "NLC"):
        raise ValueError(f"forward_intermediates(output_fmt={output_fmt!r}): expected 'NCHW' or 'NLC'.")
    out = type(self).forward_intermediates(self, x, indices=indices, return_prefix_tokens=return_prefix_tokens,
                                           norm=norm, stop_early=stop_early, output_fmt="NLC",
                                           intermediates_only=intermediates_only, output_dict=output_dict, **kwargs)
    if output_fmt == "NLC":
        return out

    def grid(t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"forward_intermediates(NCHW) after a DS-ILA: {n} patch tokens are not a square "
                             "grid; use output_fmt='NLC'.")
        return t.transpose(1, 2).reshape(b, c, side, side)

    def each(item):
        return (grid(item[0]), item[1]) if isinstance(item, tuple) else grid(item)

    if isinstance(out, dict):
        out["image_intermediates"] = [grid(t) for t in out["image_intermediates"]]
        return out
    if intermediates_only:
        return [each(i) for i in out]
    feats, inter = out
    return feats, [each(i) for i in inter]


def mark_only_ila_trainable(model: nn.Module, include_head: bool = True, include_prefix_tokens: bool = True
                            ) -> nn.Module:
    """Freeze the backbone: ILA modules, in-block adapters, class/register tokens (spec §4) and,
    with ``include_head``, the classifier train; position embedding and final norm stay frozen."""
    return mark_only_trainable(model, "ila", ("ila", "ila_inblock"), include_head, include_prefix_tokens)

