"""TGDA on the bundled CUB-100, CPU scale, with the protocol of specs/datasets.md.

    python benchmarks/tgda_cub100.py --root ../shared/data/cub100 [--seeds 0 1 2] [--stages tune final]

Every stage is a plain `fgir train` run; a stage whose run folder already has final.json is reused,
so an interrupted benchmark continues where it stopped (run the same command again).

1. ``tune`` (model selection; test is never evaluated): val is carved from cub100's train_val by the
   reference rule (first 80 % of each class to train, the rest to val). A CAL teacher is trained on
   train only, then TGDA students (LRNet-14, 64 px, seed 0) for each KD temperature in
   ``--temperatures`` are trained on train and scored on val at the last epoch. The temperature with
   the best val top-1 is chosen (ties: the first listed, the reference 0.7). Everything else is
   fixed a priori: the student recipe is the foundation's CPU recipe, w_ce = w_kd = 1.
2. ``final``: the teacher is retrained on train_val; students are trained on train_val and reported
   on test at the last epoch (no selection): cross-entropy and TGDA over ``--seeds`` (mean ± sample
   std), plain KD (weight 1 on the raw view, the reference KL_batchmean·T²) on the first seed, and
   cross-entropy trained for the same wall-clock time as the TGDA student (more epochs, same
   schedule shape) on the first seed.
Writes <out>/results.json and <out>/results.md.

Each finished stage's result is also written to ``--record`` (committed in the repository), so the
benchmark continues on a machine that lost ``--out``: recorded stages are not trained again, except
the teacher when a student stage that needs it is still to run (it is retrained from the same seed
and the script says whether it reproduces the recorded result).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fgir.benchmarks import stages
from fgir.benchmarks.cost import model_cost

TEACHER = "configs/recipes/cpu/cub100_cal_teacher_resnet18os16_64.yaml"
STUDENT = "configs/recipes/cpu/cub100_student_lrnet14_64.yaml"


RECORD = Path(__file__).parent / "results" / "tgda_cub100_stages.json"


def summarise(runs: list[dict], key: str = "test_top1") -> dict:
    accs = [r[key] for r in runs]
    return {key: accs, "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "train_time_s": [r["train_time_s"] for r in runs], "epochs": [r["epochs"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--stages", nargs="+", default=["tune", "final"], choices=["tune", "final"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20, help="student epochs (CE, KD, TGDA)")
    ap.add_argument("--teacher-epochs", type=int, default=25)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 2.0], help="KD temperatures tuned on val")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path.home() / ".cache" / "fgir" / "bench" / "tgda_cub100_v2"),
                    help="stage folders (outside the work tree, so a later session on this machine can continue)")
    ap.add_argument("--record", default=str(RECORD), help="JSON record of finished stages (kept in the work tree)")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: write the finished stages to --record and stop at the first unfinished one")
    a = ap.parse_args()
    record = Path(a.record)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"data.root={a.root}", "run.progress=false", f"run.threads={a.threads}"]
    tune_split = ["data.train_split=train", "data.val_split=val", "data.test_split="]
    final_split = ["data.train_split=train_val", "data.val_split=", "data.test_split=test"]
    report: dict = {"protocol": __doc__.split("\n\n", 1)[1].strip(), "epochs": a.epochs,
                    "teacher_epochs": a.teacher_epochs, "torch_threads": a.threads, "seeds": a.seeds}
    t0 = time.time()

    def kd(teacher: str, temperature: float, views: str) -> list[str]:
        return ["task.name=tgda", f"task.teacher={out / teacher}", f"task.temperature={temperature}",
                "task.w_kd=1.0", f"task.views={views}"]

    def run_stage(name: str, cfg_file: str, overrides: list[str], dependants: dict | None = None) -> dict:
        """``dependants``: stages (name -> (config, overrides)) that load this stage's checkpoint."""
        pending = [n for n, (c, o) in (dependants or {}).items() if stages.recorded(n, [c], o, out, record) is None]
        if a.collect and stages.recorded(name, [cfg_file], overrides, out, record) is None:
            raise SystemExit(f"--collect: stage {name} is not finished; the finished ones are in {record}.")
        return stages.run_stage(name, [cfg_file], overrides, out, record=record, need_checkpoint=bool(pending))

    chosen = a.temperatures[0]
    if "tune" in a.stages:
        students = {f"tune_tgda_T{t:g}": (STUDENT, common + tune_split + kd("tune_teacher", t, "[crop,drop]")
                                          + [f"optim.epochs={a.epochs}", "run.seed=0"]) for t in a.temperatures}
        res = run_stage("tune_teacher", TEACHER, common + tune_split + [f"optim.epochs={a.teacher_epochs}"], students)
        tune = {"teacher_val_top1": res["val_top1_last"], "tgda_val_top1": {}}
        for t in a.temperatures:
            name = f"tune_tgda_T{t:g}"
            tune["tgda_val_top1"][f"{t:g}"] = run_stage(name, *students[name])["val_top1_last"]
        chosen = max(a.temperatures, key=lambda t: (tune["tgda_val_top1"][f"{t:g}"], -a.temperatures.index(t)))
        tune["chosen_temperature"] = chosen
        report["tune"] = tune
        print(f"chosen on val: T={chosen:g} ({tune['tgda_val_top1']})", flush=True)
    if "final" in a.stages:
        if "tune" not in a.stages:
            prev = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
            chosen = prev.get("tune", {}).get("chosen_temperature", chosen)
            report["tune"] = prev.get("tune")
        s0 = a.seeds[0]
        ways = {"ce": [], "tgda": kd("teacher", chosen, "[crop,drop]")}
        student = {f"{way}_s{seed}": (STUDENT, common + final_split + ov
                                      + [f"optim.epochs={a.epochs}", f"run.seed={seed}"])
                   for seed in a.seeds for way, ov in ways.items()}
        student[f"kd_s{s0}"] = (STUDENT, common + final_split + kd("teacher", chosen, "[]")
                                + [f"optim.epochs={a.epochs}", f"run.seed={s0}"])
        teacher = run_stage("teacher", TEACHER, common + final_split + [f"optim.epochs={a.teacher_epochs}"],
                            {n: v for n, v in student.items() if not n.startswith("ce_")})
        runs: dict[str, list[dict]] = {w: [] for w in ways}
        for seed in a.seeds:
            for way in ways:
                runs[way].append(run_stage(f"{way}_s{seed}", *student[f"{way}_s{seed}"]))
        runs["kd"] = [run_stage(f"kd_s{s0}", *student[f"kd_s{s0}"])]
        # same wall-clock as the TGDA student: CE epochs scaled by the measured time ratio
        ratio = runs["tgda"][0]["train_time_s"] / runs["ce"][0]["train_time_s"]
        long_epochs = max(a.epochs, round(a.epochs * ratio))
        runs["ce_equal_time"] = [run_stage(f"ce_e{long_epochs}_s{s0}", STUDENT, common + final_split
                                           + [f"optim.epochs={long_epochs}", f"run.seed={s0}"])]
        t_cost = model_cost("resnet18", 64, 100, plugins=[{"name": "cal", "logit_scale": 10.0}], output_stride=16)
        s_cost = model_cost("lrnet14", 64, 100)
        report.update({"chosen_temperature": chosen, "teacher": {"test_top1": teacher["test_top1"],
                                                                  "train_time_s": teacher["train_time_s"],
                                                                  **t_cost},
                       "student_cost": s_cost, "summary": {w: summarise(r) for w, r in runs.items()},
                       "time_ratio_tgda_over_ce": ratio})
        lines = ["| stage | seeds | test top-1 (%) | epochs | train wall-clock |", "|---|---|---|---|---|",
                 f"| CAL teacher (ResNet-18 os16, scratch) | {s0} | {teacher['test_top1']:.2f} | "
                 f"{a.teacher_epochs} | {teacher['train_time_s'] / 60:.1f} min |"]
        labels = {"ce": "LRNet-14, cross-entropy", "tgda": f"LRNet-14, TGDA (T {chosen:g}, w_kd 1)",
                  "kd": f"LRNet-14, plain KD (T {chosen:g}, weight 1)",
                  "ce_equal_time": "LRNet-14, cross-entropy, TGDA's wall-clock"}
        for way in ("ce", "kd", "tgda", "ce_equal_time"):
            s = report["summary"][way]
            n = len(s["test_top1"])
            acc = f"{s['mean']:.2f} ± {s['std']:.2f}" if n > 1 else f"{s['mean']:.2f}"
            seeds = " ".join(str(x) for x in a.seeds[:n])
            lines.append(f"| {labels[way]} | {seeds} | {acc} | {s['epochs'][0]} | "
                         f"{statistics.mean(s['train_time_s']) / 60:.1f} min |")
        report["table"] = "\n".join(lines)
        (out / "results.md").write_text(report["table"] + "\n")
        print(report["table"])
    report["total_wall_s"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
