"""Deterministic CLCA counts: token schedules, MACs and parameters (spec clca.md §8-9, §17 items 10, 12, 21-24).

    python benchmarks/clca_counts.py [--out ~/.cache/fgir/bench/clca_counts] [--skip-macs]
    python benchmarks/clca_counts.py --all-macs ../shared/specs/clca.md [--sizes 224] [--keep-rates 0.1 0.25]

1. Token schedules (ViT-B/16 geometry, loc [3, 6, 9], 224 and 448, kr 0.1/0.25/0.5/0.7, base and
   CLCA): the realised counts of a forward through the plug-ins (width 32, random weights,
   ``torch.rand`` input, seed 0; counts do not depend on the width) next to the closed-form walk.
2. MACs (``fgir.benchmarks.flops.count_macs``: torchprofile conventions, eval, batch 1, explicit
   attention) of ``vit_base_patch16_clip_224`` and ``deit3_base_patch16_224`` at 448 px, K = 1,110:
   no TR, EViT kr 0.1 / 0.7, each with and without CLCA; the spec's reference counts beside them.
3. Parameters (K = 1,110) of the same models, and the CLCA delta.
4. ``--all-macs SPEC``: every "GMACs ref" cell of the spec's §8 tables (parsed from SPEC) against
   our count on ``vit_base_patch16_clip_224`` (checklist item 23, tolerance 0.005 G; the ATS
   reference is a thop count that omits the attention matmuls, so ATS rows are not comparable).
Writes <out>/counts.md and <out>/counts.json. Random init only: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch

from fgir.benchmarks.flops import count_macs, count_params
from fgir.config import load_config
from fgir.models.plugins import apply_plugins
from fgir.models.plugins.token_reduction import METHODS
from fgir.models.plugins.token_reduction.core import token_schedule

MAC_REF = {  # spec clca.md §8.3 / §9.2 (GMACs, reference torchprofile count)
    ("vit_base_patch16_clip_224", None, False): 78.518, ("vit_base_patch16_clip_224", None, True): 79.508,
    ("vit_base_patch16_clip_224", 0.1, False): 24.798, ("vit_base_patch16_clip_224", 0.1, True): 25.175,
    ("vit_base_patch16_clip_224", 0.7, False): 50.174, ("vit_base_patch16_clip_224", 0.7, True): 50.864,
    ("deit3_base_patch16_224", None, False): 78.532,
    ("deit3_base_patch16_224", 0.1, False): 24.802, ("deit3_base_patch16_224", 0.1, True): 25.180,
    ("deit3_base_patch16_224", 0.7, False): 50.183, ("deit3_base_patch16_224", 0.7, True): 50.873,
}


def entries(method: str | None, kr: float | None, clca: bool) -> list[str]:
    out = [f"{{name: token_reduction, method: {method}, keep_rate: {kr}, locations: [3, 6, 9]}}"] if method else []
    return out + (["{name: clca}"] if clca else [])


def build(name: str, img: int, plugins: list[str], **kw):
    m = timm.create_model(name, img_size=img, **kw).eval()
    if plugins:
        m = apply_plugins(m, load_config(overrides=[f"model.plugins=[{', '.join(plugins)}]"]).model.plugins)
    return m


def schedules() -> list[dict]:
    rows = []
    for img in (224, 448):
        for method in METHODS:
            for kr in (0.1, 0.25, 0.5, 0.7):
                for clca in (False, True):
                    torch.manual_seed(0)
                    m = build("vit_base_patch16_224", img, entries(method, kr, clca), embed_dim=32, num_heads=2,
                              num_classes=10)
                    with torch.no_grad():
                        m(torch.rand(1, 3, img, img))
                    got = m.token_path.last_counts
                    walk, _ = token_schedule(method, kr, (img // 16) ** 2, clca=clca)
                    rows.append({"img": img, "method": method, "kr": kr, "variant": "CLCA" if clca else "base",
                                 "tokens": [a for a, _ in got], "mlp_3_6_9": [got[i][1] for i in (3, 6, 9)],
                                 "walk": walk, "match": [a for a, _ in got] == walk})
    return rows


def macs() -> list[dict]:
    rows = []
    for name in ("vit_base_patch16_clip_224", "deit3_base_patch16_224"):
        for kr in (None, 0.1, 0.7):
            for clca in (False, True):
                t = time.time()
                m = build(name, 448, entries("evit" if kr else None, kr, clca), num_classes=1110)
                n = count_macs(m, 448)
                ref = MAC_REF.get((name, kr, clca))
                rows.append({"model": name, "method": "evit" if kr else "none", "kr": kr or 1.0,
                             "variant": "CLCA" if clca else "base", "macs": n, "gmacs": round(n / 1e9, 3),
                             "ref_gmacs": ref, "params": count_params(m), "seconds": round(time.time() - t, 1)})
                print(rows[-1], flush=True)
    return rows


def spec_rows(spec: Path) -> list[tuple]:
    """(method, img, kr, variant, gmacs_ref) of every row of spec §8.2-8.10."""
    import re

    text = spec.read_text()
    sec = text[text.index("### 8.2"):text.index("## 9. Cost")]
    names = {"8.2": None, "8.3": "evit", "8.4": "topk", "8.5": "dynamicvit", "8.6": "ats", "8.7": "tome",
             "8.8": "sit", "8.9": "patchmerger", "8.10": "dpcknn"}
    rows, method = [], None
    for line in sec.splitlines():
        m = re.match(r"### (8\.\d+)", line)
        if m:
            method = names[m.group(1)]
        elif line.startswith(("| 224", "| 448")):
            c = [x.strip() for x in line.strip("|").split("|")]
            rows.append((method, int(c[0]), float(c[1]), c[2], float(c[-2].split()[0])))
    return rows


def all_macs(spec: Path, sizes: list[int], keep_rates: list[float]) -> list[dict]:
    rows = []
    for method, img, kr, variant, ref in spec_rows(spec):
        if img not in sizes or (method is not None and kr not in keep_rates):
            continue
        m = build("vit_base_patch16_clip_224", img, entries(method if kr != 1.0 else None, kr, variant == "CLCA"),
                  num_classes=1110)
        torch.manual_seed(0)
        n = count_macs(m, img)
        rows.append({"model": "vit_base_patch16_clip_224", "method": method or "none", "kr": kr, "variant": variant,
                     "img": img, "macs": n, "gmacs": round(n / 1e9, 3), "ref_gmacs": ref,
                     "within_0.005": abs(n / 1e9 - ref) <= 0.005})
        print(rows[-1], flush=True)
    return rows


def markdown(sched: list[dict], mac: list[dict], every: list[dict] | None = None, command: str = "") -> str:
    lines = ["# CLCA counts", "", f"Command: `{command}`; timm " + timm.__version__
             + ", torch " + torch.__version__ + ".", ""]
    if every:
        ok = sum(r["within_0.005"] for r in every)
        lines += ["## Spec §8 GMACs ref cells (vit_base_patch16_clip_224, K = 1,110)", "",
                  f"{ok}/{len(every)} within 0.005 G (ATS references are thop counts without attention).", "",
                  "| px | method | kr | variant | GMACs | reference GMACs | within 0.005 |",
                  "|---|---|---|---|---|---|---|"]
        for r in every:
            lines.append(f"| {r['img']} | {r['method']} | {r['kr']} | {r['variant']} | {r['macs'] / 1e9:.3f} | "
                         f"{r['ref_gmacs']:.3f} | {'yes' if r['within_0.005'] else 'no'} |")
        lines.append("")
    if mac:
        lines += ["## MACs and parameters at 448 px (K = 1,110, EViT at blocks 3/6/9)", "",
                  "| backbone | method | kr | variant | GMACs | reference GMACs | params |",
                  "|---|---|---|---|---|---|---|"]
        for r in mac:
            ref = f"{r['ref_gmacs']:.3f}" if r["ref_gmacs"] is not None else "—"
            lines.append(f"| {r['model']} | {r['method']} | {r['kr']} | {r['variant']} | {r['macs'] / 1e9:.3f} | "
                         f"{ref} | {r['params']:,} |")
        lines.append("")
    if not sched:
        return "\n".join(lines) + "\n"
    ok = sum(r["match"] for r in sched)
    lines += ["## Token schedules (tokens entering blocks 0-11; ATS: realised, walk = upper bound)", "",
              f"{ok}/{len(sched)} rows equal the closed-form walk of spec §7.", "",
              "| px | method | kr | variant | tokens entering blocks 0-11 | MLP at 3/6/9 | = walk |",
              "|---|---|---|---|---|---|---|"]
    for r in sched:
        lines.append(f"| {r['img']} | {r['method']} | {r['kr']} | {r['variant']} | {' '.join(map(str, r['tokens']))} | "
                     f"{' '.join(map(str, r['mlp_3_6_9']))} | {'yes' if r['match'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path.home() / ".cache/fgir/bench/clca_counts"))
    ap.add_argument("--skip-macs", action="store_true", help="only the token schedules (seconds, not minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--all-macs", default="", help="path of shared/specs/clca.md: count every §8 GMACs ref cell")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="with --all-macs")
    ap.add_argument("--keep-rates", type=float, nargs="+", default=[0.1, 0.25, 0.5, 0.7], help="with --all-macs")
    a = ap.parse_args()
    import sys

    command = "python benchmarks/clca_counts.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(a.threads)
    out = Path(a.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if a.all_macs:
        every = all_macs(Path(a.all_macs), a.sizes, a.keep_rates)
        (out / "spec_macs.json").write_text(json.dumps(every, indent=1))
        (out / "spec_macs.md").write_text(markdown([], [], every, command))
        print(f"wrote {out / 'spec_macs.md'}")
        return
    mac = [] if a.skip_macs else macs()
    sched = schedules()
    (out / "counts.json").write_text(json.dumps({"macs": mac, "schedules": sched}, indent=1))
    (out / "counts.md").write_text(markdown(sched, mac, command=command.strip()))
    print(f"wrote {out / 'counts.md'}")


if __name__ == "__main__":
    main()
