"""GLSim: global-local similarity crops through a second pass of the same encoder.

Paper: E. A. Rios et al., "Global-Local Similarity for Efficient Fine-Grained Image Recognition
with Vision Transformers", arXiv 2407.12891. Spec: ``shared/specs/glsim.md``.

The method (spec §2): encode the image once; score every patch token by its similarity to the
global token (GLS, cosine by default); keep the top-O patches; cut the box spanned by their
min/max rows and columns out of the normalised input and resize it back to S x S; encode the crop
with the same weights; mix the two global tokens with a 1-block transformer aggregator + LayerNorm;
a linear head reads token 0. The selection and the crop carry no gradient. Loss: plain CE (the
``classification`` task; label smoothing through ``optim.label_smoothing``), no auxiliary term.

Layout (house style):

* pure functional core: :func:`gls_scores`, :func:`select_top_o`, :func:`crop_boxes`,
  :func:`crop_resize` (batched, per-sample gathers; no Python loop, no data-dependent control
  flow, traceable) and :func:`crop_resize_loop` (the per-sample ``F.interpolate`` reference);
* :class:`GLSimModel` + :func:`apply_glsim`: wraps any backbone with the contract whose
  ``forward_features`` returns tokens ``B x (R + g^2) x D`` (timm ViTs, ViTFS) and registers
  plug-in ``glsim`` (config :class:`GLSimConfig`) with the inference variant ``no-crop`` (one pass).

Global token: the backbone's pre-logits vector ``forward_head(h, pre_logits=True)``, i.e. the CLS
token after the final norm on CLS models (legacy parity: GLS on LN'd tokens) and the mean of the
normalised patch tokens on GAP models such as ViTFS (no CLS; registers are skipped through
``num_prefix_tokens``). Local tokens: the last ``g^2`` tokens of ``forward_features``.

NOTE: the legacy-parity preset (spec §9) is: ``crop_cls: shared``, ``crop_box: reference``,
``aggregator_norm_eps: 1e-12``, ``head_init: zeros``, constant DropPath/dropout in the aggregator
(``aggregator_drop_path`` / ``aggregator_proj_drop``), and ``model.norm_eps: 1e-12`` for the
encoder's LayerNorms (timm's default is 1e-6).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import Config, ConfigError, PluginConfig, check_choice
from .base import mark_only_plugin_trainable, plugin_class_count, register_inference, register_plugin

__all__ = [
    "GLSimConfig", "GLSimModel", "GLSimOutput", "apply_glsim", "mark_only_glsim_trainable",
    "gls_scores", "select_top_o", "crop_boxes", "crop_resize", "crop_resize_loop", "resolve_top_o",
    "SIM_METRICS", "CROP_BOXES",
]

SIM_METRICS = ("cos", "l1", "l2", "random", "rollout")
CROP_BOXES = ("reference", "inclusive")
COS_EPS = 1e-8


@dataclass
class GLSimConfig(PluginConfig):
    """GLSim: top-O global-local-similarity crop through a second encoder pass (arXiv 2407.12891)."""

    name: str = "glsim"
    top_o: int = 8
    """Number O of selected patches (reference argparse default 8)."""
    top_o_dataset_overrides: dict[str, int] = field(default_factory=lambda: {"dogs": 16})
    """O per dataset name, replacing top_o (reference: 16 on Stanford Dogs)."""
    top_o_double_at_448: bool = False
    """Double O when the input side is >= 448 (only the ILA-paper baselines did; GLSim did not)."""
    dataset: str = ""
    """Dataset the overrides are looked up for; empty = data.name (filled in when the config is validated)."""
    sim_metric: str = "cos"
    """GLS score: cos (O largest), l1 / l2 (O smallest mean abs / squared distance); ablations: random, rollout
    (the CLS row of the first pass's attention rollout, the RAMS-Trans / AF-Trans selector; needs a class token)."""
    crop_box: str = "reference"
    """reference = the code's end-exclusive box (last selected row/column cut off); inclusive = the figure's box."""
    crop_cls: str = "auto"
    """Class token of the crop pass: separate (own parameter, copied from the CLS), shared (legacy
    parity), or auto = separate when the backbone has a class token, else shared (ViTFS, and
    mode select_top_k, which has no crop pass)."""
    aggregator_depth: int = 1
    """Transformer blocks mixing the two global tokens; 0 = no aggregator and no aggregator norm."""
    aggregator_norm_eps: float = 1e-12
    """LayerNorm eps of the aggregator blocks and the aggregator norm (legacy 1e-12)."""
    aggregator_drop_path: float = 0.0
    """DropPath rate of the aggregator (legacy medaugs 0.1)."""
    aggregator_proj_drop: float = 0.0
    """Dropout after the aggregator's attention projection and MLP (legacy weakaugs 0.1)."""
    head_init: str = "zeros"
    """zeros (legacy: weight and bias 0) or default (PyTorch Linear init)."""
    head_pool: str = "cls"
    """Logits from token 0 (cls), or the head on every token of the aggregated sequence (both global
    tokens; with select_top_k the global and the O patch tokens), mean / max over tokens (avg_cls / max_cls)."""
    crop_impl: str = "batched"
    """batched (per-sample gathers, traceable) or loop (per-sample F.interpolate; the test reference)."""
    mode: str = "crop"
    """crop (the paper: the top-O box is cropped and encoded a second time) or select_top_k (the
    authors' timm-path extra: no crop, no second pass; [global token, top-O patch tokens] go
    through the aggregator and the head reads token 0; one encoder pass, so about half the MACs)."""

    def validate(self, cfg: Config, key: str) -> None:
        check_choice(f"{key}.sim_metric", self.sim_metric, list(SIM_METRICS))
        check_choice(f"{key}.crop_box", self.crop_box, list(CROP_BOXES))
        check_choice(f"{key}.crop_cls", self.crop_cls, ["auto", "separate", "shared"])
        check_choice(f"{key}.head_init", self.head_init, ["zeros", "default"])
        check_choice(f"{key}.head_pool", self.head_pool, ["cls", "avg_cls", "max_cls"])
        check_choice(f"{key}.crop_impl", self.crop_impl, ["batched", "loop"])
        check_choice(f"{key}.mode", self.mode, ["crop", "select_top_k"])
        if self.mode == "select_top_k" and self.aggregator_depth < 1:
            raise ConfigError(f"{key}.mode=select_top_k needs aggregator_depth >= 1 (the aggregator is what mixes "
                              "the selected tokens into token 0).")
        if self.top_o < 1 or any(int(v) < 1 for v in self.top_o_dataset_overrides.values()):
            raise ConfigError(f"{key}.top_o and its dataset overrides must be >= 1, got {self.top_o} / "
                              f"{self.top_o_dataset_overrides}.")
        if self.aggregator_depth < 0:
            raise ConfigError(f"{key}.aggregator_depth must be >= 0, got {self.aggregator_depth}.")
        for k in ("aggregator_drop_path", "aggregator_proj_drop"):
            if not 0 <= getattr(self, k) < 1:
                raise ConfigError(f"{key}.{k} must be in [0, 1), got {getattr(self, k)}.")
        if not self.dataset:
            self.dataset = cfg.data.name


def resolve_top_o(cfg: GLSimConfig, img_size: int) -> int:
    """O for ``cfg.dataset`` at input side ``img_size`` (spec §3): the dataset override or
    ``top_o``, doubled at >= 448 only when ``top_o_double_at_448``."""
    o = int(cfg.top_o_dataset_overrides.get(cfg.dataset, cfg.top_o))
    return 2 * o if cfg.top_o_double_at_448 and img_size >= 448 else o


# ============================================================================ functional core
def gls_scores(global_tok: torch.Tensor, local_tok: torch.Tensor, metric: str = "cos") -> torch.Tensor:
    """GLS between the global vector and every local token (spec §3).

    Args:
        global_tok: ``B x D``.
        local_tok: ``B x M x D`` (patches in raster order).
        metric: ``cos`` (cosine similarity, eps 1e-8: larger = selected), ``l1`` / ``l2`` (mean
            absolute / squared difference over D: smaller = selected).

    Returns:
        ``B x M`` scores.
    """
    g = global_tok[:, None, :]
    if metric == "cos":
        return F.cosine_similarity(g, local_tok, dim=-1, eps=COS_EPS)
    if metric == "l1":
        return (g - local_tok).abs().mean(-1)
    if metric == "l2":
        return (g - local_tok).pow(2).mean(-1)
    raise ValueError(f"sim_metric={metric!r} has no score; expected one of ['cos', 'l1', 'l2'].")


def select_top_o(scores: torch.Tensor, o: int, largest: bool = True) -> torch.Tensor:
    """Indices (``B x O``, long) of the O largest (or smallest) scores, taken in fp32 so reduced
    precision cannot change the selection (spec pitfall 14)."""
    m = scores.shape[-1]
    if not 1 <= o <= m:
        raise ValueError(f"top_o={o} must be in [1, {m}] (the number of patches g^2); lower top_o or "
                         "use a larger input.")
    return scores.float().topk(o, dim=-1, largest=largest, sorted=False).indices


def crop_boxes(indices: torch.Tensor, grid: int, patch: int, img_size: int,
               rule: str = "reference") -> torch.Tensor:
    """Boxes around the selected patches (spec §4), ends exclusive, in input pixels.

    ``top = P·min(row)``, ``bottom = P·max(row)`` (likewise columns); ``reference``:
    ``y1 = min(max(bottom, top + P), S)`` (the last selected row/column is cut off unless
    min = max); ``inclusive``: ``y1 = min(bottom + P, S)``.

    Args:
        indices: ``B x O`` flat indices over the ``grid x grid`` patch grid (row-major).

    Returns:
        ``B x 4`` long ``(y0, y1, x0, x1)``.
    """
    if rule not in CROP_BOXES:
        raise ValueError(f"crop_box={rule!r}; expected one of {list(CROP_BOXES)}.")
    rows = torch.div(indices, grid, rounding_mode="floor")
    cols = torch.remainder(indices, grid)

    def span(v: torch.Tensor):
        lo, hi = patch * v.amin(dim=1), patch * v.amax(dim=1)
        end = hi + patch if rule == "inclusive" else torch.maximum(hi, lo + patch)
        return lo.clamp_min(0), end.clamp_max(img_size)

    y0, y1 = span(rows)
    x0, x1 = span(cols)
    return torch.stack([y0, y1, x0, x1], dim=1).long()


def _taps(n_out: int, start: torch.Tensor, end: torch.Tensor):
    """Linear-interpolation taps of an align_corners=True resize of ``[start, end)`` to ``n_out``
    samples, per sample, with F.interpolate's float32 arithmetic (``src = (len-1)/(n_out-1) * i``)."""
    length = end - start
    scale = (length - 1).float() / max(n_out - 1, 1)
    pos = scale[:, None] * torch.arange(n_out, device=start.device, dtype=torch.float32)[None]
    i0f = pos.floor()
    w = pos - i0f
    last = (length - 1)[:, None]
    i0 = torch.minimum(i0f.long(), last)
    i1 = torch.minimum(i0 + 1, last)
    return start[:, None] + i0, start[:, None] + i1, w


def _lerp_rows(x: torch.Tensor, taps) -> torch.Tensor:
    """Per-sample linear interpolation along dim 2 of ``x`` (B x C x H x W) -> ``B x n x C x W``.

    Rows are fetched with one index_select over the flattened (sample, row) axis: contiguous row
    copies, about twice as fast on CPU as ``gather`` with expanded indices."""
    i0, i1, w = taps
    b, c, h, wd = x.shape
    n = i0.shape[1]
    flat = x.permute(0, 2, 1, 3).reshape(b * h, c, wd)
    base = torch.arange(b, device=x.device)[:, None] * h
    r0 = flat.index_select(0, (base + i0).reshape(-1)).view(b, n, c, wd)
    r1 = flat.index_select(0, (base + i1).reshape(-1)).view(b, n, c, wd)
    w = w.to(x.dtype).view(b, n, 1, 1)
    return (1 - w) * r0 + w * r1


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Batched crop + bilinear resize (align_corners=True) of each sample's box to ``size``.

    Separable per-sample row fetches (index_select) and lerps: no Python loop over the batch, no
    host sync, traceable and exportable; agrees with :func:`crop_resize_loop` to float rounding. MAC counters see
    4 multiplies per output element, like ``upsample_bilinear2d``.

    Args:
        images: ``B x C x H x W``.
        boxes: ``B x 4`` long ``(y0, y1, x0, x1)``, ends exclusive.
        size: output side (default: H).
    """
    s = size or images.shape[-2]
    y0, y1, x0, x1 = boxes.unbind(1)
    rows = _lerp_rows(images, _taps(s, y0, y1))                        # B x S(y) x C x W
    cols = _lerp_rows(rows.permute(0, 2, 3, 1), _taps(s, x0, x1))      # B x S(x) x C x S(y)
    return cols.permute(0, 2, 3, 1)                                    # B x C x S(y) x S(x)


def crop_resize_loop(images: torch.Tensor, boxes: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Per-sample reference of :func:`crop_resize`: ``F.interpolate(image[b, :, y0:y1, x0:x1],
    (S, S), mode="bilinear", align_corners=True)`` (the reference's ``upsample_bilinear``)."""
    s = size or images.shape[-2]
    out = [F.interpolate(images[b:b + 1, :, int(y0):int(y1), int(x0):int(x1)], size=(s, s), mode="bilinear",
                         align_corners=True) for b, (y0, y1, x0, x1) in enumerate(boxes.tolist())]
    return torch.cat(out, dim=0)


# ============================================================================ module
class GLSimOutput(TypedDict):
    logits: torch.Tensor
    """B x C."""
    crops: torch.Tensor | None
    """B x 3 x S x S (no gradient); None in ``mode: select_top_k`` (no crop is made)."""
    boxes: torch.Tensor
    """B x 4 long (y0, y1, x0, x1), ends exclusive."""
    gls: torch.Tensor
    """B x g^2 scores."""
    indices: torch.Tensor
    """B x O selected patch indices."""


def _aggregator_block(dim: int, cfg: GLSimConfig) -> nn.Module:
    from timm.models.vision_transformer import Block

    heads = dim // 64 if dim % 64 == 0 and dim >= 64 else 1
    blk = Block(dim, num_heads=heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=cfg.aggregator_proj_drop,
                drop_path=cfg.aggregator_drop_path, norm_layer=partial(nn.LayerNorm, eps=cfg.aggregator_norm_eps))
    for m in blk.modules():  # legacy init: Xavier-uniform weights, N(0, 1e-6) biases
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.normal_(m.bias, std=1e-6)
    return blk


class GLSimModel(nn.Module):
    """A token backbone with GLSim's crop, second pass, aggregator and head (spec §2).

    ``forward(x)`` returns logits (both passes, as at test time in the reference);
    :meth:`forward_glsim` returns the :class:`GLSimOutput` dict; :meth:`forward_no_crop` is the
    one-pass inference variant (the global token alone through aggregator and head).

    Args:
        backbone: a model with the contract whose ``forward_features`` returns ``B x (R + g^2) x D``
            tokens (``R = num_prefix_tokens``) and ``forward_head(h, pre_logits=True)`` the global
            vector. Its classifier is removed.
        num_classes: C.
        cfg: :class:`GLSimConfig`.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, cfg: GLSimConfig | None = None):
        super().__init__()
        cfg = cfg or GLSimConfig()
        for attr in ("forward_features", "forward_head", "reset_classifier"):
            if not callable(getattr(backbone, attr, None)):
                raise TypeError(f"GLSim needs a backbone with the contract ({attr} missing on "
                                f"{type(backbone).__name__}).")
        dim = getattr(backbone, "num_features", None)
        if not isinstance(dim, int) or dim <= 0:
            raise TypeError(f"GLSim needs backbone.num_features; {type(backbone).__name__} has {dim!r}.")
        cls = getattr(backbone, "cls_token", None)
        if cfg.sim_metric == "rollout" and not isinstance(cls, nn.Parameter):
            raise ValueError(f"glsim sim_metric=rollout reads the class token's row of the attention rollout; "
                             f"{type(backbone).__name__} has no class token. Use sim_metric: cos.")
        if cfg.mode == "select_top_k" and cfg.crop_cls == "separate":
            raise ValueError("glsim mode=select_top_k encodes no crop, so crop_cls='separate' would be an unused "
                             "parameter; use crop_cls: auto or shared.")
        if cfg.crop_cls == "auto":
            separate = isinstance(cls, nn.Parameter) and cfg.mode == "crop"
            cfg = dataclasses.replace(cfg, crop_cls="separate" if separate else "shared")
        if cfg.crop_cls == "separate" and not isinstance(cls, nn.Parameter):
            raise ValueError(f"crop_cls='separate' needs a class token; {type(backbone).__name__} has none "
                             "(e.g. ViTFS pools the patch tokens). Set crop_cls: shared.")
        backbone.reset_classifier(0)
        self.backbone = backbone
        self.glsim_cfg = cfg
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1 if cls is not None else 0))
        self.crop_cls_token = nn.Parameter(cls.detach().clone()) if cfg.crop_cls == "separate" else None
        depth = cfg.aggregator_depth
        self.aggregator = nn.Sequential(*[_aggregator_block(dim, cfg) for _ in range(depth)]) if depth \
            else nn.Identity()
        self.aggregator_norm = nn.LayerNorm(dim, eps=cfg.aggregator_norm_eps) if depth else nn.Identity()
        self.num_features = dim
        self.head = self._make_head(num_classes)
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        self.default_cfg = self.pretrained_cfg

    # ------------------------------------------------------------------ contract
    @property
    def num_classes(self) -> int:
        return self.head.out_features if isinstance(self.head, nn.Linear) else 0

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes)
        if self.glsim_cfg.head_init == "zeros":
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        return head

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        dev = next(self.parameters()).device
        self.head = self._make_head(num_classes).to(dev)

    def no_weight_decay(self) -> set[str]:
        fn = getattr(self.backbone, "no_weight_decay", None)
        names = {f"backbone.{n}" for n in (fn() if callable(fn) else ())}
        return names | ({"crop_cls_token"} if self.crop_cls_token is not None else set())

    # ------------------------------------------------------------------ export (fgir.export.forms)
    @property
    def export_variant(self) -> str:
        if self.glsim_cfg.mode == "select_top_k":
            return "default (GLSim select_top_k: one pass, top-O tokens through the aggregator)"
        return "default (GLSim two passes, batched crop)"

    def export_module(self) -> nn.Module:
        """The module ``fgir export`` traces: this model on the batched (traceable) crop path."""
        if self.glsim_cfg.crop_impl == "batched":
            return self
        m = copy.copy(self)  # shares every sub-module; only the crop implementation differs
        m.glsim_cfg = dataclasses.replace(self.glsim_cfg, crop_impl="batched")
        return m

    def export_unsupported(self) -> str | None:
        if self.glsim_cfg.sim_metric == "random":
            return "GLSim with sim_metric=random picks its crop patches at random (no deterministic graph)"
        return None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The aggregated sequence: ``B x 2 x D`` (global tokens of the image and of the crop), or with
        ``mode: select_top_k`` ``B x (1 + O) x D`` (global token, top-O patch tokens)."""
        return self._aggregate(self._passes(x)[0])

    def forward_head(self, z: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.glsim_cfg.head_pool == "cls" or pre_logits:
            return z[:, 0] if pre_logits else self.head(z[:, 0])
        logits = self.head(z)
        return logits.mean(1) if self.glsim_cfg.head_pool == "avg_cls" else logits.amax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_glsim(x)["logits"]

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        """timm's feature API on the first (global) pass: the encoder's per-block outputs for ``x``.

        The crop's pass is the same encoder on ``forward_glsim(x)["crops"]``; call this method on
        those crops for its intermediates. Arguments are the backbone's ``forward_intermediates``'s.
        """
        fn = getattr(self.backbone, "forward_intermediates", None)
        if not callable(fn):
            raise TypeError(f"{type(self.backbone).__name__} has no forward_intermediates (timm feature API).")
        return fn(x, *args, **kwargs)

    # ------------------------------------------------------------------ method
    @contextlib.contextmanager
    def _crop_cls(self):
        if self.crop_cls_token is None:
            yield
            return
        saved = self.backbone.cls_token
        self.backbone.cls_token = self.crop_cls_token
        try:
            yield
        finally:
            self.backbone.cls_token = saved

    def _tokens(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        patches = h[:, self.num_prefix_tokens:]
        grid = math.isqrt(patches.shape[1])
        if grid * grid != patches.shape[1]:
            raise ValueError(f"GLSim needs a square patch grid: forward_features of "
                             f"{type(self.backbone).__name__} gave {patches.shape[1]} tokens after "
                             f"{self.num_prefix_tokens} prefix tokens.")
        return self.backbone.forward_head(h, pre_logits=True), patches, grid

    def select(self, x: torch.Tensor, h: torch.Tensor, make_crops: bool = True,
               scores: torch.Tensor | None = None):
        """Scores, indices, boxes and crops (None without ``make_crops``) for images ``x`` and their
        first-pass tokens ``h`` (no gradient); ``scores`` (``B x g^2``, larger = selected) replace GLS
        (the rollout ablation)."""
        cfg = self.glsim_cfg
        s = x.shape[-1]
        if x.shape[-2] != s:
            raise ValueError(f"GLSim supports square inputs only, got {tuple(x.shape[-2:])}.")
        with torch.no_grad():
            g, patches, grid = self._tokens(h)
            o = resolve_top_o(cfg, s)
            if scores is not None:
                scores = scores.detach().float()
                idx = select_top_o(scores, o)
            elif cfg.sim_metric == "random":  # reference anchor_random: uniform, with replacement, score ignored
                scores = torch.zeros(patches.shape[:2], device=x.device)
                select_top_o(scores, o)  # same O <= g^2 check
                idx = torch.randint(0, patches.shape[1], (patches.shape[0], o), device=x.device)
            else:
                scores = gls_scores(g.detach().float(), patches.detach().float(), cfg.sim_metric)
                idx = select_top_o(scores, o, largest=cfg.sim_metric == "cos")
            boxes = crop_boxes(idx, grid, s // grid, s, cfg.crop_box)
            crops = None
            if make_crops:
                crop = crop_resize if cfg.crop_impl == "batched" else crop_resize_loop
                crops = crop(x.detach(), boxes)
        return scores, idx, boxes, crops

    def _first_pass(self, x: torch.Tensor):
        """``forward_features`` of the images and, for ``sim_metric: rollout``, the rollout scores."""
        if self.glsim_cfg.sim_metric != "rollout":
            return self.backbone.forward_features(x), None
        from .selection import record_attention, rollout_scores

        with record_attention(self.backbone, detach=True) as rec:
            h = self.backbone.forward_features(x)
        return h, rollout_scores(rec.drain_probs(), self.num_prefix_tokens)

    def _passes(self, x: torch.Tensor):
        h, pre = self._first_pass(x)
        if self.glsim_cfg.mode == "select_top_k":
            scores, idx, boxes, _ = self.select(x, h, make_crops=False, scores=pre)
            g, patches, _ = self._tokens(h)
            picked = patches.gather(1, idx[..., None].expand(-1, -1, patches.shape[-1]))  # keeps the gradient
            return torch.cat([g[:, None], picked], dim=1), scores, idx, boxes, None
        scores, idx, boxes, crops = self.select(x, h, scores=pre)
        with self._crop_cls():
            hc = self.backbone.forward_features(crops)
        g = self.backbone.forward_head(h, pre_logits=True)
        gc = self.backbone.forward_head(hc, pre_logits=True)
        return torch.stack([g, gc], dim=1), scores, idx, boxes, crops

    def _aggregate(self, z: torch.Tensor) -> torch.Tensor:
        return self.aggregator_norm(self.aggregator(z))

    def forward_glsim(self, x: torch.Tensor) -> GLSimOutput:
        z, scores, idx, boxes, crops = self._passes(x)
        logits = self.forward_head(self._aggregate(z))
        return {"logits": logits, "crops": crops, "boxes": boxes, "gls": scores, "indices": idx}

    def forward_no_crop(self, x: torch.Tensor) -> torch.Tensor:
        """One pass only: the global token alone through the aggregator and the head."""
        g = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        return self.forward_head(self._aggregate(g[:, None]))


@register_plugin("glsim", GLSimConfig, families=("vit",))
def apply_glsim(backbone: nn.Module, cfg: GLSimConfig | None = None, *,
                num_classes: int | None = None) -> GLSimModel:
    """Wrap a token backbone (timm ViT, ViTFS) with GLSim; see :class:`GLSimModel`.

    Args:
        backbone: the encoder; its classifier is removed.
        cfg: :class:`GLSimConfig`.
        num_classes: C; default ``backbone.num_classes``.
    """
    if isinstance(backbone, GLSimModel):
        raise ValueError("apply_glsim: the model already has GLSim (list the 'glsim' plug-in once).")
    if not (hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks")):
        raise TypeError(f"GLSim needs a token model (a ViT with patch_embed and blocks); "
                        f"{type(backbone).__name__} is not one. Use a ViT backbone (vit_*, vitfs_*).")
    if not isinstance(getattr(backbone, "cls_token", None), nn.Parameter):
        warnings.warn(f"glsim on {type(backbone).__name__}: no class token, so the global vector is the mean of "
                      "the patch tokens, and the patches most similar to it are mostly background (README, GLSim "
                      "on CUB-100); GLSim is meant for CLS-token ViTs.", UserWarning, stacklevel=2)
    k = plugin_class_count("glsim", backbone, num_classes)
    model = GLSimModel(backbone, k, cfg)
    register_inference(model, "no-crop", "forward_no_crop")
    return model


def mark_only_glsim_trainable(model: nn.Module) -> nn.Module:
    """Freeze the encoder: only what GLSim added trains (crop CLS, aggregator, its norm, head)."""
    if isinstance(model, GLSimModel) and not getattr(model, "fgir_plugin_params", None):
        own = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        model.fgir_plugin_params = {"glsim": own}
    return mark_only_plugin_trainable(model, "glsim")


# ============================================================================ visualisation
def _glsim_applies(model: nn.Module) -> str:
    return "" if isinstance(model, GLSimModel) else f"the model is a {type(model).__name__}, not a GLSim model."


def _register_viz() -> None:
    from ...report.viz import register_viz

    @register_viz("glsim", help="GLS similarity map, selected patches and crop box over the image, and the crop.",
                  applies=_glsim_applies)
    def viz_glsim(model: GLSimModel, image: str, out) -> list:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        from ...report.viz import model_input

        x, shown = model_input(model, image, device=str(next(model.parameters()).device))
        with torch.no_grad():
            res = model.eval().forward_glsim(x)
        s = x.shape[-1]
        grid = math.isqrt(res["gls"].shape[1])
        p = s // grid
        sim = res["gls"][0].float().reshape(grid, grid).cpu()
        y0, y1, x0, x1 = res["boxes"][0].tolist()
        cfg = model.glsim_cfg
        crop_mode = cfg.mode == "crop"
        if crop_mode:
            disp = torch.from_numpy(shown).permute(2, 0, 1)[None].float()
            third = crop_resize(disp, res["boxes"][:1].cpu())[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()
        else:  # select_top_k: no crop; the selected patches' tokens go to the aggregator, the rest are dimmed
            keep = torch.zeros(grid * grid)
            keep[res["indices"][0].cpu()] = 1.0
            mask = keep.reshape(grid, grid).repeat_interleave(p, 0).repeat_interleave(p, 1)
            mask = torch.nn.functional.pad(mask, (0, s - grid * p, 0, s - grid * p))[..., None].numpy()
            third = (shown * (0.25 + 0.75 * mask)).clip(0, 255).astype("uint8")
        top = res["indices"].shape[1]
        fig, axes = plt.subplots(1, 3, figsize=(11.5, 4.0), constrained_layout=True)
        axes[0].imshow(shown)
        axes[0].set_title("input (test transform)")
        axes[1].imshow(shown)
        im = axes[1].imshow(sim.numpy(), cmap="magma", alpha=0.55, extent=(0, s, s, 0), interpolation="nearest")
        for i in res["indices"][0].tolist():
            axes[1].add_patch(Rectangle(((i % grid) * p, (i // grid) * p), p, p, fill=False, ec="cyan", lw=1.2))
        if crop_mode:
            axes[1].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=2.5, ls="--"))
        fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02, label=f"GLS ({cfg.sim_metric})")
        axes[1].set_title(f"GLS map, top-{top} (cyan), {cfg.crop_box} box (green)" if crop_mode
                          else f"GLS map, top-{top} patches (cyan)")
        axes[2].imshow(third)
        axes[2].set_title(f"crop rows [{y0},{y1}) x cols [{x0},{x1}) -> {s}x{s}" if crop_mode
                          else f"to the aggregator: global + top-{top} (no crop)")
        pred = int(res["logits"][0].argmax())
        names = (getattr(model, "fgir_meta", None) or {}).get("class_names") or []
        fig.suptitle(f"GLSim: predicted {names[pred] if pred < len(names) else pred}", fontsize=11)
        from ...report.viz import save_panels

        return save_panels(fig, axes, out)


_register_viz()
