"""The `fgir` command line; the only place that parses flags."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
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
    if a.seeds is not None or a.sweep:
        return _train_seeds(a, files)
    if a.resume:
        run_cfg = Path(a.resume) / "config.yaml" if Path(a.resume).is_dir() else None
        if run_cfg is None or not run_cfg.is_file():
            raise ConfigError(f"--resume expects a run folder with config.yaml, got {a.resume}.")
        files = [str(run_cfg)] + files
    if a.resume and a.overwrite:
        raise ConfigError("--resume continues a run folder and --overwrite replaces one; use one of them.")
    cfg = load_config(files, a.overrides)
    if a.resume_override and not a.resume:
        raise ConfigError("--resume-override goes with --resume RUN (or --seeds / --sweep).")
    res = train(cfg, resume=a.resume or "", overwrite=a.overwrite, resume_override=a.resume_override)
    print(json.dumps(res, indent=2))
    return 0


def _train_seeds(a, files: list[str]) -> int:
    """``fgir train --seeds ...`` / ``--sweep FILE``: multi-seed runs (fgir.engine.seeds)."""
    from ..engine.seeds import check_seeds, run_sweep, seeds_markdown, train_seeds

    flag = "--sweep" if a.sweep else "--seeds"
    if a.seeds is not None:  # `--seeds 0 1 2 key=value ...`: argparse hands the overrides to --seeds too
        values = [t for t in a.seeds if "=" not in t]
        a.overrides = [*a.overrides, *(t for t in a.seeds if "=" in t)]
        try:
            a.seeds = [int(t) for t in values]
        except ValueError as e:
            raise ConfigError(f"--seeds expects integers, got {' '.join(values)!r}.") from e
        check_seeds(a.seeds)
    if a.resume:
        raise ConfigError(f"{flag} resumes by itself: run the same command again (finished seeds are skipped, "
                          "interrupted ones continue); --resume RUN continues one run folder.")
    if any(o.split("=", 1)[0].strip() == "run.seed" for o in a.overrides):
        raise ConfigError(f"run.seed=... and {flag} both set the seed; list the seeds with --seeds only.")
    if a.sweep:
        aggs = run_sweep(a.sweep, files, a.overrides, seeds=a.seeds, overwrite=a.overwrite,
                         resume_override=a.resume_override)
    else:
        cfg = load_config(files, a.overrides)
        aggs = {"": train_seeds(cfg, a.seeds, overwrite=a.overwrite, resume_override=a.resume_override)}
    for agg in aggs.values():
        if agg:
            print(seeds_markdown(agg))
    return 0


def cmd_report(a) -> int:
    from ..report.compare import write_report

    files = write_report(a.runs, a.out, count_macs=not a.no_macs, embed=not a.no_embed,
                         warn=lambda m: print(f"fgir: warning: {m}", file=sys.stderr))
    print("wrote " + ", ".join(str(files[k]) for k in ("html", "md", "scatter", "curves", "json")))
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(out=a.out, epochs=a.epochs, overrides=a.overrides)
    return 0


def cmd_eval(a) -> int:
    from ..engine.evaluate_cli import evaluate_many, format_table
    from ..engine.metrics import summary_line

    def on_error(ck, e):
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"fgir: error: {ck}: {msg}", file=sys.stderr)

    def on_result(res):
        print(f"{res['checkpoint']}: {summary_line(res)}  ->  {res['out_dir']}")

    rows, errors = evaluate_many(a.checkpoints, split=a.split, root=a.root, out=a.out,
                                 inference="tta" if a.tta else a.inference, batch_size=a.batch_size,
                                 device=a.device, progress=sys.stderr.isatty(), count_macs=not a.no_macs,
                                 results_csv=a.results_csv, append=a.append, on_result=on_result,
                                 on_error=on_error, warn=lambda m: print(f"fgir: warning: {m}", file=sys.stderr))
    if rows:
        print()
        print(format_table(rows))
    if a.results_csv and rows:
        print(f"wrote {a.results_csv} ({len(rows)} row{'s' if len(rows) != 1 else ''}"
              f"{', appended' if a.append else ''})")
    if errors:
        print(f"fgir: error: {len(errors)} of {len(a.checkpoints)} checkpoint(s) failed: "
              + ", ".join(ck for ck, _ in errors), file=sys.stderr)
        return 2
    return 0


def cmd_predict(a) -> int:
    import contextlib

    from ..serve.predict import PredictionWriter, Predictor, check_output_path, collect_images, skip_policy

    if a.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {a.batch_size}.")
    out = check_output_path(a.out) if a.out else None  # before any work
    not_images: list[Path] = []
    items, named = collect_images(a.images, not_images)
    if not_images:
        print(f"fgir: warning: skipped {len(not_images)} file(s) without an image extension, e.g. "
              + ", ".join(str(f) for f in not_images[:3]), file=sys.stderr)
    pred = Predictor.from_checkpoint(a.checkpoint, device=a.device, inference=a.inference)
    bad: list[Path] = []

    def on_skip(path, e):
        bad.append(path)
        if bar is not None:
            bar.update(1)
        if len(bad) <= 10:
            print(f"fgir: warning: skipped {e}", file=sys.stderr)

    bar = None
    if not a.quiet and len(named) < len(items) and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="predict", unit="img", leave=False)
    n = 0
    writer = PredictionWriter(out, min(a.topk, len(pred.class_names))) if out else contextlib.nullcontext()
    try:
        with writer:
            for r in pred.iter_predict(items, topk=a.topk, batch_size=a.batch_size,
                                       on_error=skip_policy(named, on_skip)):
                n += 1
                if out:
                    writer.write(r)
                if not a.quiet:
                    top = ", ".join(f"{t['class_name']} {100 * t['prob']:.1f}%" for t in r["topk"])
                    (print if bar is None else bar.write)(f"{r['image']}: {top}")
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if len(bad) > 10:
        print(f"fgir: warning: skipped {len(bad)} unreadable image(s) in all (first 10 listed above)", file=sys.stderr)
    if out:
        print(f"wrote {out} ({n} image{'s' if n != 1 else ''}{f', {len(bad)} skipped' if bad else ''})")
    return 0


def cmd_tags(a) -> int:
    """Tag evaluation on a split, or tag generation for images, with a vilt model (Animesion tagging)."""
    import torch

    from ..config import config_from_dict
    from ..engine.checkpoint import load_model
    from ..engine.tagging import evaluate_tags, predict_tags, tokenizer_for
    from ..serve.predict import Predictor, collect_images

    if a.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {a.batch_size}.")
    model = load_model(a.checkpoint, "cpu")
    if getattr(model, "fgir_vilt", None) is None or getattr(model, "mlm_head", None) is None:
        raise ValueError(f"{a.checkpoint}: fgir tags needs a model with the vilt plug-in and its MLM head "
                         "(model.plugins=[{name: vilt, vocab: VOCAB.json}], mlm: true).")
    if not a.images:
        res = evaluate_tags(model, split=a.split, tags=a.tags, batch_size=a.batch_size)
        print(f"tags on {a.split} ({res['images']} images): micro P {100 * res['micro_precision']:.2f} "
              f"R {100 * res['micro_recall']:.2f} F1 {100 * res['micro_f1']:.2f} | per image P "
              f"{100 * res['sample_precision']:.2f} R {100 * res['sample_recall']:.2f} "
              f"F1 {100 * res['sample_f1']:.2f}")
    else:
        tok = tokenizer_for(config_from_dict(model.fgir_meta["config"]))
        files, _ = collect_images(a.images)
        pred = Predictor(model, model.fgir_meta, "cpu", "default")
        res = {"predictions": []}
        for i in range(0, len(files), a.batch_size):
            chunk = files[i:i + a.batch_size]
            with torch.no_grad():
                tags = predict_tags(model, pred.preprocess(chunk), tok)
            for f, t in zip(chunk, tags):
                print(f"{f}\t{' '.join(t)}")
                res["predictions"].append({"image": str(f), "tags": t})
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {a.json}")
    return 0


def cmd_export(a) -> int:
    from ..export.card import command_line
    from ..export.onnx import export_onnx

    res = export_onnx(a.checkpoint, a.out, img_size=a.img_size, dynamic_batch=a.dynamic_batch, opset=a.opset,
                      atol=a.atol, batch_size=a.batch_size, seed=a.seed, images=a.images or None,
                      inference=a.inference, exporter=a.exporter, card=not a.no_card, fold_norms=not a.no_fold,
                      ort_attention=a.ort_attention,
                      command=command_line(f"fgir export {a.checkpoint} --format {a.format}"))
    print(f"wrote {res.path} ({a.format}, opset {res.opset}, {res.exporter} exporter, variant {res.variant}, "
          f"{res.img_size} px, {'dynamic' if res.dynamic_batch else 'fixed'} batch"
          f"{f', {res.folded_norms} token norms folded' if res.folded_norms else ''}"
          f"{f', {res.ort_attention} attentions as onnxruntime Attention' if res.ort_attention else ''})")
    print(f"parity: max |onnx - torch| = {res.max_abs_diff:.3g} <= atol {res.atol:g} on batch "
          f"{'/'.join(str(b) for b in res.batch_sizes)} (onnxruntime CPU vs PyTorch eager)")
    if res.card:
        print(f"model card: {res.card}")
    if a.json:
        Path(a.json).write_text(json.dumps(res.to_dict(), indent=2))
    return 0


def cmd_push(a) -> int:
    from ..export.card import command_line
    from ..export.hub import push_to_hub

    where = push_to_hub(a.checkpoint, a.repo_id, private=a.private, local_dir=a.local_dir,
                        command=command_line(f"fgir push {a.checkpoint} {a.repo_id}"))
    if a.local_dir:
        print(f"wrote the hub repository for {a.repo_id} to {where} (model.safetensors, config.json, README.md); "
              f"upload it with `hf upload {a.repo_id} {where}`")
    else:
        print(f"pushed {a.checkpoint} to {where}")
    print(f"load it with: model.name=hf-hub:{a.repo_id} model.pretrained=true")
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
    print(f"# fgir cost: {a.num_classes}-class head, batch 1 for MACs (multiply-accumulates, not FLOPs; "
          f"{'without' if a.no_attention else 'with'} attention matmuls), plugins {a.plugins or 'none'}, "
          f"trainable {' '.join(a.trainable) or 'all'}"
          + (f", throughput at batch {a.batch_size} on {device}" if a.throughput else ""))
    for r in rows:
        speed = (f"  {r['img_per_s']:>9.1f} img/s @ b{r['batch_size']} on {r['device']}"
                 if "img_per_s" in r else "")
        plug = f"+{'+'.join(r['plugins'])}" if r["plugins"] else ""
        print(f"{r['model'] + plug:<40} {r['img_size']:>5}px  params {r['params']:>13,}  trainable "
              f"{r['params_trainable']:>13,}  {r['gmacs']:>9.4f} GMACs{speed}")
        if "ttp_ufgir5" in r:
            print(f"{'':<40} trainable non-head {r['params_trainable_non_head']:,} + head "
                  f"{r['head_per_class']:,}/class; "
                  f"TTP over the 5 UFGIR tasks (3,526 classes) {r['ttp_ufgir5']:,}, paper convention "
                  f"(C_eff 2,257) {r['ttp_ufgir5_paper']:,}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_bench(a) -> int:
    from ..benchmarks.bench import TABLE_HEADER, format_row, run_bench

    written = {}

    def start(env, path):
        written["path"] = path
        print(f"# fgir bench on {env['device']} ({env['device_name']}), {env['dtype']}, {env['threads']} threads, "
              f"torch {env['torch']}{', CUDA ' + env['cuda'] if env['cuda'] else ''}; {a.repeats} repeats of "
              f">= {a.iters} iterations and >= {a.min_seconds:g} s after {a.warmup} warm-up; GMACs = "
              "multiply-accumulates of one image (torchprofile), not FLOPs; b1 ms = batch-1 latency; ±% = "
              "(max - min) / median over repeats; peak MiB / +MiB = peak memory and its growth over the "
              "level before the first step (CUDA allocator, or peak RSS of a fresh process on CPU)")
        print(TABLE_HEADER, flush=True)

    rows = run_bench(a.models, a.img_size, a.batch_size, device=a.device, dtype=a.dtype,
                     plugins=_plugin_list(a.plugins), num_classes=a.num_classes, trainable=a.trainable or None,
                     inference=a.inference, train=a.train, repeats=a.repeats, warmup=a.warmup, iters=a.iters,
                     min_seconds=a.min_seconds, threads=a.threads, memory=not a.no_memory, macs=not a.no_macs,
                     out_dir=a.out_dir, on_start=start, on_row=lambda r: print(format_row(r), flush=True))
    print(f"appended {len(rows)} row{'s' if len(rows) != 1 else ''} to {written['path']}")
    return 0


def cmd_data(a) -> int:
    from ..data.resolve import prepare_dataset, train_command

    fractions = None
    if a.split_fractions:
        try:
            fractions = [float(v) for v in a.split_fractions.split(",")]
        except ValueError as e:
            raise ConfigError(f"--split-fractions expects three numbers like 0.7,0.1,0.2, "
                              f"got {a.split_fractions!r}.") from e
    from ..data.catalog import versioned_name
    from ..data.manifest import read_manifest_info

    name = versioned_name(a.name, a.image_version)
    p = prepare_dataset(name, a.root, out=a.out or None, check_counts=not a.no_check_counts, refresh=a.refresh,
                        split_fractions=fractions, check_files=not a.no_verify_images)
    how = "prepared" if p.converted else "reused (pass --refresh to convert again)"
    import os

    alias = f" ({a.name} --version {a.image_version or 'default'})" if name != a.name else ""
    print(f"'{name}'{alias} from {os.path.abspath(p.source)}: manifest {how} in {p.manifest_dir}")
    info = read_manifest_info(p.manifest_dir)
    for line in info.get("report", []):
        print(f"  {line}")
    if not info.get("checked_files", True):
        print(f"  images under {p.image_root} not checked (--no-verify-images): label files and counts only")
    if p.split_fractions:
        print("  split carved per class with train/val/test fractions " + "/".join(f"{v:g}" for v in p.split_fractions))
    print(f"  {'classes':<10} {p.num_classes:>8}")
    for split in ("train", "val", "test", "train_val"):
        print(f"  {split:<10} {p.counts.get(split, 0):>8}")
    print("Train on it with:\n  " + train_command(p, root_given=a.root, out_given=bool(a.out)))
    return 0


def cmd_data_check(a) -> int:
    from ..data.check import check_dataset, write_pairs_csv

    res = check_dataset(a.name, a.root, splits=tuple(a.splits), threshold=a.threshold, progress=sys.stderr.isatty())
    print(f"'{a.name}': {res['images']} images in {', '.join(a.splits)}; duplicate pairs (exact: same bytes; "
          f"near: thumbnail distance < {a.threshold:g}):")
    for kind, n in res["by_kind"].items() or {"none": 0}.items():
        print(f"  {kind:<28} {n:>6}")
    leaked = res["test_with_copy_in_train"]
    print(f"test images with a copy in a training split: {len(leaked)}"
          + (f" (e.g. {', '.join(leaked[:3])})" if leaked else ""))
    for line in res["unreadable"][:5]:
        print(f"fgir: warning: unreadable, not checked: {line}", file=sys.stderr)
    if a.out:
        print(f"wrote {write_pairs_csv(a.out, res['pairs'])}")
    if a.exclude:
        Path(a.exclude).write_text("".join(f"{p}\n" for p in leaked), encoding="utf-8")
        print(f"wrote {a.exclude}: train without them with data.exclude={a.exclude}")
    return 0


def cmd_import(a) -> int:
    if a.import_cmd == "glsim":
        from ..engine.import_glsim import import_glsim

        res = import_glsim(a.pth, a.out, model_name=a.model, img_size=a.img_size, top_o=a.top_o,
                           crop_cls=a.crop_cls, dataset=a.dataset, root=a.root, class_names=a.class_names)
    else:
        from ..engine.import_tgda import import_tgda

        res = import_tgda(a.pth, a.out, model_name=a.model, img_size=a.img_size, dataset=a.dataset, root=a.root,
                          class_names=a.class_names)
    print(json.dumps(res, indent=2))
    print(f"Evaluate or predict with: fgir predict {res['checkpoint']} IMAGES")
    return 0


def cmd_list(a) -> int:
    from ..registry import DATASETS, PLUGINS, TASKS

    def keep(name: str, text: str = "") -> bool:
        f = a.filter.lower()
        if not f:
            return True
        if any(c in f for c in "*?["):
            import fnmatch

            return fnmatch.fnmatch(name.lower(), f)
        return f in name.lower() or f in text.lower()

    if a.what == "models":
        if a.pretrained:
            import timm

            # pretrained tags (architecture.tag) timm knows; the weights themselves download on first use
            names = timm.list_models(pretrained=True)
        else:
            from ..models.factory import model_names

            names = model_names(include_timm=a.all)
        names = [n for n in names if keep(n)]
        if not names:
            raise ValueError(f"No model matches --filter {a.filter!r}; see `fgir list models --all`.")
        print("\n".join(names))
    elif a.what == "datasets":
        from ..data.catalog import dataset_names

        rows = [(n, DATASETS.get(n)) for n in dataset_names()]
        rows = [(n, s) for n, s in rows if keep(n, s.description)]
        if not rows:
            raise ValueError(f"No dataset matches --filter {a.filter!r}; see `fgir list datasets`.")
        for n, s in rows:
            counts = " ".join(f"{k}={v}" for k, v in s.counts.items())
            print(f"{n:<14} K={s.num_classes:<6} {counts}  {s.description}")
    else:
        reg = TASKS if a.what == "tasks" else PLUGINS
        for n in reg.names():
            doc = (reg.meta(n)["config"].__doc__ or "").strip().split("\n")[0]
            if keep(n, doc):
                print(f"{n:<16} {doc}")
    return 0


def cmd_serve(a) -> int:
    from ..serve.web import serve

    if a.max_mb <= 0 or a.max_megapixels <= 0:
        raise ValueError(f"--max-mb and --max-megapixels must be > 0, got {a.max_mb} and {a.max_megapixels}.")
    serve(a.checkpoint, host=a.host, port=a.port, device=a.device,
          max_bytes=int(a.max_mb * 2**20), max_pixels=int(a.max_megapixels * 1e6), inference=a.inference,
          threads=a.threads)
    return 0


def cmd_viz(a) -> int:
    from ..engine.distributed import pick_device
    from ..registry import VIZ
    from ..report.viz import run_viz

    opts = {k.lstrip("-").replace("-", "_"): getattr(a, k.lstrip("-").replace("-", "_"))
            for k in VIZ.meta(a.kind)["options"]}
    for path in run_viz(a.kind, a.checkpoint, a.image, out=a.out, device=str(pick_device(a.device)), **opts):
        print(f"wrote {path}")
    return 0


def _add_viz(sub, argv: list[str]) -> None:
    """``fgir viz KIND CKPT IMG``: one sub-command per registered visualisation (``fgir.registry.VIZ``).
    Registering the kinds imports the plug-ins (torch), so the parser is only built when ``viz`` is
    the command."""
    s = sub.add_parser("viz", help="draw what a model looks at for one image (PNG): `fgir viz --help` lists kinds",
                       add_help=True)
    if argv[:1] != ["viz"]:
        s.add_argument("rest", nargs=argparse.REMAINDER, help="KIND CKPT IMG [options]")
        return
    from ..registry import VIZ

    vsub = s.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name in VIZ.names():
        meta = VIZ.meta(name)
        v = vsub.add_parser(name, help=meta["help"])
        v.add_argument("checkpoint", help="run folder or .safetensors checkpoint")
        v.add_argument("image", help="image file")
        v.add_argument("--out", default="", help="PNG to write (default: <image stem>_<kind>.png here)")
        _add_device(v)
        for flag, (tp, default, text) in meta["options"].items():
            v.add_argument(flag, type=tp, default=default, help=text)
        v.set_defaults(fn=cmd_viz)


def cmd_config(a) -> int:
    import yaml

    from ..config import config_sources, explain, to_dict

    cfg = load_config(a.config or [], a.overrides)
    if a.explain:
        print("\n".join(explain(cfg, config_sources(a.config or [], a.overrides))))
        return 0
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="fgir", description="Efficient fine-grained image recognition toolkit.")
    p.add_argument("--version", action="version", version=f"fgir {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (first argument only)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("demo", help="build the built-in font set, train a small model from scratch, evaluate")
    s.add_argument("--out", default="runs", help="output folder (default: runs)")
    s.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    _add_overrides(s)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("train", help="train a model from YAML configs and key=value overrides")
    s.add_argument("--config", "-c", action="append", help="YAML config (repeatable; later files win)")
    s.add_argument("--resume", default="", help="run folder to continue exactly from its last checkpoint "
                   "(a finished run is reported, not retrained)")
    s.add_argument("--resume-override", action="store_true", help="with --resume: accept config changes that "
                   "break exactness (lr, data, model, ...); they are printed and recorded in resume_history.jsonl")
    s.add_argument("--overwrite", action="store_true", help="replace the run folder of the same name (deleted only "
                   "once the new run starts); default: a folder holding another run gets a -2, -3, ... suffix")
    s.add_argument("--seeds", nargs="+", default=None, metavar="SEED",
                   help="train once per seed into <run.output_dir>/<name>/seed<S>, then write seeds.json and "
                   "seeds.md (mean ± sample std of every test metric) in <name>; run again to resume (finished "
                   "seeds are skipped); with --overwrite every seed is retrained")
    s.add_argument("--sweep", default="", metavar="FILE", help="YAML with 'variants' ({name: [key=value, ...]}) "
                   "and 'seeds': each variant is a multi-seed run in <run.output_dir>/<name> (--seeds replaces "
                   "the file's seeds)")
    _add_overrides(s)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("report", help="compare runs: one Markdown + HTML page (table, accuracy vs GMACs, curves)",
                       description="Compare run folders and multi-seed folders (fgir train --seeds): a metrics table "
                       "(test top-1/top-5, mean per-class, macro-F1, ECE, head/medium/tail when present, params, "
                       "GMACs, train time; multi-seed folders as mean ± sample std over their seeds), the "
                       "accuracy-vs-GMACs scatter, training curves overlaid and links to each run's figures. A "
                       "folder that holds no run is an error; a run without test metrics is left out with a warning.")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run folders or multi-seed folders")
    s.add_argument("--out", default="report", help="output folder: report.html, report.md, report.json, "
                   "accuracy_vs_gmacs.png, curves.png (default: report)")
    s.add_argument("--no-macs", action="store_true", help="do not count GMACs from the checkpoints (the scatter "
                   "then uses parameters)")
    s.add_argument("--no-embed", action="store_true", help="link the report's figures from the HTML instead of "
                   "embedding them")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("eval", help="evaluate run folders or checkpoints on a split (one results row each)",
                       description="Evaluate each checkpoint on a split: per-checkpoint outputs in its eval folder, "
                       "one results row per checkpoint (printed as a table; --results-csv writes them). A failing "
                       "checkpoint is reported and the others still run; the exit status is then 2.")
    s.add_argument("checkpoints", nargs="+", metavar="RUN_OR_CKPT", help="run folders or .safetensors checkpoints")
    s.add_argument("--split", default="test", help="split to evaluate (default: test; val or train_val for selection)")
    s.add_argument("--root", default="", help="dataset root (default: the one recorded in the checkpoint)")
    s.add_argument("--out", default="", help="output folder (default: <run>/eval_<split>[_<variant>]); with several "
                   "checkpoints, <out>/<run folder>_<checkpoint name> each")
    s.add_argument("--results-csv", default="", metavar="PATH", help="write the results rows (checkpoint, model, "
                   "dataset, split, inference, img_size, params, gmacs, top1, top5, macro_f1, ece, num_images, "
                   "device) to PATH, atomically, replacing it (see --append); rewritten after every checkpoint")
    s.add_argument("--append", action="store_true", help="add the rows to an existing --results-csv with the same "
                   "columns instead of replacing it")
    s.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (at least 64 is used)")
    s.add_argument("--no-macs", action="store_true", help="skip counting the deployed model's MACs (gmacs empty)")
    s.add_argument("--inference", default="", help="inference variant: default, flip (mean with the mirrored "
                   "image, any model), one a plug-in adds (cal: tta; glsim: no-crop), or VARIANT+flip; "
                   "empty = the run's model.inference")
    s.add_argument("--tta", action="store_true", help="shorthand for --inference tta (CAL's 8-view inference)")
    _add_device(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("tags", help="tag P/R/F1 on a split, or tags for images (vilt models)",
                       description="With a vilt model (Animesion's vision + tags tagging task): without IMAGES, "
                       "tag-level micro and per-image precision, recall and F1 on --split against the run's tag "
                       "JSON (or --tags); with IMAGES (files or folders), the generated tags per image.")
    s.add_argument("checkpoint", help="run folder or .safetensors checkpoint of a vilt model")
    s.add_argument("images", nargs="*", help="image files or folders to tag (default: evaluate on --split)")
    s.add_argument("--split", default="test", help="split to evaluate (default: test)")
    s.add_argument("--tags", default="", help="tag JSON (default: the run's task.tags, else tags.json beside the split "
                   "files)")
    s.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    s.add_argument("--json", default="", help="also write the metrics or the predicted tags to this JSON file")
    s.set_defaults(fn=cmd_tags)

    s = sub.add_parser("predict", help="top-k predictions for images or folders",
                       description="Top-k predictions for image files and folders (recursive), streamed in batches. "
                       "In folders, unreadable images are reported and skipped; a file named directly must be "
                       "readable.")
    s.add_argument("checkpoint", help="run folder, .safetensors checkpoint or .onnx model (from `fgir export`)")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--topk", type=int, default=5, help="classes listed per image (default: 5)")
    s.add_argument("--batch-size", type=int, default=32, help="images decoded and run together (default: 32)")
    s.add_argument("--out", default="", help="write predictions to a file; the extension picks the format: .csv "
                   "(image, class_name1, class_id1, prob1, ...), .json (a list of rows) or .jsonl (a row per line)")
    s.add_argument("--quiet", "-q", action="store_true", help="no per-image lines and no progress bar")
    s.add_argument("--inference", default="", help="inference variant (default, or e.g. tta for CAL)")
    _add_device(s)
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("serve", help="web demo: upload an image, see the top-5 classes, an overlay and the time",
                       description="Serve a page where a person uploads or drops an image and sees the top-5 classes "
                       "with probabilities, the image with an overlay (attention rollout for ViTs, Grad-CAM otherwise; "
                       "the GLSim crop box on GLSim models) and the inference time. Local only unless --host says "
                       "otherwise. Needs the serve extra: pip install 'fgir[serve]'.")
    s.add_argument("checkpoint", help="run folder, .safetensors checkpoint or .onnx model (no overlays)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                   "only; 0.0.0.0 opens it to the network)")
    s.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    s.add_argument("--max-mb", type=float, default=20.0, help="largest upload in MiB (default: 20)")
    s.add_argument("--max-megapixels", type=float, default=40.0, help="largest image, width x height in millions "
                   "of pixels (default: 40); larger ones and decompression bombs are refused")
    s.add_argument("--inference", default="", help="inference variant (default: the run's)")
    s.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (default: 0 = PyTorch's choice)")
    _add_device(s)
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("export", help="export a checkpoint's deployed model (ONNX) and check it against PyTorch",
                       description="Export the deployed model of an fgir checkpoint (through a plug-in's export form "
                       "when it declares one), embed class names, mean/std, input size and the fgir version in the "
                       "file, run it in onnxruntime on a seeded batch and compare with PyTorch: exits 2 when the "
                       "largest absolute difference of the logits exceeds --atol. Writes a model card next to it.")
    s.add_argument("checkpoint", help="run folder or .safetensors checkpoint")
    s.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    s.add_argument("--out", default="", help="file to write (default: <checkpoint stem>.onnx beside the checkpoint)")
    s.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension (default: fixed at "
                   "--batch-size)")
    s.add_argument("--img-size", type=int, default=0, help="input size of the graph (default: the model's input size)")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    s.add_argument("--atol", type=float, default=1e-4, help="largest allowed |onnx - torch| of the logits "
                   "(default: 1e-4, fp32)")
    s.add_argument("--batch-size", type=int, default=2, help="images in the parity batch (default: 2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random parity batch (default: 0)")
    s.add_argument("--images", nargs="*", default=[], help="image files or folders for the parity batch instead of "
                   "random inputs")
    s.add_argument("--inference", default="", help="inference variant to export (default: the run's "
                   "model.inference; a plug-in's export form for default)")
    s.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"],
                   help="torch.onnx exporter: auto = TorchScript-based when available, else dynamo (needs onnxscript)")
    s.add_argument("--no-card", action="store_true", help="do not write the model card (<out stem>.md)")
    s.add_argument("--no-fold", action="store_true", help="keep eval-mode token BatchNorms (ViTFS) as graph nodes "
                   "instead of folding them into the Linear that reads them")
    s.add_argument("--ort-attention", action="store_true", help="write timm self-attention as onnxruntime's fused "
                   "Attention operator (qkv projection and attention in one node): faster on onnxruntime, "
                   "but the file runs on onnxruntime only")
    s.add_argument("--json", default="", help="also write the export report to this JSON file")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("push", help="publish a checkpoint on the Hugging Face hub (timm hf-hub: layout + model card)",
                       description="Write model.safetensors, config.json (architecture, num_classes, label_names, "
                       "model_args, pretrained_cfg with mean/std/input_size) and README.md (the model card), then "
                       "upload them to REPO_ID; with --local-dir only write the folder. Load the model with "
                       "model.name=hf-hub:REPO_ID model.pretrained=true.")
    s.add_argument("checkpoint", help="run folder or .safetensors checkpoint")
    s.add_argument("repo_id", help="hub repository OWNER/NAME")
    s.add_argument("--private", action="store_true", help="create the repository as private")
    s.add_argument("--local-dir", default="", help="write the repository folder here instead of uploading")
    s.set_defaults(fn=cmd_push)

    s = sub.add_parser("cost", help="parameters (total/trainable) and GMACs (torchprofile conventions)")
    s.add_argument("models", nargs="+", help="model names (fgir or timm; `fgir list models`)")
    s.add_argument("--img-size", type=int, nargs="+", default=[224], help="input sizes (default: 224)")
    s.add_argument("--num-classes", type=int, default=200, help="classes of the head (default: 200, as CUB)")
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

    s = sub.add_parser("bench", help="params, GMACs, latency, throughput and peak memory of models or checkpoints "
                       "(rows appended to a CSV named after the environment)",
                       description="For each model x --img-size x --batch-size: parameters (total, trainable), GMACs "
                       "of one image on the real token path, batch-1 latency and batch throughput (warm-up discarded, "
                       "CUDA synchronised, median and spread over --repeats), peak memory (CUDA allocator peak; on CPU "
                       "the peak RSS growth of a fresh process) and with --train the forward+backward+optimizer-step "
                       "throughput. Rows are appended to OUT_DIR/bench_<device>_torch<version>_<dtype>_t<threads>.csv.")
    s.add_argument("models", nargs="+", help="model names (fgir or timm; `fgir list models`) or checkpoints "
                   "(run folder or .safetensors: the deployed model, its size and inference variant)")
    s.add_argument("--img-size", type=int, nargs="+", default=None,
                   help="input sizes (default: 224 for names, the deployed size for checkpoints)")
    s.add_argument("--batch-size", type=int, nargs="+", default=[32], help="throughput batch sizes (default: 32)")
    _add_device(s)
    s.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision (auto: fp16 on CUDA, fp32 on CPU; fp16 needs CUDA)")
    s.add_argument("--plugins", default="", help="plug-ins for model names, as YAML ('[{name: cal, num_maps: 16}]') "
                   "or comma-separated names ('cal')")
    s.add_argument("--num-classes", type=int, default=200, help="head size for model names (default: 200)")
    s.add_argument("--trainable", nargs="*", default=[], help="model.trainable entries for model names (what "
                   "--train optimises)")
    s.add_argument("--inference", default="", help="inference variant to time (default: the checkpoint's own)")
    s.add_argument("--train", action="store_true", help="also measure forward+backward+SGD-step throughput")
    s.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (default: 3)")
    s.add_argument("--warmup", type=int, default=10, help="discarded warm-up iterations (default: 10)")
    s.add_argument("--iters", type=int, default=50, help="minimum timed iterations per repeat (default: 50)")
    s.add_argument("--min-seconds", type=float, default=10.0, help="minimum seconds per repeat (default: 10)")
    s.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's current)")
    s.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    s.add_argument("--no-macs", action="store_true", help="skip the MAC count")
    s.add_argument("--out-dir", default="bench_results", help="folder of the CSV (default: bench_results)")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("data", help="dataset tools")
    dsub = s.add_subparsers(dest="data_cmd", required=True)
    from ..data.catalog import dataset_names

    d = dsub.add_parser(
        "prepare", help="convert a dataset root (official layout or your own folders/CSV) into the fgir manifest",
        description="Write the manifest `fgir train data.name=NAME data.root=ROOT` uses (same cache folder, so "
                    "training reuses it), print the counts per split and the train command.",
        epilog="datasets: " + ", ".join(dataset_names()) + ", dafre (= daf / dafb by --version)"
               "\n\nfolder = your own data: ROOT is "
               "DIR/train/<class>/* + DIR/test/<class>/* [+ DIR/val/<class>/*], a flat DIR/<class>/* "
               "(carved per class by --split-fractions) or a list.csv with path,label[,split].",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("name", help="catalog dataset or 'folder' (see the list below)")
    d.add_argument("--root", required=True, help="folder with the official files, your class folders, or a .csv list")
    d.add_argument("--out", default="", help="manifest folder (default: the fgir cache, where training looks)")
    d.add_argument("--no-check-counts", action="store_true",
                   help="accept counts that differ from the spec (a deliberate subset; training reuses it)")
    d.add_argument("--refresh", action="store_true", help="convert again even if a valid manifest exists "
                   "(own data: re-carve the split, picking up added images)")
    d.add_argument("--version", dest="image_version", default="", metavar="VERSION",
                   help="image version of sets that have several: dafre faces (= daf, faces/) or full "
                   "(= dafb, fullMin256/)")
    d.add_argument("--no-verify-images", action="store_true",
                   help="check the label files and counts only, not that every listed image exists")
    d.add_argument("--split-fractions", default="", metavar="TRAIN,VAL,TEST",
                   help="own flat trees / CSV lists: per-class fractions, default 0.7,0.1,0.2 (= data.split_fractions)")
    d.set_defaults(fn=cmd_data)

    d = dsub.add_parser("check", help="exact and near-duplicate images within and across splits (test leakage)")
    d.add_argument("name", help="dataset name (`fgir list datasets`, or folder for your own data)")
    d.add_argument("--root", default="", help="dataset root (default: $FGIR_DATA/<name>)")
    d.add_argument("--splits", nargs="+", default=["train_val", "test"], help="splits to compare "
                   "(default: train_val test)")
    d.add_argument("--threshold", type=float, default=0.07, help="near-duplicate distance on standardised 32x32 "
                   "grayscale thumbnails, sqrt((1 - r) / 2) (default: 0.07)")
    d.add_argument("--out", default="", help="write every pair to this CSV")
    d.add_argument("--exclude", default="", help="write the test images with a copy in train to this file "
                   "(for data.exclude=FILE)")
    d.set_defaults(fn=cmd_data_check)

    s = sub.add_parser("import", help="convert published checkpoints into fgir checkpoints")
    isub = s.add_subparsers(dest="import_cmd", required=True)
    def import_parser(name: str, help: str, pth: str, model: str, size: str) -> argparse.ArgumentParser:
        """A `fgir import NAME` parser with the arguments every importer shares."""
        i = isub.add_parser(name, help=help)
        i.add_argument("pth", help=pth)
        i.add_argument("--out", required=True, help="the .safetensors checkpoint to write")
        i.add_argument("--model", default="", help=model)
        i.add_argument("--img-size", type=int, default=0, help=size)
        i.add_argument("--dataset", default="", help="catalog dataset whose class table names the classes")
        i.add_argument("--root", default="", help="that dataset's root (default: $FGIR_DATA)")
        i.add_argument("--class-names", default="", help="class names file (one per line, or classid_classname.csv)")
        i.set_defaults(fn=cmd_import)
        return i

    import_parser("tgda", "a TGDA authors' student .pth -> fgir .safetensors (no pickled code runs)",
                  "the published .pth file", "our model name (default: the name recorded in the file)",
                  "student input size (default: recorded in the file)")
    i = import_parser("glsim", "a GLSim authors' legacy ViTGLSim .pth -> fgir .safetensors (timm ViT + glsim "
                      "plug-in; no pickled code runs)", "the released .pth file (e.g. cub_vit_b16_16_2.pth)",
                      "timm architecture (default: from the recorded model_name, vit_b16 -> vit_base_patch16_224)",
                      "input size (default: recorded, else from the position embedding)")
    i.add_argument("--top-o", type=int, default=0, help="selected patches O (default: the recorded dynamic_top)")
    i.add_argument("--crop-cls", default="shared", choices=["shared", "separate"],
                   help="crop-pass class token: shared = what the legacy code ran (default); separate = load "
                   "anchor_class_token")

    s = sub.add_parser("list", help="list models, datasets, tasks or plug-ins")
    s.add_argument("what", choices=["models", "datasets", "tasks", "plugins"], help="what to list")
    s.add_argument("--all", action="store_true", help="models: include every timm architecture, not only fgir's")
    s.add_argument("--pretrained", action="store_true", help="models: list timm's pretrained tags (e.g. "
                   "resnet101.tv_in1k) for model.name with model.pretrained=true")
    s.add_argument("--filter", default="", help="substring (case-insensitive, names and descriptions) or glob "
                   "('vit_*'), e.g. --filter soy")
    s.set_defaults(fn=cmd_list)

    _add_viz(sub, list(sys.argv[1:] if argv is None else argv))

    s = sub.add_parser("config", help="print the resolved config (defaults < YAML < overrides)")
    s.add_argument("--config", "-c", action="append", help="YAML config (repeatable; later files win)")
    s.add_argument("--explain", action="store_true", help="list every key with its resolved value, where it came "
                   "from (file, override or default) and its meaning, then every task's and plug-in's fields")
    _add_overrides(s)
    s.set_defaults(fn=cmd_config)
    return p


def _sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler or `kill`) ends a command like Ctrl-C: the train loop keeps its last
    complete checkpoint and prints the resume hint, and fgir exits 130 without a traceback."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        pass


def _error_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(str(msg).split()) or type(e).__name__
    known = (ConfigError, KeyError, ValueError, TypeError, FileNotFoundError, RuntimeError)
    if not isinstance(e, known):  # an error we did not anticipate: say what it was
        msg = f"{type(e).__name__}: {msg}"
    return msg


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure ends as one line ``fgir: error: ...`` with exit status 2
    (``--debug`` before the command shows the traceback instead); Ctrl-C and SIGTERM exit 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[:1]
    if debug:
        argv = argv[1:]
    args = build_parser(argv).parse_args(argv)
    _sigterm_as_interrupt()
    fmt = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _fgir_warning_line
    try:
        return args.fn(args)
    except BrokenPipeError:  # `fgir ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("fgir: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (the one error path of the CLI)
        if debug:
            raise
        print(f"fgir: error: {_error_line(e)}", file=sys.stderr)
        if not isinstance(e, (ConfigError, KeyError, ValueError, TypeError, FileNotFoundError, RuntimeError)):
            print("fgir: run `fgir --debug ...` for the traceback", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = fmt


def _fgir_warning_line(message, category, filename, lineno, line=None) -> str:
    """Our own warnings are messages to the user (a config, a file, a backbone), so they print as
    ``fgir: warning: ...`` without the source line they were raised on (``--debug`` shows it);
    warnings of other libraries keep Python's format."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        return f"fgir: warning: {message}\n"
    return _PY_FORMATWARNING(message, category, filename, lineno, line)


_PY_FORMATWARNING = warnings.formatwarning


if __name__ == "__main__":
    sys.exit(main())
