"""Typed configuration: nested dataclasses, YAML composition and dot-list overrides.

Precedence: dataclass defaults < YAML files (left to right; a file may list ``_base_`` files it
extends) < command-line ``key.sub=value`` overrides. Unknown keys are errors that suggest close
names. The resolved config is written into every run folder and embedded in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .registry import suggest


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the key."""


# ----------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    name: str = "resnet18"
    """Registered fgir model or any timm model name (`fgir list models`)."""
    pretrained: bool = False
    """Load the timm/HF-hub pretrained weights (needs network or a warm HF cache)."""
    checkpoint: str = ""
    """Initialise the backbone from this fgir checkpoint (.safetensors/.json) or a timm-style state dict; the head is re-initialised when its class count differs."""
    drop_rate: float = 0.0
    """Dropout before the classifier."""
    drop_path_rate: float = 0.0
    """Stochastic depth rate."""
    kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for the model builder (e.g. img_size for ViTs)."""


@dataclass
class DataConfig:
    name: str = "fonts"
    """Dataset from the catalog (`fgir list datasets`)."""
    root: str = ""
    """Dataset root with the split CSVs; empty = $FGIR_DATA/<name> (demo sets need none)."""
    train_split: str = "train"
    """Split to train on: train (model selection) or train_val (final runs)."""
    val_split: str = "val"
    """Split for per-epoch validation and best-checkpoint selection; empty = none. Never test."""
    test_split: str = "test"
    """Split evaluated once at the end of training."""
    img_size: int = 64
    """Input resolution S fed to the model."""
    resize_ratio: float = 1.34
    """Square resize to int(ratio*S) before the crop (1.34 = reference engine; 1/0.875 for CLCA; 1.0 = resize directly)."""
    train_crop: str = "random"
    """random (resize then RandomCrop S) or rrc (RandomResizedCrop, scale 0.08-1)."""
    hflip: bool = True
    """Random horizontal flip during training."""
    auto_augment: str = ""
    """'' (none), 'trivial' (TrivialAugmentWide) or timm-style 'rand-m9-n2' (RandAugment magnitude 9, 2 ops)."""
    random_erasing: float = 0.0
    """Random erasing probability (after normalisation)."""
    mean: list = field(default_factory=list)
    """Normalisation mean; empty = the model's pretrained_cfg."""
    std: list = field(default_factory=list)
    """Normalisation std; empty = the model's pretrained_cfg."""
    cache: bool = True
    """Decode and resize every image once into a memory-mapped uint8 cache (compute-bound training)."""
    cache_dir: str = ""
    """Where caches live; empty = $FGIR_CACHE or ~/.cache/fgir."""
    num_workers: int = 0
    """DataLoader worker processes for uncached loading (0 = a background thread)."""
    skip_bad: bool = False
    """Skip and count unreadable images instead of failing."""
    num_classes: int = 0
    """Override the class count (only for datasets without a class table)."""


@dataclass
class OptimConfig:
    opt: str = "adamw"
    """Optimizer name for timm's create_optimizer_v2 (adamw, sgd, momentum, lamb, ...)."""
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    batch_size: int = 64
    """Global batch per forward (split over DDP processes); one optimizer step sees batch_size * accum_steps images."""
    epochs: int = 30
    sched: str = "cosine"
    """cosine, step or constant."""
    warmup_epochs: float = 2.0
    warmup_steps: int = 0
    """Warm-up length in steps; overrides warmup_epochs when > 0 (reference engine: 500)."""
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    mixup: float = 0.0
    """Mixup alpha (0 = off)."""
    cutmix: float = 0.0
    """CutMix alpha (0 = off)."""
    mix_prob: float = 1.0
    clip_grad: float = 0.0
    """Global gradient-norm clip (0 = off)."""
    accum_steps: int = 1
    amp: str = "none"
    """Mixed precision: none, bf16 or fp16 (fp16 only on CUDA)."""
    ema: bool = False
    ema_decay: float = 0.9998


@dataclass
class CALConfig:
    """CAL / WS-DAN teacher head (TGDA stage 1), arXiv 2507.12157 spec §3."""

    num_maps: int = 32
    """Number M of part-attention maps."""
    center_beta: float = 0.05
    """Feature-centre update rate beta (centre loss)."""
    logit_scale: float = 100.0
    """Logits are W·(scale·f) with f the L2-normalised BAP feature."""
    crop_threshold: list = field(default_factory=lambda: [0.4, 0.6])
    """Attention-crop threshold range [lo, hi], relative to the map's max, drawn per sample."""
    drop_threshold: list = field(default_factory=lambda: [0.2, 0.5])
    """Attention-drop threshold range [lo, hi], relative to the map's max, drawn per sample."""
    mix_threshold: list = field(default_factory=lambda: [0.4, 0.6])
    """Attention-mix box threshold range [lo, hi], relative to the map's max, drawn per sample."""
    crop_padding: float = 0.1
    """Crop box padding as a fraction of the image side."""
    with_replacement: bool = True
    """Draw the augmentation maps with replacement (reference: crop and drop may share a map)."""
    pam_sampling: str = "sample"
    """sample (maps drawn in proportion to their mass) or mean (channel-mean map)."""
    mix_padding: float = 0.0
    """Attention-mix box padding as a fraction of the image side (reference: 0)."""
    tta_eval: bool = False
    """Evaluate the CAL model with the 8-view inference (raw + 3 mean-map crops, x h-flip) instead of one view."""


@dataclass
class TGDAConfig:
    """Teacher-guided augmentation + KD (TGDA stage 2), arXiv 2507.12157 spec §4-5."""

    teacher: str = ""
    """Path of the trained CAL teacher checkpoint (fgir .safetensors)."""
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
    """Per-view KD weights (raw view first, then task.tgda.views), each multiplying T^2 x the view's batch-mean KL; empty = 0.5 each (the reference T^2/(2B) per image)."""
    bn_mode: str = "eval"
    """Teacher BatchNorm mode: eval (default) or train (reference-compat)."""
    cache_teacher: bool = False
    """Compute each training image's teacher logits once and reuse them (plain KD only: views=[] and no random augmentation)."""
    antialias: bool = False
    """Antialias the teacher->student downsampling (reference: off)."""


@dataclass
class TaskConfig:
    name: str = "classification"
    """classification, cal (train a CAL teacher) or tgda (distil a student)."""
    cal: CALConfig = field(default_factory=CALConfig)
    tgda: TGDAConfig = field(default_factory=TGDAConfig)


@dataclass
class RunConfig:
    output_dir: str = "runs"
    name: str = ""
    """Run folder name; empty = <dataset>_<model>_<task>_s<seed>."""
    seed: int = 0
    selection: str = "last"
    """Checkpoint policy: last (last epoch) or best_val (best top-1 on the val split; never test)."""
    eval_every: int = 1
    """Validate every N epochs (and always after the last)."""
    progress: bool = True
    tensorboard: bool = False
    threads: int = 0
    """torch.set_num_threads (0 = leave as is)."""
    max_steps_per_epoch: int = 0
    """Truncate epochs (smoke tests and budgets; 0 = full epochs)."""
    time_budget_s: float = 0.0
    """Stop after the epoch in which this wall-clock budget ends (0 = off)."""
    channels_last: bool = False
    device: str = "auto"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> Config:
        _check_choice("run.selection", self.run.selection, ["last", "best_val"])
        _check_choice("optim.amp", self.optim.amp, ["none", "bf16", "fp16"])
        _check_choice("optim.sched", self.optim.sched, ["cosine", "step", "constant"])
        _check_choice("data.train_crop", self.data.train_crop, ["random", "rrc"])
        _check_choice("task.tgda.bn_mode", self.task.tgda.bn_mode, ["eval", "train"])
        _check_choice("task.cal.pam_sampling", self.task.cal.pam_sampling, ["sample", "mean"])
        if self.run.selection == "best_val" and not self.data.val_split:
            raise ConfigError("run.selection=best_val needs data.val_split (a split other than test).")
        if self.data.val_split and self.data.val_split == self.data.test_split:
            raise ConfigError(f"data.val_split='{self.data.val_split}' equals data.test_split: model "
                              "selection must never see the test split. Use 'val' or leave it empty.")
        for key, val in [("optim.lr", self.optim.lr), ("optim.batch_size", self.optim.batch_size),
                         ("optim.epochs", self.optim.epochs), ("data.img_size", self.data.img_size),
                         ("optim.accum_steps", self.optim.accum_steps)]:
            if val <= 0:
                raise ConfigError(f"{key} must be > 0, got {val}.")
        if not 0 <= self.optim.label_smoothing < 1:
            raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {self.optim.label_smoothing}.")
        t = self.task.tgda
        if t.temperature <= 0:
            raise ConfigError(f"task.tgda.temperature must be > 0, got {t.temperature}.")
        for key, val in [("task.tgda.w_ce", t.w_ce), ("task.tgda.w_kd", t.w_kd)]:
            if val < 0:
                raise ConfigError(f"{key} must be >= 0, got {val}.")
        for v in t.views:
            _check_choice("task.tgda.views", v, ["crop", "drop", "mix"])
        _validate_cal_tgda(self)
        return self


def _validate_cal_tgda(cfg: Config) -> None:
    """Ranges of the task.cal / task.tgda keys (spec tgda.md §3-5)."""
    c, t = cfg.task.cal, cfg.task.tgda
    if c.num_maps < 1:
        raise ConfigError(f"task.cal.num_maps must be >= 1, got {c.num_maps}.")
    if not 0 <= c.center_beta <= 1:
        raise ConfigError(f"task.cal.center_beta must be in [0, 1], got {c.center_beta}.")
    if c.logit_scale <= 0:
        raise ConfigError(f"task.cal.logit_scale must be > 0, got {c.logit_scale}.")
    for key, rng in [("task.cal.crop_threshold", c.crop_threshold),
                     ("task.cal.drop_threshold", c.drop_threshold),
                     ("task.cal.mix_threshold", c.mix_threshold)]:
        try:
            vals = [float(v) for v in rng]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key} must be [lo, hi] numbers, got {rng!r}.") from e
        if len(vals) != 2 or not 0 <= vals[0] <= vals[1] <= 1:
            raise ConfigError(f"{key} must be [lo, hi] with 0 <= lo <= hi <= 1 (fractions of the map's max), "
                              f"got {rng!r}.")
        setattr(c, key.rsplit(".", 1)[1], vals)  # CLI lists arrive as strings
    for key, val in [("task.cal.crop_padding", c.crop_padding), ("task.cal.mix_padding", c.mix_padding)]:
        if not 0 <= val < 1:
            raise ConfigError(f"{key} must be in [0, 1) (a fraction of the image side), got {val}.")
    for key, val in [("task.tgda.teacher_img_size", t.teacher_img_size),
                     ("task.tgda.student_img_size", t.student_img_size)]:
        if val < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = default), got {val}.")
    if t.view_weights:
        n = 1 + len(t.views)
        if len(t.view_weights) != n:
            raise ConfigError(f"task.tgda.view_weights needs {n} values (raw + {list(t.views)}), "
                              f"got {len(t.view_weights)}: {t.view_weights!r}. Leave it empty for the "
                              "reference weighting.")
        try:
            weights = [float(w) for w in t.view_weights]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"task.tgda.view_weights must be numbers >= 0, got {t.view_weights!r}.") from e
        if any(w < 0 for w in weights):
            raise ConfigError(f"task.tgda.view_weights must be numbers >= 0, got {t.view_weights!r}.")
        t.view_weights = weights
    if cfg.task.name == "tgda":
        if t.teacher_img_size and t.teacher_img_size != cfg.data.img_size:
            raise ConfigError(f"task.tgda.teacher_img_size={t.teacher_img_size} differs from data.img_size="
                              f"{cfg.data.img_size}: batches arrive at the teacher size S_t. Set "
                              f"data.img_size={t.teacher_img_size} (and task.tgda.student_img_size for the "
                              "student).")
        if t.cache_teacher:
            d = cfg.data
            random_aug = {"task.tgda.views": bool(t.views), "data.hflip": d.hflip,
                          "data.auto_augment": bool(d.auto_augment), "data.random_erasing": d.random_erasing > 0,
                          "data.train_crop": d.train_crop == "rrc" or d.resize_ratio > 1.0,
                          "optim.mixup/cutmix": cfg.optim.mixup > 0 or cfg.optim.cutmix > 0}
            on = [k for k, v in random_aug.items() if v]
            if on:
                raise ConfigError("task.tgda.cache_teacher=true needs identical teacher inputs every epoch, but "
                                  f"these make them random: {on}. Turn them off (data.resize_ratio=1 for no "
                                  "random crop) or leave the cache off.")
        if "mix" in t.views and cfg.optim.batch_size % 2:
            raise ConfigError("task.tgda.views has 'mix', which pairs samples (2i, 2i+1): optim.batch_size "
                              f"must be even, got {cfg.optim.batch_size}.")


def _check_choice(key: str, value: Any, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is not allowed; expected one of {allowed}.{suggest(str(value), allowed)}")


# ----------------------------------------------------------------------------- mechanics
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings (the string literal under each field) for CLI help."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = str(b.value.value)  # type: ignore[union-attr]
    return docs


def _coerce(key: str, value: Any, tp: Any, default: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} expects true/false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key} expects an integer, got {value!r}.")
        try:
            f = float(value)
        except ValueError as e:
            raise ConfigError(f"{key} expects an integer, got {value!r}.") from e
        if f != int(f):
            raise ConfigError(f"{key} expects an integer, got {value!r}.")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key} expects a number, got {value!r}.") from e
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} expects a string, got {value!r}.")
        return "" if value is None else str(value)
    if tp is list or origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} expects a list, got {value!r}.")
        return list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} expects a mapping, got {value!r}.")
        return dict(value)
    return value


def from_dict(cls: type, data: dict, prefix: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``data`` on top of ``base`` (or defaults); unknown keys raise."""
    obj = base if base is not None else cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} expects a mapping, got {data!r}.")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"Unknown config key '{full}'.{suggest(key, names)} "
                              f"Valid keys under '{prefix.rstrip('.') or '<root>'}': {', '.join(names)}.")
        tp = hints[key]
        cur = getattr(obj, key)
        if dataclasses.is_dataclass(tp):
            setattr(obj, key, from_dict(tp, value or {}, f"{full}.", cur))
        elif (tp is dict or typing.get_origin(tp) is dict) and isinstance(value, dict) and isinstance(cur, dict):
            setattr(obj, key, {**cur, **value})
        else:
            setattr(obj, key, _coerce(full, value, tp, cur))
    return obj


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """Read a YAML config, resolving ``_base_`` (a path or list, relative to the file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file not found: {p}")
    if p.resolve() in _seen:
        raise ConfigError(f"Config {p} includes itself through _base_.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {p} must hold a mapping at the top level.")
    bases = data.pop("_base_", [])
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, read_yaml(p.parent / b, _seen + (p.resolve(),)))
    return _deep_merge(merged, data)


def parse_overrides(items: list[str]) -> dict:
    """``["optim.lr=0.1", "data.name=cub"]`` -> nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' must look like key.sub=value.")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_config(files: list[str] | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Config:
    """Compose defaults < YAML files < dict < dot-list overrides into a validated ``Config``."""
    merged: dict = {}
    for f in files or []:
        merged = _deep_merge(merged, read_yaml(f))
    if data:
        merged = _deep_merge(merged, data)
    merged = _deep_merge(merged, parse_overrides(overrides or []))
    return from_dict(Config, merged).validate()


def config_from_dict(data: dict) -> Config:
    return from_dict(Config, data).validate()


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
