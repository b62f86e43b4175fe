"""The `fgir` command line; the only place that parses flags."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError, load_config


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dot-list config overrides, e.g. optim.lr=0.01 data.name=cub100 (see `fgir config`)")


def cmd_train(a) -> int:
    from ..engine.train import train

    files = list(a.config or [])
    if a.resume:
        run_cfg = Path(a.resume) / "config.yaml" if Path(a.resume).is_dir() else None
        if run_cfg is None or not run_cfg.is_file():
            raise ConfigError(f"--resume expects a run folder with config.yaml, got {a.resume}.")
        files = [str(run_cfg)] + files
    cfg = load_config(files, a.overrides)
    res = train(cfg, resume=a.resume or "")
    print(json.dumps(res, indent=2))
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(out=a.out, epochs=a.epochs, overrides=a.overrides)
    return 0


def cmd_eval(a) -> int:
    from ..engine.evaluate_cli import evaluate_checkpoint

    res = evaluate_checkpoint(a.checkpoint, split=a.split, root=a.root, out=a.out, tta=a.tta)
    print(json.dumps(res, indent=2))
    return 0


def cmd_predict(a) -> int:
    from ..serve.predict import Predictor, list_images, write_predictions

    pred = Predictor.from_checkpoint(a.checkpoint)
    files = [f for src in a.images for f in list_images(src)]
    rows = pred.predict(files, topk=a.topk)
    for r in rows:
        top = ", ".join(f"{t['class_name']} {100 * t['prob']:.1f}%" for t in r["topk"])
        print(f"{r['image']}: {top}")
    if a.out:
        print(f"wrote {write_predictions(rows, a.out)}")
    return 0


def cmd_cost(a) -> int:
    from ..benchmarks.cost import model_cost

    rows = [model_cost(m, s, a.num_classes, task=a.task, attention=not a.no_attention)
            for m in a.models for s in a.img_size]
    for r in rows:
        print(f"{r['model']:<40} {r['img_size']:>5}px  params {r['params']:>13,}  trainable "
              f"{r['params_trainable']:>13,}  {r['gmacs']:>9.4f} GMACs")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_data(a) -> int:
    from ..data.converters import prepare

    out = prepare(a.name, a.root, a.out or None, check_counts=not a.no_check_counts)
    print(f"Prepared '{a.name}' manifest in {out}")
    return 0


def cmd_list(a) -> int:
    from ..registry import DATASETS, TASKS

    if a.what == "models":
        from ..models.factory import model_names

        names = model_names(include_timm=a.all)
        if a.filter:
            names = [n for n in names if a.filter in n]
        print("\n".join(names))
    elif a.what == "datasets":
        from ..data.catalog import get_spec

        get_spec("fonts")
        for n in DATASETS.names():
            s = DATASETS.get(n)
            counts = " ".join(f"{k}={v}" for k, v in s.counts.items())
            print(f"{n:<14} K={s.num_classes:<6} {counts}  {s.description}")
    else:
        from ..engine import classification, distill  # noqa: F401

        print("\n".join(TASKS.names()))
    return 0


def cmd_config(a) -> int:
    import dataclasses
    import typing

    import yaml

    from ..config import Config, field_docs, to_dict

    if a.explain:
        def walk(cls, prefix=""):
            docs, hints = field_docs(cls), typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if dataclasses.is_dataclass(hints[f.name]):
                    walk(hints[f.name], f"{prefix}{f.name}.")
                    continue
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                print(f"{prefix}{f.name} = {default!r}" + (f"\n    {docs[f.name]}" if f.name in docs else ""))
        walk(Config)
        return 0
    cfg = load_config(a.config or [], a.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="fgir", description="Efficient fine-grained image recognition toolkit.")
    p.add_argument("--version", action="version", version=f"fgir {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("demo", help="build the built-in font set, train a small model from scratch, evaluate")
    s.add_argument("--out", default="runs", help="output folder (default: runs)")
    s.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    _add_overrides(s)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("train", help="train a model from YAML configs and key=value overrides")
    s.add_argument("--config", "-c", action="append", help="YAML config (repeatable; later files win)")
    s.add_argument("--resume", default="", help="run folder to continue exactly from its last checkpoint")
    _add_overrides(s)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="evaluate a run folder or checkpoint on a split")
    s.add_argument("checkpoint", help="run folder or .safetensors checkpoint")
    s.add_argument("--split", default="test")
    s.add_argument("--root", default="", help="dataset root (default: the one recorded in the checkpoint)")
    s.add_argument("--out", default="", help="output folder (default: <run>/eval_<split>)")
    s.add_argument("--tta", action="store_true", help="test-time augmentation when the model has one (CAL)")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("predict", help="top-k predictions for images or folders")
    s.add_argument("checkpoint")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--topk", type=int, default=5)
    s.add_argument("--out", default="", help="write predictions to .csv or .json")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("cost", help="parameters (total/trainable) and GMACs (torchprofile conventions)")
    s.add_argument("models", nargs="+")
    s.add_argument("--img-size", type=int, nargs="+", default=[224])
    s.add_argument("--num-classes", type=int, default=200)
    s.add_argument("--task", default="classification", help="classification or cal (wrap in the CAL head)")
    s.add_argument("--no-attention", action="store_true", help="omit QK^T/AV matmuls (old-torchprofile cells)")
    s.add_argument("--json", default="", help="also write the rows to this JSON file")
    s.set_defaults(fn=cmd_cost)

    s = sub.add_parser("data", help="dataset tools")
    dsub = s.add_subparsers(dest="data_cmd", required=True)
    d = dsub.add_parser("prepare", help="convert an official layout into the fgir manifest (counts checked)")
    d.add_argument("name")
    d.add_argument("--root", required=True, help="folder with the official files")
    d.add_argument("--out", default="", help="manifest folder (default: the fgir cache)")
    d.add_argument("--no-check-counts", action="store_true", help="accept counts that differ from the spec")
    d.set_defaults(fn=cmd_data)

    s = sub.add_parser("list", help="list models, datasets or tasks")
    s.add_argument("what", choices=["models", "datasets", "tasks"])
    s.add_argument("--all", action="store_true", help="models: include every timm architecture")
    s.add_argument("--filter", default="", help="models: substring filter")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("config", help="print the resolved config (defaults < YAML < overrides)")
    s.add_argument("--config", "-c", action="append")
    s.add_argument("--explain", action="store_true", help="list every key with its default and meaning")
    _add_overrides(s)
    s.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"fgir: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
