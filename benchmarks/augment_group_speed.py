"""Cost of per-image RandAugment / TrivialAugment draws vs draws shared by groups of images.

    python benchmarks/augment_group_speed.py [--sizes 64 224] [--threads 1 2] [--repeats 7]

Times ``BatchTransform`` in train mode (random crop from the stored int(1.34 S) square, flip,
auto-augment, normalise) on a uint8 batch of 64, for ``rand-m9-n2`` and ``trivial`` with
``aug_group`` 1 (one draw per image, the default) and 4 (one draw per 4 images), plus the same
transform without auto-augment so the augmentation's own share is visible. Each repeat runs
``--batches`` batches of each variant in turn from the same generator seed (the same draws every
repeat), after ``--warmup`` untimed batches; the table shows the median repeat, per batch. Writes the rows to
--out as JSON and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from fgir.benchmarks.speed import environment
from fgir.data.transforms import BatchTransform, stored_size


def time_transforms(tfs: dict[str, BatchTransform], x: torch.Tensor, batches: int, repeats: int,
                    warmup: int) -> dict[str, float]:
    """Median over repeats of the seconds per batch of each transform. The transforms take turns
    within every repeat, so a change in machine load hits all of them alike."""
    gen = torch.Generator()
    for tf in tfs.values():
        for _ in range(warmup):
            tf(x, gen)
    runs: dict[str, list[float]] = {k: [] for k in tfs}
    for _ in range(repeats):
        for k, tf in tfs.items():
            gen.manual_seed(0)
            t0 = time.perf_counter()
            for _ in range(batches):
                tf(x, gen)
            runs[k].append((time.perf_counter() - t0) / batches)
    return {k: statistics.median(v) for k, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--augments", nargs="+", default=["rand-m9-n2", "trivial"])
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8, help="batches per timed repeat")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default="bench_out/augment_group_speed.json")
    a = ap.parse_args()
    threads = [t for t in a.threads if t <= (os.cpu_count() or 1)]
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for s in a.sizes:
            side = stored_size(s, 1.34)
            x = torch.randint(0, 256, (a.batch_size, 3, side, side), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))
            for aa in a.augments:
                tfs = {"no_augment_ms": BatchTransform(s, train=True)}
                tfs.update({f"group{g}_ms": BatchTransform(s, train=True, auto_augment=aa, aug_group=g)
                            for g in a.groups})
                secs = time_transforms(tfs, x, a.batches, a.repeats, a.warmup)
                row = {"augment": aa, "img_size": s, "threads": t, **{k: 1e3 * v for k, v in secs.items()}}
                rows.append(row)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    g0, g1 = a.groups[0], a.groups[-1]
    head = (f"| augment | px | threads | no augment ms | aug_group={g0} ms | aug_group={g1} ms | "
            f"speed-up {g1} vs {g0}: transform | augment part |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        t0, t1, b = r[f"group{g0}_ms"], r[f"group{g1}_ms"], r["no_augment_ms"]
        part = f"{(t0 - b) / (t1 - b):.2f}x" if t1 > b else "n/a"
        lines.append(f"| {r['augment']} | {r['img_size']} | {r['threads']} | {b:.1f} | {t0:.1f} | {t1:.1f} | "
                     f"{t0 / t1:.2f}x | {part} |")
    table = "\n".join(lines)
    env = environment("cpu", "fp32", a.batch_size, None, threads[-1] if threads else None)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "env": env, "args": vars(a)}, indent=2))
    print(f"\nBatchTransform train mode, batch {a.batch_size}, ms per batch (median of {a.repeats} repeats of "
          f"{a.batches} batches; {env['device_name']}, torch {env['torch']})\n")
    print(table)


if __name__ == "__main__":
    main()
