"""Model cards: a Markdown file in the Hugging Face model-card layout next to every final
checkpoint (``<run>/README.md``) and every exported model (``<name>.md``).

YAML front matter (``library_name``, ``tags``, ``datasets``, ``metrics``, ``pipeline_tag`` and a
``model-index`` with the test results), then architecture and plug-ins, training data and split,
metrics on val and test, parameters and MACs, input size and normalisation, class names and the
command that produced the file. Every value comes from the checkpoint's metadata, the run's
``final.json`` and the rebuilt model, never from defaults.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import torch.nn as nn
import yaml

__all__ = ["card_info", "render_card", "write_model_card", "write_run_card", "command_line"]


def command_line(fallback: str = "") -> str:
    """This process's command line when it is an ``fgir`` command, else ``fallback``."""
    argv = list(sys.argv)
    tail = Path(argv[0]).parts[-3:] if argv else ()
    if len(argv) > 1 and (Path(argv[0]).name == "fgir" or tail[-2:] == ("fgir", "__main__.py")
                          or tail == ("fgir", "cli", "main.py")):
        return "fgir " + " ".join(shlex.quote(a) for a in argv[1:])
    return fallback


def _train_command(run_dir: Path | None) -> str:
    """The command that reproduces a run from its saved config."""
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        return f"fgir train -c {shlex.quote(str(run_dir / 'config.yaml'))}"
    return "fgir train -c config.yaml  # config.yaml: the resolved training config below"


def card_info(checkpoint: str | os.PathLike, *, model: nn.Module | None = None, command: str = "",
              export: dict | None = None, count_macs: bool = True) -> dict:
    """Everything a card states, from the checkpoint (and the run's ``final.json`` beside it).

    Args:
        checkpoint: run folder or ``.safetensors`` file.
        model: the already loaded deployed model (rebuilt from the checkpoint when None).
        command: the command that produced the file (default: argv of an ``fgir`` process, else
            the training command of the saved config).
        export: the export entry of an exported model (format, variant, opset, ...).
        count_macs: count MACs (one traced forward at the model's input size).
    """
    from ..benchmarks.flops import count_macs as _macs
    from ..benchmarks.flops import count_params
    from ..data.transforms import eval_resize_ratio
    from ..engine.checkpoint import load_model, read_meta, resolve_checkpoint

    ck = resolve_checkpoint(checkpoint)
    meta = read_meta(ck)
    cfg = meta["config"]
    run_dir = ck.parent if (ck.parent / "config.yaml").is_file() else None
    final = {}
    if (ck.parent / "final.json").is_file():
        try:
            final = json.loads((ck.parent / "final.json").read_text())
        except ValueError:
            final = {}
    d, m = cfg["data"], cfg["model"]
    val = {k[len("val_"):]: v for k, v in (meta.get("metrics") or {}).items()
           if k.startswith("val_") and isinstance(v, (int, float))}
    tp = d.get("test_split") or "test"
    test = {k[len(tp) + 1:]: v for k, v in final.items() if k.startswith(f"{tp}_") and isinstance(v, (int, float))}
    if model is None:
        model = load_model(ck, "cpu")
    model_size = int((export or {}).get("img_size") or meta.get("model_img_size") or meta["img_size"])
    macs: int | str
    if count_macs:
        try:
            macs = _macs(model, model_size)
        except Exception as e:  # a model torchprofile cannot trace: say so in the card
            macs = f"not counted ({type(e).__name__})"
    else:
        macs = "not counted"
    fallback = _train_command(run_dir)
    return {
        "name": (cfg.get("run") or {}).get("name") or m["name"], "checkpoint": ck.name,
        "architecture": m["name"], "plugins": list(m.get("plugins") or []), "task": cfg["task"]["name"],
        "inference": m.get("inference", "default"), "dataset": d["name"],
        "splits": {"train": d.get("train_split", ""), "val": d.get("val_split", ""), "test": tp if final else ""},
        "selection": (cfg.get("run") or {}).get("selection", "last"), "epoch": meta.get("epoch"),
        "metrics": {"val": val, "test": test}, "params": count_params(model), "macs": macs,
        "img_size": int(meta["img_size"]), "model_img_size": model_size, "resize_ratio": eval_resize_ratio(d),
        "mean": list(meta["mean"]), "std": list(meta["std"]), "num_classes": meta["num_classes"],
        "class_names": list(meta["class_names"]), "command": command or command_line(fallback),
        "train_command": fallback, "export": export or {}, "seed": (cfg.get("run") or {}).get("seed"),
        "config": cfg,
    }


_METRIC_TYPES = {"top1": "accuracy", "top5": "top-5 accuracy", "macro_f1": "f1", "ece": "ece"}


def _front_matter(info: dict) -> str:
    timm_loadable = not info["plugins"]
    tags = ["image-classification", "fine-grained", "fgir", info["architecture"]]
    tags += [p.get("name", "") for p in info["plugins"]] + ([info["export"]["format"]] if info["export"] else [])
    if timm_loadable:
        tags.append("timm")
    fm: dict = {"library_name": "timm" if timm_loadable else "fgir", "pipeline_tag": "image-classification",
                "tags": tags, "datasets": [info["dataset"]]}
    metrics = sorted({_METRIC_TYPES[k] for s in info["metrics"].values() for k in s if k in _METRIC_TYPES})
    if metrics:
        fm["metrics"] = metrics
    results = [{"type": _METRIC_TYPES[k], "name": f"test {k}", "value": round(float(v), 6)}
               for k, v in info["metrics"]["test"].items() if k in _METRIC_TYPES]
    if results:
        fm["model-index"] = [{"name": info["name"], "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": info["dataset"], "type": info["dataset"], "split": info["splits"]["test"]},
            "metrics": results}]}]
    return "---\n" + yaml.safe_dump(fm, sort_keys=False) + "---\n"


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def render_card(info: dict) -> str:
    """The Markdown text of a card from :func:`card_info`."""
    from ..data.transforms import stored_size

    lines = [_front_matter(info), f"# {info['name']}", ""]
    what = f"exported to {info['export']['format'].upper()}" if info["export"] else "an fgir checkpoint"
    lines += [f"A fine-grained image classifier ({info['num_classes']} classes) trained with fgir; this file is "
              f"{what} (`{info['checkpoint']}`, epoch {info['epoch']}).", "", "## Model", "",
              f"- architecture: `{info['architecture']}`",
              "- plug-ins: " + (", ".join(f"`{json.dumps(p, sort_keys=True)}`" for p in info["plugins"]) or "none"),
              f"- task: `{info['task']}`; inference variant: `{info['inference']}`",
              f"- parameters: {info['params']:,}",
              f"- MACs (one image at {info['model_img_size']} px): "
              + (f"{info['macs']:,} ({info['macs'] / 1e9:.4f} G)" if isinstance(info["macs"], int) else info["macs"])]
    if info["export"]:
        e = info["export"]
        lines += [f"- export: {e['format']} opset {e['opset']}, exporter {e['exporter']}, variant `{e['variant']}`, "
                  f"{'dynamic' if e['dynamic_batch'] else 'fixed'} batch, fgir {e['fgir_version']}"]
    lines += ["", "## Input", "",
              f"- images resized (bicubic, square) to {stored_size(info['img_size'], info['resize_ratio'])} px, "
              f"centre-cropped to {info['img_size']} px" + (f", resized to {info['model_img_size']} px"
                                          if info["model_img_size"] != info["img_size"] else ""),
              f"- normalisation: mean {info['mean']}, std {info['std']} (RGB, 0-1 scale)", "",
              "## Training data", "",
              f"- dataset: `{info['dataset']}`",
              f"- split: trained on `{info['splits']['train']}`, "
              + (f"validated on `{info['splits']['val']}`" if info["splits"]["val"] else "no validation split")
              + (f", tested on `{info['splits']['test']}`" if info["splits"]["test"] else ", not tested")
              + f"; checkpoint selection: {info['selection']}; seed {info['seed']}", "",
              "## Metrics", ""]
    rows = [(split, info["metrics"][split]) for split in ("val", "test") if info["metrics"][split]]
    if rows:
        lines += ["| split | " + " | ".join(_METRIC_TYPES) + " |", "|---|" + "---|" * len(_METRIC_TYPES)]
        for split, vals in rows:
            lines.append(f"| {split} (`{info['splits'][split]}`) | "
                         + " | ".join(_fmt(vals[k]) if k in vals else "-" for k in _METRIC_TYPES) + " |")
        lines += ["", "`-`: not measured on that split (top-5 needs more than 5 classes; the val row is what the "
                  "training loop logs at the selected epoch)."]
    else:
        lines.append("No metrics were recorded with this checkpoint.")
    lines += ["", "## Classes", "", ", ".join(f"{i}: {n}" for i, n in enumerate(info["class_names"])), "",
              "## How it was made", "", "```", info["command"], "```", ""]
    if info["command"] != info["train_command"]:
        lines += ["Trained with:", "", "```", info["train_command"], "```", ""]
    lines += ["<details><summary>Resolved training config</summary>", "", "```yaml",
              yaml.safe_dump(info["config"], sort_keys=False).rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines)


def write_model_card(checkpoint: str | os.PathLike, path: str | os.PathLike, **kwargs) -> Path:
    """Write the card of ``checkpoint`` to ``path`` (see :func:`card_info` for ``kwargs``)."""
    path = Path(path)
    text = render_card(card_info(checkpoint, **kwargs))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_run_card(run_dir: str | os.PathLike, model: nn.Module | None = None) -> Path:
    """``<run>/README.md`` for the run's selected checkpoint (called at the end of training)."""
    return write_model_card(run_dir, Path(run_dir) / "README.md", model=model)
