"""Resumable benchmark stages: each stage is one plain ``fgir train`` run in ``<out>/<name>``.

A stage whose folder holds ``final.json`` is reused; a folder that exists without it (a stage
killed mid-way, even in its first epoch) is continued with ``--resume`` semantics, never duplicated.
So a benchmark script made of stages continues where it stopped when it is run again, across
sessions, as long as ``out`` survives (the scripts default to ``~/.cache/fgir/bench/<name>``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def run_stage(name: str, config_files: list[str], overrides: list[str], out: Path) -> dict:
    """Train (or reuse, or continue) stage ``name``; returns its ``final.json``."""
    from ..config import load_config
    from ..engine.train import train

    final = out / name / "final.json"
    if final.is_file():
        print(f"[{name}] reusing {final}", flush=True)
        return json.loads(final.read_text())
    cfg = load_config(list(config_files), list(overrides) + [f"run.output_dir={out}", f"run.name={name}"])
    print(f"[{name}] training ...", flush=True)
    t0 = time.time()
    res = train(cfg, resume=str(out / name) if (out / name / "config.yaml").is_file() else "")
    print(f"[{name}] done in {(time.time() - t0) / 60:.1f} min: "
          + (", ".join(f"{k} {v:.2f}" for k, v in res.items() if k.endswith("top1") and isinstance(v, float))
             or "no test split"), flush=True)
    return res


def last_val_top1(out: Path, name: str) -> float:
    """val top-1 of the last logged epoch of stage ``name`` (model selection reads val, never test)."""
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return float(rows[-1]["val_top1"])
