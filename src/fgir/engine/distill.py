"""Teacher training (CAL) and teacher-guided distillation (TGDA) as Tasks.

Paper: TGDA, arXiv 2507.12157 (spec ``shared/specs/tgda.md`` §3-5). Two registered tasks:

* ``cal`` (:class:`CALTask`): stage 1, trains a CAL/WS-DAN teacher (``CALModel``) with the loss
  of spec §3.2. The deployable model is the CAL model itself.
* ``tgda`` (:class:`TGDATask`): stage 2, a frozen CAL teacher makes part-attention views
  (crop / drop / mix) of every batch at its resolution S_t; the student sees the raw and the
  augmented views downsampled to S_s and learns from CE on the raw view plus logit KD on all
  views (spec §4.1, §5.1). The deployable model is the student alone.

Batch conventions for ``tgda``: batches arrive at the teacher size S_t (``data.img_size``) and
are normalised with the *teacher's* mean/std (the task's ``input_spec()``); the student is
deployed at S_s with its own normalisation (``deploy_spec()``).
When the student's normalisation differs, the task re-normalises after the resize. The teacher
is frozen (``requires_grad_(False)``) and kept in eval mode unless ``bn_mode="train"``.

Teacher outputs are recomputed every step, except with ``task.cache_teacher`` (plain KD on
deterministic inputs; the config validation refuses it when any augmentation is random): then
each training image's teacher logits are computed once, keyed by the batch's ``index``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, ConfigError, TaskConfig, check_choice, check_range_pair
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..models.plugins.cal import (
    CALModel,
    attention_crop,
    attention_drop,
    attention_mix,
    select_part_maps,
)
from ..registry import TASKS
from .classification import classification_loss
from .task import DeploySpec, IOSpec, Task

__all__ = ["AttentionAugConfig", "CALTask", "CALTaskConfig", "TGDAConfig", "TGDATask", "build_cal_task",
           "build_tgda_task", "cal_loss", "kd_loss", "load_teacher"]

VIEWS = ("crop", "drop", "mix")


# ============================================================================ configs
@dataclass
class AttentionAugConfig(TaskConfig):
    """Settings of the attention crop / drop operators (spec §4.2), shared by the cal and tgda tasks."""

    crop_threshold: list = field(default_factory=lambda: [0.4, 0.6])
    """Attention-crop threshold range [lo, hi], relative to the map's max, drawn per sample."""
    drop_threshold: list = field(default_factory=lambda: [0.2, 0.5])
    """Attention-drop threshold range [lo, hi], relative to the map's max, drawn per sample."""
    crop_padding: float = 0.1
    """Crop box padding as a fraction of the image side."""

    def validate(self, cfg: Config) -> None:
        for key in ("crop_threshold", "drop_threshold") + (("mix_threshold",) if hasattr(self, "mix_threshold")
                                                          else ()):
            setattr(self, key, check_range_pair(f"task.{key}", getattr(self, key)))
        for key in ("crop_padding", "mix_padding"):
            val = getattr(self, key, 0.0)
            if not 0 <= val < 1:
                raise ConfigError(f"task.{key} must be in [0, 1) (a fraction of the image side), got {val}.")


@dataclass
class CALTaskConfig(AttentionAugConfig):
    """Train a CAL teacher (TGDA stage 1, spec §3.2); the model needs the ``cal`` plug-in."""

    name: str = "cal"

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        if "cal" not in [p.name for p in cfg.model.plugins]:
            raise ConfigError("task.name=cal trains a CAL teacher, but model.plugins has no 'cal' entry: add "
                              "model.plugins=[{name: cal}] (see configs/methods/cal_teacher.yaml).")


@dataclass
class TGDAConfig(AttentionAugConfig):
    """Teacher-guided augmentation + KD (TGDA stage 2, arXiv 2507.12157 spec §4-5)."""

    name: str = "tgda"
    teacher: str = ""
    """Path of the trained CAL teacher checkpoint (fgir .safetensors or run folder)."""
    teacher_img_size: int = 0
    """Teacher input size S_t; 0 = data.img_size. Batches arrive at S_t, so a non-zero value must equal data.img_size."""
    student_img_size: int = 0
    """Student input size S_s (0 = same as the teacher)."""
    temperature: float = 0.7
    """KD temperature T (> 0); reference code default 0.7."""
    w_ce: float = 1.0
    """Weight of the cross-entropy on the raw student logits."""
    w_kd: float = 1.0
    """Weight of the KD term."""
    views: list = field(default_factory=lambda: ["crop", "drop"])
    """Teacher-guided views: any of crop, drop, mix. Empty = plain KD (ablation)."""
    view_weights: list = field(default_factory=list)
    """Per-view KD weights (raw view first, then task.views), each multiplying T^2 x the view's batch-mean KL; empty = 0.5 each with views (the reference T^2/(2B) per image), 1 for plain KD (the reference KL_batchmean x T^2)."""
    bn_mode: str = "eval"
    """Teacher BatchNorm mode: eval (default) or train (reference-compat)."""
    cache_teacher: bool = False
    """Compute each training image's teacher logits once and reuse them (plain KD only: views=[] and no random augmentation)."""
    antialias: bool = False
    """Antialias the teacher->student downsampling (reference: off)."""
    mix_threshold: list = field(default_factory=lambda: [0.4, 0.6])
    """Attention-mix box threshold range [lo, hi], relative to the map's max, drawn per sample."""
    mix_padding: float = 0.0
    """Attention-mix box padding as a fraction of the image side (reference: 0)."""
    pam_sampling: str = "sample"
    """Teacher maps for the views: sample (one per view, drawn in proportion to sqrt(mass)) or mean (channel-mean map)."""
    with_replacement: bool = True
    """Draw the views' maps with replacement (reference: crop and drop may share a map)."""

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        _check_tgda(self)
        if self.student_img_size and not cfg.model.img_size:
            cfg.model.img_size = self.student_img_size  # a fixed-size student (timm ViT) is built for S_s
        if self.teacher_img_size and self.teacher_img_size != cfg.data.img_size:
            raise ConfigError(f"task.teacher_img_size={self.teacher_img_size} differs from data.img_size="
                              f"{cfg.data.img_size}: batches arrive at the teacher size S_t. Set "
                              f"data.img_size={self.teacher_img_size} (and task.student_img_size for the "
                              "student).")
        if self.cache_teacher:
            d = cfg.data
            random_aug = {"task.views": bool(self.views), "data.hflip": d.hflip,
                          "data.auto_augment": bool(d.auto_augment), "data.random_erasing": d.random_erasing > 0,
                          "data.color_jitter": any(v > 0 for v in d.color_jitter),
                          "data.train_crop": d.train_crop == "rrc" or d.resize_ratio > 1.0,
                          "optim.mixup/cutmix": cfg.optim.mixup > 0 or cfg.optim.cutmix > 0}
            on = [k for k, v in random_aug.items() if v]
            if on:
                raise ConfigError("task.cache_teacher=true needs identical teacher inputs every epoch, but "
                                  f"these make them random: {on}. Turn them off (data.resize_ratio=1 for no "
                                  "random crop) or leave the cache off.")
        if "mix" in self.views and cfg.optim.batch_size % 2:
            raise ConfigError("task.views has 'mix', which pairs samples (2i, 2i+1): optim.batch_size "
                              f"must be even, got {cfg.optim.batch_size}.")


def _check_tgda(cfg: TGDAConfig) -> None:
    """Ranges of the TGDA fields (also checked when a TGDATask is built directly)."""
    if not cfg.temperature > 0:
        raise ConfigError(f"task.temperature must be > 0, got {cfg.temperature}.")
    for key, val in [("task.w_ce", cfg.w_ce), ("task.w_kd", cfg.w_kd)]:
        if val < 0:
            raise ConfigError(f"{key} must be >= 0, got {val}.")
    for v in cfg.views:
        check_choice("task.views", v, list(VIEWS))
    if len(set(cfg.views)) != len(cfg.views):
        raise ConfigError(f"task.views lists a view twice: {list(cfg.views)}.")
    if cfg.view_weights:
        n = 1 + len(cfg.views)
        try:
            weights = [float(w) for w in cfg.view_weights]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"task.view_weights must be numbers >= 0, got {cfg.view_weights!r}.") from e
        if len(weights) != n or any(w < 0 for w in weights):
            raise ConfigError(f"task.view_weights needs {n} numbers >= 0 (raw + {list(cfg.views)}), got "
                              f"{list(cfg.view_weights)}. Leave it empty for the reference weighting.")
        cfg.view_weights = weights
    check_choice("task.bn_mode", cfg.bn_mode, ["eval", "train"])
    check_choice("task.pam_sampling", cfg.pam_sampling, ["sample", "mean"])
    for key, val in [("task.teacher_img_size", cfg.teacher_img_size),
                     ("task.student_img_size", cfg.student_img_size)]:
        if val < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = default), got {val}.")


# ============================================================================ losses
def kd_loss(student_logits: torch.Tensor | Sequence[torch.Tensor],
            teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float,
            weights: Sequence[float] | None = None) -> torch.Tensor:
    """Logit KD over views (spec §5.1), forward KL teacher -> student.

    ``L = T² · Σ_v w_v · (1/B_v) Σ_{i∈v} KL(q_i ‖ s_i)``, ``q = softmax(t/T)``,
    ``s = softmax(z/T)``. The default ``w_v = 1/2`` for every view gives the reference weight
    ``T²/(2B)`` per image (``(T²/(2B))·Σ_{all views} KL``).

    Args:
        student_logits: one ``B_v x K`` tensor per view (or a single tensor = one view).
        teacher_logits: the teacher's logits for the same views.
        temperature: T > 0.
        weights: per-view weights ``w_v`` (same length as the views); default 0.5 each.
    """
    if isinstance(student_logits, torch.Tensor):
        student_logits = [student_logits]
    if isinstance(teacher_logits, torch.Tensor):
        teacher_logits = [teacher_logits]
    if len(student_logits) != len(teacher_logits):
        raise ValueError(f"kd_loss got {len(student_logits)} student views and {len(teacher_logits)} "
                         "teacher views.")
    if temperature <= 0:
        raise ValueError(f"kd_loss temperature must be > 0, got {temperature}.")
    weights = [0.5] * len(student_logits) if weights is None else list(weights)
    if len(weights) != len(student_logits):
        raise ValueError(f"kd_loss got {len(weights)} weights for {len(student_logits)} views.")
    total = student_logits[0].new_zeros((), dtype=torch.float32)
    for z, t, w in zip(student_logits, teacher_logits, weights):
        if z.shape != t.shape:
            raise ValueError(f"kd_loss: student logits {tuple(z.shape)} vs teacher logits {tuple(t.shape)}.")
        log_s = F.log_softmax(z.float() / temperature, dim=-1)
        log_q = F.log_softmax(t.detach().float() / temperature, dim=-1)
        total = total + w * F.kl_div(log_s, log_q, reduction="sum", log_target=True) / z.shape[0]
    return total * temperature ** 2


def cal_loss(raw_logits: torch.Tensor, aug_logits: torch.Tensor, eff_logits: torch.Tensor,
             features: torch.Tensor, centers: torch.Tensor, target: torch.Tensor,
             label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """CAL teacher loss (spec §3.2).

    ``CE(p_raw, y)/3 + (2/3)·CE(p_aug, [y;y]) + CE(p_eff, [y;y;y]) + (1/B)·Σ_b ‖f_b − c̄_{y_b}‖²``.

    Args:
        raw_logits: ``B x K`` raw-view logits.
        aug_logits: ``2B x K`` logits of ``[crop; drop]``.
        eff_logits: ``3B x K`` effect logits of ``[raw; crop; drop]``.
        features: ``B x D`` BAP features of the raw view.
        centers: ``B x D`` normalised centres ``c̄_{y_b}`` (before this step's update).
        target: ``B`` labels or ``B x K`` soft targets.
    """
    b = raw_logits.shape[0]
    ce = lambda z, y: classification_loss(z, y, label_smoothing)  # noqa: E731
    raw = ce(raw_logits, target)
    aug = ce(aug_logits, torch.cat([target] * (aug_logits.shape[0] // b)))
    eff = ce(eff_logits, torch.cat([target] * (eff_logits.shape[0] // b)))
    center = (features.float() - centers.float()).pow(2).sum() / b
    loss = raw / 3 + 2 * aug / 3 + eff + center
    return {"loss": loss, "loss_raw": raw, "loss_aug": aug, "loss_eff": eff, "loss_center": center}


# ============================================================================ stage 1: CAL
class CALTask(Task):
    """Train a CAL teacher (spec §3.2).

    Per step: forward the raw batch (logits, effect logits, BAP features, sampled maps), update the
    feature centres, build ``[crop(x); drop(x)]`` from maps 0 and 1 (the one mean map with
    ``pam_sampling=mean``), forward them, and combine with :func:`cal_loss`. The training
    prediction ``logits`` is ``(p_raw + p_crop)/2``. In eval mode the loss is CE on the
    :meth:`predict` logits: single-view, or the 8-view inference with ``inference="tta"``
    (``model.inference=tta``).

    Args:
        model: a :class:`~fgir.models.plugins.cal.CALModel` (plug-in ``cal``).
        cfg: crop / drop settings (:class:`CALTaskConfig`).
        label_smoothing: applied to every CE term (the reference uses none: set
            ``optim.label_smoothing=0`` for a reference teacher).
        generator: optional RNG for the thresholds.
        io, inference: batch format and inference variant (see :class:`~fgir.engine.task.Task`).
    """

    def __init__(self, model: CALModel, cfg: CALTaskConfig | None = None, label_smoothing: float = 0.0,
                 generator: torch.Generator | None = None, io: IOSpec | None = None, inference: str = "default"):
        super().__init__(io, inference)
        if not isinstance(model, CALModel):
            raise TypeError(f"CALTask needs a CALModel (model.plugins=[{{name: cal}}], or "
                            f"fgir.models.plugins.cal.apply_cal), got {type(model).__name__}.")
        self.model = model
        self.cfg = cfg or CALTaskConfig()
        self.label_smoothing = label_smoothing
        self.generator = generator

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x, target = batch["image"], batch["target"]
        if not self.training:
            logits = self.predict(x)
            return {"loss": classification_loss(logits, target, self.label_smoothing), "logits": logits}
        labels = batch.get("label", target if target.ndim == 1 else target.argmax(dim=1))
        b = x.shape[0]
        out = self.model.forward_cal(x)
        cbar = self.model.head.update_centers(out["features"], labels)
        maps = out["maps"]
        with torch.no_grad():
            x_aug = torch.cat([
                attention_crop(x, maps[:, 0], self.cfg.crop_threshold, self.cfg.crop_padding,
                               generator=self.generator),
                attention_drop(x, maps[:, min(1, maps.shape[1] - 1)], self.cfg.drop_threshold,
                               generator=self.generator),
            ])
        aug = self.model.forward_cal(x_aug, maps=False)
        losses = cal_loss(out["logits"], aug["logits"], torch.cat([out["logits_eff"], aug["logits_eff"]]),
                          out["features"], cbar, target, self.label_smoothing)
        return {**losses, "logits": (out["logits"] + aug["logits"][:b]) / 2}


# ============================================================================ stage 2: TGDA
def _stat(v, name: str) -> torch.Tensor:
    t = torch.as_tensor([float(a) for a in v], dtype=torch.float32)
    if t.numel() != 3:
        raise ValueError(f"{name} needs 3 values (RGB), got {list(v)}.")
    return t.view(1, 3, 1, 1)


class TGDATask(Task):
    """Teacher-guided data augmentation + KD (spec §4.1, §5.1).

    One training step, for a batch ``x`` (B x 3 x S_t x S_t, teacher-normalised):

    1. no grad: the teacher gives ``p_t`` and its attention maps on ``x``; one map per view is
       selected (``cal.pam_sampling``: sampled ∝ sqrt(mass) or the channel mean); the views
       (``cfg.views`` in order, from crop / drop / mix) are built at S_t and the teacher gives their
       logits; everything is downsampled to S_s (bicubic, ``cfg.antialias``) and re-normalised
       for the student if its mean/std differ.
    2. student forwards: raw ``B`` images, then the ``V·B`` augmented ones.
    3. ``loss = w_ce·CE(z_raw, y) + w_kd·kd_loss([z_raw, z_v...], [p_t, p_t,v...], T, view_weights)``;
       CE never sees an augmented view.

    Eval mode: the student alone on the downsampled raw batch, loss = CE.

    Args:
        student: the deployable model (``self.model``).
        teacher: frozen teacher; a :class:`CALModel` when ``cfg.views`` is non-empty, any
            classifier for plain KD (``views=[]``).
        cfg: :class:`TGDAConfig` (KD settings and the view operators' thresholds, padding,
            ``pam_sampling``, ``with_replacement``).
        num_classes: the student's class count (checked against the teacher's).
        label_smoothing: CE label smoothing.
        teacher_mean, teacher_std: normalisation of the incoming batch (ImageNet by default).
        student_mean, student_std: the student's normalisation (default: the teacher's).
        teacher_classes, student_classes: class tables; they must agree when both are given.
        generator: optional RNG for map sampling and thresholds.
        img_size: S_t, the size batches arrive at (0: the student's ``pretrained_cfg`` size).
        inference: the student's inference variant.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: TGDAConfig | None = None,
                 *, num_classes: int | None = None,
                 label_smoothing: float = 0.0,
                 teacher_mean: Sequence[float] | None = None, teacher_std: Sequence[float] | None = None,
                 student_mean: Sequence[float] | None = None, student_std: Sequence[float] | None = None,
                 teacher_classes: Sequence[str] | None = None, student_classes: Sequence[str] | None = None,
                 generator: torch.Generator | None = None, img_size: int = 0, inference: str = "default"):
        super().__init__(None, inference)
        cfg = cfg or TGDAConfig()
        _check_tgda(cfg)
        self._check_teacher(student, teacher, cfg, num_classes, teacher_classes, student_classes)
        self.model = student
        self.teacher = teacher
        self.teacher.eval()
        self.teacher.requires_grad_(False)
        self.cfg = cal = cfg
        self.cal = cal
        self.views = list(cfg.views)
        # spec §5.1: T²/(2B) per image for every view with views; plain KD is KL_batchmean · T² (weight 1)
        self.view_weights = [float(w) for w in cfg.view_weights] or (None if self.views else [1.0])
        self.img_size = int(img_size or cfg.teacher_img_size or
                            (getattr(student, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1])
        self.label_smoothing = label_smoothing
        self.generator = generator
        tm = _stat(IMAGENET_MEAN if teacher_mean is None else teacher_mean, "teacher_mean")
        ts = _stat(IMAGENET_STD if teacher_std is None else teacher_std, "teacher_std")
        sm = _stat(student_mean, "student_mean") if student_mean is not None else tm.clone()
        ss = _stat(student_std, "student_std") if student_std is not None else ts.clone()
        self.renormalise = not (torch.equal(tm, sm) and torch.equal(ts, ss))
        as_tuple = lambda v, d: tuple(float(x) for x in (d if v is None else v))  # noqa: E731  (exact values)
        t_mean, t_std = as_tuple(teacher_mean, IMAGENET_MEAN), as_tuple(teacher_std, IMAGENET_STD)
        self._teacher_io = (t_mean, t_std)
        self._student_io = (as_tuple(student_mean, t_mean), as_tuple(student_std, t_std))
        self.register_buffer("teacher_mean", tm, persistent=False)
        self.register_buffer("teacher_std", ts, persistent=False)
        self.register_buffer("student_mean", sm, persistent=False)
        self.register_buffer("student_std", ss, persistent=False)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_teacher(student, teacher, cfg, num_classes, teacher_classes, student_classes) -> None:
        if cfg.views and not isinstance(teacher, CALModel):
            raise TypeError(f"task.views={list(cfg.views)} needs a CAL teacher (a checkpoint trained "
                            f"with task.name=cal) for its attention maps; got {type(teacher).__name__}. "
                            "For plain KD from any classifier set task.views=[].")
        kt = getattr(teacher, "num_classes", None)
        ks = num_classes if num_classes is not None else getattr(student, "num_classes", None)
        if kt is not None and ks is not None and int(kt) != int(ks):
            raise ValueError(f"task.teacher has {kt} classes but the student/dataset has {ks}: the "
                             "teacher must be trained on the same dataset (same class table).")
        if teacher_classes is not None and student_classes is not None:
            tc, sc = list(teacher_classes), list(student_classes)
            if tc != sc:
                diff = next((i for i, (a, b) in enumerate(zip(tc, sc)) if a != b), min(len(tc), len(sc)))
                a = tc[diff] if diff < len(tc) else "<none>"
                b = sc[diff] if diff < len(sc) else "<none>"
                raise ValueError(f"task.teacher's class table does not match the dataset's "
                                 f"({len(tc)} vs {len(sc)} classes; first difference at index {diff}: "
                                 f"teacher '{a}' vs dataset '{b}'). Distil from a teacher trained on this dataset.")

    # ------------------------------------------------------------------ contract
    def input_spec(self) -> IOSpec:
        """Batches arrive at the teacher size S_t with the teacher's normalisation."""
        return IOSpec(self.img_size, *self._teacher_io)

    def deploy_spec(self) -> DeploySpec:
        """The student alone, at S_s with its own normalisation."""
        return DeploySpec(self.model, int(self.cfg.student_img_size or self.img_size), *self._student_io)

    def to_deploy_input(self, images: torch.Tensor) -> torch.Tensor:
        return self.to_student(images)

    def on_train_start(self) -> None:
        self.teacher.train(self.cfg.bn_mode == "train")

    # ------------------------------------------------------------------ pieces
    def to_student(self, images: torch.Tensor) -> torch.Tensor:
        """S_t teacher-normalised images -> S_s student-normalised images (bicubic, no grad needed)."""
        s = self.cfg.student_img_size
        if s and tuple(images.shape[-2:]) != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bicubic", align_corners=False,
                                   antialias=self.cfg.antialias)
        if self.renormalise:
            images = (images * self.teacher_std + self.teacher_mean - self.student_mean) / self.student_std
        return images

    @torch.no_grad()
    def teacher_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher logits on the raw batch and the ``V·B`` teacher-guided views at S_t
        (``None`` for plain KD). The views are concatenated in ``cfg.views`` order."""
        if not self.views:
            return self.teacher(images), None
        out = self.teacher.forward_cal(images, counterfactual=False, maps=False)
        maps = select_part_maps(out["attention"], self.cal.pam_sampling, len(self.views),
                                self.cal.with_replacement, self.generator)
        views = []
        for i, name in enumerate(self.views):
            m = maps[:, min(i, maps.shape[1] - 1)]
            if name == "crop":
                views.append(attention_crop(images, m, self.cal.crop_threshold, self.cal.crop_padding,
                                            generator=self.generator))
            elif name == "drop":
                views.append(attention_drop(images, m, self.cal.drop_threshold, generator=self.generator))
            else:
                views.append(attention_mix(images, m, self.cal.mix_threshold, self.cal.mix_padding,
                                           generator=self.generator))
        return out["logits"], torch.cat(views)

    @torch.no_grad()
    def _cached_teacher(self, images: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        """Teacher logits of a plain-KD batch from the per-image cache (filled on first sight)."""
        if self.views:
            raise ValueError("task.cache_teacher only works for plain KD (task.views=[]).")
        if index is None:
            raise ValueError("task.cache_teacher needs batches with an 'index' entry (fgir loaders add it).")
        if not hasattr(self, "_teacher_cache"):
            self._teacher_cache: dict[int, torch.Tensor] = {}
        keys = index.tolist()
        missing = [i for i, k in enumerate(keys) if k not in self._teacher_cache]
        if missing:
            logits = self.teacher(images[missing])
            for i, row in zip(missing, logits):
                self._teacher_cache[keys[i]] = row
        return torch.stack([self._teacher_cache[k] for k in keys]), None

    # ------------------------------------------------------------------ step
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x, target = batch["image"], batch["target"]
        if not self.training:
            z = self.predict(x)
            ce = classification_loss(z, target, self.label_smoothing)
            return {"loss": ce, "logits": z, "loss_ce": ce, "loss_kd": ce.new_zeros(())}
        st = self.cfg.teacher_img_size
        if st and tuple(x.shape[-2:]) != (st, st):
            raise ValueError(f"TGDA batches must arrive at the teacher size S_t={st} "
                             f"(task.teacher_img_size), got {tuple(x.shape[-2:])}; set "
                             f"data.img_size={st}.")
        with torch.no_grad():
            t_raw, x_aug = self._cached_teacher(x, batch.get("index")) if self.cfg.cache_teacher else \
                self.teacher_views(x)
            t_aug = self.teacher(x_aug) if x_aug is not None else None
            x_s = self.to_student(x)
            x_aug_s = self.to_student(x_aug) if x_aug is not None else None
        z = self.model(x_s)
        students, teachers = [z], [t_raw]
        if x_aug_s is not None:
            z_aug = self.model(x_aug_s)
            n = len(self.views)
            students += list(z_aug.chunk(n))
            teachers += list(t_aug.chunk(n))
        loss_ce = classification_loss(z, target, self.label_smoothing)
        loss_kd = kd_loss(students, teachers, self.cfg.temperature, self.view_weights)
        loss = self.cfg.w_ce * loss_ce + self.cfg.w_kd * loss_kd
        return {"loss": loss, "logits": z, "loss_ce": loss_ce.detach(), "loss_kd": loss_kd.detach()}


# ============================================================================ builders
def load_teacher(path: str) -> nn.Module:
    """Load the frozen teacher named by ``task.teacher`` (an fgir checkpoint or run folder)."""
    if not path:
        raise ConfigError("task.teacher is empty: give the CAL teacher checkpoint (a .safetensors file "
                          "or a run folder from a task.name=cal run).")
    if not Path(path).exists():
        raise FileNotFoundError(f"task.teacher={path}: no such checkpoint or run folder. Train a "
                                "teacher first with task.name=cal, then point task.teacher at its run "
                                "folder.")
    from .checkpoint import CheckpointError, load_model

    try:
        return load_model(path)
    except CheckpointError as e:
        raise ConfigError(f"task.teacher={path}: {e}") from e


@TASKS.register("cal", config=CALTaskConfig)
def build_cal_task(cfg: Config, model: nn.Module, num_classes: int, **_) -> CALTask:
    """``model`` is the deployable CAL model (``model.plugins`` holds the ``cal`` plug-in)."""
    if not isinstance(model, CALModel):
        raise ConfigError("task.name=cal trains a CAL teacher, but the model has no CAL head: add "
                          "model.plugins=[{name: cal}] (see configs/methods/cal_teacher.yaml).")
    if model.num_classes != num_classes:
        raise ValueError(f"CAL model has {model.num_classes} classes but the dataset has {num_classes}.")
    return CALTask(model, cfg.task, label_smoothing=cfg.optim.label_smoothing)


def _norm(model: nn.Module, meta: dict) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    if meta.get("mean") and meta.get("std"):
        return meta["mean"], meta["std"]
    pc = getattr(model, "pretrained_cfg", None) or {}
    return pc.get("mean"), pc.get("std")


@TASKS.register("tgda", config=TGDAConfig)
def build_tgda_task(cfg: Config, model: nn.Module, num_classes: int, *, teacher: nn.Module | None = None,
                    class_names: Sequence[str] | None = None) -> TGDATask:
    """``model`` is the student; the teacher is loaded from ``task.teacher`` unless given.

    Normalisation: with ``data.mean``/``data.std`` set, teacher and student share them; otherwise
    the batch uses the teacher checkpoint's stats and the student its ``pretrained_cfg``'s.
    """
    t = cfg.task
    if teacher is None:
        teacher = load_teacher(t.teacher)
    meta = getattr(teacher, "fgir_meta", None) or {}
    teacher_classes = meta.get("class_names") or None
    if class_names is None and teacher_classes:
        t_data = (meta.get("config") or {}).get("data", {}).get("name")
        if t_data and t_data != cfg.data.name:
            warnings.warn(f"task.teacher was trained on dataset '{t_data}', this run uses "
                          f"'{cfg.data.name}'; only the class counts could be checked.", stacklevel=2)
    if cfg.data.mean and cfg.data.std:
        tm = sm = cfg.data.mean
        ts = ss = cfg.data.std
    else:
        tm, ts = _norm(teacher, meta)
        sm, ss = _norm(model, {})
        sm, ss = sm or tm, ss or ts
    return TGDATask(model, teacher, t, num_classes=num_classes,
                    label_smoothing=cfg.optim.label_smoothing, teacher_mean=tm, teacher_std=ts,
                    student_mean=sm, student_std=ss, teacher_classes=teacher_classes,
                    student_classes=class_names, img_size=cfg.data.img_size, inference=cfg.model.inference)
