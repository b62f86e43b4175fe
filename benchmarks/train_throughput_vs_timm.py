"""Training throughput: `fgir train` next to timm's training stack on the same model, data, batch
and augmentation, measured in one run (issue #14: resnet18, CUB-100, 64 px; goal >= 1.15x timm).

    python benchmarks/train_throughput_vs_timm.py --root ../shared/data/cub100 [--epochs 3] [--threads 2]
    python benchmarks/train_throughput_vs_timm.py --root ... --timm-train-py /path/to/pytorch-image-models/train.py

Both sides train timm ``resnet18`` from scratch (100 classes) at 64 px, batch 64, AdamW (lr 2e-3,
wd 0.05), cosine schedule stepped per iteration, label smoothing 0.1, and the same augmentation
ops: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, bilinear), horizontal flip 0.5, RandAugment
(2 ops, magnitude 9), ImageNet normalisation, no colour jitter, no random erasing; fp32 on the CPU
(``--device cuda`` for a GPU), the same torch thread count. Each side runs in its own fresh
process, one after the other. Throughput is images per second of the training loop over whole
epochs (data loading included, evaluation excluded), the median over epochs after the first
(the first epoch is warm-up: thread pools, allocator, worker start-up).

What differs is the data pipeline, by design: fgir decodes and resizes every image once into a
memory-mapped uint8 cache (``data.cache``; side int(1.143 x 64) = 73 px) and crops, flips and
augments whole batches as tensors in the training process; timm decodes each JPEG in DataLoader
worker processes (``--timm-workers``) and augments PIL images one by one.

timm side. timm's own ``train.py`` is not in the timm wheel nor in its PyPI sdist (checked for
timm 1.0.31, 1.0.15 and 0.9.16: the sdist holds ``timm/`` and ``tests/`` only), and this machine
reaches no other source. Without ``--timm-train-py`` the timm side is therefore **not train.py**
but the closest official entry point in the installed package: the components train.py composes
(``timm.data.create_dataset`` on an ImageFolder tree, ``timm.data.create_loader`` with timm's
training transforms, ``timm.task.ClassificationTask`` with ``create_classification_loss``
label smoothing, ``timm.optim.create_optimizer_v2``, ``timm.scheduler.create_scheduler_v2``
stepped per update) driven by a plain loop (forward, backward, optimiser step, scheduler update)
written here. With ``--timm-train-py PATH`` (a train.py from github.com/huggingface/pytorch-image-models
whose imports the installed timm satisfies; tested with commit 2aabaef0) the real, unmodified
``train.py`` runs instead (its ``main()`` in the worker process) with equivalent flags
(``--sched-on-updates``, ``--log-interval 1``, ``--no-prefetcher`` on the CPU), and its rate is read
from its own per-update ``Train: ... Time: t s, r/s`` log lines: an epoch's img/s is the sum of
images over the sum of update times (data wait included, validation excluded). train.py versions
without ``--device`` get the device through the parser defaults and ``device=`` passed to
``train_one_epoch``/``validate``, which they would otherwise default to CUDA; whole-epoch wall
times are kept next to the log rates as a cross-check. train.py cannot cap steps, so with
``--max-steps N`` (smoke runs) its tree holds a seeded subset of N batches of training images and
one batch of validation images.

CUB-100 is exposed to timm as a symlink ImageFolder tree (``train/<class>/...``,
``validation/<class>/...``) in a temporary folder; fgir reads the official layout as usual.
Writes --out (JSON) with both rates, their ratio and the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = "configs/recipes/cub100_resnet18_64.yaml"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagefolder_tree(root: Path, dest: Path, limit: dict[str, int] | None = None) -> dict[str, int]:
    """Symlink CUB-100 (images.txt, train_test_split.txt) into dest/{train,validation}/<class>/.

    ``limit`` keeps a seeded random subset of at most that many images per split (smoke runs of
    timm's train.py, whose epochs cannot be capped otherwise)."""
    def table(name: str) -> dict[str, str]:
        rows = (line.split(",", 1) for line in (root / name).read_text().splitlines() if line.strip())
        return {k.strip(): v.strip() for k, v in rows}

    images, is_train = table("images.txt"), table("train_test_split.txt")
    split_of = {i: "train" if is_train[i] == "1" else "validation" for i in images}
    if limit:
        keep = set()
        for split, n in limit.items():
            ids = sorted(i for i, s in split_of.items() if s == split)
            keep.update(random.Random(0).sample(ids, min(n, len(ids))))
        images = {i: rel for i, rel in images.items() if i in keep}
    counts = {"train": 0, "validation": 0}
    for i, rel in images.items():
        split = split_of[i]
        link = dest / split / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to((root / "images" / rel).resolve())
        counts[split] += 1
    return counts


def steady_rate(rates: list[float]) -> float:
    """Median img/s over the epochs after the first (the only epoch if there is one)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


# ----------------------------------------------------------------------------- fgir side
def run_fgir(a, work: Path) -> dict:
    out = work / "fgir_runs"
    cmd = [sys.executable, "-m", "fgir.cli.main", "train", "-c", RECIPE, f"data.root={a.root}",
           "data.train_crop=rrc", "data.auto_augment=rand-m9-n2", "data.hflip=true", "data.test_split=",
           f"model.name={a.model}", f"data.img_size={a.img_size}", f"optim.batch_size={a.batch_size}",
           f"optim.epochs={a.epochs}", f"run.output_dir={out}", "run.name=fgir", "run.progress=false",
           f"run.threads={a.threads}", f"run.device={a.device}",
           f"run.max_steps_per_epoch={a.max_steps}", *a.fgir_extra.split()]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fgir train failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "fgir" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rates = [r["img_per_s"] for r in rows if "img_per_s" in r]
    return {"img_per_s_per_epoch": rates, "img_per_s": steady_rate(rates), "wall_s": round(time.time() - t0, 1),
            "command": " ".join(cmd[2:])}


# ----------------------------------------------------------------------------- timm side (fresh process)
def _timm_components_worker(job: dict) -> dict:
    """timm's training components (what train.py composes), driven by a plain loop."""
    import timm
    import torch
    from timm.data import create_dataset, create_loader
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.task import ClassificationTask

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    dev = torch.device(job["device"])
    dataset = create_dataset("", root=job["tree"], split="train", is_training=True)
    loader = create_loader(dataset, input_size=(3, job["img_size"], job["img_size"]), batch_size=job["batch_size"],
                           is_training=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.0,
                           auto_augment="rand-m9-n2", interpolation="bilinear", mean=MEAN, std=STD,
                           num_workers=job["workers"], device=dev, use_prefetcher=dev.type == "cuda",
                           pin_memory=dev.type == "cuda")
    model = timm.create_model(job["model"], num_classes=job["num_classes"]).to(dev)
    task = ClassificationTask(model, criterion_kwargs={"smoothing": 0.1}, device=dev, verbose=False)
    optimizer = create_optimizer_v2(model, "adamw", lr=2e-3, weight_decay=0.05)
    steps = len(loader) if not job["max_steps"] else min(len(loader), job["max_steps"])
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=job["epochs"], warmup_epochs=2,
                                       warmup_lr=1e-5, min_lr=1e-6, updates_per_epoch=steps)
    rates, updates = [], 0
    model.train()
    for epoch in range(job["epochs"]):
        n, t0 = 0, time.time()
        for i, (x, y) in enumerate(loader):
            if i >= steps:
                break
            x, y = x.to(dev), y.to(dev)
            loss = task(x, y)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            n += x.shape[0]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        rates.append(n / (time.time() - t0))
        scheduler.step(epoch + 1)
    return {"img_per_s_per_epoch": [round(r, 2) for r in rates], "timm": timm.__version__,
            "entry_point": "timm components (create_loader, ClassificationTask, create_optimizer_v2, "
                           "create_scheduler_v2) + a plain loop; not train.py"}


TRAIN_LOG = re.compile(r"Train: (\d+) \[\s*(\d+)/(\d+).*?Time: ([\d.]+)s,\s*([\d.]+)/s")


def rate_from_train_log(lines: list[str]) -> tuple[list[float], int]:
    """Per-epoch img/s from train.py's per-update log lines (``--log-interval 1``).

    Each line ``Train: E [i/N ...] Time: t s, r/s ...`` gives the wall time t of one update (data
    wait included; the first update of an epoch includes the DataLoader worker start-up) and
    r = images / t. An epoch's rate is sum(images) / sum(t) over its updates."""
    per_epoch: dict[int, list[float]] = {}
    for line in lines:
        m = TRAIN_LOG.search(line)
        if m:
            t, r = float(m.group(4)), float(m.group(5))
            acc = per_epoch.setdefault(int(m.group(1)), [0.0, 0.0])
            acc[0] += r * t
            acc[1] += t
    rates = [round(n / t, 2) for _, (n, t) in sorted(per_epoch.items()) if t > 0]
    return rates, sum(1 for x in lines if TRAIN_LOG.search(x))


def _timm_train_py_worker(job: dict) -> dict:
    """timm's train.py itself, unmodified: run its main() with equivalent flags, read its log lines.

    The harness only (a) sets ``args.device`` through the parser defaults when the given train.py
    has no ``--device`` option (older train.py versions assume CUDA), and (b) wraps
    ``train_one_epoch`` / ``validate`` to pass ``device=`` when main() does not (those versions
    default it to CUDA) and to time whole epochs as a cross-check of the log-derived rate."""
    import inspect
    import logging

    import timm
    import torch

    path = Path(job["train_py"]).resolve()
    sys.path.insert(0, str(path.parent))
    import train as timm_train  # noqa: PLC0415  (timm's script, given on the command line)

    dev = torch.device(job["device"])
    cuda = dev.type == "cuda"
    wall_rates: list[float] = []

    def with_device(fn, timed: bool):
        takes_device = "device" in inspect.signature(fn).parameters

        def call(*args, **kwargs):
            if takes_device:
                kwargs.setdefault("device", dev)
            t0 = time.time()
            out = fn(*args, **kwargs)
            if timed:
                if cuda:
                    torch.cuda.synchronize(dev)
                loader = args[2] if len(args) > 2 else kwargs["loader"]
                wall_rates.append(round(len(loader) * job["batch_size"] / (time.time() - t0), 2))
            return out
        return call

    timm_train.train_one_epoch = with_device(timm_train.train_one_epoch, timed=True)
    timm_train.validate = with_device(timm_train.validate, timed=False)
    options = {o for act in timm_train.parser._actions for o in act.option_strings}
    device_flag = ["--device", job["device"]] if "--device" in options else []
    if not device_flag:
        timm_train.parser.set_defaults(device=job["device"])

    log_lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            log_lines.append(record.getMessage())

    logging.getLogger("train").addHandler(Keep())
    sys.argv = [str(path), "--data-dir", job["tree"], "--train-split", "train", "--val-split", "validation",
                "--model", job["model"], "--num-classes", str(job["num_classes"]),
                "--img-size", str(job["img_size"]), "-b", str(job["batch_size"]), "--epochs", str(job["epochs"]),
                "--opt", "adamw", "--lr", "2e-3", "--weight-decay", "0.05",
                "--sched", "cosine", "--sched-on-updates", "--warmup-epochs", "2", "--warmup-lr", "1e-5",
                "--min-lr", "1e-6", "--smoothing", "0.1", "--aa", "rand-m9-n2", "--color-jitter", "0",
                "--reprob", "0", "--scale", "0.08", "1.0", "--ratio", str(3 / 4), str(4 / 3), "--hflip", "0.5",
                "--train-interpolation", "bilinear", "--mean", *map(str, MEAN), "--std", *map(str, STD),
                "--workers", str(job["workers"]), "--output", job["output"], "--experiment", "timm",
                "--checkpoint-hist", "1", "--log-interval", "1", "--seed", "0", *device_flag]
    sys.argv += ["--pin-mem"] if cuda else ["--no-prefetcher"]
    sys.argv += job.get("extra", [])
    torch.set_num_threads(job["threads"])
    timm_train.main()
    rates, n_lines = rate_from_train_log(log_lines)
    if len(rates) != job["epochs"]:
        raise SystemExit(f"parsed {n_lines} 'Train:' log lines into {len(rates)} epochs, expected {job['epochs']}")
    return {"img_per_s_per_epoch": rates, "wall_img_per_s_per_epoch": wall_rates, "log_lines_parsed": n_lines,
            "timm": timm.__version__, "argv": sys.argv[1:],
            "entry_point": f"train.py ({path}); rates from its per-update log lines"}


def run_timm(a, work: Path, tree: Path) -> dict:
    job = {"tree": str(tree), "model": a.model, "num_classes": 100, "img_size": a.img_size,
           "batch_size": a.batch_size, "epochs": a.epochs, "threads": a.threads, "workers": a.timm_workers,
           "device": a.device, "max_steps": a.max_steps, "train_py": a.timm_train_py,
           "output": str(work / "timm_out"), "extra": a.timm_extra.split()}
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--_timm-worker", json.dumps(job)], capture_output=True,
                          text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the timm side failed:\n{proc.stderr[-3000:]}")
    res = json.loads(lines[-1])
    res.update(img_per_s=steady_rate(res["img_per_s_per_epoch"]), wall_s=round(time.time() - t0, 1))
    return res


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--_timm-worker":
        job = json.loads(sys.argv[2])
        res = _timm_train_py_worker(job) if job["train_py"] else _timm_components_worker(job)
        print(json.dumps(res))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="CUB-100 root (official layout: images.txt, images/...)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per side (the first is warm-up, not counted)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--timm-workers", type=int, default=2, help="timm DataLoader worker processes")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    ap.add_argument("--max-steps", type=int, default=0, help="cap steps per epoch on both sides (smoke runs; "
                    "with --timm-train-py via a subset tree; 0 = whole epochs)")
    ap.add_argument("--timm-train-py", default="", help="timm's train.py (a pytorch-image-models checkout); "
                    "default: timm's training components (see above)")
    ap.add_argument("--timm-extra", default="", help="extra flags for timm's train.py (with --timm-train-py), "
                    "one string, e.g. '--opt-kwargs fused=True' (torch's fused AdamW, fgir's default)")
    ap.add_argument("--fgir-extra", default="", help="extra config overrides for fgir train, one string, e.g. "
                    "'run.channels_last=true optim.fused=false'")
    ap.add_argument("--only", choices=["both", "fgir", "timm"], default="both")
    ap.add_argument("--out", default="bench_out/train_throughput_vs_timm.json")
    a = ap.parse_args()
    a.root = str(Path(a.root).resolve())
    import timm
    import torch

    from fgir.benchmarks.speed import environment

    with tempfile.TemporaryDirectory(prefix="fgir_vs_timm_") as tmp:
        work = Path(tmp)
        tree = work / "cub100_imagefolder"
        # train.py runs whole epochs: with --max-steps its tree holds max_steps batches (and one val batch)
        limit = {"train": a.max_steps * a.batch_size, "validation": a.batch_size} \
            if a.timm_train_py and a.max_steps else None
        counts = imagefolder_tree(Path(a.root), tree, limit)
        res = {"model": a.model, "img_size": a.img_size, "timm_extra": a.timm_extra, "fgir_extra": a.fgir_extra,
               "batch_size": a.batch_size, "epochs": a.epochs,
               "threads": a.threads, "timm_workers": a.timm_workers, "max_steps_per_epoch": a.max_steps,
               "images": counts, "env": environment(a.device, "fp32", a.batch_size, a.img_size, a.threads),
               "timm_version": timm.__version__, "torch_version": torch.__version__}
        if a.only in ("both", "fgir"):
            res["fgir"] = run_fgir(a, work)
            print(f"fgir train: {res['fgir']['img_per_s']:.1f} img/s (per epoch {res['fgir']['img_per_s_per_epoch']})",
                  flush=True)
        if a.only in ("both", "timm"):
            res["timm"] = run_timm(a, work, tree)
            print(f"timm ({res['timm']['entry_point']}): {res['timm']['img_per_s']:.1f} img/s "
                  f"(per epoch {res['timm']['img_per_s_per_epoch']})", flush=True)
    if "fgir" in res and "timm" in res:
        res["ratio_fgir_over_timm"] = round(res["fgir"]["img_per_s"] / res["timm"]["img_per_s"], 3)
        print(f"ratio fgir / timm = {res['ratio_fgir_over_timm']:.3f} (goal >= 1.15)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    # the temporary work folder is gone after the run: record it as WORK_TMP, not a machine path
    Path(a.out).write_text(json.dumps(res, indent=2, default=str).replace(str(work), "WORK_TMP"))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
