"""`fgir demo`: build the built-in font set, train a small CNN from scratch, evaluate, predict."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config

# The demo recipe (measured in the README): a small from-scratch CNN on the built-in font set.
# The 80 px images are random-cropped to 64 px (no resize); flips are off because mirrored glyphs
# belong to no face. resnet10t's three small stem convolutions keep the stroke details.
DEMO = {
    "model": {"name": "resnet10t"},
    "data": {"name": "fonts", "img_size": 64, "resize_ratio": 1.25, "hflip": False},
    "optim": {"opt": "adamw", "lr": 2e-3, "weight_decay": 0.05, "batch_size": 64, "epochs": 7,
              "warmup_epochs": 1, "label_smoothing": 0.1},
    "run": {"name": "demo", "selection": "last"},
}


def run_demo(out: str = "runs", epochs: int | None = None, overrides: list[str] | None = None) -> dict:
    from ..engine.train import train
    from ..serve.predict import Predictor

    ov = [f"run.output_dir={out}"] + ([f"optim.epochs={epochs}"] if epochs else []) + list(overrides or [])
    cfg = load_config(data=DEMO, overrides=ov)
    res = train(cfg)
    run_dir = Path(res["run_dir"])
    print(f"\nTest top-1 {res.get('test_top1', float('nan')):.2f}%  top-5 {res.get('test_top5', float('nan')):.2f}%  "
          f"(run folder: {run_dir})")
    from ..data.datasets import ManifestDataset

    test = ManifestDataset(cfg.data.name, "test", cfg.data.root)
    picks = [0, len(test) // 3, 2 * len(test) // 3, len(test) - 1]
    pred = Predictor.from_checkpoint(run_dir / "last.safetensors")
    rows = pred.predict([test.path(i) for i in picks], topk=5)
    print("\nTop-5 predictions for held-out test images:")
    for i, r in zip(picks, rows):
        truth = test.class_names[int(test.labels[i])]
        top = ", ".join(f"{t['class_name']} {100 * t['prob']:.0f}%" for t in r["topk"])
        print(f"  {Path(r['image']).name} (true: {truth}): {top}")
    (run_dir / "demo_predictions.json").write_text(json.dumps(rows, indent=2))
    return res
