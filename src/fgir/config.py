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
class PluginConfig:
    """Base of every plug-in's config dataclass: one entry of ``model.plugins``.

    A plug-in module subclasses this next to its code and registers it with
    :func:`fgir.models.plugins.register_plugin`; ``config.py`` never names a plug-in.
    """

    name: str = ""
    """Registered plug-in name (`fgir list plugins`)."""

    def validate(self, cfg: Config, key: str) -> None:
        """Cross-field checks; ``key`` is this entry's position (``model.plugins[0]``)."""


@dataclass
class TaskConfig:
    """Base of every Task's config dataclass (the ``task`` section): the task name plus the
    task's own fields, e.g. ``task: {name: tgda, teacher: runs/cal, temperature: 2}``."""

    name: str = "classification"
    """Registered task (`fgir list tasks`): classification, cal, tgda, ..."""

    def validate(self, cfg: Config) -> None:
        """Cross-field checks against the whole config."""


@dataclass
class ModelConfig:
    name: str = "resnet18"
    """Registered fgir model or any timm model name (`fgir list models`)."""
    pretrained: bool = False
    """Load the timm/HF-hub pretrained weights (needs network or a warm HF cache)."""
    checkpoint: str = ""
    """Initialise the model from this fgir checkpoint (.safetensors or run folder) or a timm-style state dict; the head is re-initialised when its class count differs."""
    checkpoint_head: bool = True
    """Take the classifier from model.checkpoint when its shape fits; false = a fresh classifier (transfer to a new task with the same class count, or a new-head control)."""
    checkpoint_strict: bool = True
    """model.checkpoint must provide every non-head tensor with the right shape; false = load what fits and list what was skipped."""
    img_size: int = 0
    """Input size a fixed-size model (timm ViTs) is built for; 0 = data.img_size (position embeddings are resampled from pretrained weights)."""
    grad_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward pass (timm's set_grad_checkpointing; through wrapping plug-ins such as GLSim): less training memory for more time. Refused with BatchNorm in the model (a recomputed block would update its running statistics twice) and with the token path."""
    norm_eps: float = 0.0
    """eps of every LayerNorm in the backbone (set before the plug-ins, which keep their own); 0 = the architecture's own (timm ViTs 1e-6); 1e-12 = the legacy JAX-converted ViTs of the GLSim / ILA / Animesion code."""
    drop_rate: float = 0.0
    """Dropout before the classifier."""
    drop_path_rate: float = 0.0
    """Stochastic depth rate."""
    kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for the model builder (e.g. output_stride for timm CNNs)."""
    plugins: list = field(default_factory=list, metadata={"registry": "plugin"})
    """Ordered plug-ins applied by build_model, each {name: <plug-in>, <its fields>} (`fgir config --explain` lists them)."""
    trainable: list = field(default_factory=lambda: ["all"])
    """Which parameters train, applied after the plug-ins: presets all / head / plugins / backbone / none, or glob patterns over parameter names ('blocks.11.*'); a leading '!' removes matches."""
    inference: str = "default"
    """Inference variant for validation, test, eval and predict: default, flip (mean with the mirrored image, any model), one a plug-in adds (cal: tta; glsim: no-crop), or <variant>+flip."""
    save: str = "full"
    """What last/best.safetensors hold: full (every tensor) or trainable (trained parameters + buffers and a fingerprint of the frozen backbone; loading merges them onto model.checkpoint or the pretrained weights)."""


@dataclass
class DataConfig:
    name: str = "fonts"
    """Dataset from the catalog (`fgir list datasets`), or folder = your own class-folder tree or CSV list (data.root)."""
    root: str = ""
    """Dataset root with the split CSVs or an official layout; empty = $FGIR_DATA/<name> (demo sets need none); folder: DIR or list.csv."""
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
    eval_resize_ratio: float = 0.0
    """Square resize before evaluation's centre crop, as a multiple of img_size; 0 = data.resize_ratio, 1.0 = resize straight to img_size (no crop; Animesion's eval)."""
    train_crop: str = "random"
    """random (resize then RandomCrop S) or rrc (RandomResizedCrop, scale 0.08-1)."""
    hflip: bool = True
    """Random horizontal flip during training."""
    auto_augment: str = ""
    """'' (none), 'trivial' (TrivialAugmentWide) or timm-style 'rand-m9-n2' (RandAugment magnitude 9, 2 ops)."""
    aug_group: int = 1
    """Images that share one RandAugment/TrivialAugment draw (1 = per image; >1 trades augmentation diversity for speed)."""
    random_erasing: float = 0.0
    """Random erasing probability (after normalisation)."""
    color_jitter: list = field(default_factory=list)
    """Training colour jitter [brightness, contrast, saturation, hue] as torchvision ColorJitter (factors drawn per image, ops in a random order per image, after the flip); empty = off (Animesion: [0.1, 0.1, 0.1, 0.1])."""
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
    """Override the class count (only for datasets without a class table); 0 = from the class table."""
    split_fractions: list = field(default_factory=lambda: [0.7, 0.1, 0.2])
    """Own data (data.name=folder): train/val/test fractions carving a flat <class>/* tree or a CSV list without a split column, per class (see `fgir data prepare --help`)."""
    exclude: str = ""
    """File of image paths (as in the split CSVs, one per line) removed from every split when loading, e.g. the test images with a copy in train that `fgir data check --exclude FILE` writes; empty = none."""
    sampler: str = "uniform"
    """How a training epoch draws images: uniform (a shuffled pass over all), class_balanced (every class equally likely) or sqrt (class probability proportional to sqrt(images of the class)); the last two draw as many images with replacement, seeded by (run.seed, epoch)."""
    longtail_thresholds: list = field(default_factory=lambda: [20, 100])
    """Head/medium/tail buckets of the test report by training images per class [t, h]: tail < t, medium t..h, head > h (Animesion: [20, 100]); [] = no buckets."""


@dataclass
class OptimConfig:
    opt: str = "adamw"
    """Optimizer name for timm's create_optimizer_v2 (adamw, sgd, momentum, lamb, ...)."""
    lr: float = 2e-3
    """Peak learning rate (after warm-up)."""
    weight_decay: float = 0.05
    """Weight decay (not applied to biases, norms and tokens: the timm rule)."""
    momentum: float = 0.9
    """Momentum for sgd/momentum optimizers (ignored by adamw)."""
    layer_decay: float = 0.0
    """Layer-wise lr decay (BEiT / timm param_groups_layer_decay) in (0, 1]; 0 = off. With the backbone's timm group_matcher the last layer group trains at lr, each earlier group at layer_decay times the next (stem lowest); what the backbone does not group (heads, plug-in modules outside its blocks) trains at lr."""
    fused: bool = True
    """Use torch's fused optimizer kernel when the optimizer has one (adam, adamw, sgd/momentum/nesterov, adagrad; CPU and CUDA): the same update in one kernel over all parameters instead of a Python loop (AdamW on resnet18: about 26 -> 5 ms per step on 2 CPU cores). Other optimizers ignore it."""
    batch_size: int = 64
    """Global batch per forward (split over DDP processes); one optimizer step sees batch_size * accum_steps images."""
    epochs: int = 30
    """Training epochs."""
    sched: str = "cosine"
    """cosine, step or constant."""
    warmup_epochs: float = 2.0
    """Linear warm-up length in epochs (fractions allowed)."""
    warmup_steps: int = 0
    """Warm-up length in steps; overrides warmup_epochs when > 0 (reference engine: 500)."""
    warmup_lr: float = 1e-6
    """Learning rate at the start of warm-up."""
    warmup_prefix: bool = False
    """The cosine/step decay spans the steps after the warm-up (timm warmup_prefix; Animesion's warmupCosine) instead of counting from step 0."""
    sched_unit: str = "step"
    """When the schedule moves: step (every optimizer step) or epoch (held for a whole epoch, as timm's per-epoch CosineLRScheduler; CLCA recipe)."""
    cooldown_epochs: int = 0
    """Epochs at min_lr after the cosine (its length is epochs - cooldown_epochs); CLCA recipe: 5 of 50."""
    min_lr: float = 1e-5
    """Floor of the cosine/step schedule."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy (0 = off)."""
    mixup: float = 0.0
    """Mixup alpha (0 = off)."""
    cutmix: float = 0.0
    """CutMix alpha (0 = off)."""
    mix_prob: float = 1.0
    """Probability of applying mixup/CutMix to a batch."""
    clip_grad: float = 0.0
    """Global gradient-norm clip (0 = off)."""
    accum_steps: int = 1
    """Gradient accumulation: batches per optimizer step."""
    amp: str = "none"
    """Mixed precision: none, bf16 or fp16 (fp16 only on CUDA)."""
    ema: bool = False
    """Keep an exponential moving average of the weights (timm ModelEmaV3); validation, test and checkpoints use it."""
    ema_decay: float = 0.9998
    """EMA decay per optimizer step (in (0, 1))."""



@dataclass
class RunConfig:
    output_dir: str = "runs"
    """Parent folder of run folders."""
    name: str = ""
    """Run folder name; empty (also a recipe's name once an override changes data.name or model.name) = <dataset>_<model>[_<task>]_s<seed>; a folder holding another run gets a -2, -3, ... suffix."""
    seed: int = 0
    """Seed of weights init, data order and augmentation (runs are reproducible per seed)."""
    selection: str = "last"
    """Checkpoint policy: last (last epoch) or best_val (best top-1 on the val split; never test)."""
    eval_every: int = 1
    """Validate every N epochs (and always after the last)."""
    progress: bool = True
    """Show tqdm progress bars (only on a terminal); epoch lines are printed either way."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard extra)."""
    threads: int = 0
    """torch.set_num_threads (0 = leave as is)."""
    max_steps_per_epoch: int = 0
    """Truncate epochs (smoke tests and budgets; 0 = full epochs)."""
    time_budget_s: float = 0.0
    """Stop after the epoch in which this wall-clock budget ends (0 = off)."""
    channels_last: str = "auto"
    """Channels-last memory format for training: auto (on for a plain CNN: classification task, no plug-ins, mostly Conv2d weights; resnet18 at 64 px trains about 4 % faster on 2 CPU cores, more on GPUs with AMP), true or false."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""



@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    task: TaskConfig = field(default_factory=lambda: registered_config("task", "classification", "task.name")(),
                             metadata={"registry": "task"})
    """What is trained: {name: classification | cal | tgda | ..., <that task's fields>} (`fgir list tasks`)."""
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> Config:
        _check_choice("run.selection", self.run.selection, ["last", "best_val"])
        if self.data.eval_resize_ratio and not 1.0 <= self.data.eval_resize_ratio <= 4.0:
            raise ConfigError(f"data.eval_resize_ratio must be 0 (= data.resize_ratio) or in [1, 4], got "
                              f"{self.data.eval_resize_ratio}.")
        self.run.channels_last = str(self.run.channels_last).lower()  # a YAML bool arrives as 'True'/'False'
        _check_choice("run.channels_last", self.run.channels_last, ["auto", "true", "false"])
        name = self.run.name
        if name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
            raise ConfigError(f"run.name={name!r} must be a plain folder name (no path separators, not '.' or "
                              "'..', no surrounding spaces); put the parent folder in run.output_dir.")
        _check_choice("optim.amp", self.optim.amp, ["none", "bf16", "fp16"])
        _check_choice("optim.sched", self.optim.sched, ["cosine", "step", "constant"])
        _check_choice("optim.sched_unit", self.optim.sched_unit, ["step", "epoch"])
        if self.optim.epochs <= 0:
            raise ConfigError(f"optim.epochs must be > 0, got {self.optim.epochs}.")
        if self.optim.cooldown_epochs >= self.optim.epochs:
            raise ConfigError(f"optim.cooldown_epochs={self.optim.cooldown_epochs} must be < optim.epochs="
                              f"{self.optim.epochs}.")
        _check_choice("data.train_crop", self.data.train_crop, ["random", "rrc"])
        d = self.data
        if self.run.selection == "best_val" and not d.val_split:
            raise ConfigError("run.selection=best_val needs data.val_split (a split other than test).")
        if d.val_split and d.val_split == d.test_split:
            raise ConfigError(f"data.val_split='{d.val_split}' equals data.test_split: model "
                              "selection must never see the test split. Use 'val' or leave it empty.")
        if d.test_split and d.train_split == d.test_split:
            raise ConfigError(f"data.train_split='{d.train_split}' equals data.test_split: the test split must be "
                              "held out. Train on train or train_val.")
        if self.run.selection == "best_val" and (d.val_split == d.train_split or
                                                 (d.train_split == "train_val" and d.val_split in ("train", "val"))):
            raise ConfigError(f"run.selection=best_val selects on data.val_split='{d.val_split}', which is part of "
                              f"data.train_split='{d.train_split}': selecting on images the model trains on picks "
                              "the most over-fitted epoch. Train on 'train' to select on 'val', or use "
                              "run.selection=last.")
        for key, val in [("optim.lr", self.optim.lr), ("optim.batch_size", self.optim.batch_size),
                         ("optim.epochs", self.optim.epochs), ("data.img_size", self.data.img_size),
                         ("optim.accum_steps", self.optim.accum_steps), ("run.eval_every", self.run.eval_every)]:
            if val <= 0:
                raise ConfigError(f"{key} must be > 0, got {val}.")
        if not 0 <= self.model.norm_eps < 0.1:
            raise ConfigError(f"model.norm_eps must be 0 (the architecture's own) or a small positive eps, got "
                              f"{self.model.norm_eps}.")
        if self.model.img_size < 0:
            raise ConfigError(f"model.img_size must be >= 0 (0 = data.img_size), got {self.model.img_size}.")
        d.split_fractions = _check_split_fractions(d.split_fractions)
        d.longtail_thresholds = _check_longtail_thresholds(d.longtail_thresholds)
        if d.aug_group < 1:
            raise ConfigError(f"data.aug_group must be >= 1 (1 = one augmentation draw per image), got {d.aug_group}.")
        if not 0 <= self.optim.label_smoothing < 1:
            raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {self.optim.label_smoothing}.")
        if not self.model.trainable:
            raise ConfigError("model.trainable is empty; use [all] to train everything or [none] to train nothing.")
        for t in self.model.trainable:
            if not isinstance(t, str) or not t.strip("!"):
                raise ConfigError(f"model.trainable entries are presets or glob patterns (strings), got {t!r}.")
        _check_rules(self)
        _check_mean_std(d)
        d.color_jitter = _check_color_jitter(d.color_jitter)
        if self.optim.warmup_lr > self.optim.lr or self.optim.min_lr > self.optim.lr:
            raise ConfigError(f"optim.warmup_lr={self.optim.warmup_lr:g} and optim.min_lr={self.optim.min_lr:g} must "
                              f"not exceed optim.lr={self.optim.lr:g}.")
        for i, p in enumerate(self.model.plugins):
            p.validate(self, f"model.plugins[{i}]")
        self.task.validate(self)
        return self


_INF = float("inf")
FIELD_RULES: dict[str, tuple] = {
    # key: ("range", lo, hi, lo_inclusive, hi_inclusive) | ("choice", [...]) | ("pattern", regex, what)
    #      | ("checked", where the value is checked)
    "model.name": ("pattern", r"\S+", "a registered fgir or timm model name"),
    "model.checkpoint": ("checked", "the file is read when the model is built (missing: one-line error)"),
    "model.img_size": ("range", 0, _INF, True, False),
    "model.norm_eps": ("range", 0, 0.1, True, False),
    "model.drop_rate": ("range", 0, 1, True, False),
    "model.drop_path_rate": ("range", 0, 1, True, False),
    "model.save": ("choice", ["full", "trainable"]),
    "model.kwargs": ("checked", "the builder's signature when the model is built (unknown key: one-line error)"),
    "model.plugins": ("checked", "each entry's own config dataclass and validate()"),
    "model.trainable": ("checked", "presets or glob patterns, Config.validate and apply_trainable"),
    "model.inference": ("pattern", r"[A-Za-z0-9_\-]+(\+flip)?", "default, flip, a variant name a plug-in adds, or <variant>+flip"),
    "data.name": ("checked", "the dataset registry (close matches suggested)"),
    "data.root": ("checked", "when the dataset resolves (missing or unusable root: one-line error)"),
    "data.train_split": ("pattern", r"[A-Za-z0-9_\-]+", "a split name (train, train_val, ...)"),
    "data.val_split": ("pattern", r"[A-Za-z0-9_\-]*", "a split name or empty"),
    "data.test_split": ("pattern", r"[A-Za-z0-9_\-]*", "a split name or empty"),
    "data.img_size": ("range", 1, 8192, True, True),
    "data.resize_ratio": ("range", 1.0, 4.0, True, True),
    "data.eval_resize_ratio": ("checked", "0 (= data.resize_ratio) or a number in [1, 4] (Config.validate)"),
    "data.train_crop": ("choice", ["random", "rrc"]),
    "data.auto_augment": ("pattern", r"|trivial|ta|trivialaugment|augmix|rand(-(m\d+|n\d+|mstd[\d.]+|inc[01]))*",
                          "'', 'trivial', 'augmix' or timm-style 'rand-m9-n2'"),
    "data.aug_group": ("range", 1, _INF, True, False),
    "data.random_erasing": ("range", 0, 1, True, True),
    "data.color_jitter": ("checked", "empty or four numbers >= 0, hue <= 0.5 (Config.validate)"),
    "data.mean": ("checked", "empty or three numbers (Config.validate)"),
    "data.std": ("checked", "empty or three numbers > 0 (Config.validate)"),
    "data.cache_dir": ("checked", "created when the cache is written"),
    "data.num_workers": ("range", 0, 256, True, True),
    "data.num_classes": ("range", 0, _INF, True, False),
    "data.split_fractions": ("checked", "three fractions summing to 1 (Config.validate)"),
    "data.exclude": ("checked", "the file is read when the splits load (missing: one-line error)"),
    "data.sampler": ("choice", ["uniform", "class_balanced", "sqrt"]),
    "data.longtail_thresholds": ("checked", "[] or two integers 0 < t <= h (Config.validate)"),
    "optim.opt": ("pattern", r"[A-Za-z0-9_\-]+", "a timm optimizer name (checked when it is built)"),
    "optim.lr": ("range", 0, _INF, False, False),
    "optim.weight_decay": ("range", 0, _INF, True, False),
    "optim.layer_decay": ("range", 0, 1, True, True),
    "optim.momentum": ("range", 0, 1, True, False),
    "optim.batch_size": ("range", 1, _INF, True, False),
    "optim.epochs": ("range", 1, _INF, True, False),
    "optim.sched": ("choice", ["cosine", "step", "constant"]),
    "optim.warmup_epochs": ("range", 0, _INF, True, False),
    "optim.warmup_steps": ("range", 0, _INF, True, False),
    "optim.warmup_lr": ("range", 0, _INF, True, False),
    "optim.sched_unit": ("choice", ["step", "epoch"]),
    "optim.cooldown_epochs": ("range", 0, _INF, True, False),
    "optim.min_lr": ("range", 0, _INF, True, False),
    "optim.label_smoothing": ("range", 0, 1, True, False),
    "optim.mixup": ("range", 0, _INF, True, False),
    "optim.cutmix": ("range", 0, _INF, True, False),
    "optim.mix_prob": ("range", 0, 1, True, True),
    "optim.clip_grad": ("range", 0, _INF, True, False),
    "optim.accum_steps": ("range", 1, _INF, True, False),
    "optim.amp": ("choice", ["none", "bf16", "fp16"]),
    "optim.ema_decay": ("range", 0, 1, False, False),
    "run.output_dir": ("pattern", r".+", "a folder"),
    "run.name": ("checked", "a plain folder name (Config.validate)"),
    "run.seed": ("range", 0, 2**32 - 1, True, True),
    "run.selection": ("choice", ["last", "best_val"]),
    "run.channels_last": ("checked", "auto, true or false (Config.validate)"),
    "run.eval_every": ("range", 1, _INF, True, False),
    "run.threads": ("range", 0, 1024, True, True),
    "run.max_steps_per_epoch": ("range", 0, _INF, True, False),
    "run.time_budget_s": ("range", 0, _INF, True, False),
    "run.device": ("pattern", r"auto|cpu|cuda|cuda:\d+|mps", "auto, cpu, cuda or cuda:N"),
}
"""What every core config field accepts, checked when the config loads (booleans are checked by
their type; plug-in and task fields by their own dataclass's ``validate``). A test enumerates the
schema: every non-boolean field has a rule, and an invalid value of each is refused naming the key."""


def _check_rules(cfg: Config) -> None:
    import math
    import re

    for key, rule in FIELD_RULES.items():
        section, name = key.split(".", 1)
        value = getattr(getattr(cfg, section), name)
        kind = rule[0]
        if kind == "range":
            lo, hi, lo_in, hi_in = rule[1:]
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi))
            if not ok:
                lb, hb = "[" if lo_in else "(", "]" if hi_in else ")"
                hs = "inf" if hi == _INF else f"{hi:g}"
                raise ConfigError(f"{key}={value!r} is out of range; expected a value in {lb}{lo:g}, {hs}{hb}.")
        elif kind == "choice":
            _check_choice(key, value, rule[1])
        elif kind == "pattern" and not re.fullmatch(rule[1], str(value)):
            raise ConfigError(f"{key}={value!r} is not allowed; expected {rule[2]}.")


def _check_mean_std(d: DataConfig) -> None:
    for key, vals, positive in (("data.mean", d.mean, False), ("data.std", d.std, True)):
        if not vals:
            continue
        try:
            nums = [float(v) for v in vals]
        except (TypeError, ValueError):
            nums = []
        if len(nums) != 3 or (positive and min(nums) <= 0) or any(n != n for n in nums):
            raise ConfigError(f"{key}={vals!r} is not allowed; expected three numbers (R, G, B)"
                              + (" > 0" if positive else "") + ", or [] for the model's own.")
        setattr(d, key.split(".")[1], nums)
    if bool(d.mean) != bool(d.std):
        raise ConfigError("data.mean and data.std go together: set both (three numbers each) or neither.")


def _check_color_jitter(value: Any) -> list[float]:
    """``data.color_jitter``: [] or four numbers [brightness, contrast, saturation, hue] >= 0, hue <= 0.5."""
    if not value:
        return []
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 4 or min(vals) < 0 or vals[3] > 0.5 or any(v != v for v in vals):
        raise ConfigError(f"data.color_jitter={value!r} is not allowed; expected [] (off) or four numbers "
                          "[brightness, contrast, saturation, hue] >= 0 with hue <= 0.5, e.g. [0.1, 0.1, 0.1, 0.1].")
    return vals


def _check_longtail_thresholds(value: Any) -> list[int]:
    """``data.longtail_thresholds``: [] or [t, h], integers with 0 < t <= h (CLI lists arrive as strings)."""
    if not value:
        return []
    try:
        vals = [int(v) for v in value]
        ok = len(vals) == 2 and 0 < vals[0] <= vals[1] and all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"data.longtail_thresholds={value!r} is not allowed; expected [] (no buckets) or two "
                          "integers [t, h] with 0 < t <= h: tail < t, medium t..h, head > h training images per "
                          "class, e.g. [20, 100].")
    return vals


def _check_split_fractions(value: Any) -> list[float]:
    """``data.split_fractions``: three numbers (CLI lists arrive as strings) [train > 0, val >= 0, test > 0], sum 1."""
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 3 or vals[0] <= 0 or vals[1] < 0 or vals[2] <= 0 or abs(sum(vals) - 1) > 1e-6:
        raise ConfigError(f"data.split_fractions={value!r} is not allowed; expected [train, val, test] with "
                          "train > 0, val >= 0, test > 0 summing to 1, e.g. [0.7, 0.1, 0.2].")
    return vals


def check_range_pair(key: str, value: Any, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """``[a, b]`` numbers with ``lo <= a <= b <= hi`` (CLI lists arrive as strings); ConfigError otherwise."""
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key} must be [lo, hi] numbers, got {value!r}.") from e
    if len(vals) != 2 or not lo <= vals[0] <= vals[1] <= hi:
        raise ConfigError(f"{key} must be [lo, hi] with {lo:g} <= lo <= hi <= {hi:g}, got {value!r}.")
    return vals


def check_choice(key: str, value: Any, allowed: list[str]) -> None:
    """ConfigError naming ``key`` when ``value`` is not one of ``allowed`` (with close matches)."""
    _check_choice(key, value, allowed)


def _check_choice(key: str, value: Any, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is not allowed; expected one of {allowed}.{suggest(str(value), allowed)}")


# ----------------------------------------------------------------------------- mechanics
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings (the string literal under each field) for CLI help, inherited ones included."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
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
        lists = [a for a in args if a is list or typing.get_origin(a) is list]
        # `float | list` (e.g. a keep rate or one per location): a list value takes the list member
        if lists and isinstance(value, (list, tuple)):
            tp = lists[0]
        elif lists and args[0] not in lists:
            try:
                return _coerce(key, value, args[0], default)
            except ConfigError:
                what = {float: "a number", int: "an integer", bool: "true/false"}.get(args[0], str(args[0]))
                raise ConfigError(f"{key} expects {what} or a list, got {value!r}.") from None
        else:
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
        elem = (typing.get_args(tp) or [None])[0]
        if elem is None and isinstance(default, list) and default and all(type(v) is int for v in default):
            elem = int  # an untyped list holding integers (block indices): its entries must be integers too
        if elem is int:
            return [_coerce(f"{key}[{i}]", v, int, None) for i, v in enumerate(value)]
        return list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} expects a mapping, got {value!r}.")
        return dict(value)
    return value


def _registry(kind: str):
    from .registry import PLUGINS, TASKS

    return {"plugin": PLUGINS, "task": TASKS}[kind]


def registered_config(kind: str, name: Any, key: str) -> type:
    """The config dataclass registered for plug-in / task ``name``; ConfigError naming ``key`` otherwise."""
    reg = _registry(kind)
    if not isinstance(name, str) or name not in reg:
        raise ConfigError(f"{key}={name!r} is not a registered {kind}.{suggest(str(name), reg.names())} "
                          f"Registered: {', '.join(reg.names())} (`fgir list {kind}s`).")
    return reg.meta(name)["config"]


def _resolve_task(value: Any, cur: TaskConfig, key: str) -> TaskConfig:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} expects a mapping like {{name: tgda, ...}}, got {value!r}.")
    name = value.get("name", cur.name)
    cls = registered_config("task", name, f"{key}.name")
    base = cur if type(cur) is cls else cls()
    base.name = name
    return from_dict(cls, {k: v for k, v in value.items() if k != "name"}, f"{key}.", base,
                     context=f" (fields of task '{name}'; task.name picks the task)")


def _resolve_plugins(value: Any, cur: list, key: str) -> list:
    entries = [dataclasses.asdict(e) if dataclasses.is_dataclass(e) else e for e in cur]
    if isinstance(value, dict) and all(str(k).isdigit() for k in value):  # model.plugins.0.field=... overrides
        for k, sub in value.items():
            i = int(k)
            if i >= len(entries):
                raise ConfigError(f"{key}.{i}: there is no entry {i} ({key} has {len(entries)} entries).")
            entries[i] = _deep_merge(entries[i], sub) if isinstance(sub, dict) else sub
        value = entries
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} expects a list of {{name: <plug-in>, ...}} entries, got {value!r}.")
    out = []
    for i, e in enumerate(value):
        where = f"{key}[{i}]"
        if dataclasses.is_dataclass(e):
            e = dataclasses.asdict(e)
        if isinstance(e, str):
            e = {"name": e}
        if not isinstance(e, dict) or "name" not in e:
            raise ConfigError(f"{where} must be a mapping with a 'name' (a registered plug-in), got {e!r}.")
        cls = registered_config("plugin", e["name"], f"{where}.name")
        out.append(from_dict(cls, {k: v for k, v in e.items() if k != "name"}, f"{where}.", cls(name=e["name"]),
                             context=f" (fields of plug-in '{e['name']}')"))
    return out


def from_dict(cls: type, data: dict, prefix: str = "", base: Any = None, context: str = "") -> Any:
    """Build dataclass ``cls`` from ``data`` on top of ``base`` (or defaults); unknown keys raise.

    Fields with ``metadata={"registry": "task"}`` hold the registered task's own config dataclass
    (chosen by its ``name``); ``metadata={"registry": "plugin"}`` fields hold a list of plug-in
    config dataclasses, one per ``{name: ..., ...}`` entry.
    """
    obj = base if base is not None else cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} expects a mapping, got {data!r}.")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"Unknown config key '{full}'{context}.{suggest(str(key), names)} "
                              f"Valid keys under '{prefix.rstrip('.') or '<root>'}': {', '.join(names)}.")
        tp = hints[key]
        cur = getattr(obj, key)
        kind = fields[key].metadata.get("registry")
        if kind == "task":
            setattr(obj, key, _resolve_task(value, cur, full))
        elif kind == "plugin":
            setattr(obj, key, _resolve_plugins(value, cur, full))
        elif dataclasses.is_dataclass(tp):
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
        cur = out.get(k)
        if isinstance(v, dict) and isinstance(cur, dict):
            out[k] = _deep_merge(cur, v)
        elif isinstance(v, dict) and isinstance(cur, list) and v and all(str(i).isdigit() for i in v):
            items = list(cur)  # `model.plugins.0.num_maps=8`: edit one entry of a list
            for i, sub in v.items():
                i = int(i)
                if i >= len(items):
                    raise ConfigError(f"{k}.{i}: there is no entry {i} ({k} has {len(items)} entries).")
                items[i] = _deep_merge(items[i], sub) if isinstance(sub, dict) and isinstance(items[i], dict) else sub
            out[k] = items
        else:
            out[k] = v
    return out


def config_sources(files: list[str] | None = None, overrides: list[str] | None = None) -> dict[str, str]:
    """Where each dotted key was last set: the YAML file (``_base_`` files as their includer) or
    ``override``; keys absent here come from the defaults."""
    def flat(d: dict, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for k, v in d.items():
            if isinstance(v, dict) and v and k != "kwargs":
                keys += flat(v, f"{prefix}{k}.")
            elif isinstance(v, list) and k == "plugins":
                keys.append(f"{prefix}{k}")
                for i, entry in enumerate(v):
                    keys += flat(entry, f"{prefix}{k}.{i}.") if isinstance(entry, dict) else []
            else:
                keys.append(f"{prefix}{k}")
        return keys

    src: dict[str, str] = {}
    for f in files or []:
        for k in flat(migrate_legacy(read_yaml(f))):
            src[k] = str(f)
    for k in flat(parse_overrides(overrides or [])):
        src[k] = "override"
    return src


def explain(cfg: Config | None = None, sources: dict[str, str] | None = None) -> list[str]:
    """``fgir config --explain``: every key with its resolved value (``cfg``, default: the defaults),
    where it came from (a file, an override, or ``default`` with the default shown next to a changed
    value) and its docstring; then the fields of every registered task and plug-in."""
    from .registry import PLUGINS, TASKS

    cfg = cfg if cfg is not None else Config()
    sources = sources or {}
    lines: list[str] = []

    def origin(key: str) -> str:
        return sources.get(key, "")

    def walk(obj: Any, prefix: str, skip: tuple = (), show_source: bool = True) -> None:
        cls = type(obj)
        docs, hints, fresh = field_docs(cls), _hints(cls), cls()
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(hints[f.name]) and not f.metadata.get("registry"):
                walk(value, f"{prefix}{f.name}.", show_source=show_source)
                continue
            key = f"{prefix}{f.name}"
            if f.metadata.get("registry") == "task":
                lines.append(f"{key}.name = {value.name!r}" + _source_note(origin(f"{key}.name"), show_source))
                lines.append(f"    {docs.get(f.name, '')}".rstrip())
                walk(value, f"{key}.", skip=("name",), show_source=show_source)
                continue
            default = getattr(fresh, f.name)
            if f.metadata.get("registry") == "plugin":
                shown = [p.name for p in value]
                lines.append(f"{key} = {shown!r}" + _source_note(origin(key), show_source))
                lines.append(f"    {docs.get(f.name, '')}".rstrip())
                for i, entry in enumerate(value):
                    lines.append(f"{key}.{i}.name = {entry.name!r}" + _source_note(origin(f"{key}.{i}.name"), show_source))
                    walk(entry, f"{key}.{i}.", skip=("name",), show_source=show_source)
                continue
            note = _source_note(origin(key), show_source)
            if note and value != default:
                note += f", default {default!r}"
            lines.append(f"{key} = {value!r}{note}" + (f"\n    {docs[f.name]}" if f.name in docs else ""))

    walk(cfg, "")
    for kind, reg, prefix in (("task", TASKS, "task."), ("plug-in", PLUGINS, "model.plugins[i].")):
        for name in reg.names():
            cls = reg.meta(name)["config"]
            doc = (cls.__doc__ or "").strip().split("\n")[0]
            lines.append(f"\n# {kind} '{name}'" + (f": {doc}" if doc else ""))
            if kind == "plug-in":
                lines.append(f"{prefix}name = {name!r}")
            walk(cls(), prefix, skip=("name",), show_source=False)
    return lines


def _source_note(src: str, show: bool) -> str:
    if not show:
        return ""
    return f"    # {src}" if src else "    # default"


def undocumented_keys() -> list[str]:
    """Config fields without a docstring (the core sections, every task and every plug-in); a test
    keeps this empty so `--explain` describes every key."""
    from .registry import PLUGINS, TASKS

    missing: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        docs, hints = field_docs(cls), _hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]) and not f.metadata.get("registry"):
                walk(hints[f.name], f"{prefix}{f.name}.")
            elif f.name not in docs and not (f.name == "name" and issubclass(cls, (PluginConfig, TaskConfig))):
                missing.append(f"{prefix}{f.name}")

    walk(Config, "")
    for reg, prefix in ((TASKS, "task."), (PLUGINS, "model.plugins[i].")):
        for n in reg.names():
            walk(reg.meta(n)["config"], f"{prefix}<{n}>.")
    return missing


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
        node: Any = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[:i])
            if isinstance(node, list):  # an earlier override set a list: index into it
                if not part.isdigit() or int(part) >= len(node) or not isinstance(node[int(part)], dict):
                    raise ConfigError(f"Override '{item}': {where} was set to a list of {len(node)} entries "
                                      f"earlier in the overrides; '{part}' is not the index of one of its entries.")
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"Override '{item}': {where} was set to {node!r} earlier in the overrides, "
                                  f"which has no key '{part}'.")
        if isinstance(node, list):
            last = parts[-1]
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"Override '{item}': '{last}' is not an index of the {len(node)}-entry list "
                                  f"set earlier in the overrides.")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[parts[-1]] = value
        else:
            raise ConfigError(f"Override '{item}': {'.'.join(parts[:-1])} was set to {node!r} earlier in the "
                              f"overrides, which has no key '{parts[-1]}'.")
    return out


def migrate_legacy(data: dict) -> dict:
    """Configs of fgir <= 0.1 (checkpoint schema 1) to the current layout; see :mod:`fgir.legacy`."""
    from .legacy import migrate_config

    return migrate_config(data)


def load_config(files: list[str] | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Config:
    """Compose defaults < YAML files < dict < dot-list overrides into a validated ``Config``."""
    merged: dict = {}
    for f in files or []:
        merged = _deep_merge(merged, read_yaml(f))
    if data:
        merged = _deep_merge(merged, data)
    ov = parse_overrides(overrides or [])
    before = {s: merged.get(s).get("name") if isinstance(merged.get(s), dict) else None for s in ("data", "model")}
    merged = _deep_merge(merged, ov)
    # A recipe's run.name describes the recipe's dataset and model; once an override changes
    # either (and names no run), the run is named after what it trains (train.run_name).
    if (any(isinstance(ov.get(s), dict) and "name" in ov[s] and ov[s]["name"] != before[s] for s in before)
            and not (isinstance(ov.get("run"), dict) and "name" in ov["run"])
            and isinstance(merged.get("run"), dict) and merged["run"].get("name")):
        merged["run"] = {**merged["run"], "name": ""}
    return from_dict(Config, migrate_legacy(merged)).validate()


def config_from_dict(data: dict) -> Config:
    return from_dict(Config, migrate_legacy(data)).validate()


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
