"""GPU smoke test: the CUDA / fp16 paths every paper recipe uses, which no CPU test can reach.

    python benchmarks/gpu_smoke.py [--device cuda] [--out bench_out/gpu_smoke]

Checks, each printed as PASS / FAIL with its numbers:
  1. fp16 TGDA: a tiny CAL teacher (lrnet14 + the cal plug-in) and one TGDA student epoch, both
     with optim.amp=fp16 (GradScaler) on the built-in font set (no download); losses finite,
     checkpoints written, student evaluated.
  2. exact resume on CUDA: 2 epochs straight vs 1 epoch + ``--resume`` for the second; the final
     weights must be identical (cuDNN deterministic mode; reports the max |diff|).
  3. ``fgir cost --throughput`` on CUDA: img/s, latency and peak allocator memory of resnet18 at 224,
     batch 64.
``--device cpu`` runs the same script in fp32 (a dry run of the script itself; CPU bf16 convolutions
are too slow on machines without AMX).
Exit code 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import traceback
from pathlib import Path

import torch

from fgir import load_config
from fgir.benchmarks.cost import model_cost
from fgir.engine import checkpoint as ckpt
from fgir.engine.train import train


def _common(out: Path, device: str, amp: str) -> list[str]:
    return ["data.name=fonts", "data.img_size=64", "data.resize_ratio=1.0", "data.hflip=false",
            "optim.batch_size=32", "optim.warmup_epochs=0", "optim.lr=1e-3", "run.progress=false", "data.val_split=",
            f"run.device={device}", f"optim.amp={amp}", "run.max_steps_per_epoch=20", f"run.output_dir={out}"]


def check_tgda(out: Path, device: str, amp: str) -> dict:
    common = _common(out, device, amp)
    teacher = train(load_config(overrides=common + [
        "model.name=lrnet14", "model.plugins=[{name: cal, num_maps: 8, logit_scale: 10}]", "task.name=cal",
        "optim.epochs=1", "optim.label_smoothing=0", "run.name=teacher", "data.test_split="]))
    student = train(load_config(overrides=common + [
        "model.name=lrnet14", "task.name=tgda", f"task.teacher={out / 'teacher'}", "task.student_img_size=32",
        "optim.epochs=1", "run.name=student"]))
    rows = [json.loads(line) for line in (out / "student" / "metrics.jsonl").read_text().splitlines()]
    finite = all(math.isfinite(r["train_loss"]) for r in rows)
    ok = finite and (out / "student" / "last.safetensors").is_file() and "test_top1" in student
    return {"ok": ok, "teacher_epochs": teacher["epochs"], "student_test_top1": student.get("test_top1"),
            "train_loss": rows[-1]["train_loss"], "loss_components": {k: v for k, v in rows[-1].items()
                                                                      if k.startswith("train_loss_")}}


def check_resume(out: Path, device: str, amp: str) -> dict:
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    common = _common(out, device, amp) + ["model.name=resnet18", "data.test_split=", "run.max_steps_per_epoch=10"]
    train(load_config(overrides=common + ["optim.epochs=2", "run.name=straight"]))
    # the same 2-epoch run, stopped after epoch 1 (as if killed), then continued with --resume
    train(load_config(overrides=common + ["optim.epochs=2", "run.name=resumed", "run.time_budget_s=1e-6"]))
    cfg = load_config([str(out / "resumed" / "config.yaml")], ["run.time_budget_s=0"])
    train(cfg, resume=str(out / "resumed"))
    a = ckpt.read_tensors(out / "straight" / "last.safetensors")
    b = ckpt.read_tensors(out / "resumed" / "last.safetensors")
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    return {"ok": diff == 0.0 and set(a) == set(b), "max_abs_diff": diff}


def check_cost(device: str) -> dict:
    cuda = device.startswith("cuda")  # the CPU dry run measures a small case
    row = model_cost("resnet18", 224 if cuda else 64, 1000, throughput=True, device=device,
                     batch_size=64 if cuda else 8)
    ok = row["img_per_s"] > 0 and (device == "cpu" or (row["peak_mem_allocated_mib"] or 0) > 0)
    return {"ok": ok, **{k: row[k] for k in ("img_per_s", "latency_ms_median", "peak_mem_allocated_mib", "gmacs")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="bench_out/gpu_smoke")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("FAIL: --device cuda but CUDA is not available (use --device cpu for a dry run).")
        return 1
    amp = "fp16" if a.device.startswith("cuda") else "none"
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if amp == "fp16" else "cpu",
           "amp": amp}
    print(f"gpu_smoke: {env}", flush=True)
    results, failed = {}, 0
    for name, fn in [(f"{amp} TGDA epoch", lambda: check_tgda(out / "tgda", a.device, amp)),
                     ("exact resume", lambda: check_resume(out / "resume", a.device, amp)),
                     ("cost throughput", lambda: check_cost(a.device))]:
        try:
            res = fn()
        except Exception as e:  # a smoke test reports every failure and goes on
            res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        results[name] = res
        failed += not res["ok"]
        print(f"{'PASS' if res['ok'] else 'FAIL'}: {name}: "
              + json.dumps({k: v for k, v in res.items() if k not in ("ok", "traceback")}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"env": env, "results": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
