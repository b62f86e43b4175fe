"""ILA's compute saving in practice: MAC ratio vs measured inference-time ratio against the frozen ViT.

    python benchmarks/ila_speed.py [--model vit_base_patch16_224] [--sizes 224] [--batch-size 8]
        [--device cpu|cuda] [--threads 2] [--min-seconds 10] [--out benchmarks/results/ila_speed.md]

For the plain backbone and each ILA variant: GMACs (torchprofile, batch 1) and throughput with the
evaluation.md §3.2 protocol (eval, inference mode, warm-up discarded, median of repeats). The spec's
MAC ratio ILA++/ViT-B is 13.142 / 17.567 = 0.748 at 224; the goal is a measured time ratio <= 0.80.
Quick CPU check (a few minutes on 2 cores):
``--model vit_tiny_patch16_224 --batch-size 4 --iters 10 --min-seconds 2 --threads 2``.
Random init: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fgir.benchmarks.cost import cost_config
from fgir.benchmarks.flops import count_macs
from fgir.benchmarks.speed import environment, measure_throughput
from fgir.engine.build import build_model

VARIANTS = [("ViT (frozen, linear)", []), ("DS-only", [{"name": "ila", "variant": "ds_only"}]),
            ("ILA+", [{"name": "ila", "variant": "ila_plus"}]), ("ILA++", [{"name": "ila", "variant": "ila_pp"}])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="fp32 / fp16 / bf16 (default: fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iters", type=int, default=50, help="minimum timed iterations per repeat")
    ap.add_argument("--out", default="benchmarks/results/ila_speed.md")
    a = ap.parse_args()
    rows = []
    for s in a.sizes:
        base = None
        for name, plugins in VARIANTS:
            torch.manual_seed(0)
            model = build_model(cost_config(a.model, s, plugins), 200).eval()
            macs = count_macs(model, s)
            sp = measure_throughput(model, s, batch_size=a.batch_size, device=a.device, dtype=a.dtype,
                                    min_seconds=a.min_seconds, repeats=a.repeats, threads=a.threads,
                                    iters=a.iters)
            row = {"variant": name, "img_size": s, "gmacs": macs / 1e9, "img_per_s": sp["img_per_s"],
                   "latency_ms": sp["latency_ms_median"]}
            base = base or row
            row["mac_ratio"] = row["gmacs"] / base["gmacs"]
            row["time_ratio"] = base["img_per_s"] / row["img_per_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model
    env = environment(a.device, a.dtype, a.batch_size)
    lines = [f"`python benchmarks/ila_speed.py --model {a.model} --sizes {' '.join(map(str, a.sizes))} "
             f"--batch-size {a.batch_size} --device {a.device} --min-seconds {a.min_seconds:g}`"
             + (f" --threads {a.threads}" if a.threads else ""), "",
             "Environment: " + json.dumps({k: env[k] for k in ("device_name", "torch", "timm", "dtype", "threads")}),
             "", "| variant | S | GMACs | MAC ratio | img/s | time ratio (goal <= 0.80 for ILA++) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['img_size']} | {r['gmacs']:.3f} | {r['mac_ratio']:.3f} | "
                     f"{r['img_per_s']:.1f} | {r['time_ratio']:.3f} |")
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "env": env}, indent=2, default=str))


if __name__ == "__main__":
    main()
