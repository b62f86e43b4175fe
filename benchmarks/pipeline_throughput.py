"""Data-pipeline efficiency: end-to-end training img/s vs the model's in-memory step rate.

    python benchmarks/pipeline_throughput.py --root ../shared/data/cub100 [--epochs 3] [--threads 2]

Trains resnet18 on CUB-100 at 64 px, batch 64, with the foundation recipe's augmentation
(random crop, flip, RandAugment m9) through `fgir.train` for a few whole epochs (wall clock per
epoch, the first epoch excluded as warm-up; the decoded cache is built before timing), and
times forward + backward + AdamW step of the same model on tensors already in memory. Prints
both rates and their ratio (target: >= 0.95) and writes them to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2

from fgir import create_model, load_config
from fgir.benchmarks.speed import environment, measure_train_step_rate
from fgir.engine.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="CUB-100 root (official layout)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_out/pipeline_throughput.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(["configs/recipes/cub100_resnet18_64.yaml"],
                      [f"data.root={a.root}", f"optim.epochs={a.epochs}", "data.test_split=",
                       "run.output_dir=bench_out/pipeline", "run.name=pipeline", "run.progress=false",
                       f"run.threads={a.threads}"])
    t0 = time.time()
    train(cfg)
    rows = [json.loads(x) for x in (Path("bench_out/pipeline/pipeline/metrics.jsonl").read_text().splitlines())]
    rows = rows[-a.epochs:]
    e2e = statistics.mean(r["img_per_s"] for r in rows[1:]) if len(rows) > 1 else rows[0]["img_per_s"]
    model = create_model("resnet18", num_classes=100)
    mem = measure_train_step_rate(
        model, 64, 64, optimizer_factory=lambda ps: create_optimizer_v2(model, "adamw", lr=2e-3, weight_decay=0.05),
        steps=30, warmup=5, repeats=3, threads=a.threads,
        loss_fn=lambda logits, y: torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1))
    res = {"end_to_end_img_per_s": round(e2e, 1), "in_memory_img_per_s": round(mem, 1),
           "ratio": round(e2e / mem, 3), "epochs_timed": len(rows) - 1, "wall_s": round(time.time() - t0, 1),
           "env": environment("cpu", "fp32", 64, 64)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"end-to-end training {e2e:.1f} img/s | in-memory step {mem:.1f} img/s | ratio {e2e / mem:.3f}")


if __name__ == "__main__":
    main()
