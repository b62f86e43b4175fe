"""The one task-agnostic training loop."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
import weakref
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..benchmarks.flops import count_macs
from ..config import Config, ConfigError, save_config
from ..data.datasets import ManifestDataset
from ..data.loader import ArrayLoader, DecodeLoader
from ..data.transforms import BatchTransform, eval_resize_ratio, stored_size
from ..models.trainable import format_census, parameter_census
from . import checkpoint as ckpt
from .build import build_model, build_task, normalization  # noqa: F401  (normalization: public re-export)
from .distributed import DistInfo, barrier, init_distributed
from .evaluate import run_inference, write_eval_outputs
from .metrics import longtail_accuracy


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_name(cfg: Config) -> str:
    """``run.name``, or ``<data.name>_<model.name>[_<task.name>]_s<seed>`` (the task when not plain
    classification); :func:`train` adds a ``-2``, ``-3``, ... suffix when the folder holds another run."""
    if cfg.run.name:
        return cfg.run.name
    task = "" if cfg.task.name == "classification" else f"_{cfg.task.name}"
    return f"{cfg.data.name}_{cfg.model.name}{task}_s{cfg.run.seed}"


def skipped_images(loader) -> int:
    """Unreadable images ``loader`` skipped (``data.skip_bad``): dropped from the cache, or met while decoding."""
    keep = getattr(loader, "keep", None)
    if keep is not None:
        return len(loader.ds) - len(keep)
    return len(getattr(loader, "bad", ()))


def make_loader(cfg: Config, ds: ManifestDataset, train: bool, mean, std, info: DistInfo, img_size: int = 0):
    d = cfg.data
    s = img_size or d.img_size
    tf = BatchTransform(s, mean, std, train=train, crop=d.train_crop, hflip=d.hflip,
                        auto_augment=d.auto_augment, aug_group=d.aug_group, random_erasing=d.random_erasing,
                        color_jitter=tuple(d.color_jitter))
    ratio = d.resize_ratio if train else eval_resize_ratio(d)  # evaluation may resize differently (Animesion)
    kw = dict(batch_size=cfg.optim.batch_size if train else max(cfg.optim.batch_size, 64),
              stored=stored_size(s, ratio), shuffle=train, drop_last=train, seed=cfg.run.seed,
              rank=info.rank, world=info.world, sampler=d.sampler if train else "uniform",
              max_steps=cfg.run.max_steps_per_epoch if train else 0)
    if d.cache:
        return ArrayLoader(ds, tf, cache_dir=d.cache_dir, skip_bad=d.skip_bad, progress=_bars(cfg), **kw)
    return DecodeLoader(ds, tf, num_workers=d.num_workers, skip_bad=d.skip_bad, **kw)


def use_channels_last(cfg: Config, task: torch.nn.Module) -> bool:
    """``run.channels_last``: true/false as given; auto = a plain CNN (the ``classification`` task,
    no plug-ins, and at least half of the model's weights in ``Conv2d`` layers)."""
    mode = str(cfg.run.channels_last).lower()
    if mode != "auto":
        return mode == "true"
    if cfg.task.name != "classification" or cfg.model.plugins:
        return False
    params = list(task.model.parameters())
    conv = sum(m.weight.numel() for m in task.model.modules() if isinstance(m, torch.nn.Conv2d))
    return conv * 2 >= sum(p.numel() for p in params) > 0


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor its parameter's memory layout.

    ``Optimizer.load_state_dict`` restores state tensors contiguous, while a run that trained
    with channels-last weights created them channels-last. torch's fused Adam/AdamW kernels
    (torch 2.14) read a parameter and its state as if they had the same strides, so after such a
    resume they would silently update the wrong elements; the looped kernels are only slower."""
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def build_optimizer(cfg: Config, task: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer over every trainable parameter of the Task (the deployed model and any
    trainable part outside it; frozen ones are skipped). Norm weights, biases and the model's
    ``no_weight_decay()`` names get no weight decay (timm's rule). With ``optim.fused`` the
    optimizers torch has a fused kernel for run it (same update, one kernel instead of a loop)."""
    kw = {}
    if cfg.optim.fused:
        from timm.optim import get_optimizer_class

        try:
            cls = get_optimizer_class(cfg.optim.opt, bind_defaults=False)
        except (ValueError, KeyError, AssertionError):
            cls = None  # an unknown name: create_optimizer_v2 reports it below
        if cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.Adagrad):
            kw["fused"] = True
    if cfg.optim.layer_decay:
        if task.group_matcher() is None:
            raise ConfigError(f"optim.layer_decay={cfg.optim.layer_decay}: model '{cfg.model.name}' has no timm "
                              "group_matcher to assign parameters to layers (timm ViTs, ResNets, ConvNeXts ... have "
                              "one); leave optim.layer_decay at 0.")
        kw["layer_decay"] = cfg.optim.layer_decay
    return create_optimizer_v2(task, opt=cfg.optim.opt, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                               momentum=cfg.optim.momentum, **kw)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's lr (param group 0 without its layer-decay ``lr_scale``)."""
    g = optimizer.param_groups[0]
    return g["lr"] / (g.get("lr_scale") or 1.0)


class EpochScheduler:
    """A timm scheduler stepped per epoch (``t_in_epochs=True``) behind the loop's per-step
    ``step_update(num_updates)`` call: the epoch is ``num_updates // steps_per_epoch``."""

    def __init__(self, scheduler, steps_per_epoch: int):
        self.scheduler, self.steps_per_epoch = scheduler, max(1, steps_per_epoch)

    def step_update(self, num_updates: int, metric=None) -> None:
        if num_updates % self.steps_per_epoch == 0:
            self.scheduler.step(num_updates // self.steps_per_epoch)

    def step(self, epoch: int, metric=None) -> None:
        self.scheduler.step(epoch)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def build_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    o = cfg.optim
    if o.sched_unit == "epoch":
        if o.sched != "cosine" or o.warmup_steps > 0:
            raise ValueError("optim.sched_unit=epoch supports sched=cosine with warmup_epochs (not warmup_steps).")
        warm_e = int(round(o.warmup_epochs))
        length = o.epochs - o.cooldown_epochs
        sched = CosineLRScheduler(optimizer, t_initial=max(1, length - warm_e) if o.warmup_prefix else length,
                                  lr_min=o.min_lr, warmup_t=warm_e, warmup_lr_init=o.warmup_lr,
                                  warmup_prefix=o.warmup_prefix, t_in_epochs=True)
        return EpochScheduler(sched, steps_per_epoch)
    total = (o.epochs - o.cooldown_epochs) * steps_per_epoch
    warm = o.warmup_steps if o.warmup_steps > 0 else int(round(o.warmup_epochs * steps_per_epoch))
    if o.sched == "cosine":
        # warmup_prefix: the cosine runs over the steps after the warm-up (its length shrinks by it)
        return CosineLRScheduler(optimizer, t_initial=max(1, total - warm) if o.warmup_prefix else total,
                                 lr_min=o.min_lr, warmup_t=warm, warmup_lr_init=o.warmup_lr,
                                 warmup_prefix=o.warmup_prefix, t_in_epochs=False)
    decay = 0.1 if o.sched == "step" else 1.0
    return StepLRScheduler(optimizer, decay_t=max(1, total // 3), decay_rate=decay, warmup_t=warm,
                           warmup_lr_init=o.warmup_lr, warmup_prefix=o.warmup_prefix, t_in_epochs=False)


def _autocast(cfg: Config, device: torch.device):
    if cfg.optim.amp == "none":
        return nullcontext()
    if cfg.optim.amp == "fp16" and device.type != "cuda":
        raise ValueError("optim.amp=fp16 needs a CUDA device; use bf16 on CPU or none.")
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.optim.amp == "bf16" else torch.float16)


class _Logger:
    """metrics.jsonl + metrics.csv (+ TensorBoard). Every row has the same keys (values not measured
    in an epoch, e.g. val_* with run.eval_every > 1, are null / empty), so CSV columns never shift."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled, self.run_dir = enabled, run_dir
        self.tb = None
        self.plot_warned = False
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                print("run.tensorboard=true but tensorboard is not installed (pip install 'fgir[tensorboard]').")

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with (self.run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row), extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and v is not None and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])

    def plot_curves(self) -> None:
        """Redraw curves.png from metrics.jsonl; a failure warns once and never stops training."""
        if not self.enabled:
            return
        try:
            from ..report.plots import plot_training_curves

            plot_training_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
        except Exception as e:  # plotting is a convenience: any failure is reported, training goes on
            if not self.plot_warned:
                self.plot_warned = True
                print(f"warning: curves.png not drawn ({type(e).__name__}: {e}); training goes on.", flush=True)


def _log_rows(p: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a damaged line (a killed write, an edit) is dropped with a warning."""
    rows = []
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = None
            print(f"fgir: warning: {p}:{n} is not a JSON row; dropped from the log", file=sys.stderr)
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _truncate_logs(run_dir: Path, epoch: int) -> None:
    """On resume, drop log rows of epochs after the checkpoint (they will be re-run)."""
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return
    rows = _log_rows(p)
    rows = [r for r in rows if r.get("epoch", 0) <= epoch]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = run_dir / "metrics.csv"
    if c.exists():
        c.unlink()
        if rows:
            with c.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]), extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)


def _check_selection_overlap(cfg: Config, train_ds: ManifestDataset, val_ds: ManifestDataset | None) -> None:
    """best_val must select on images the model does not train on (any split names)."""
    if cfg.run.selection != "best_val" or val_ds is None:
        return
    shared = {r.dir for r in train_ds.rows} & {r.dir for r in val_ds.rows}
    if shared:
        raise ValueError(f"run.selection=best_val: {len(shared)} images of data.val_split='{cfg.data.val_split}' "
                         f"are also in data.train_split='{cfg.data.train_split}' (e.g. {sorted(shared)[0]}); "
                         "selecting on training images picks the most over-fitted epoch. Use disjoint splits "
                         "or run.selection=last.")


_RUN_FILES = ("config.yaml", "last.safetensors", "final.json")


def holds_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run: it has config.yaml, metrics.*, last.safetensors or final.json."""
    p = Path(folder)
    return p.is_dir() and (any((p / n).exists() for n in _RUN_FILES) or any(p.glob("metrics.*")))


def free_run_dir(out_root: str | Path, name: str) -> Path:
    """``out_root/name``, or the first of ``name-2``, ``name-3``, ... that holds no run."""
    path, k = Path(out_root) / name, 2
    while holds_run(path):
        path, k = Path(out_root) / f"{name}-{k}", k + 1
    return path


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _bars(cfg: Config) -> bool:
    """tqdm bars only when asked for and stderr (tqdm's stream) is a terminal: in a log file or a
    pipe every ``\\r`` frame would stay."""
    return bool(cfg.run.progress) and _isatty(sys.stderr)


def _finished_result(run_dir: Path, cfg: Config) -> dict | None:
    """final.json of a finished run (every epoch done, or its time budget spent), else None."""
    final, last = run_dir / "final.json", run_dir / "last.safetensors"
    if not (final.is_file() and last.is_file()):
        return None
    try:
        epoch = int(ckpt.read_meta(last)["epoch"])
        res = json.loads(final.read_text())
    except (ckpt.CheckpointError, KeyError, ValueError):
        return None
    budget = cfg.run.time_budget_s
    if epoch >= cfg.optim.epochs or (budget and float(res.get("train_time_s") or 0.0) >= budget):
        return res
    return None


def _logged_time(run_dir: Path, epoch: int) -> float:
    """``time_s`` of the last metrics row up to ``epoch`` (runs saved before the training state kept it)."""
    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return 0.0
    rows = _log_rows(p)
    times = [r["time_s"] for r in rows if r.get("epoch", 0) <= epoch and isinstance(r.get("time_s"), (int, float))]
    return float(times[-1]) if times else 0.0


class RunLock:
    """One run, one writer: an exclusive ``flock`` on ``<run>/.lock`` for as long as this object
    lives. A second process training (or resuming) the same folder fails at once; the lock goes
    with its process, so a killed run leaves nothing stale behind."""

    _held: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
    """Locks this process holds, by path: a train() that ended with an exception may still hold one
    until its frame is collected; a later train() of the same run in this process takes it over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        key = str(self.path.resolve())
        prev = RunLock._held.pop(key, None)
        if prev is not None:
            prev.release()
        self._fh = open(self.path, "a+")  # noqa: SIM115  (closed by release / on collection)
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock (Windows): no lock, as before
            pass
        except OSError as e:
            self._fh.close()
            raise RuntimeError(f"{run_dir} is being written by another fgir process (lock {self.path}); "
                               "wait for it, or train into another run.name.") from e
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"{os.getpid()}\n")
        self._fh.flush()
        RunLock._held[key] = self

    def release(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __del__(self) -> None:
        self.release()


def _open_run_dir(cfg: Config, info: DistInfo, resume_dir: Path | None, overwrite: bool) -> Path:
    """Create (or for a resume, keep) the run folder; the main process decides, the others follow."""
    if resume_dir is not None:
        return resume_dir
    run_dir = None
    if info.is_main:
        base = Path(cfg.run.output_dir) / run_name(cfg)
        run_dir = base
        if holds_run(base) and overwrite:
            print(f"Replacing the run in {base} (--overwrite).", flush=True)
            shutil.rmtree(base)
        elif holds_run(base):
            run_dir = free_run_dir(cfg.run.output_dir, run_name(cfg))
            print(f"{base} holds another run; this one goes to {run_dir} (--overwrite replaces {base.name}, "
                  f"--resume {base} continues it).", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
    if info.enabled:
        box = [str(run_dir) if run_dir is not None else ""]
        dist.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    return run_dir


def _macs_text(model: torch.nn.Module, img_size: int) -> str:
    """GMACs of one image through ``model``, or 'n/a (reason)' when the counter cannot trace it."""
    rng = ckpt.rng_state()  # the counter's random input must not shift the run's random streams
    try:
        return f"{count_macs(model, img_size) / 1e9:.4g} GMACs"
    except Exception as e:  # any tracing failure: the header says why, the run goes on
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        return f"GMACs n/a ({type(e).__name__}{': ' + reason if reason else ''})"
    finally:
        ckpt.set_rng_state(rng)


def _start_header(cfg: Config, run_dir: Path, info: DistInfo, start: str, splits: dict, task, census: dict) -> str:
    dev = str(info.device)
    if info.device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(info.device)})"
    if info.enabled:
        dev += f", {info.world} processes"
    ds = next(iter(splits.values()))
    sizes = ", ".join(f"{role} {len(s):,}" + (f" ({s.split})" if s.split != role else "") for role, s in splits.items())
    dep, io = task.deploy_spec(), task.input_spec()
    m = census["model"]
    plugins = "+".join(p.name for p in cfg.model.plugins)
    size = f"{io.img_size} px" + (f" (model sees {dep.img_size} px)" if dep.img_size != io.img_size else "")
    lines = [f"run      {run_dir}  ({start})",
             f"device   {dev}",
             f"data     {ds.name}: {ds.num_classes} classes, {size}; images {sizes}",
             f"model    {cfg.model.name}{'+' + plugins if plugins else ''} (task {cfg.task.name}): "
             f"{m['total']:,} parameters, {m['trainable']:,} trainable, "
             f"{_macs_text(dep.model, dep.img_size)} at {dep.img_size} px",
             format_census(m, "deployed model parameters")]
    extra = census["task"]["total"] - m["total"]
    if extra:
        lines.append(f"task extras (e.g. a frozen teacher): {extra:,} parameters, "
                     f"{census['task']['trainable'] - m['trainable']:,} trainable")
    return "\n".join(lines)


RESUME_SAFE_KEYS = ("run.progress", "run.threads", "run.device", "run.tensorboard", "run.time_budget_s",
                    "run.output_dir", "run.name", "data.root", "data.cache", "data.cache_dir", "data.num_workers",
                    "run.eval_every", "data.longtail_thresholds")
"""Config keys a resume may change without breaking exactness (where and how, not what, is trained)."""


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_changes(run_dir: Path, cfg: Config) -> dict[str, tuple]:
    """``{key: (saved, now)}`` for the keys where ``cfg`` differs from the run's ``config.yaml``,
    leaving out :data:`RESUME_SAFE_KEYS`."""
    import yaml

    from ..config import config_from_dict, to_dict

    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return {}
    saved = _flat(to_dict(config_from_dict(yaml.safe_load(saved_file.read_text()) or {})))
    now = _flat(to_dict(cfg))
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k) and k not in RESUME_SAFE_KEYS}


def train(cfg: Config, resume: str = "", overwrite: bool = False, resume_override: bool = False) -> dict:
    """Train ``cfg`` end to end; returns the final metrics (and the run folder under 'run_dir').

    A new run goes to ``run.output_dir/run_name(cfg)``; when that folder holds another run
    (:func:`holds_run`) it goes to the first free ``<name>-2``, ``<name>-3``, ... instead, or with
    ``overwrite=True`` replaces it. ``resume`` (a run folder or its checkpoint) continues that run in
    its folder; a finished run (every epoch done, final.json present) is not trained again, its
    final.json is returned. Datasets, model, task, loaders and optimizer are built before anything
    is written (or an overwritten run deleted), so a start that fails leaves no folder behind.
    """
    cfg.validate()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues a run folder, overwrite "
                         "replaces one.")
    info = init_distributed(cfg.run.device)
    if cfg.optim.amp == "fp16" and info.device.type != "cuda":
        raise ValueError("optim.amp=fp16 needs a CUDA device; use bf16 on CPU or none.")
    resume_dir = None
    if resume:
        if not Path(resume).exists():
            raise FileNotFoundError(f"resume: {resume} is neither a run folder nor a checkpoint.")
        resume_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        done = _finished_result(resume_dir, cfg)
        ignored = {k: v for k, v in resume_changes(resume_dir, cfg).items() if k != "optim.epochs"} \
            if done is not None and not resume_override else {}
        if ignored:  # nothing trains, so the changes would be silently unused
            listed = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(ignored.items())[:6])
            raise ConfigError(f"--resume {resume_dir}: the run is finished, so the changed key(s) ({listed}) would "
                              "not be used; raise optim.epochs to train on, or start a new run with "
                              f"model.checkpoint={resume_dir}.")
        if done is not None:
            if info.is_main:
                print(f"{resume_dir} is finished ({done.get('epochs', cfg.optim.epochs)} epochs, final.json "
                      "present): nothing to train; returning its final.json. Raise optim.epochs to train on.",
                      flush=True)
            return done
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    d = cfg.data
    train_ds = ManifestDataset.from_config(d, d.train_split)
    val_ds = ManifestDataset.from_config(d, d.val_split) if d.val_split else None
    test_ds = ManifestDataset.from_config(d, d.test_split) if d.test_split else None
    _check_selection_overlap(cfg, train_ds, val_ds)
    splits = {k: v for k, v in [("train", train_ds), ("val", val_ds), ("test", test_ds)] if v is not None}
    num_classes, class_names = train_ds.num_classes, train_ds.class_names
    model = build_model(cfg, num_classes)
    class_counts = torch.bincount(train_ds.labels, minlength=num_classes)
    task = build_task(cfg, model, num_classes, class_names=class_names, class_counts=class_counts).to(info.device)
    io = task.input_spec()
    channels_last = use_channels_last(cfg, task)
    if channels_last:
        task = task.to(memory_format=torch.channels_last)
    census = {"task": parameter_census(task), "model": parameter_census(task.model)}
    from ..benchmarks.cost import ttp_census

    census["ttp"] = ttp_census(task.model, num_classes)
    save_only = ckpt.trainable_spec(cfg, task.model)  # model.save=trainable: what checkpoints keep
    if not census["task"]["trainable"]:
        raise ValueError(f"Nothing to train: model.trainable={cfg.model.trainable} froze every parameter.")
    train_loader = make_loader(cfg, train_ds, True, io.mean, io.std, info)
    val_loader = make_loader(cfg, val_ds, False, io.mean, io.std, info) if val_ds is not None else None
    steps_per_epoch = math.ceil(len(train_loader) / cfg.optim.accum_steps)
    optimizer = build_optimizer(cfg, task)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if cfg.optim.amp == "fp16" else None
    ema = ModelEmaV3(task.model, decay=cfg.optim.ema_decay) if cfg.optim.ema else None
    mixup = None
    if cfg.optim.mixup > 0 or cfg.optim.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.optim.mixup, cutmix_alpha=cfg.optim.cutmix, prob=cfg.optim.mix_prob,
                      label_smoothing=cfg.optim.label_smoothing, num_classes=num_classes)
    ddp = DDP(task) if info.enabled else task
    start_epoch, step, best, prior_s = 0, 0, -1.0, 0.0
    has_state = resume_dir is not None and (Path(resume).is_file() or (resume_dir / "last.safetensors").is_file())
    changes = resume_changes(resume_dir, cfg) if has_state else {}
    breaking = {k: v for k, v in changes.items() if k != "optim.epochs"}  # a new length re-plans the schedule
    if breaking and not resume_override:
        listed = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(breaking.items())[:6])
        raise ConfigError(f"--resume {resume_dir}: the config differs from the run's config.yaml in what is "
                          f"trained ({listed}); an exact resume needs the same config. Pass --resume-override "
                          "to continue with the changes (recorded in resume_history.jsonl; a new optim.epochs "
                          "re-plans the schedule from the current step), or start a new run with "
                          f"model.checkpoint={resume_dir}.")
    if has_state:
        start_epoch, step, best, saved_s = _resume(resume, task, optimizer, scheduler, scaler, ema,
                                                   load_scheduler="optim.epochs" not in changes)
        if changes and info.is_main:
            print(f"resume: continuing with {len(changes)} changed key(s): "
                  + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
                  + ("; the lr schedule is re-planned for the new optim.epochs" if "optim.epochs" in changes else ""),
                  flush=True)
            with open(resume_dir / "resume_history.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"epoch": start_epoch, "step": step, "changed": {k: [a, b] for k, (a, b)
                                                                                    in changes.items()}}) + "\n")
        prior_s = saved_s if saved_s is not None else _logged_time(resume_dir, start_epoch)
    # Everything is built: the run starts, and only now its folder is created (or replaced).
    run_dir = _open_run_dir(cfg, info, resume_dir, overwrite)
    _lock = RunLock(run_dir) if info.is_main else None  # held until train returns
    if info.is_main:
        for stale in run_dir.glob("*.safetensors.tmp*"):  # a killed writer's half-written files (we hold the lock)
            stale.unlink(missing_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "census.json").write_text(json.dumps(census, indent=2))
        if resume_dir is not None:
            _truncate_logs(run_dir, start_epoch)
            if start_epoch < cfg.optim.epochs:
                (run_dir / "final.json").unlink(missing_ok=True)  # it describes a shorter run
        start = (f"resumed at epoch {start_epoch}, step {step}, {prior_s:.0f} s trained" if has_state else
                 "resumed: no checkpoint yet, starting at epoch 1" if resume_dir is not None else "new run")
        print(_start_header(cfg, run_dir, info, start, splits, task, census), flush=True)
    logger = _Logger(run_dir, info.is_main, cfg.run.tensorboard)
    t_start = time.time()

    def trained_s() -> float:  # over every session of this run
        return prior_s + time.time() - t_start

    last_val: dict = {}
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, cfg.optim.epochs + 1):
            seed_everything(cfg.run.seed * 1000 + epoch * 10 + info.rank)
            train_loader.set_epoch(epoch)
            stats = _train_one_epoch(cfg, ddp, task, train_loader, optimizer, scheduler, scaler, ema, mixup,
                                     info, epoch, step, channels_last=channels_last)
            step = stats.pop("step")
            row = {"epoch": epoch, **stats}
            eval_model = ema.module if ema is not None else task.model
            if val_loader is not None:
                row.update({"val_top1": None, "val_loss": None})
                if epoch % cfg.run.eval_every == 0 or epoch == cfg.optim.epochs:
                    acc = run_inference(eval_model, val_loader, num_classes, class_names, info.device,
                                        progress=False, predict_fn=_predict_fn(task, ema))
                    last_val = acc.compute()
                    row.update({"val_top1": last_val["top1"], "val_loss": last_val["nll"]})
            row["time_s"] = round(trained_s(), 2)
            logger.log(row)
            logger.plot_curves()
            if info.is_main:
                meta = _deploy_meta(cfg, task, num_classes, class_names, epoch, step, row, census)
                _save(run_dir, task, eval_model, optimizer, scheduler, scaler, ema, epoch, step, best, meta,
                      time_s=row["time_s"], only=save_only)
                if cfg.run.selection == "best_val" and row.get("val_top1") is not None and last_val["top1"] > best:
                    best = last_val["top1"]
                    ckpt.save_weights(eval_model, run_dir / "best.safetensors", meta, only=save_only)
            barrier(info)
            if info.is_main:
                print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                                 if v is not None), flush=True)
            if cfg.run.time_budget_s and trained_s() > cfg.run.time_budget_s:
                print(f"run.time_budget_s={cfg.run.time_budget_s} reached after epoch {epoch}.")
                break
    except KeyboardInterrupt:
        if info.is_main:
            print(f"\nInterrupted in epoch {epoch}. The last complete checkpoint in {run_dir} is intact; "
                  f"continue with: fgir train --resume {run_dir}")
        if _lock is not None:
            _lock.release()
        raise
    result = {"run_dir": str(run_dir), "epochs": epoch, "train_time_s": round(trained_s(), 2),
              "params": census["model"]["total"], "params_trainable": census["model"]["trainable"]}
    if d.test_split:
        # final_evaluation's bars follow run.progress: off unless stderr is a terminal
        eval_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, progress=_bars(cfg)))
        result.update(final_evaluation(eval_cfg, run_dir, info, io.mean, io.std, num_classes, class_names, task,
                                       ema, class_counts=class_counts))
    if d.skip_bad:  # unreadable images skipped with data.skip_bad, counted per split
        result["skipped_images"] = {d.train_split: skipped_images(train_loader),
                                    **({d.val_split: skipped_images(val_loader)} if val_loader is not None else {}),
                                    **result.pop("_skipped_test", {})}
    if info.is_main:
        (run_dir / "final.json").write_text(json.dumps(result, indent=2))
        try:  # the model card (README.md) is a convenience: a finished run never fails over it
            from ..export.card import write_run_card

            write_run_card(run_dir)
        except Exception as e:  # noqa: BLE001
            import warnings

            warnings.warn(f"model card not written for {run_dir}: {type(e).__name__}: {e}", stacklevel=2)
    if _lock is not None:
        _lock.release()
    return result


def _predict_fn(task, ema):
    """What evaluation calls on a batch: the task's predict (input conversion + inference variant),
    on the EMA copy when EMA is on."""
    if ema is None:
        return task.predict
    return lambda x: task.predict(x, model=ema.module)


def _train_one_epoch(cfg, ddp, task, loader, optimizer, scheduler, scaler, ema, mixup, info, epoch, step,
                     channels_last=False):
    ddp.train()
    accum = cfg.optim.accum_steps
    n_img, loss_sum, correct = 0, 0.0, 0.0
    parts: dict[str, float] = {}  # the task's loss components (loss_ce, loss_kd, loss_center, ...)
    t0 = time.time()
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.optim.epochs}", disable=not (_bars(cfg) and info.is_main),
               leave=False, dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
        if channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            batch["image"], batch["target"] = mixup(batch["image"], batch["target"])
        last_micro = (i + 1) % accum == 0 or i + 1 == len(loader)
        task.set_progress(step, math.ceil(len(loader) / accum) * cfg.optim.epochs)
        sync = ddp.no_sync() if (info.enabled and not last_micro) else nullcontext()
        with sync:
            with _autocast(cfg, info.device):
                out = ddp(batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Loss is {loss.item()} at epoch {epoch}, step {i}; lower optim.lr or "
                                         "enable optim.clip_grad.")
            (scaler.scale(loss / accum) if scaler else loss / accum).backward()
        if last_micro:
            if cfg.optim.clip_grad > 0:
                if scaler:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(task.trainable_parameters(), cfg.optim.clip_grad)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            scheduler.step_update(step)
            if ema is not None:
                ema.update(task.model, step=step)
        b = batch["label"].shape[0]
        n_img += b
        loss_sum += loss.item() * b
        for k, v in out.items():
            if k.startswith("loss_") and isinstance(v, torch.Tensor) and v.numel() == 1:
                parts[k] = parts.get(k, 0.0) + float(v.detach()) * b
        correct += (out["logits"].argmax(-1) == batch["label"]).sum().item()
        bar.set_postfix(loss=f"{loss_sum / n_img:.3f}", lr=f"{base_lr(optimizer):.2e}")
    dt = time.time() - t0
    return {"train_loss": loss_sum / max(n_img, 1), "train_top1": 100.0 * correct / max(n_img, 1),
            **{f"train_{k}": v / max(n_img, 1) for k, v in sorted(parts.items())},
            "lr": base_lr(optimizer), "img_per_s": round(n_img * info.world / max(dt, 1e-9), 2),
            "step": step}


def _save(run_dir, task, eval_model, optimizer, scheduler, scaler, ema, epoch, step, best, meta, time_s=0.0,
          only=None):
    keep = set(only["keys"]) if only is not None else None

    def sd(m):  # model.save=trainable: the state file holds only the trained tensors too
        return {k: v for k, v in m.state_dict().items() if keep is None or k in keep}

    state = {"model": sd(task.model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
             "ema": sd(ema.module) if ema is not None else None, "rng": ckpt.rng_state(),
             "epoch": epoch, "step": step, "best": best, "time_s": float(time_s)}
    state_path = ckpt.save_training_state(run_dir, epoch, state)
    ckpt.save_weights(eval_model, run_dir / "last.safetensors", {**meta, "state_file": state_path.name}, only=only)
    ckpt.prune_states(run_dir, state_path.name)


def _deploy_meta(cfg, task, num_classes, class_names, epoch, step, row, census):
    """Checkpoint metadata of what the Task deploys (``Task.deploy_spec``): inputs are prepared at
    the batch size ``img_size`` (``Task.input_spec``), then resized to ``model_img_size`` and
    normalised with the deployed model's mean/std."""
    dep, io = task.deploy_spec(), task.input_spec()
    return ckpt.checkpoint_meta(cfg, num_classes, class_names, epoch, step, dep.mean, dep.std, row,
                                img_size=io.img_size, model_img_size=dep.img_size,
                                census={"total": census["model"]["total"],
                                        "trainable": census["model"]["trainable"], "ttp": census.get("ttp", {})})


def _resume(resume: str, task, optimizer, scheduler, scaler, ema, load_scheduler: bool = True
            ) -> tuple[int, int, float, float | None]:
    """Load the training state; returns epoch, step, best and the training seconds so far (None for
    states saved before they were kept)."""
    path = ckpt.resolve_checkpoint(Path(resume) / "last.safetensors" if Path(resume).is_dir() else resume)
    meta = ckpt.read_meta(path)
    try:
        state = ckpt.load_training_state(path.parent / meta["state_file"])
    except ckpt.CheckpointError as e:  # damaged newest state: fall back to the one before it
        older = [q for q in ckpt.state_files(path.parent) if q.name < meta["state_file"]]
        if not older:
            raise
        print(f"fgir: {e} Falling back to {older[0].name}.", flush=True)
        state = ckpt.load_training_state(older[0])
    full = not meta.get("adapter_only")  # adapter-only: the backbone came from model.checkpoint
    ckpt.load_weights_into(task.model, state["model"], where=str(path), strict=full)
    optimizer.load_state_dict(state["optimizer"])
    match_state_layout(optimizer)
    if load_scheduler:  # else: the schedule built for the new optim.epochs takes over at this step
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema"):
        ema.module.load_state_dict(state["ema"], strict=full)
    ckpt.set_rng_state(state["rng"])
    saved_s = state.get("time_s")
    return int(state["epoch"]), int(state["step"]), float(state["best"]), \
        float(saved_s) if saved_s is not None else None


def final_evaluation(cfg, run_dir, info, mean, std, num_classes, class_names, task, ema, class_counts=None) -> dict:
    """Evaluate the selected checkpoint (last epoch, or best on val) on the test split; with the
    training split's ``class_counts`` the report adds head/medium/tail accuracy
    (``data.longtail_thresholds``)."""
    d = cfg.data
    model = ema.module if ema is not None else task.model
    predict = _predict_fn(task, ema)
    if cfg.run.selection == "best_val" and (run_dir / "best.safetensors").exists():
        ckpt.load_weights_into(model, ckpt.read_tensors(run_dir / "best.safetensors"), "best.safetensors",
                               strict=cfg.model.save != "trainable")
    test_ds = ManifestDataset.from_config(d, d.test_split)
    loader = make_loader(cfg, test_ds, False, mean, std, info)
    acc = run_inference(model, loader, num_classes, class_names, info.device, progress=cfg.run.progress,
                        desc=f"test ({d.test_split})", predict_fn=predict)
    res = acc.compute()
    skipped = {"_skipped_test": {d.test_split: skipped_images(loader)}} if d.skip_bad else {}
    if class_counts is not None and d.longtail_thresholds:
        res.update(longtail_accuracy(res["per_class"], class_counts, d.longtail_thresholds))
    out: dict = {}
    if info.is_main:
        summary = write_eval_outputs(run_dir, d.test_split, acc, res, class_names,
                                     image_paths=[str(test_ds.path(i)) for i in range(len(test_ds))])
        out = {f"{d.test_split}_{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
        out["protocol"] = {"trained_on": d.train_split, "selected_on": d.val_split if cfg.run.selection == "best_val"
                           else "last_epoch", "reported_on": d.test_split}
    return {**out, **skipped}

