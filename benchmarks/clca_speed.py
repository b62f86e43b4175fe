"""CPU inference speed of ViT-B/16 @448: full vs EViT keep 0.1 vs EViT 0.1 + CLCA (spec clca.md §9.5).

    python benchmarks/clca_speed.py [--threads 2] [--repeats 3] [--min-seconds 10] [--out DIR]

Framework protocol (``fgir.benchmarks.speed.measure_throughput``): synthetic tensors, eval +
inference mode, fp32, warm-up iterations discarded, median img/s over repeats; batch 1 (latency)
and batch 32 (throughput). Random init (``vit_base_patch16_clip_224`` geometry, K = 1,110):
speed does not depend on the weights, except for data-dependent methods (not measured here).
Writes <out>/speed.json and <out>/speed.md. Takes minutes on 2 threads; do not run it on a busy CPU.

``--profile`` instead prints where one batch-1 forward spends its time (torch profiler, 3 forwards
after 2 warm-up, self CPU time grouped by operator family) for the full model and EViT + CLCA.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm

from fgir.benchmarks.flops import count_macs
from fgir.benchmarks.speed import measure_throughput
from fgir.config import load_config
from fgir.models.plugins import apply_plugins

VARIANTS = {
    "ViT-B/16 (no TR)": [],
    "EViT kr 0.1": ["{name: token_reduction, method: evit, keep_rate: 0.1, locations: [3, 6, 9]}"],
    "EViT kr 0.1 + CLCA": ["{name: token_reduction, method: evit, keep_rate: 0.1, locations: [3, 6, 9]}",
                           "{name: clca}"],
}


def build(plugins: list[str], img: int, name: str):
    m = timm.create_model(name, img_size=img, num_classes=1110).eval()
    if plugins:
        m = apply_plugins(m, load_config(overrides=[f"model.plugins=[{', '.join(plugins)}]"]).model.plugins)
    return m


GROUPS = (  # operator family -> substrings of aten operator names (first match wins)
    ("linear GEMMs", ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention (SDPA, softmax)", ("attention", "softmax")),
    ("GELU", ("gelu",)),
    ("LayerNorm", ("layer_norm",)),
    ("patch-embed conv", ("conv",)),
    ("token selection (topk, sort, gather, index)", ("topk", "sort", "gather", "index", "scatter")),
    ("copies, cat, element-wise", ("copy", "cat", "add", "mul", "div", "clone", "sub", "mean", "sum")),
)


def profile_forward(model, img: int, threads: int) -> list[tuple[str, float]]:
    """(operator family, ms per batch-1 forward) over 3 profiled forwards, largest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    x = torch.randn(1, 3, img, img)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(x)
    totals: dict[str, float] = {}
    for ev in prof.key_averages():
        fam = next((g for g, keys in GROUPS if any(k in ev.key for k in keys)), "other")
        totals[fam] = totals.get(fam, 0.0) + ev.self_cpu_time_total / 3 / 1000
    return sorted(totals.items(), key=lambda kv: -kv[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=448)
    ap.add_argument("--model", default="vit_base_patch16_clip_224")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--out", default=str(Path.home() / ".cache/fgir/bench/clca_speed"))
    ap.add_argument("--profile", action="store_true", help="print where a batch-1 forward spends its time instead")
    a = ap.parse_args()
    if a.profile:
        for label in ("ViT-B/16 (no TR)", "EViT kr 0.1 + CLCA"):
            rows = profile_forward(build(VARIANTS[label], a.img_size, a.model), a.img_size, a.threads)
            total = sum(ms for _, ms in rows)
            print(f"{label}: {total:.0f} ms self CPU time per forward")
            for fam, ms in rows:
                print(f"  {fam:45s} {ms:8.1f} ms  {100 * ms / total:5.1f} %")
        return
    out = Path(a.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, plugins in VARIANTS.items():
        m = build(plugins, a.img_size, a.model)
        gmacs = count_macs(m, a.img_size) / 1e9
        for bs in a.batch_sizes:
            r = measure_throughput(m, a.img_size, batch_size=bs, device="cpu", dtype="fp32", warmup=a.warmup,
                                   iters=a.iters, min_seconds=a.min_seconds, repeats=a.repeats, threads=a.threads)
            rows.append({"variant": label, "batch_size": bs, "gmacs": round(gmacs, 3), "img_per_s": r["img_per_s"],
                         "latency_ms_median": r["latency_ms_median"], "env": {k: r[k] for k in r if k in (
                             "torch", "timm", "device_name", "threads", "device", "dtype")}})
            print(rows[-1], flush=True)
    (out / "speed.json").write_text(json.dumps(rows, indent=1))
    lines = [f"# CLCA speed, {a.model} @{a.img_size}, CPU {a.threads} threads, fp32", "",
             f"Command: `python benchmarks/clca_speed.py --threads {a.threads} --batch-sizes "
             f"{' '.join(map(str, a.batch_sizes))} --warmup {a.warmup} --iters {a.iters} --repeats {a.repeats} "
             f"--min-seconds {a.min_seconds:g}`", "",
             "| variant | GMACs | batch | img/s (median) | latency ms (median, per batch) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['gmacs']:.3f} | {r['batch_size']} | {r['img_per_s']:.2f} | "
                     f"{r['latency_ms_median']:.1f} |")
    (out / "speed.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'speed.md'}")


if __name__ == "__main__":
    main()
