"""Repeatability of `fgir bench`: spread of 5 repeats of batch throughput (issue #14 target: < 5 %).

    python benchmarks/bench_repeatability.py [--device auto] [--threads 2] [--out-dir bench_out]

resnet18 (200-class head) at 224 px, batch 32, eval + inference mode on a pre-allocated tensor,
10 warm-up iterations, then 5 repeats of at least 50 iterations and 10 s each (spec evaluation.md
§3); prints the median img/s, min, max and the spread (max - min) / median. Run it on an idle
machine: other processes on the same cores or GPU widen the spread. The row is also appended to
the `fgir bench` CSV of this environment in --out-dir, and a summary is written to
<out-dir>/bench_repeatability.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fgir
from fgir.benchmarks.bench import bench_csv_path, bench_environment, resolve_device_dtype


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's current count)")
    ap.add_argument("--target-pct", type=float, default=5.0, help="spread target in percent of the median")
    ap.add_argument("--out-dir", default="bench_out")
    a = ap.parse_args()

    t0 = time.time()
    (row,) = fgir.bench(a.model, img_size=a.img_size, batch_size=a.batch_size, device=a.device, dtype=a.dtype,
                        repeats=a.repeats, warmup=a.warmup, iters=a.iters, min_seconds=a.min_seconds,
                        threads=a.threads, memory=False, out_dir=a.out_dir)
    dev, dtype = resolve_device_dtype(a.device, a.dtype)
    env = bench_environment(dev, dtype, int(row["threads"]))
    spread = row["infer_spread_pct"]
    res = {"model": a.model, "img_size": a.img_size, "batch_size": a.batch_size, "repeats": a.repeats,
           "warmup": a.warmup, "iters": a.iters, "min_seconds": a.min_seconds,
           "img_per_s_median": row["infer_img_per_s"], "img_per_s_min": row["infer_img_per_s_min"],
           "img_per_s_max": row["infer_img_per_s_max"], "spread_pct": spread, "target_pct": a.target_pct,
           "within_target": spread < a.target_pct, "wall_s": round(time.time() - t0, 1),
           "env": {k: env[k] for k in ("device", "device_name", "dtype", "threads", "torch", "timm", "cuda")},
           "csv": str(bench_csv_path(a.out_dir, env))}
    out = Path(a.out_dir) / "bench_repeatability.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"{a.model} {a.img_size} px, batch {a.batch_size}, {env['device_name']} ({env['dtype']}, "
          f"{env['threads']} threads): {a.repeats} repeats, median {row['infer_img_per_s']:.1f} img/s, "
          f"min {row['infer_img_per_s_min']:.1f}, max {row['infer_img_per_s_max']:.1f}, spread {spread:.2f} % "
          f"({'within' if res['within_target'] else 'ABOVE'} the {a.target_pct:g} % target); wrote {out}")


if __name__ == "__main__":
    main()
