"""GLSim parameter and MAC counts (ViT-B/16, C = 200) and the paper's Table 1 from the analytic formulas.

    python benchmarks/glsim_counts.py [--sizes 224 448] [--threads 2] [--out benchmarks/results/glsim_counts.md]

Rows: GLSim (separate crop CLS: the reference's parameter count includes its 768-vector), GLSim with
the shared crop CLS (legacy behaviour), GLSim without aggregator, plain ViT-B/16. Params =
sum(numel) of every parameter; MACs = torchprofile profile_macs, batch 1, eval, attention counted
on timm's unfused path (fgir.benchmarks.flops.count_macs). Reference counts (glsim.md §14): 35.149 /
157.036 GMACs and 93,042,632 / 93,494,216 parameters; timm's q-scaling multiply adds L·N·D per pass
(0.0036 G at 224). Random init; about 1-2 minutes on 2 CPU cores (ViT-B at 448 dominates).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch

from fgir.benchmarks.flops import count_macs, count_params
from fgir.models.plugins.glsim import GLSimConfig, apply_glsim
from fgir.models.plugins.selection import table1

REFERENCE = {("GLSim", 224): (93_042_632, 35.149), ("GLSim", 448): (93_494_216, 157.036),
             ("GLSim without aggregator", 224): (85_953_224, 35.134),
             ("GLSim without aggregator", 448): (86_404_808, 157.021),
             ("ViT-B/16", 224): (85_952_456, 17.567), ("ViT-B/16", 448): (86_404_040, 78.510)}

VARIANTS = [("GLSim", {"crop_cls": "separate"}), ("GLSim (shared crop CLS)", {"crop_cls": "shared"}),
            ("GLSim without aggregator", {"crop_cls": "separate", "aggregator_depth": 0}), ("ViT-B/16", None)]


def build(size: int, cfg: dict | None) -> torch.nn.Module:
    vit = timm.create_model("vit_base_patch16_224", img_size=size, num_classes=200)
    return vit if cfg is None else apply_glsim(vit, GLSimConfig(**cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/glsim_counts.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lines = ["| Model | S | Params | GMACs | Reference params | Reference GMACs |", "|---|---|---|---|---|---|"]
    for size in a.sizes:
        for name, cfg in VARIANTS:
            t0 = time.time()
            model = build(size, cfg).eval()
            params, macs = count_params(model), count_macs(model, size)
            ref_p, ref_m = REFERENCE.get((name, size), (None, None))
            lines.append(f"| {name} | {size} | {params:,} | {macs / 1e9:.4f} | "
                         f"{f'{ref_p:,}' if ref_p else '–'} | {f'{ref_m:.3f}' if ref_m else '–'} |")
            print(lines[-1], f"({time.time() - t0:.1f} s)", flush=True)
    lines += ["", "Table 1 (analytic DFSM cost, MFLOPs, % of the analytic ViT-B/16 backbone):", "",
              "| S | backbone | TransFG (PSM) | Rollout | FFVT (MAWS) | AF-Trans (SACM) | GLS |",
              "|---|---|---|---|---|---|---|"]
    rows = table1()
    for size in sorted({r["img_size"] for r in rows}):
        r = {x["method"]: x for x in rows if x["img_size"] == size}
        cells = [f"{r['backbone']['mflops']:,.2f}"] + [
            f"{r[m]['mflops']:.4g} ({r[m]['pct_backbone']:.4g} %)" for m in ("transfg", "rollout", "ffvt", "aftrans",
                                                                            "glsim")]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
