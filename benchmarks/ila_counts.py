"""Parameter, MAC and TTP counts of ILA and its PEFT baselines on ViT-B/16 (spec ila.md §7-8).

    python benchmarks/ila_counts.py [--sizes 224 448] [--out benchmarks/results/ila_counts.md]

For every method: non-head trainable parameters per task (checklist 10), total parameters with a
200-class head (checklist 11), GMACs (torchprofile, batch 1, eval, checklist 12) at each size, and
TTP over the five UFGIR tasks with the true class counts and with the paper's C_eff = 2,257
(checklist 13), next to the spec's reference values. Random init (counts do not depend on weights).
Takes about a minute per size on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fgir.benchmarks.cost import model_cost

BACKBONE = "vit_base_patch16_224"
TRAIN = ["head", "cls_token"]
METHODS = [  # name, plug-ins, reference (non-head, total@224, GMACs@224, GMACs@448) from ila.md
    ("linear probe", [], (768, 85_952_456, 17.567, 78.510)),
    ("DS-only (2 DS-ILA)", [{"name": "ila", "variant": "ds_only"}], (41_264, 85_992_952, 13.096, 66.876)),
    ("ILA+", [{"name": "ila", "variant": "ila_plus"}], (174_624, 86_126_312, 13.114, 66.959)),
    ("ILA++", [{"name": "ila", "variant": "ila_pp"}], (354_800, 86_306_488, 13.142, 67.089)),
    ("ADPT", [{"name": "adapter"}], (314_304, 86_265_992, 17.629, 78.756)),
    ("ConvPass", [{"name": "convpass"}], (328_320, 86_280_008, 17.631, 78.766)),
    ("VPT-shallow", [{"name": "vpt", "num_prompts": 100}], (77_568, 86_029_256, 26.973, 90.083)),
    ("VPT-deep", [{"name": "vpt", "num_prompts": 100, "deep": True}], (922_368, 86_874_056, 26.973, 90.083)),
    ("LoRA r8 q,v", [{"name": "lora"}], (None, None, None, None)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    ap.add_argument("--out", default="benchmarks/results/ila_counts.md")
    a = ap.parse_args()
    rows = []
    for name, plugins, ref in METHODS:
        cells = {"method": name, "reference": ref}
        for s in a.sizes:
            r = model_cost(BACKBONE, s, 200, plugins=plugins, trainable=(["plugins"] if plugins else []) + TRAIN)
            cells.update({f"gmacs_{s}": r["gmacs"], "params": r["params"] if s == a.sizes[0] else cells.get("params"),
                          "non_head": r["params_trainable_non_head"], "ttp": r["ttp_ufgir5"],
                          "ttp_paper": r["ttp_ufgir5_paper"], f"params_{s}": r["params"]})
            print(name, s, r["gmacs"], r["params"], r["params_trainable_non_head"], flush=True)
        rows.append(cells)

    def ref_cell(v, fmt):
        return "–" if v is None else fmt.format(v)

    head = ["method", "non-head trainable / task (ref)", "total params @224, C=200 (ref)"]
    head += [f"GMACs @{s} (ref)" for s in a.sizes] + ["TTP, 3,526 classes", "TTP, C_eff 2,257 (paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in rows:
        nh, tot, g224, g448 = c["reference"]
        refs = {224: g224, 448: g448}
        cells = [c["method"], f"{c['non_head']:,} ({ref_cell(nh, '{:,}')})",
                 f"{c.get('params_224', c['params']):,} ({ref_cell(tot, '{:,}')})"]
        cells += [f"{c[f'gmacs_{s}']:.3f} ({ref_cell(refs.get(s), '{:.3f}')})" for s in a.sizes]
        cells += [f"{c['ttp'] / 1e6:.3f} M", f"{c['ttp_paper'] / 1e6:.3f} M"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"`python benchmarks/ila_counts.py --sizes {' '.join(map(str, a.sizes))}` "
                   f"({BACKBONE}, random init, torchprofile MACs with attention, batch 1)\n\n{text}\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
