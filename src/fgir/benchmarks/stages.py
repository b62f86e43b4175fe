"""Resumable benchmark stages: each stage is one plain ``fgir train`` run in ``<out>/<name>``.

A stage whose folder holds ``final.json`` is reused; a folder that exists without it (a stage
killed mid-way, even in its first epoch) is continued with ``--resume`` semantics, never duplicated.
So a benchmark script made of stages continues where it stopped when it is run again, across
sessions, as long as ``out`` survives (the scripts default to ``~/.cache/fgir/bench/<name>``).

A stage record (``record=``, a JSON file kept in the work tree and committed) also survives the
loss of ``out``: each finished stage's result is written to it together with the arguments that
produced it, and a recorded stage with the same arguments is not trained again, unless a later
stage needs its checkpoint (``need_checkpoint=True``): then it is retrained and the script says
whether the new result equals the recorded one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..utils import atomic_path


def _signature(config_files: list[str], overrides: list[str], out: Path) -> list[str]:
    """The arguments that define a stage, independent of where the data and the stage folders lie."""
    skip = ("data.root=", "run.progress=")
    return [str(c) for c in config_files] + [o.replace(str(out), "<out>") for o in overrides if not o.startswith(skip)]


def read_record(record: Path | None) -> dict:
    if record is None or not Path(record).is_file():
        return {}
    try:
        data = json.loads(Path(record).read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{record}: not a stage record ({e}); expected a JSON object of stage results") from None
    if not isinstance(data, dict):
        raise SystemExit(f"{record}: not a stage record; expected a JSON object of stage results")
    return data


def _write_record(record: Path, name: str, entry: dict) -> None:
    data = read_record(record)
    data[name] = entry
    with atomic_path(record) as tmp:
        Path(tmp).write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")


def _entry(name: str, sig: list[str], record: Path | None) -> dict | None:
    """The record's entry of stage ``name`` when it was produced by the same arguments ``sig``."""
    entry = read_record(record).get(name)
    return entry if entry and entry.get("args") == sig else None


def recorded(name: str, config_files: list[str], overrides: list[str], out: Path,
             record: Path | None) -> dict | None:
    """The stage's finished result: from its folder's final.json or from the record (same arguments)."""
    final = out / name / "final.json"
    if final.is_file():
        return json.loads(final.read_text())
    entry = _entry(name, _signature(config_files, overrides, out), record)
    return entry["result"] if entry else None


def _last_val(out: Path, name: str) -> float | None:
    path = out / name / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    vals = [r["val_top1"] for r in rows if r.get("val_top1") is not None]
    return float(vals[-1]) if vals else None


def run_stage(name: str, config_files: list[str], overrides: list[str], out: Path,
              record: Path | None = None, need_checkpoint: bool = False) -> dict:
    """Train (or reuse, or continue) stage ``name``; returns its ``final.json`` (plus ``val_top1_last``
    when it was scored on val).

    With ``record``, a stage recorded with the same arguments is reused without its folder unless
    ``need_checkpoint``; every finished stage is (re)written to the record.
    """
    from ..config import load_config
    from ..engine.train import train

    final = out / name / "final.json"
    sig = _signature(config_files, overrides, out)
    entry = _entry(name, sig, record)
    final_existed = final.is_file()
    if final_existed:
        print(f"[{name}] reusing {final}", flush=True)
        res = json.loads(final.read_text())
    elif entry is not None and not need_checkpoint:
        print(f"[{name}] reusing the recorded result in {record}", flush=True)
        return entry["result"]
    else:
        cfg = load_config(list(config_files), list(overrides) + [f"run.output_dir={out}", f"run.name={name}"])
        print(f"[{name}] training ...", flush=True)
        t0 = time.time()
        res = train(cfg, resume=str(out / name) if (out / name / "config.yaml").is_file() else "")
        print(f"[{name}] done in {(time.time() - t0) / 60:.1f} min: "
              + (", ".join(f"{k} {v:.2f}" for k, v in res.items() if k.endswith("top1") and isinstance(v, float))
                 or "no test split"), flush=True)
    res = {k: v for k, v in res.items() if k != "run_dir"}
    val = _last_val(out, name)
    if val is not None:
        res["val_top1_last"] = val
    if record is not None:
        if entry is not None and not final_existed:
            old = {k: entry["result"].get(k) for k in ("test_top1", "val_top1_last") if k in entry["result"]}
            new = {k: res.get(k) for k in old}
            print(f"[{name}] recorded result {'reproduced' if old == new else 'DIFFERS'}: "
                  f"recorded {old}, now {new}", flush=True)
        _write_record(Path(record), name, {"args": sig, "result": res})
    return res


def last_val_top1(out: Path, name: str) -> float:
    """val top-1 of the last logged epoch of stage ``name`` (model selection reads val, never test)."""
    val = _last_val(out, name)
    if val is None:
        raise SystemExit(f"{out / name / 'metrics.jsonl'}: no val_top1 logged; the stage needs a val split")
    return val
