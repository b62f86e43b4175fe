"""TGDA on the bundled CUB-100, CPU scale: teacher, then one student trained three ways.

    python benchmarks/tgda_cub100.py --root ../shared/data/cub100 [--seeds 0] [--epochs 20] [--teacher-epochs 25]

Stages (each a plain `fgir train` run; a stage whose run folder already has final.json is
reused, so an interrupted benchmark continues where it stopped):
  1. CAL teacher (configs/recipes/cpu/cub100_cal_teacher_resnet18os16_64.yaml), from scratch.
  2. Student LRNet-14 at 64 px (configs/recipes/cpu/cub100_student_lrnet14_64.yaml):
     a. plain cross-entropy,
     b. plain KD from the teacher (task.tgda.views=[]),
     c. TGDA (teacher-guided crop + drop views + KD).
Writes bench_out/tgda_cub100/results.json and a markdown table (test top-1 at the last epoch,
mean ± sample std over seeds, student params and GMACs, wall-clock per stage).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fgir import load_config
from fgir.benchmarks.cost import model_cost
from fgir.engine.train import train

TEACHER = "configs/recipes/cpu/cub100_cal_teacher_resnet18os16_64.yaml"
STUDENT = "configs/recipes/cpu/cub100_student_lrnet14_64.yaml"


def run_stage(name: str, cfg_file: str, overrides: list[str], out: Path) -> dict:
    run_dir = out / name
    final = run_dir / "final.json"
    if final.is_file():
        print(f"[{name}] reusing {final}")
        return json.loads(final.read_text())
    cfg = load_config([cfg_file], overrides + [f"run.output_dir={out}", f"run.name={name}"])
    print(f"[{name}] training ...", flush=True)
    res = train(cfg)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=20, help="student epochs (same for all three ways)")
    ap.add_argument("--teacher-epochs", type=int, default=25)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--w-kd", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_out/tgda_cub100")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    common = [f"data.root={a.root}", "run.progress=false", f"run.threads={a.threads}"]
    t0 = time.time()
    teacher = run_stage("teacher", TEACHER, common + [f"optim.epochs={a.teacher_epochs}"], out)
    teacher_dir = out / "teacher"
    kd = ["task.name=tgda", f"task.tgda.teacher={teacher_dir}", f"task.tgda.temperature={a.temperature}",
          f"task.tgda.w_kd={a.w_kd}"]
    ways = {"ce": [], "kd": kd + ["task.tgda.views=[]"], "tgda": kd + ["task.tgda.views=[crop,drop]"]}
    results: dict = {"teacher": teacher, "students": {w: [] for w in ways}}
    for seed in a.seeds:
        for way, ov in ways.items():
            res = run_stage(f"{way}_s{seed}", STUDENT,
                            common + ov + [f"optim.epochs={a.epochs}", f"run.seed={seed}"], out)
            results["students"][way].append(res)
    t_cost = model_cost("resnet18", 64, 100, task="cal", output_stride=16)
    s_cost = model_cost("lrnet14", 64, 100)
    summary = {}
    for way, runs in results["students"].items():
        accs = [r["test_top1"] for r in runs]
        summary[way] = {"test_top1": accs, "mean": statistics.mean(accs),
                        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                        "train_time_s": [r["train_time_s"] for r in runs]}
    report = {"teacher": {"test_top1": teacher["test_top1"], "train_time_s": teacher["train_time_s"], **t_cost},
              "student_cost": s_cost, "summary": summary, "seeds": a.seeds, "epochs": a.epochs,
              "teacher_epochs": a.teacher_epochs, "temperature": a.temperature, "w_kd": a.w_kd,
              "total_wall_s": round(time.time() - t0, 1), "torch_threads": a.threads}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    lines = ["| stage | test top-1 (%) | params | GMACs @64 | train wall-clock |", "|---|---|---|---|---|",
             f"| CAL teacher (ResNet-18 os16, scratch) | {teacher['test_top1']:.2f} | {t_cost['params']:,} | "
             f"{t_cost['gmacs']:.3f} | {teacher['train_time_s'] / 60:.1f} min |"]
    for way, s in summary.items():
        acc = f"{s['mean']:.2f} ± {s['std']:.2f}" if len(s["test_top1"]) > 1 else f"{s['mean']:.2f}"
        lines.append(f"| LRNet-14 {way.upper()} | {acc} | {s_cost['params']:,} | {s_cost['gmacs']:.3f} | "
                     f"{statistics.mean(s['train_time_s']) / 60:.1f} min |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
