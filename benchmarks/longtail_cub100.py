"""Long-tail training on a Zipf-subsampled CUB-100, CPU scale: plain CE vs class-balanced sampling vs
balanced softmax, same recipe and epochs.

    python benchmarks/longtail_cub100.py --root ../shared/data/cub100 [--seeds 0 1 2] [--epochs 30]

1. Data (seeded by ``--data-seed``, written once under ``<out>/data``, never in the repository):
   the classes of cub100's train_val are put in a random order; the class at rank r (0-based) keeps
   n_r = max(``--n-min``, round(n_max * (r + 1) ** -alpha)) of its images, at most all of them (a
   random subset, kept in file order), with n_max = the largest class of train_val (30) and alpha
   such that the last rank keeps n_max / ``--imbalance`` (alpha 0.5 for 100 classes and 10).
   val = the last int(0.2 n_r) kept images of each class (none when n_r < 5), train = the rest;
   test = cub100's test, untouched. The manifest points at cub100's images (nothing is copied).
2. Runs (each a plain ``fgir train`` stage, reused or continued when the script runs again): ResNet-10t
   from scratch at 64 px, AdamW, cosine, the same epochs for ``ce`` (plain cross-entropy, uniform
   sampler), ``cb_sampler`` (data.sampler=class_balanced) and ``balanced_softmax``
   (task.loss=balanced_softmax), for every seed; trained on train, test reported at the last epoch.
3. Report: test top-1, mean per-class accuracy and head / medium / tail accuracy (mean per-class
   accuracy of the classes whose training-image count is > h, t..h, < t; ``--thresholds t h``),
   mean ± sample std over seeds. Writes ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fgir.benchmarks import stages
from fgir.data.manifest import (
    CLASS_TABLE,
    Row,
    read_class_table,
    read_split,
    write_class_table,
    write_manifest_info,
    write_split,
)
from fgir.data.resolve import resolve_root

METHODS = {
    "ce": [],
    "cb_sampler": ["data.sampler=class_balanced"],
    "balanced_softmax": ["task.loss=balanced_softmax"],
}
LABELS = {"ce": "cross-entropy", "cb_sampler": "class-balanced sampler", "balanced_softmax": "balanced softmax"}
METRICS = ("top1", "mean_per_class_acc", "head_acc", "medium_acc", "tail_acc")


def zipf_sizes(n_classes: int, n_max: int, imbalance: float, n_min: int) -> list[int]:
    """Images kept at each rank: n_max * (r + 1) ** -alpha with n_max / n_last = ``imbalance``."""
    alpha = math.log(imbalance) / math.log(n_classes) if n_classes > 1 else 0.0
    return [max(n_min, round(n_max * (r + 1) ** -alpha)) for r in range(n_classes)]


def build_longtail(root: str, out: Path, imbalance: float, n_min: int, seed: int) -> dict:
    """Write the long-tailed manifest into ``out`` (once; an existing one is reused) and return its stats."""
    stats_file = out / "longtail.json"
    if stats_file.is_file():
        return json.loads(stats_file.read_text())
    mdir, image_root = resolve_root("cub100", root)
    train_val, test = read_split(mdir / "train_val.csv"), read_split(mdir / "test.csv")
    names = read_class_table(mdir / CLASS_TABLE)
    by_class: dict[int, list[Row]] = {}
    for r in train_val:
        by_class.setdefault(r.class_id, []).append(r)
    rng = np.random.default_rng(seed)
    order = [int(c) for c in rng.permutation(sorted(by_class))]
    sizes = zipf_sizes(len(order), max(len(v) for v in by_class.values()), imbalance, n_min)
    train: list[Row] = []
    val: list[Row] = []
    kept = {}
    for c, n in zip(order, sizes, strict=True):
        rows = by_class[c]
        n = min(n, len(rows))
        pick = sorted(rng.choice(len(rows), size=n, replace=False).tolist())
        chosen = [Row(c, rows[i].dir) for i in pick]
        n_val = int(0.2 * n) if n >= 5 else 0
        train += chosen[:n - n_val]
        val += chosen[n - n_val:]
        kept[c] = n - n_val
    train.sort(key=lambda r: r.class_id)
    val.sort(key=lambda r: r.class_id)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("val", val), ("train_val", train + val), ("test", test)):
        write_split(out / f"{split}.csv", rows)
    write_class_table(out / CLASS_TABLE, names)
    counts = sorted(kept.values(), reverse=True)
    stats = {"imbalance": imbalance, "n_min": n_min, "data_seed": seed, "train": len(train), "val": len(val),
             "test": len(test), "train_per_class_max": counts[0], "train_per_class_min": counts[-1],
             "train_per_class_median": statistics.median(counts)}
    write_manifest_info(out, {"format": 1, "image_root": str(Path(image_root).absolute()), "source": str(mdir),
                              "converter": "longtail_cub100", "num_classes": len(names),
                              "counts": {"train_val": len(train) + len(val), "test": len(test), "train": len(train),
                                         "val": len(val)}, "validated": True, "longtail": stats})
    stats_file.write_text(json.dumps(stats, indent=2))
    return stats


def summarise(runs: list[dict]) -> dict:
    out = {}
    for m in METRICS:
        vals = [r[f"test_{m}"] for r in runs if not math.isnan(r.get(f"test_{m}", math.nan))]
        out[m] = {"values": vals, "mean": statistics.mean(vals) if vals else math.nan,
                  "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    out["train_time_s"] = statistics.mean(r["train_time_s"] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="cub100 (../shared/data/cub100)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--imbalance", type=float, default=10.0, help="largest / smallest kept class before val")
    ap.add_argument("--n-min", type=int, default=2, help="fewest images a class keeps")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--thresholds", type=int, nargs=2, default=[5, 10], metavar=("T", "H"),
                    help="tail < T, medium T..H, head > H training images per class")
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps-per-epoch", type=int, default=0, help="smoke runs: cap the steps of an epoch")
    ap.add_argument("--out", default=str(Path.home() / ".cache" / "fgir" / "bench" / "longtail_cub100"),
                    help="data and stage folders (outside the work tree; the same command continues there)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out).expanduser()
    data = out / f"data_zipf_ir{a.imbalance:g}_min{a.n_min}_s{a.data_seed}"
    stats = build_longtail(a.root, data, a.imbalance, a.n_min, a.data_seed)
    print(f"long-tailed cub100 in {data}: {json.dumps(stats)}", flush=True)
    t, h = a.thresholds
    common = ["data.name=cub100", f"data.root={data}", f"model.name={a.model}", f"data.img_size={a.img_size}",
              "data.resize_ratio=1.143", "data.train_split=train", "data.val_split=val", "data.test_split=test",
              "run.selection=last", f"run.eval_every={a.epochs}", f"data.longtail_thresholds=[{t},{h}]",
              "optim.opt=adamw", "optim.lr=2e-3", "optim.weight_decay=0.05", f"optim.batch_size={a.batch_size}",
              f"optim.epochs={a.epochs}", f"optim.warmup_epochs={min(2, a.epochs - 1)}", "optim.label_smoothing=0",
              "run.progress=false", f"run.threads={a.threads}",
              f"run.max_steps_per_epoch={a.max_steps_per_epoch}"]
    tag = f"{a.model}_{a.img_size}_e{a.epochs}" + (f"_steps{a.max_steps_per_epoch}" if a.max_steps_per_epoch else "")
    t0 = time.time()
    runs: dict[str, list[dict]] = {m: [] for m in a.methods}
    for seed in a.seeds:
        for m in a.methods:
            runs[m].append(stages.run_stage(f"{tag}_{m}_s{seed}", [], common + METHODS[m] + [f"run.seed={seed}"],
                                            out / data.name))
    summary = {m: summarise(r) for m, r in runs.items()}
    lines = [f"Long-tailed CUB-100 ({stats['train']} train images, {stats['train_per_class_max']}..."
             f"{stats['train_per_class_min']} per class; test {stats['test']}), {a.model} {a.img_size} px from "
             f"scratch, {a.epochs} epochs, seeds {' '.join(map(str, a.seeds))}; head > {h}, medium {t}-{h}, "
             f"tail < {t} training images per class (bucket accuracy = mean per-class accuracy).", "",
             "| method | top-1 | mean per-class | head | medium | tail | train time |",
             "|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        cells = [f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" if len(a.seeds) > 1 else f"{s[k]['mean']:.2f}"
                 for k in METRICS]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {s['train_time_s'] / 60:.1f} min |")
    first = runs[a.methods[0]][0]
    lines.append("")
    lines.append("classes per bucket: " + ", ".join(f"{b} {first.get(f'test_{b}_classes')}"
                                                    for b in ("head", "medium", "tail")))
    table = "\n".join(lines)
    report = {"protocol": __doc__.split("\n\n", 1)[1].strip(), "data": stats, "thresholds": [t, h],
              "model": a.model, "img_size": a.img_size, "epochs": a.epochs, "seeds": a.seeds, "summary": summary,
              "table": table, "total_wall_s": round(time.time() - t0, 1)}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
