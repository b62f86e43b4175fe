"""GLSim vs its plain backbone on the bundled CUB-100, CPU scale (fine-tuning from our ViTFS-T run).

    python benchmarks/glsim_cub100.py --root ../shared/data/cub100 [--seeds 0 1 2] [--epochs 10]
        [--backbone ~/.cache/fgir/bench/vit_backbone/cub100_vitfs_tiny_128]

Both arms start from the same ViTFS-T checkpoint (configs/recipes/cpu/cub100_vitfs_tiny_128.yaml,
trained from scratch on train_val; ImageNet weights cannot be downloaded here) and are fine-tuned
at 128 px on train_val for the same number of epochs, then scored once on test at the last epoch:

* ``vitfs``: the backbone with its own GAP head (continued training: its head is already trained);
* ``vitfs_newhead``: the same with a fresh classifier (``model.checkpoint_head=false``), the control
  for GLSim, whose aggregator and zero-initialised head also start untrained;
* ``glsim``: GLSim on that backbone (ViTFS has no CLS token, so ``crop_cls: shared``; the global
  token is the GAP vector), reference box, O = 8 of the 8 x 8 patches, 1-block aggregator, zero head.

Every hyper-parameter is fixed a priori, none is chosen on test (and none on val: there is no
tuning stage): the backbone recipe's augmentation (RandAugment m9, label smoothing 0.1, DropPath
0.1), AdamW lr 2e-4 (1/5 of the from-scratch lr), wd 0.05, batch 64, 1 warm-up epoch, cosine;
the GLSim aggregator uses DropPath 0.1 like the paper's medaugs. Seeds 0, 1, 2 -> mean ± sample std.

Every stage is a plain training run under ``--out`` (default ~/.cache/fgir/bench/glsim_cub100/); a
stage whose folder has final.json is reused, a started one is resumed, so re-running the same
command continues an interrupted benchmark. Writes <out>/results.json and <out>/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from fgir.benchmarks import stages
from fgir.benchmarks.cost import model_cost

RECIPE = "configs/recipes/cpu/cub100_vitfs_tiny_128.yaml"
GLSIM = {"name": "glsim", "top_o": 8, "crop_cls": "shared", "crop_box": "reference", "aggregator_depth": 1,
         "aggregator_drop_path": 0.1, "head_init": "zeros"}
ARMS = {"vitfs": [], "glsim": [GLSIM], "vitfs_newhead": []}
ARM_OVERRIDES = {"vitfs_newhead": ["model.checkpoint_head=false"]}
ARM_NAMES = {"vitfs": "{m} (backbone head kept)", "glsim": "{m} + GLSim (new aggregator + head)",
             "vitfs_newhead": "{m} (new head)"}
MODEL_LABELS = {"vitfs_tiny": "ViTFS-T", "vit_tiny_patch16_224": "ViT-T (CLS token)"}


def run_stage(name: str, overrides: list[str], out: Path) -> dict:
    return stages.run_stage(name, [RECIPE], overrides, out)


def plugins_override(plugins: list[dict]) -> str:
    body = ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in p.items()) + "}" for p in plugins)
    return f"model.plugins=[{body}]"


def no_crop_top1(run: Path) -> float:
    """Test top-1 of a finished GLSim run with the one-pass ``no-crop`` inference (what the crop
    pass adds); cached in ``<run>/eval_test_no-crop``."""
    from fgir.engine.evaluate_cli import evaluate_checkpoint

    cached = run / "eval_test_no-crop" / "test_metrics.json"
    if cached.is_file():
        return float(json.loads(cached.read_text())["top1"])
    res = evaluate_checkpoint(str(run), split="test", out=str(cached.parent), inference="no-crop",
                              progress=False, count_macs=False)
    return float(res["top1"])


def add_no_crop_row(report: dict, lines: list[str], glsim_runs: list[Path], plain_gmacs: float) -> None:
    """The GLSim runs again with one-pass ``no-crop`` inference, as a table row."""
    nocrop = [no_crop_top1(run) for run in glsim_runs]
    std = statistics.stdev(nocrop) if len(nocrop) > 1 else 0.0
    report["glsim_no_crop"] = {"test_top1": nocrop, "mean": statistics.mean(nocrop), "std": std}
    lines.append(f"| the same GLSim runs, `no-crop` inference (one pass) | {statistics.mean(nocrop):.2f} ± {std:.2f} | "
                 f"{', '.join(f'{v:.2f}' for v in nocrop)} | {report['arms']['glsim']['params']:,} | "
                 f"{plain_gmacs:.4f} (+ aggregator) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="CUB-100 root (../shared/data/cub100)")
    ap.add_argument("--backbone", default="", help="the backbone run (default: vit_backbone.py's folder for --model)")
    ap.add_argument("--model", default="vitfs_tiny",
                    help="the backbone's model (vit_tiny_patch16_224: a CLS-token ViT-T from vit_backbone.py --model)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="", help="stage folder (default ~/.cache/fgir/bench/glsim_cub100, with "
                    "_<model> appended for another --model)")
    ap.add_argument("--override", nargs="*", default=[], help="extra config overrides for every stage (smoke runs)")
    a = ap.parse_args()
    bench = Path.home() / ".cache" / "fgir" / "bench"
    tag = "" if a.model == "vitfs_tiny" else f"_{a.model}"
    backbone = Path(a.backbone or bench / "vit_backbone" / f"cub100_{a.model}_128").expanduser()
    label = MODEL_LABELS.get(a.model, a.model)
    if not (backbone / "final.json").is_file():
        raise SystemExit(f"backbone run {backbone} is not finished (no final.json); train it first with\n"
                         f"  python benchmarks/vit_backbone.py --root {a.root} --model {a.model}")
    torch.set_num_threads(a.threads)
    out = Path(a.out or bench / f"glsim_cub100{tag}").expanduser()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"data.root={a.root}", f"model.name={a.model}", f"model.checkpoint={backbone}",
              f"optim.epochs={a.epochs}", "optim.lr=2.0e-4", "optim.warmup_epochs=1",
              f"run.threads={a.threads}", *a.override]
    arms = {k: ARMS[k] for k in ARMS if k in a.arms}
    runs: dict[str, list[dict]] = {k: [] for k in arms}
    for seed in a.seeds:
        for arm, plugins in arms.items():
            over = (common + [f"run.seed={seed}"] + ([plugins_override(plugins)] if plugins else [])
                    + ARM_OVERRIDES.get(arm, []))
            runs[arm].append(run_stage(f"{arm}_s{seed}", over, out))
    report: dict = {"model": a.model, "epochs": a.epochs, "seeds": a.seeds, "backbone": str(backbone), "arms": {}}
    lines = [f"GLSim on CUB-100 ({label} from {backbone.name}, 128 px, {a.epochs} fine-tuning epochs, "
             f"seeds {a.seeds}, test top-1 at the last epoch)", "",
             "| Model | test top-1 (mean ± std) | per seed | Params | GMACs @128 |", "|---|---|---|---|---|"]
    missing = [f"{arm}_s{s}" for arm in arms for s, r in zip(a.seeds, runs[arm]) if "test_top1" not in r]
    if missing:
        raise SystemExit(f"stages {missing} have no test_top1 (data.test_split empty?); no table written.")
    for arm, plugins in arms.items():
        top1 = [float(r["test_top1"]) for r in runs[arm]]
        cost = model_cost(a.model, 128, 100, plugins=plugins)
        std = statistics.stdev(top1) if len(top1) > 1 else 0.0
        report["arms"][arm] = {"test_top1": top1, "mean": statistics.mean(top1), "std": std,
                               "params": cost["params"], "gmacs": cost["gmacs"]}
        lines.append(f"| {ARM_NAMES[arm].format(m=label)} | {statistics.mean(top1):.2f} ± "
                     f"{std:.2f} | {', '.join(f'{v:.2f}' for v in top1)} | {cost['params']:,} | "
                     f"{cost['gmacs']:.4f} |")
    if "glsim" in arms:
        add_no_crop_row(report, lines, [out / f"glsim_s{s}" for s in a.seeds], model_cost(a.model, 128, 100)["gmacs"])
    report["table"] = "\n".join(lines)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(report["table"] + "\n")
    print(report["table"])


if __name__ == "__main__":
    main()
