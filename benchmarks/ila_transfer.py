"""Parameter-efficient transfer of our ViTFS-T (CUB-100) to Flowers-12: ILA vs PEFT baselines.

    python benchmarks/ila_transfer.py [--backbone ~/.cache/fgir/bench/vit_backbone/cub100_vitfs_tiny_128]
        [--root ../shared/data/flowers12] [--epochs 20] [--seeds 1 10 100] [--methods ...]
        [--lr-grid 0.3 0.1 0.03 0.01] [--out ~/.cache/fgir/bench/ila_transfer]

Every method starts from the same frozen ViTFS-T run (``--backbone``, trained by
configs/recipes/cpu/cub100_vitfs_tiny_128.yaml) and trains for the same epochs with the recipe
configs/recipes/ila/ila_flowers12_vitfs_tiny_128.yaml (SGD momentum, batch 32, cosine, weak
augmentation). Methods: linear probe (head + registers), full fine-tuning, VPT-shallow, VPT-deep
(16 prompts: the 8x8 grid has 64 patches), LoRA (r 8 on q, v), ConvPass, ADPT, ILA (DS-only), ILA+
and ILA++.

Hyper-parameters: fixed a priori (PEFT and linear lr 0.1 as the ILA paper, full fine-tuning lr 0.01)
unless ``--lr-grid`` is given; then each method's lr is chosen on Flowers-12 *val* (train -> val,
seed 1, last epoch), and only the chosen lr is trained on train_val and scored on test. Test is
never used for any choice. Each stage is a run folder under ``--out``; a finished stage (final.json)
is reused and an interrupted one resumed, so the script can be re-run until the table is complete.
Writes ``--out``/ila_transfer.md (test top-1 mean ± sample std over seeds, trainable parameters,
GMACs at 128 px, mean train time) and .json.

Equal wall-clock (``--equal-time REF``): the cheaper methods of ``--equal-time-methods`` are also
trained for REF's mean train time, i.e. for round(epochs · t_REF / t_method) epochs (same recipe and
schedule shape, more epochs), over the same seeds; a second table compares them with REF. The
times come from the finished same-epoch stages, so nothing else should run beside those.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fgir.benchmarks import stages

RECIPE = "configs/recipes/ila/ila_flowers12_vitfs_tiny_128.yaml"
PEFT_TRAIN = "model.trainable=[plugins, head, reg_token]"
FINAL = ["data.train_split=train_val", "data.val_split=", "data.test_split=test"]  # reported runs
METHODS: dict[str, tuple[list[str], float]] = {  # name -> (overrides, a-priori lr)
    "linear": (["model.plugins=[]", "model.trainable=[head, reg_token]"], 0.1),
    "full_ft": (["model.plugins=[]", "model.trainable=[all]", "model.save=full"], 0.01),
    "vpt_shallow": (["model.plugins=[{name: vpt, num_prompts: 16}]", PEFT_TRAIN], 0.1),
    "vpt_deep": (["model.plugins=[{name: vpt, num_prompts: 16, deep: true}]", PEFT_TRAIN], 0.1),
    "lora": (["model.plugins=[{name: lora, rank: 8, targets: [q, v]}]", PEFT_TRAIN], 0.1),
    "convpass": (["model.plugins=[{name: convpass}]", PEFT_TRAIN], 0.1),
    "adpt": (["model.plugins=[{name: adapter}]", PEFT_TRAIN], 0.1),
    "ila_ds_only": (["model.plugins=[{name: ila, variant: ds_only}]", PEFT_TRAIN], 0.1),
    "ila_plus": (["model.plugins=[{name: ila, variant: ila_plus}]", PEFT_TRAIN], 0.1),
    "ila_pp": (["model.plugins=[{name: ila, variant: ila_pp}]", PEFT_TRAIN], 0.1),
}


def run_stage(name: str, overrides: list[str], out: Path) -> dict:
    return stages.run_stage(name, [RECIPE], overrides + ['run.progress=false'], out)


def last_val_top1(out: Path, name: str) -> float:
    return stages.last_val_top1(out, name)


def gmacs(run: Path) -> float:
    from fgir.benchmarks.flops import count_macs
    from fgir.engine.checkpoint import load_model

    m = load_model(run)
    return count_macs(m, int(m.fgir_meta["img_size"])) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=str(Path.home() / ".cache/fgir/bench/vit_backbone/cub100_vitfs_tiny_128"))
    ap.add_argument("--root", default="../shared/data/flowers12")
    ap.add_argument("--out", default=str(Path.home() / ".cache/fgir/bench/ila_transfer"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--lr-grid", type=float, nargs="*", default=[],
                    help="choose each method's lr on val from these (default: the a-priori lr)")
    ap.add_argument("--equal-time", choices=list(METHODS), help="also train --equal-time-methods for this "
                    "method's mean train time (more epochs)")
    ap.add_argument("--equal-time-methods", nargs="+", default=["ila_plus", "ila_pp"], choices=list(METHODS))
    a = ap.parse_args()
    bb = Path(a.backbone).expanduser()
    if not (bb / "last.safetensors").is_file() or not (bb / "final.json").is_file():
        raise SystemExit(f"backbone run {bb} is not finished (needs last.safetensors and final.json); train it with "
                         "fgir train -c configs/recipes/cpu/cub100_vitfs_tiny_128.yaml data.root=../shared/data/cub100")
    out = Path(a.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"model.checkpoint={bb}", f"data.root={a.root}", f"optim.epochs={a.epochs}"]
    rows = []
    for name in a.methods:
        over, lr = METHODS[name]
        chosen = {"lr": lr, "how": "a priori"}
        if a.lr_grid:
            vals = {}
            for g in a.lr_grid:
                stage = f"select_{name}_lr{g:g}"
                run_stage(stage, common + over + [f"optim.lr={g}", "run.seed=1", "data.train_split=train",
                                                  "data.val_split=val", "data.test_split="], out)
                vals[g] = last_val_top1(out, stage)
            best = max(vals, key=lambda g: (vals[g], -g))
            chosen = {"lr": best, "how": f"val top-1 {vals[best]:.2f} of {vals}"}
        finals = []
        for s in a.seeds:
            stage = f"{name}_s{s}"
            over_s = [f"optim.lr={chosen['lr']}", f"run.seed={s}", *FINAL]
            finals.append((stage, run_stage(stage, common + over + over_s, out)))
        tops = [r["test_top1"] for _, r in finals]
        census = json.loads((out / finals[0][0] / "census.json").read_text())["model"]
        rows.append({"method": name, "lr": chosen, "test_top1": tops,
                     "mean": statistics.mean(tops), "std": statistics.stdev(tops) if len(tops) > 1 else 0.0,
                     "trainable": census["trainable"], "total": census["total"],
                     "gmacs": gmacs(out / finals[0][0]),
                     "train_time_s": statistics.mean(r["train_time_s"] for _, r in finals)})
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"`python benchmarks/ila_transfer.py --epochs {a.epochs} --seeds {' '.join(map(str, a.seeds))}"
             + (f" --lr-grid {' '.join(f'{g:g}' for g in a.lr_grid)}" if a.lr_grid else "")
             + (f" --equal-time {a.equal_time}" if a.equal_time else "") + "`", "",
             f"Backbone {bb} (ViTFS-T, CUB-100, 128 px), Flowers-12 train_val -> test, last epoch, "
             f"{len(a.seeds)} seeds.", "",
             "| method | lr | test top-1 (mean ± std) | trainable params | GMACs @128 | train time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['lr']['lr']:g} | {r['mean']:.2f} ± {r['std']:.2f} | {r['trainable']:,} | "
                     f"{r['gmacs']:.3f} | {r['train_time_s']:.0f} |")
    if a.equal_time:
        lines += equal_time_table(a, rows, out, common)
    text = "\n".join(lines)
    print(text)
    (out / "ila_transfer.md").write_text(text + "\n")
    (out / "ila_transfer.json").write_text(json.dumps(rows, indent=2))


def equal_time_table(a, rows: list[dict], out: Path, common: list[str]) -> list[str]:
    """Train each of ``a.equal_time_methods`` for ``a.equal_time``'s mean train time; the table lines."""
    by = {r["method"]: r for r in rows}
    missing = [m for m in [a.equal_time, *a.equal_time_methods] if m not in by]
    if missing:
        raise SystemExit(f"--equal-time needs the same-epoch rows of {missing}: add them to --methods")
    ref = by[a.equal_time]
    lines = ["", f"Equal wall-clock: each method trained for {a.equal_time}'s mean train time "
             f"({ref['train_time_s']:.0f} s at {a.epochs} epochs), i.e. more epochs, same recipe and schedule shape.",
             "", "| method | epochs | test top-1 (mean ± std) | train time (s) |", "|---|---|---|---|",
             f"| {a.equal_time} | {a.epochs} | {ref['mean']:.2f} ± {ref['std']:.2f} | {ref['train_time_s']:.0f} |"]
    for name in a.equal_time_methods:
        r = by[name]
        ep = max(a.epochs, round(a.epochs * ref["train_time_s"] / r["train_time_s"]))
        over = METHODS[name][0]
        res = [run_stage(f"{name}_eqt_{a.equal_time}_s{s}", common + over + [
            f"optim.epochs={ep}", f"optim.lr={r['lr']['lr']}", f"run.seed={s}", *FINAL], out) for s in a.seeds]
        tops = [x["test_top1"] for x in res]
        row = {"method": name, "equal_time_of": a.equal_time, "epochs": ep, "test_top1": tops,
               "mean": statistics.mean(tops), "std": statistics.stdev(tops) if len(tops) > 1 else 0.0,
               "train_time_s": statistics.mean(x["train_time_s"] for x in res)}
        r["equal_time"] = row
        print(json.dumps(row), flush=True)
        lines.append(f"| {name} | {ep} | {row['mean']:.2f} ± {row['std']:.2f} | {row['train_time_s']:.0f} |")
    return lines


if __name__ == "__main__":
    main()
