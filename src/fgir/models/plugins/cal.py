"""CAL / WS-DAN attention head and teacher-guided augmentation operators.

Paper: "Fine-Grained Image Recognition from Scratch with Teacher-Guided Data Augmentation"
(TGDA), arXiv 2507.12157. Its stage-1 teacher is a ResNet with a CAL head (counterfactual
attention learning, Rao et al., ICCV 2021, arXiv 2108.08728) built on WS-DAN (weakly supervised
data augmentation network, Hu et al., arXiv 1901.09891). Spec: ``shared/specs/tgda.md`` §3-4.

Layout (house style):

* pure functional core: :func:`bilinear_attention_pool`, :func:`sample_part_maps`,
  :func:`select_part_maps`, :func:`draw_thresholds`, :func:`attention_boxes`,
  :func:`attention_crop`, :func:`attention_drop`, :func:`attention_mix` (tensors in, tensors out,
  batched, no host syncs on the fast paths);
* :class:`CALHead`: the module holding the attention conv, the classifier and the feature centres;
* :class:`CALModel` + :func:`apply_cal`: wraps any backbone whose ``forward_features`` returns a
  B x C x h x w map, and behaves like a classifier (``forward`` = raw logits ``p``); registered
  as plug-in ``cal`` (``model.plugins: [{name: cal, num_maps: 32}]``, config :class:`CALConfig`),
  with the inference variant ``tta`` (the 8-view inference) and :func:`mark_only_cal_trainable`.

Thresholds are relative to each map's maximum and drawn per sample from ``U(lo, hi)`` with a
torch RNG (pass ``generator=`` for reproducibility; the global torch RNG otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import Config, ConfigError, PluginConfig, check_choice
from .base import mark_only_plugin_trainable, plugin_class_count, register_inference, register_plugin

__all__ = [
    "CALConfig", "CALHead", "CALModel", "CALOutput", "apply_cal", "mark_only_cal_trainable",
    "attention_boxes", "attention_crop",
    "attention_drop", "attention_mix", "bilinear_attention_pool", "cal_teacher_cost",
    "draw_thresholds", "sample_part_maps", "select_part_maps", "TTA_CROPS",
]

_log = logging.getLogger(__name__)

EPS = 1e-6
"""Epsilon of the signed square root and of the map-sampling weights (reference value)."""

TTA_CROPS: tuple[tuple[float, float], ...] = ((0.3, 0.1), (0.2, 0.1), (0.1, 0.05))
"""(threshold, padding) of the three mean-map crops of the 8-view inference (spec §3.3)."""

Threshold = float | Sequence[float] | torch.Tensor


@dataclass
class CALConfig(PluginConfig):
    """CAL / WS-DAN attention head on a CNN feature map (TGDA stage-1 teacher), arXiv 2507.12157 spec §3.1."""

    name: str = "cal"
    num_maps: int = 32
    """Number M of part-attention maps."""
    center_beta: float = 0.05
    """Feature-centre update rate beta (centre loss)."""
    logit_scale: float = 100.0
    """Logits are W·(scale·f) with f the L2-normalised BAP feature."""
    pam_sampling: str = "sample"
    """Augmentation maps the head hands out: sample (drawn in proportion to sqrt(mass)) or mean (channel-mean map)."""
    with_replacement: bool = True
    """Draw the augmentation maps with replacement (reference: crop and drop may share a map)."""

    def validate(self, cfg: Config, key: str) -> None:
        if self.num_maps < 1:
            raise ConfigError(f"{key}.num_maps must be >= 1, got {self.num_maps}.")
        if not 0 <= self.center_beta <= 1:
            raise ConfigError(f"{key}.center_beta must be in [0, 1], got {self.center_beta}.")
        if self.logit_scale <= 0:
            raise ConfigError(f"{key}.logit_scale must be > 0, got {self.logit_scale}.")
        check_choice(f"{key}.pam_sampling", self.pam_sampling, ["sample", "mean"])


# ============================================================================ functional core
def bilinear_attention_pool(features: torch.Tensor, attentions: torch.Tensor,
                            eps: float = EPS) -> torch.Tensor:
    """Bilinear attention pooling (BAP) with signed square root and L2 normalisation.

    ``f[b, m, c] = mean_ij A[b, m, ij] * F[b, c, ij]``, then ``sign(f) * sqrt(|f| + eps)``,
    flattened to ``B x (M*C)`` and L2-normalised per sample.

    Args:
        features: ``B x C x h x w`` feature map.
        attentions: ``B x M x h x w`` attention maps (same spatial size).
        eps: added under the square root.

    Returns:
        ``B x (M*C)`` unit-norm features (row ``m`` major: index ``m*C + c``).
    """
    if features.shape[-2:] != attentions.shape[-2:] or features.shape[0] != attentions.shape[0]:
        raise ValueError("BAP needs features B x C x h x w and attentions B x M x h x w with the same B, "
                         f"h, w; got {tuple(features.shape)} and {tuple(attentions.shape)}.")
    b, _, h, w = features.shape
    # a matmul (not einsum) so MAC counters see the pooling
    f = torch.matmul(attentions.flatten(2), features.flatten(2).transpose(1, 2)) / float(h * w)
    f = torch.sign(f) * torch.sqrt(f.abs() + eps)
    return F.normalize(f.reshape(b, -1), dim=-1)


def _match_generator(t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return t if generator is None else t.to(generator.device)


def sample_part_maps(attn: torch.Tensor, n: int, with_replacement: bool = True,
                     generator: torch.Generator | None = None, return_indices: bool = False):
    """Draw ``n`` part-attention maps per sample, ``P(m) ∝ sqrt(sum_ij A_m + 1e-6)`` (spec §3.1.5).

    Args:
        attn: ``B x M x h x w`` non-negative attention maps (detached internally).
        n: maps per sample.
        with_replacement: reference = True (crop and drop may use the same map).
        generator: optional torch generator (its device is used for the draw).
        return_indices: also return the ``B x n`` drawn indices.

    Returns:
        ``B x n x h x w`` maps (and the indices when asked).
    """
    b, m = attn.shape[:2]
    if not with_replacement and n > m:
        raise ValueError(f"Cannot draw {n} maps without replacement from {m}; set with_replacement=True "
                         f"or draw at most {m}.")
    weights = torch.sqrt(attn.detach().float().sum(dim=(2, 3)).clamp_min(0) + EPS)
    idx = torch.multinomial(_match_generator(weights, generator), n, replacement=with_replacement,
                            generator=generator).to(attn.device)
    maps = attn.detach()[torch.arange(b, device=attn.device)[:, None], idx]
    return (maps, idx) if return_indices else maps


def select_part_maps(attn: torch.Tensor, mode: str = "sample", n: int = 2, with_replacement: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Maps for augmentation: ``B x n x h x w`` sampled (``mode="sample"``) or the channel-mean
    ``B x 1 x h x w`` (``mode="mean"``, used for every view). Always detached."""
    if mode == "sample":
        return sample_part_maps(attn, n, with_replacement, generator)
    if mode == "mean":
        return attn.detach().mean(dim=1, keepdim=True)
    raise ValueError(f"pam_sampling='{mode}' is not allowed; expected one of ['sample', 'mean'].")


def draw_thresholds(threshold: Threshold, batch: int, *, device: torch.device | str | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample relative thresholds: a number (fixed), a ``(lo, hi)`` pair (``U(lo, hi)``
    per sample) or a length-B tensor (used as is). Returns a float32 tensor of shape ``(B,)``."""
    if isinstance(threshold, torch.Tensor):
        t = threshold.to(device=device, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"threshold tensor has {t.numel()} values for a batch of {batch}.")
        return t
    if isinstance(threshold, (int, float)):
        return torch.full((batch,), float(threshold), device=device)
    vals = [float(v) for v in threshold]
    if len(vals) == 1:
        return torch.full((batch,), vals[0], device=device)
    if len(vals) != 2 or vals[0] > vals[1]:
        raise ValueError(f"threshold range must be [lo, hi] with lo <= hi, got {list(threshold)}.")
    lo, hi = vals
    u = torch.rand(batch, generator=generator, device=generator.device if generator is not None else device)
    return (lo + (hi - lo) * u).to(device)


def _as_maps(maps: torch.Tensor, batch: int) -> torch.Tensor:
    if maps.ndim == 4:
        if maps.shape[1] != 1:
            raise ValueError(f"Pass one map per sample (B x h x w or B x 1 x h x w), got "
                             f"{tuple(maps.shape)}.")
        maps = maps[:, 0]
    if maps.ndim != 3 or maps.shape[0] != batch:
        raise ValueError(f"maps must be B x h x w with B={batch}, got {tuple(maps.shape)}.")
    return maps


def _upsample(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """B x h x w -> B x H x W with align_corners=True (the reference's ``upsample_bilinear``)."""
    return F.interpolate(maps[:, None].float(), size=size, mode=mode, align_corners=True)[:, 0]


def _region_mask(maps: torch.Tensor, size: tuple[int, int], theta: torch.Tensor, mode: str):
    """(Up(A) >= theta * max(A), max(A)) for B x h x w maps."""
    peak = maps.float().flatten(1).amax(dim=1)
    thr = theta.to(peak.device) * peak
    return _upsample(maps, size, mode) >= thr[:, None, None], peak


def attention_boxes(maps: torch.Tensor, size: tuple[int, int], threshold: Threshold, padding: float = 0.1,
                    *, generator: torch.Generator | None = None, map_mode: str = "bilinear") -> torch.Tensor:
    """Boxes around ``Up(A) >= θ·max(A)`` by the reference crop rule (spec §4.2 steps 1-3).

    ``top = max(int(r_min - padding*H), 0)``, ``bottom = min(int(r_max + padding*H), H)``,
    left/right likewise (``int`` truncates toward zero, as in the reference). Computed as
    reductions over the thresholded mask, no host syncs. A box is widened to at least one pixel
    (the reference would slice an empty region when ``padding=0`` and the region is one row).

    Returns:
        ``B x 4`` long tensor ``(top, bottom, left, right)``, ends exclusive.
    """
    maps = _as_maps(maps, maps.shape[0])
    b = maps.shape[0]
    hh, ww = size
    theta = draw_thresholds(threshold, b, device=maps.device, generator=generator)
    mask, _ = _region_mask(maps, (hh, ww), theta, map_mode)

    def extent(any_along: torch.Tensor, n: int, pad_px: float):
        idx = torch.arange(n, device=maps.device)
        present = any_along.any(dim=1)
        lo = torch.where(any_along, idx, n).amin(dim=1)
        hi = torch.where(any_along, idx, -1).amax(dim=1)
        lo = torch.where(present, lo, 0)  # empty mask (NaN maps): the whole image
        hi = torch.where(present, hi, n - 1)
        # the cast truncates toward zero like the reference's int() (and, unlike torch.trunc, exports to ONNX)
        start = (lo.double() - pad_px).long().clamp_min(0)
        end = (hi.double() + pad_px).long().clamp_max(n)
        return start, torch.maximum(end, start + 1)

    top, bottom = extent(mask.any(dim=2), hh, padding * hh)
    left, right = extent(mask.any(dim=1), ww, padding * ww)
    return torch.stack([top, bottom, left, right], dim=1)


def _axis_coords(n_out: int, start: torch.Tensor, end: torch.Tensor, dst_start: torch.Tensor | None = None,
                 dst_end: torch.Tensor | None = None):
    """Per-sample linear-interpolation taps of an align_corners=True resize along one axis.

    Output pixel ``y`` samples ``start + s·(y - dst_start)`` with ``s = (len-1)/(dst_len-1)``
    (0 for a 1-pixel destination); without a destination box ``dst = [0, n_out)``. The scale and
    the source position are computed in float32 exactly as ``F.interpolate`` does, so a crop
    agrees with slicing + ``F.interpolate`` to float rounding.

    Returns:
        ``(i0, i1, w)``: B x n_out absolute tap indices (long) and the float32 weight of ``i1``.
    """
    if dst_start is None:
        dst_start = torch.zeros_like(start)
        dst_end = torch.full_like(start, n_out)
    src_len = (end - start).float()
    dst_len = (dst_end - dst_start).float()
    scale = torch.where(dst_len > 1, (src_len - 1) / (dst_len - 1).clamp_min(1), torch.zeros_like(dst_len))
    local = torch.arange(n_out, device=start.device)[None] - dst_start[:, None]
    pos = (scale[:, None] * local.float()).clamp_min(0)
    i0 = pos.floor()
    w = pos - i0
    i0 = i0.long()
    last = (end - start - 1)[:, None]
    i0 = torch.minimum(i0, last)
    i1 = torch.minimum(i0 + 1, last)
    return start[:, None] + i0, start[:, None] + i1, w


def _lerp_axis(x: torch.Tensor, taps, dim: int) -> torch.Tensor:
    """Linear interpolation of ``x`` (B x C x H x W) along ``dim`` (2 or 3) with per-sample taps."""
    i0, i1, w = taps
    b, ch, h, wd = x.shape
    n = i0.shape[1]
    shape, view = ((b, ch, n, wd), (b, 1, -1, 1)) if dim == 2 else ((b, ch, h, n), (b, 1, 1, -1))
    g0 = x.gather(dim, i0.view(view).expand(shape))
    g1 = x.gather(dim, i1.view(view).expand(shape))
    w = w.to(x.dtype).view(view)
    return (1 - w) * g0 + w * g1


def _resample_boxes(images: torch.Tensor, src: torch.Tensor, dst: torch.Tensor | None,
                    mode: str) -> torch.Tensor:
    """Resize each sample's ``src`` box (B x 4: top, bottom, left, right; ends exclusive) to the
    full image, or onto its ``dst`` box, with align_corners=True. Bilinear uses separable gathers;
    other modes use ``grid_sample`` at the same coordinates (approximate: its bicubic taps near a box
    edge read pixels outside the box, where F.interpolate on the slice replicates the edge)."""
    _, _, hh, ww = images.shape
    st, sb, sl, sr = src.unbind(1)
    dt, db, dl, dr = dst.unbind(1) if dst is not None else (None,) * 4
    ty, tx = _axis_coords(hh, st, sb, dt, db), _axis_coords(ww, sl, sr, dl, dr)
    if mode == "bilinear":
        return _lerp_axis(_lerp_axis(images, ty, 2), tx, 3)
    ys = ty[0].double() + ty[2].double()
    xs = tx[0].double() + tx[2].double()
    gy = (2.0 * ys / max(hh - 1, 1) - 1.0).to(images.dtype)
    gx = (2.0 * xs / max(ww - 1, 1) - 1.0).to(images.dtype)
    b = images.shape[0]
    grid = torch.stack([gx[:, None, :].expand(b, hh, ww), gy[:, :, None].expand(b, hh, ww)], dim=-1)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=True)


def attention_crop(images: torch.Tensor, maps: torch.Tensor, threshold: Threshold = (0.4, 0.6),
                   padding: float = 0.1, *, generator: torch.Generator | None = None, exact: bool = False,
                   map_mode: str = "bilinear", resize_mode: str = "bilinear") -> torch.Tensor:
    """Attention crop (spec §4.2 "Crop"): the box around ``Up(A) >= θ·max(A)``, padded by
    ``padding`` x image size, resized back to the image size (bilinear, align_corners=True).

    Args:
        images: ``B x 3 x H x W``.
        maps: one map per sample, ``B x h x w`` or ``B x 1 x h x w``.
        threshold: number, ``(lo, hi)`` range (per-sample U(lo, hi)) or a length-B tensor.
        padding: box padding as a fraction of the image side.
        generator: RNG for the thresholds.
        exact: use the slow per-sample path that follows the reference step by step (slicing +
            ``F.interpolate``); the default batched path (separable gathers) agrees to ~1e-6.
        map_mode: interpolation of the map upsampling (reference: bilinear).
        resize_mode: interpolation of the crop resize (bilinear or bicubic).
    """
    b, _, hh, ww = images.shape
    maps = _as_maps(maps, b)
    theta = draw_thresholds(threshold, b, device=maps.device, generator=generator)
    if exact:
        return _attention_crop_exact(images, maps, theta, padding, map_mode, resize_mode)
    boxes = attention_boxes(maps, (hh, ww), theta, padding, map_mode=map_mode).to(images.device)
    return _resample_boxes(images, boxes, None, resize_mode)


def _attention_crop_exact(images, maps, theta, padding, map_mode, resize_mode) -> torch.Tensor:
    """Slow reference-parity crop: per sample, nonzero() + int() box + slice + interpolate."""
    _, _, hh, ww = images.shape
    out = []
    for i in range(images.shape[0]):
        a = maps[i:i + 1, None].float()
        mask = F.interpolate(a, size=(hh, ww), mode=map_mode, align_corners=True) >= theta[i] * a.max()
        nz = torch.nonzero(mask[0, 0])
        if nz.numel() == 0:
            top, bottom, left, right = 0, hh, 0, ww
        else:
            top = max(int(nz[:, 0].min().item() - padding * hh), 0)
            bottom = min(int(nz[:, 0].max().item() + padding * hh), hh)
            left = max(int(nz[:, 1].min().item() - padding * ww), 0)
            right = min(int(nz[:, 1].max().item() + padding * ww), ww)
            bottom, right = max(bottom, top + 1), max(right, left + 1)
        crop = images[i:i + 1, :, top:bottom, left:right]
        out.append(F.interpolate(crop, size=(hh, ww), mode=resize_mode, align_corners=True))
    return torch.cat(out)


def attention_drop(images: torch.Tensor, maps: torch.Tensor, threshold: Threshold = (0.2, 0.5), *,
                   generator: torch.Generator | None = None, map_mode: str = "bilinear") -> torch.Tensor:
    """Attention drop (spec §4.2 "Drop"): zero the pixels with ``Up(A) >= θ·max(A)``.

    Zero is in *normalised* space (the mean colour). Samples whose map has ``max(A) <= 0`` are
    returned unchanged (the reference would drop the whole image); logged at DEBUG level.
    """
    b, _, hh, ww = images.shape
    maps = _as_maps(maps, b)
    theta = draw_thresholds(threshold, b, device=maps.device, generator=generator)
    mask, peak = _region_mask(maps, (hh, ww), theta, map_mode)
    dead = peak <= 0
    keep = ~mask | dead[:, None, None]
    if _log.isEnabledFor(logging.DEBUG) and bool(dead.any()):
        _log.debug("attention_drop: %d map(s) with max(A)=0; those images are kept unchanged.",
                   int(dead.sum()))
    return images * keep[:, None].to(images.dtype)


def attention_mix(images: torch.Tensor, maps: torch.Tensor, threshold: Threshold = (0.4, 0.6),
                  padding: float = 0.0, *, generator: torch.Generator | None = None, exact: bool = False,
                  map_mode: str = "bilinear", resize_mode: str = "bilinear") -> torch.Tensor:
    """Attention mix (spec §4.2 "Mix", FGB's "cm"): pairs (2i, 2i+1) swap box contents.

    Each sample's box comes from its own map by the crop rule (:func:`attention_boxes`). Box₁ of
    image 2i receives box₂ of image 2i+1 resized to box₁'s size, and vice versa (bilinear,
    align_corners=True, as for the crop). Pixels outside the boxes are unchanged.

    Raises:
        ValueError: on an odd batch.
    """
    b, _, hh, ww = images.shape
    if b % 2:
        raise ValueError(f"attention_mix pairs samples (2i, 2i+1) and needs an even batch, got B={b}. "
                         "Use an even batch size (and drop_last) or remove 'mix' from task.tgda.views.")
    maps = _as_maps(maps, b)
    theta = draw_thresholds(threshold, b, device=maps.device, generator=generator)
    boxes = attention_boxes(maps, (hh, ww), theta, padding, map_mode=map_mode)
    partner = torch.arange(b, device=images.device) ^ 1
    if exact:
        return _attention_mix_exact(images, boxes, resize_mode)
    bx = boxes.to(images.device)
    pasted = _resample_boxes(images[partner], bx[partner], bx, resize_mode)
    ys = torch.arange(hh, device=images.device)[None, :, None]
    xs = torch.arange(ww, device=images.device)[None, None, :]
    inside = ((ys >= bx[:, 0, None, None]) & (ys < bx[:, 1, None, None])
              & (xs >= bx[:, 2, None, None]) & (xs < bx[:, 3, None, None]))
    return torch.where(inside[:, None], pasted, images)


def _attention_mix_exact(images: torch.Tensor, boxes: torch.Tensor, resize_mode: str) -> torch.Tensor:
    out = images.clone()
    bx = boxes.tolist()
    for j in range(images.shape[0]):
        (t, bo, lf, r), (st, sb, sl, sr) = bx[j], bx[j ^ 1]
        src = images[j ^ 1:(j ^ 1) + 1, :, st:sb, sl:sr]
        out[j, :, t:bo, lf:r] = F.interpolate(src, size=(bo - t, r - lf), mode=resize_mode,
                                              align_corners=True)[0]
    return out


# ============================================================================ modules
class CALOutput(TypedDict, total=False):
    """Typed output of :class:`CALHead` / :meth:`CALModel.forward_cal`.

    logits: ``B x K`` raw logits ``p = W·(scale·f)``. logits_eff: ``B x K`` counterfactual effect
    ``p - W·(scale·f̂)``. features: ``B x (M*C)`` unit-norm BAP features ``f``. attention:
    ``B x M x h x w`` attention maps. maps: detached augmentation maps, ``B x V x h x w``
    (sampled) or ``B x 1 x h x w`` (channel mean).
    """

    logits: torch.Tensor
    logits_eff: torch.Tensor
    features: torch.Tensor
    attention: torch.Tensor
    maps: torch.Tensor


class CALHead(nn.Module):
    """CAL head on a ``B x C x h x w`` feature map (spec §3.1).

    Attention 1x1 conv (no bias) + BatchNorm(eps 1e-3) + ReLU -> M maps; BAP; bias-free
    ``Linear(M*C -> K)`` on ``logit_scale``·f; counterfactual BAP with fake maps ~U(0, 2) in
    training, ones in eval; feature centres ``K x (M*C)`` kept as a buffer.

    Args:
        in_features: C.
        num_classes: K.
        num_maps: M.
        logit_scale: the factor 100 of the reference.
        center_beta: centre update rate β.
        pam_sampling: ``sample`` (``num_sampled`` maps ∝ sqrt(mass)) or ``mean`` (channel mean);
            independent of train/eval mode.
        num_sampled: maps drawn per sample (2: crop and drop).
        with_replacement: draw maps with replacement (reference).
        bn_eps: BatchNorm epsilon (reference 1e-3).
    """

    def __init__(self, in_features: int, num_classes: int, num_maps: int = 32, logit_scale: float = 100.0,
                 center_beta: float = 0.05, pam_sampling: str = "sample", num_sampled: int = 2,
                 with_replacement: bool = True, bn_eps: float = 1e-3):
        super().__init__()
        if pam_sampling not in ("sample", "mean"):
            raise ValueError(f"pam_sampling='{pam_sampling}' is not allowed; expected one of "
                             "['sample', 'mean'].")
        self.in_features, self.num_classes, self.num_maps = in_features, num_classes, num_maps
        self.logit_scale, self.center_beta = float(logit_scale), float(center_beta)
        self.pam_sampling, self.num_sampled = pam_sampling, num_sampled
        self.with_replacement = with_replacement
        self.attention = nn.Sequential(
            nn.Conv2d(in_features, num_maps, kernel_size=1, bias=False),
            nn.BatchNorm2d(num_maps, eps=bn_eps),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(num_maps * in_features, num_classes, bias=False)
        self.register_buffer("centers", torch.zeros(num_classes, num_maps * in_features))

    def reset_classifier(self, num_classes: int) -> None:
        """New ``num_classes``-way classifier and zeroed centres."""
        self.num_classes = num_classes
        dev = self.fc.weight.device
        self.fc = nn.Linear(self.num_maps * self.in_features, num_classes, bias=False, device=dev)
        self.centers = torch.zeros(num_classes, self.num_maps * self.in_features, device=dev)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features * self.logit_scale)

    def forward(self, features: torch.Tensor, *, counterfactual: bool = True, maps: bool = True) -> CALOutput:
        """Args:
            features: backbone map ``B x C x h x w``.
            counterfactual: also compute ``logits_eff`` (skip it for plain inference).
            maps: also select the augmentation maps.
        """
        attention = self.attention(features)
        f = bilinear_attention_pool(features, attention)
        logits = self.classify(f)
        out: CALOutput = {"logits": logits, "features": f, "attention": attention}
        if counterfactual:
            fake = (torch.empty_like(attention).uniform_(0.0, 2.0) if self.training
                    else torch.ones_like(attention))
            out["logits_eff"] = logits - self.classify(bilinear_attention_pool(features, fake))
        if maps:
            out["maps"] = select_part_maps(attention, self.pam_sampling, self.num_sampled,
                                           self.with_replacement)
        return out

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the normalised centres ``c̄_y`` of ``labels`` *before* the update, and update
        the buffer when training: ``c_y += β·mean_{b: y_b = y}(f_b - c̄_y)``.

        NOTE: the reference's indexed ``c[y] += ...`` keeps only one of several updates for a
        label repeated in a batch; this uses ``index_add_`` and divides by the per-class count,
        i.e. the mean update. Under torch.distributed the sums and counts are all-reduced so the
        centres stay identical on every rank.
        """
        labels = labels.long()
        cbar = F.normalize(self.centers[labels], dim=-1)
        if self.training:
            delta = self.center_beta * (features.detach().float() - cbar)
            sums = torch.zeros_like(self.centers).index_add_(0, labels, delta.to(self.centers.dtype))
            counts = torch.zeros(self.num_classes, device=labels.device, dtype=self.centers.dtype)
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.centers.dtype))
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(sums)
                torch.distributed.all_reduce(counts)
            self.centers += sums / counts.clamp_min(1)[:, None]
        return cbar


class CALModel(nn.Module):
    """A backbone with a CAL head, usable as a classifier (spec §3).

    ``forward(x)`` returns the raw logits ``p`` of one view (no counterfactual branch, no map
    sampling: what TGDA distils and what MAC counting sees). :meth:`forward_cal` returns the full
    :class:`CALOutput` for training; :meth:`predict_tta` is the 8-view inference of spec §3.3.

    Args:
        backbone: any model whose ``forward_features`` returns ``B x C x h x w`` and which has
            ``num_features`` = C (timm CNNs, fgir LRNets). Its classifier is removed with
            ``reset_classifier(0)`` when it has one.
        num_classes: K.
        cfg: :class:`~fgir.config.CALConfig` (defaults: M=32, β=0.05, scale 100).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, cfg: CALConfig | None = None):
        super().__init__()
        cfg = cfg or CALConfig()
        if not hasattr(backbone, "forward_features"):
            raise TypeError(f"CAL needs a backbone with forward_features (B x C x h x w); "
                            f"{type(backbone).__name__} has none.")
        if hasattr(backbone, "reset_classifier") and getattr(backbone, "num_classes", 0):
            backbone.reset_classifier(0)
        in_features = getattr(backbone, "num_features", None)
        if not isinstance(in_features, int) or in_features <= 0:
            raise TypeError(f"CAL needs backbone.num_features (channels of the feature map); "
                            f"{type(backbone).__name__} has {in_features!r}.")
        self.backbone = backbone
        self.cal_cfg = cfg
        self.head = CALHead(in_features, num_classes, num_maps=cfg.num_maps, logit_scale=cfg.logit_scale,
                            center_beta=cfg.center_beta, pam_sampling=cfg.pam_sampling,
                            with_replacement=cfg.with_replacement)
        self.num_features = cfg.num_maps * in_features
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        self.default_cfg = self.pretrained_cfg

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(x)
        if feats.ndim != 4:
            raise TypeError(f"CAL needs a B x C x h x w feature map from {type(self.backbone).__name__}."
                            f"forward_features, got shape {tuple(feats.shape)} (token models are not "
                            "supported).")
        return feats

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out = self.head(x, counterfactual=False, maps=False)
        return out["features"] if pre_logits else out["logits"]

    def forward_cal(self, x: torch.Tensor, *, counterfactual: bool = True, maps: bool = True) -> CALOutput:
        return self.head(self.forward_features(x), counterfactual=counterfactual, maps=maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.head.reset_classifier(num_classes)

    @torch.no_grad()
    def predict_tta(self, x: torch.Tensor, crops: Sequence[tuple[float, float]] = TTA_CROPS) -> torch.Tensor:
        """8-view inference (spec §3.3): for x and its h-flip, average the raw logits and the logits
        of three crops from the channel-mean map (θ, padding in ``crops``); then average the two
        orientations."""
        b = x.shape[0]

        def one(img: torch.Tensor) -> torch.Tensor:
            out = self.forward_cal(img, counterfactual=False, maps=False)
            mean_map = out["attention"].mean(dim=1)
            views = torch.cat([attention_crop(img, mean_map, t, p) for t, p in crops])
            logits_c = self(views).reshape(len(crops), b, -1)
            return (out["logits"] + logits_c.sum(0)) / (1 + len(crops))

        return (one(x) + one(x.flip(-1))) / 2


@register_plugin("cal", CALConfig, families=("cnn",))
def apply_cal(backbone: nn.Module, cfg: CALConfig | None = None, *, num_classes: int | None = None) -> CALModel:
    """Attach a CAL head to ``backbone`` (its classifier is removed); see :class:`CALModel`.

    Args:
        backbone: a CNN with the backbone contract (``forward_features`` -> B x C x h x w).
        cfg: head settings (:class:`CALConfig`).
        num_classes: K; default ``backbone.num_classes`` (the width ``build_model`` created it with).
    """
    if isinstance(backbone, CALModel):
        raise ValueError("apply_cal: the model already has a CAL head (list the 'cal' plug-in once).")
    if hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks"):
        raise TypeError(f"CAL needs a CNN whose forward_features is a B x C x h x w map; {type(backbone).__name__} "
                        "is a token model (ViT). Use a CNN backbone (resnet*, lrnet*).")
    k = plugin_class_count("cal", backbone, num_classes)
    model = CALModel(backbone, k, cfg)
    register_inference(model, "tta", "predict_tta")
    return model


def mark_only_cal_trainable(model: nn.Module) -> nn.Module:
    """Freeze the backbone: only the CAL head (attention conv, BN, classifier) trains."""
    if isinstance(model, CALModel) and not getattr(model, "fgir_plugin_params", None):
        model.fgir_plugin_params = {"cal": list(model.head.parameters())}
    return mark_only_plugin_trainable(model, "cal")


def cal_teacher_cost(backbone: str = "resnet101", num_classes: int = 200, img_size: int = 448,
                     cfg: CALConfig | None = None, macs: bool = True) -> dict:
    """Params and MACs of a CAL teacher (one raw forward), spec §3.1 / checklist 15.

    ``resnet101``, K=200, 448 px -> 55,672,960 params and 31.30 GMACs. ``macs=False`` builds the
    model on the meta device and only counts parameters (fast).
    """
    from ...benchmarks.flops import count_macs, count_params
    from ..factory import create_model

    if not macs:
        with torch.device("meta"):
            model = apply_cal(create_model(backbone, num_classes=0), cfg, num_classes=num_classes)
        return {"model": f"cal_{backbone}", "params": count_params(model)}
    model = apply_cal(create_model(backbone, num_classes=0), cfg, num_classes=num_classes).eval()
    m = count_macs(model, img_size)
    return {"model": f"cal_{backbone}", "img_size": img_size, "params": count_params(model), "macs": m,
            "gmacs": round(m / 1e9, 4)}
