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


def _add_device(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--device", default="auto", help=f"{what}auto (CUDA when present, else CPU), cpu, cuda or cuda:N")


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

    res = evaluate_checkpoint(a.checkpoint, split=a.split, root=a.root, out=a.out,
                              inference="tta" if a.tta else a.inference, device=a.device)
    print(json.dumps(res, indent=2))
    return 0


def cmd_predict(a) -> int:
    from ..serve.predict import Predictor, list_images, write_predictions

    pred = Predictor.from_checkpoint(a.checkpoint, device=a.device, inference=a.inference)
    files = [f for src in a.images for f in list_images(src)]
    rows = pred.predict(files, topk=a.topk)
    for r in rows:
        top = ", ".join(f"{t['class_name']} {100 * t['prob']:.1f}%" for t in r["topk"])
        print(f"{r['image']}: {top}")
    if a.out:
        print(f"wrote {write_predictions(rows, a.out)}")
    return 0


def _plugin_list(text: str) -> list:
    """``--plugins``: YAML (``[{name: cal, num_maps: 16}]``) or comma-separated names (``cal``)."""
    import yaml

    if not text:
        return []
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--plugins {text!r} is not YAML or a comma-separated list of names: {e}") from e
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    return value if isinstance(value, list) else [value]


def cmd_cost(a) -> int:
    from ..benchmarks.cost import model_cost
    from ..engine.distributed import pick_device

    device = str(pick_device(a.device)) if a.throughput else "cpu"
    rows = [model_cost(m, s, a.num_classes, plugins=_plugin_list(a.plugins), attention=not a.no_attention,
                       trainable=a.trainable or None, throughput=a.throughput, device=device,
                       batch_size=a.batch_size)
            for m in a.models for s in a.img_size]
    for r in rows:
        speed = (f"  {r['img_per_s']:>9.1f} img/s @ b{r['batch_size']} on {r['device']}"
                 if "img_per_s" in r else "")
        plug = f"+{'+'.join(r['plugins'])}" if r["plugins"] else ""
        print(f"{r['model'] + plug:<40} {r['img_size']:>5}px  params {r['params']:>13,}  trainable "
              f"{r['params_trainable']:>13,}  {r['gmacs']:>9.4f} GMACs{speed}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_data(a) -> int:
    from ..data.converters import prepare

    out = prepare(a.name, a.root, a.out or None, check_counts=not a.no_check_counts)
    print(f"Prepared '{a.name}' manifest in {out}")
    return 0


def cmd_import(a) -> int:
    from ..engine.import_tgda import import_tgda

    res = import_tgda(a.pth, a.out, model_name=a.model, img_size=a.img_size, dataset=a.dataset, root=a.root,
                      class_names=a.class_names)
    print(json.dumps(res, indent=2))
    print(f"Evaluate or predict with: fgir predict {res['checkpoint']} IMAGES")
    return 0


def cmd_list(a) -> int:
    from ..registry import DATASETS, PLUGINS, TASKS

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
        reg = TASKS if a.what == "tasks" else PLUGINS
        for n in reg.names():
            doc = (reg.meta(n)["config"].__doc__ or "").strip().split("\n")[0]
            print(f"{n:<16} {doc}")
    return 0


def cmd_config(a) -> int:
    import yaml

    from ..config import explain, to_dict

    if a.explain:
        print("\n".join(explain()))
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
    s.add_argument("--inference", default="", help="inference variant: default, or one a plug-in adds (cal: tta); "
                   "empty = the run's model.inference")
    s.add_argument("--tta", action="store_true", help="shorthand for --inference tta (CAL's 8-view inference)")
    _add_device(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("predict", help="top-k predictions for images or folders")
    s.add_argument("checkpoint")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--topk", type=int, default=5)
    s.add_argument("--out", default="", help="write predictions to .csv or .json")
    s.add_argument("--inference", default="", help="inference variant (default, or e.g. tta for CAL)")
    _add_device(s)
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("cost", help="parameters (total/trainable) and GMACs (torchprofile conventions)")
    s.add_argument("models", nargs="+")
    s.add_argument("--img-size", type=int, nargs="+", default=[224])
    s.add_argument("--num-classes", type=int, default=200)
    s.add_argument("--plugins", default="", help="plug-ins to apply, as YAML ('[{name: cal, num_maps: 16}]') "
                   "or comma-separated names ('cal')")
    s.add_argument("--trainable", nargs="*", default=[], help="model.trainable entries (presets or patterns) "
                   "for the trainable count")
    s.add_argument("--throughput", action="store_true", help="also measure batch throughput and latency")
    s.add_argument("--batch-size", type=int, default=32, help="batch size of the throughput measurement")
    _add_device(s, "device of the throughput measurement: ")
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

    s = sub.add_parser("import", help="convert published checkpoints into fgir checkpoints")
    isub = s.add_subparsers(dest="import_cmd", required=True)
    i = isub.add_parser("tgda", help="a TGDA authors' student .pth -> fgir .safetensors (no pickled code runs)")
    i.add_argument("pth", help="the published .pth file")
    i.add_argument("--out", required=True, help="the .safetensors checkpoint to write")
    i.add_argument("--model", default="", help="our model name (default: the name recorded in the file)")
    i.add_argument("--img-size", type=int, default=0, help="student input size (default: recorded in the file)")
    i.add_argument("--dataset", default="", help="catalog dataset whose class table names the classes")
    i.add_argument("--root", default="", help="that dataset's root (default: $FGIR_DATA)")
    i.add_argument("--class-names", default="", help="class names file (one per line, or classid_classname.csv)")
    i.set_defaults(fn=cmd_import)

    s = sub.add_parser("list", help="list models, datasets, tasks or plug-ins")
    s.add_argument("what", choices=["models", "datasets", "tasks", "plugins"])
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
    except (ConfigError, KeyError, ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"fgir: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
