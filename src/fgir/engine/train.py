"""The one task-agnostic training loop."""

from __future__ import annotations

import csv
import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..config import Config, save_config
from ..data.datasets import ManifestDataset
from ..data.loader import ArrayLoader, DecodeLoader
from ..data.transforms import BatchTransform, stored_size
from ..models.trainable import format_census, parameter_census
from . import checkpoint as ckpt
from .build import build_model, build_task, normalization  # noqa: F401  (normalization: public re-export)
from .distributed import DistInfo, barrier, init_distributed
from .evaluate import run_inference, write_eval_outputs


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_name(cfg: Config) -> str:
    return cfg.run.name or f"{cfg.data.name}_{cfg.model.name}_{cfg.task.name}_s{cfg.run.seed}"


def make_loader(cfg: Config, ds: ManifestDataset, train: bool, mean, std, info: DistInfo, img_size: int = 0):
    d = cfg.data
    s = img_size or d.img_size
    tf = BatchTransform(s, mean, std, train=train, crop=d.train_crop, hflip=d.hflip,
                        auto_augment=d.auto_augment, aug_group=d.aug_group, random_erasing=d.random_erasing)
    kw = dict(batch_size=cfg.optim.batch_size if train else max(cfg.optim.batch_size, 64),
              stored=stored_size(s, d.resize_ratio), shuffle=train, drop_last=train, seed=cfg.run.seed,
              rank=info.rank, world=info.world,
              max_steps=cfg.run.max_steps_per_epoch if train else 0)
    if d.cache:
        return ArrayLoader(ds, tf, cache_dir=d.cache_dir, skip_bad=d.skip_bad, progress=cfg.run.progress, **kw)
    return DecodeLoader(ds, tf, num_workers=d.num_workers, skip_bad=d.skip_bad, **kw)


def build_optimizer(cfg: Config, task: torch.nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer over every trainable parameter of the Task (the deployed model and any
    trainable part outside it; frozen ones are skipped). Norm weights, biases and the model's
    ``no_weight_decay()`` names get no weight decay (timm's rule)."""
    return create_optimizer_v2(task, opt=cfg.optim.opt, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                               momentum=cfg.optim.momentum)


def build_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    o = cfg.optim
    total = o.epochs * steps_per_epoch
    warm = o.warmup_steps if o.warmup_steps > 0 else int(round(o.warmup_epochs * steps_per_epoch))
    if o.sched == "cosine":
        return CosineLRScheduler(optimizer, t_initial=total, lr_min=o.min_lr, warmup_t=warm,
                                 warmup_lr_init=o.warmup_lr, t_in_epochs=False)
    decay = 0.1 if o.sched == "step" else 1.0
    return StepLRScheduler(optimizer, decay_t=max(1, total // 3), decay_rate=decay, warmup_t=warm,
                           warmup_lr_init=o.warmup_lr, t_in_epochs=False)


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


def _truncate_logs(run_dir: Path, epoch: int) -> None:
    """On resume, drop log rows of epochs after the checkpoint (they will be re-run)."""
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
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


def train(cfg: Config, resume: str = "") -> dict:
    """Train ``cfg`` end to end; returns the final metrics (and the run folder under 'run_dir')."""
    cfg.validate()
    info = init_distributed(cfg.run.device)
    if cfg.optim.amp == "fp16" and info.device.type != "cuda":
        raise ValueError("optim.amp=fp16 needs a CUDA device; use bf16 on CPU or none.")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    out_root = Path(cfg.run.output_dir)
    run_dir = Path(resume) if resume and Path(resume).is_dir() else out_root / run_name(cfg)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    d = cfg.data
    train_ds = ManifestDataset(d.name, d.train_split, d.root, d.num_classes)
    val_ds = ManifestDataset(d.name, d.val_split, d.root, d.num_classes) if d.val_split else None
    _check_selection_overlap(cfg, train_ds, val_ds)
    num_classes, class_names = train_ds.num_classes, train_ds.class_names
    model = build_model(cfg, num_classes)
    task = build_task(cfg, model, num_classes, class_names=class_names).to(info.device)
    io = task.input_spec()
    if cfg.run.channels_last:
        task = task.to(memory_format=torch.channels_last)
    census = {"task": parameter_census(task), "model": parameter_census(task.model)}
    if not census["task"]["trainable"]:
        raise ValueError(f"Nothing to train: model.trainable={cfg.model.trainable} froze every parameter.")
    if info.is_main:
        (run_dir / "census.json").write_text(json.dumps(census, indent=2))
        if cfg.run.progress:
            print(format_census(census["model"], "deployed model parameters"))
            extra = census["task"]["total"] - census["model"]["total"]
            if extra:
                print(f"task extras (e.g. a frozen teacher): {extra:,} parameters, "
                      f"{census['task']['trainable'] - census['model']['trainable']:,} trainable")
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
    start_epoch, step, best = 0, 0, -1.0
    if resume:
        start_epoch, step, best = _resume(resume, task, optimizer, scheduler, scaler, ema)
        if info.is_main:
            _truncate_logs(run_dir, start_epoch)
            print(f"Resumed from {resume} at epoch {start_epoch} (step {step}).")
    logger = _Logger(run_dir, info.is_main, cfg.run.tensorboard)
    t_start = time.time()
    last_val: dict = {}
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, cfg.optim.epochs + 1):
            seed_everything(cfg.run.seed * 1000 + epoch * 10 + info.rank)
            train_loader.set_epoch(epoch)
            stats = _train_one_epoch(cfg, ddp, task, train_loader, optimizer, scheduler, scaler, ema, mixup,
                                     info, epoch, step)
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
            row["time_s"] = round(time.time() - t_start, 2)
            logger.log(row)
            if info.is_main:
                meta = _deploy_meta(cfg, task, num_classes, class_names, epoch, step, row, census)
                _save(run_dir, task, eval_model, optimizer, scheduler, scaler, ema, epoch, step, best, meta)
                if cfg.run.selection == "best_val" and row.get("val_top1") is not None and last_val["top1"] > best:
                    best = last_val["top1"]
                    ckpt.save_weights(eval_model, run_dir / "best.safetensors", meta)
            barrier(info)
            if cfg.run.progress and info.is_main:
                print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                                 if v is not None))
            if cfg.run.time_budget_s and time.time() - t_start > cfg.run.time_budget_s:
                print(f"run.time_budget_s={cfg.run.time_budget_s} reached after epoch {epoch}.")
                break
    except KeyboardInterrupt:
        if info.is_main:
            print(f"\nInterrupted in epoch {epoch}. The last complete checkpoint in {run_dir} is intact; "
                  f"continue with: fgir train --resume {run_dir}")
        raise
    result = {"run_dir": str(run_dir), "epochs": epoch, "train_time_s": round(time.time() - t_start, 2),
              "params": census["model"]["total"], "params_trainable": census["model"]["trainable"]}
    if d.test_split:
        result.update(final_evaluation(cfg, run_dir, info, io.mean, io.std, num_classes, class_names, task, ema))
    if info.is_main:
        (run_dir / "final.json").write_text(json.dumps(result, indent=2))
    return result


def _predict_fn(task, ema):
    """What evaluation calls on a batch: the task's predict (input conversion + inference variant),
    on the EMA copy when EMA is on."""
    if ema is None:
        return task.predict
    return lambda x: task.predict(x, model=ema.module)


def _train_one_epoch(cfg, ddp, task, loader, optimizer, scheduler, scaler, ema, mixup, info, epoch, step):
    ddp.train()
    accum = cfg.optim.accum_steps
    n_img, loss_sum, correct = 0, 0.0, 0.0
    parts: dict[str, float] = {}  # the task's loss components (loss_ce, loss_kd, loss_center, ...)
    t0 = time.time()
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.optim.epochs}", disable=not (cfg.run.progress and info.is_main),
               leave=False, dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
        if cfg.run.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            batch["image"], batch["target"] = mixup(batch["image"], batch["target"])
        last_micro = (i + 1) % accum == 0 or i + 1 == len(loader)
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
        bar.set_postfix(loss=f"{loss_sum / n_img:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    dt = time.time() - t0
    return {"train_loss": loss_sum / max(n_img, 1), "train_top1": 100.0 * correct / max(n_img, 1),
            **{f"train_{k}": v / max(n_img, 1) for k, v in sorted(parts.items())},
            "lr": optimizer.param_groups[0]["lr"], "img_per_s": round(n_img * info.world / max(dt, 1e-9), 2),
            "step": step}


def _save(run_dir, task, eval_model, optimizer, scheduler, scaler, ema, epoch, step, best, meta):
    state = {"model": task.model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
             "ema": ema.module.state_dict() if ema is not None else None, "rng": ckpt.rng_state(),
             "epoch": epoch, "step": step, "best": best}
    state_path = ckpt.save_training_state(run_dir, epoch, state)
    ckpt.save_weights(eval_model, run_dir / "last.safetensors", {**meta, "state_file": state_path.name})
    ckpt.prune_states(run_dir, state_path.name)


def _deploy_meta(cfg, task, num_classes, class_names, epoch, step, row, census):
    """Checkpoint metadata of what the Task deploys (``Task.deploy_spec``): inputs are prepared at
    the batch size ``img_size`` (``Task.input_spec``), then resized to ``model_img_size`` and
    normalised with the deployed model's mean/std."""
    dep, io = task.deploy_spec(), task.input_spec()
    return ckpt.checkpoint_meta(cfg, num_classes, class_names, epoch, step, dep.mean, dep.std, row,
                                img_size=io.img_size, model_img_size=dep.img_size,
                                census={"total": census["model"]["total"],
                                        "trainable": census["model"]["trainable"]})


def _resume(resume: str, task, optimizer, scheduler, scaler, ema) -> tuple[int, int, float]:
    path = ckpt.resolve_checkpoint(Path(resume) / "last.safetensors" if Path(resume).is_dir() else resume)
    meta = ckpt.read_meta(path)
    state = ckpt.load_training_state(path.parent / meta["state_file"])
    ckpt.load_weights_into(task.model, state["model"], where=str(path))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema"):
        ema.module.load_state_dict(state["ema"])
    ckpt.set_rng_state(state["rng"])
    return int(state["epoch"]), int(state["step"]), float(state["best"])


def final_evaluation(cfg, run_dir, info, mean, std, num_classes, class_names, task, ema) -> dict:
    """Evaluate the selected checkpoint (last epoch, or best on val) on the test split."""
    d = cfg.data
    model = ema.module if ema is not None else task.model
    predict = _predict_fn(task, ema)
    if cfg.run.selection == "best_val" and (run_dir / "best.safetensors").exists():
        ckpt.load_weights_into(model, ckpt.read_tensors(run_dir / "best.safetensors"), "best.safetensors")
    test_ds = ManifestDataset(d.name, d.test_split, d.root, d.num_classes)
    loader = make_loader(cfg, test_ds, False, mean, std, info)
    acc = run_inference(model, loader, num_classes, class_names, info.device, progress=cfg.run.progress,
                        desc=f"test ({d.test_split})", predict_fn=predict)
    res = acc.compute()
    out: dict = {}
    if info.is_main:
        summary = write_eval_outputs(run_dir, d.test_split, acc, res, class_names)
        out = {f"{d.test_split}_{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
        out["protocol"] = {"trained_on": d.train_split, "selected_on": d.val_split if cfg.run.selection == "best_val"
                           else "last_epoch", "reported_on": d.test_split}
    return out

