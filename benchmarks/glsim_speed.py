"""GLSim's inference cost in practice: measured time ratio against the plain ViT it wraps.

    python benchmarks/glsim_speed.py [--model vit_base_patch16_224] [--size 224] [--batch-size 8]
        [--device cpu|cuda] [--threads 2] [--min-seconds 10] [--out benchmarks/results/glsim_speed.md]

Rows: the plain ViT (its own head), GLSim (both passes, batched crop), GLSim's ``no-crop`` variant
(one pass), and the selection + batched crop alone (GLS, top-O, box, crop from precomputed tokens)
next to the per-sample loop crop, as shares of GLSim's time. GMACs by torchprofile (batch 1);
throughput with the evaluation.md §3.2 protocol (eval, inference mode, warm-up discarded, median of
repeats). MAC ratio GLSim/ViT = 2.0; the goal is a time ratio <= 2.1. Random init (speed does not
depend on the weights). Quick CPU check (about 2 minutes on 2 cores):
``--model vit_tiny_patch16_224 --min-seconds 3 --iters 10 --warmup 3``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
import torch.nn as nn

from fgir.benchmarks.flops import count_macs
from fgir.benchmarks.speed import environment, measure_throughput
from fgir.models.plugins.glsim import GLSimConfig, apply_glsim


class _Select(nn.Module):
    """GLSim's selection + crop on first-pass tokens computed once (input: the images)."""

    def __init__(self, glsim: nn.Module, h: torch.Tensor, impl: str):
        super().__init__()
        self.glsim, self.h, self.impl = glsim, h, impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        old = self.glsim.glsim_cfg.crop_impl
        self.glsim.glsim_cfg.crop_impl = self.impl
        try:
            return self.glsim.select(x, self.h)[3]
        finally:
            self.glsim.glsim_cfg.crop_impl = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iters", type=int, default=50, help="timed iterations per repeat (at least)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--num-classes", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/glsim_speed.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vit = timm.create_model(a.model, img_size=a.size, num_classes=a.num_classes).eval()
    glsim = apply_glsim(timm.create_model(a.model, img_size=a.size, num_classes=a.num_classes),
                        GLSimConfig()).eval()
    kw = {"batch_size": a.batch_size, "device": a.device, "min_seconds": a.min_seconds, "repeats": a.repeats,
          "threads": a.threads, "iters": a.iters, "warmup": a.warmup}
    x = torch.randn(a.batch_size, 3, a.size, a.size, device=a.device)
    rows = []

    def add(name: str, model: nn.Module, macs: int | None) -> dict:
        r = measure_throughput(model, a.size, **kw)
        row = {"name": name, "gmacs": None if macs is None else macs / 1e9, "img_per_s": r["img_per_s"],
               "ms_per_batch": 1000.0 * a.batch_size / r["img_per_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    base = add(f"{a.model} (plain)", vit, count_macs(vit, a.size))
    full = add("GLSim (batched crop)", glsim, count_macs(glsim, a.size))

    class NoCrop(nn.Module):
        def forward(self, t):
            return glsim.forward_no_crop(t)

    add("GLSim no-crop variant (one pass)", NoCrop(), None)
    glsim.to(a.device)
    with torch.inference_mode():
        h = glsim.backbone.forward_features(x)
    add("selection + batched crop only", _Select(glsim, h, "batched"), None)
    add("selection + per-sample loop crop only", _Select(glsim, h, "loop"), None)
    env = environment(a.device, batch_size=a.batch_size, img_size=a.size, threads=a.threads)
    lines = [f"GLSim speed, {a.model} at {a.size} px, batch {a.batch_size}, {a.device}, {a.threads} threads, "
             f"fp32 ({env.get('device_name', a.device)}; torch {torch.__version__}, timm {timm.__version__})", "",
             "| Model | GMACs | img/s | ms / batch | time / plain ViT | share of GLSim time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        g = f"{r['gmacs']:.4f}" if r["gmacs"] is not None else "–"
        lines.append(f"| {r['name']} | {g} | {r['img_per_s']:.1f} | {r['ms_per_batch']:.2f} | "
                     f"{r['ms_per_batch'] / base['ms_per_batch']:.3f} | "
                     f"{100 * r['ms_per_batch'] / full['ms_per_batch']:.1f} % |")
    lines += ["", f"MAC ratio GLSim / plain: {full['gmacs'] / base['gmacs']:.3f}; "
              f"time ratio: {full['ms_per_batch'] / base['ms_per_batch']:.3f} (goal <= 2.1)."]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
