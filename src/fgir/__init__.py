"""fgir: efficient fine-grained image recognition on one timm-based toolkit.

Python API (mirrors the CLI)::

    import fgir
    model = fgir.create_model("lrnet14", num_classes=200)
    ds = fgir.create_dataset("fonts", split="train")
    result = fgir.train(fgir.load_config(["configs/recipes/demo.yaml"]))
    predictor = fgir.load("runs/demo/last.safetensors")
    predictor.predict(["img.jpg"])

    # fgir eval / predict / cost, returning what the CLI prints or writes
    rows = fgir.evaluate(["runs/a", "runs/b"], split="test", results_csv="results.csv")
    preds = fgir.predict("runs/demo", ["img.jpg", "some_folder/"], topk=5, out="preds.jsonl")
    info = fgir.cost("lrnet14", img_size=224, num_classes=200, plugins=["cal"])
    rows = fgir.bench(["resnet18", "runs/demo"], img_size=224, batch_size=[1, 32], device="cuda", train=True)
"""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402


def create_model(*args, **kwargs):
    """See :func:`fgir.models.factory.create_model` (imported on first use: `import fgir` stays light)."""
    from .models.factory import create_model as _create

    return _create(*args, **kwargs)


def create_dataset(*args, **kwargs):
    """See :func:`fgir.data.datasets.create_dataset`."""
    from .data.datasets import create_dataset as _create

    return _create(*args, **kwargs)


def train(cfg, **kwargs):
    """See :func:`fgir.engine.train.train`."""
    from .engine.train import train as _train

    return _train(cfg, **kwargs)


def load(checkpoint, **kwargs):
    """See :func:`fgir.serve.predict.Predictor.from_checkpoint`."""
    from .serve.predict import Predictor

    return Predictor.from_checkpoint(checkpoint, **kwargs)


def evaluate(checkpoint_or_list, split: str = "test", *, root: str = "", out: str = "", inference: str = "",
             batch_size: int = 64, device: str = "", results_csv: str = "", append: bool = False,
             count_macs: bool = True, progress: bool = False, on_error: str = "raise"):
    """``fgir eval``: evaluate one checkpoint (or run folder) or a list of them on ``split``.

    Each checkpoint writes its eval folder (metrics JSON, per-class and predictions CSVs,
    confusion matrix) as the CLI does; ``results_csv`` also writes the rows to a CSV (atomically,
    replacing it unless ``append``).

    Args:
        checkpoint_or_list: a run folder / ``.safetensors`` path, or a list of them.
        split: manifest split to evaluate.
        root, out, inference, batch_size, device: as ``fgir eval``'s flags.
        results_csv: write the rows here (empty: don't).
        append: add to an existing ``results_csv`` with the same columns.
        count_macs: count the deployed model's GMACs (the ``gmacs`` column).
        progress: show progress bars.
        on_error: ``"raise"`` (the first failing checkpoint raises) or ``"warn"`` (it is warned
            about and left out, as the CLI does).

    Returns:
        The results row (a dict with the columns of
        :data:`fgir.engine.evaluate_cli.RESULT_COLUMNS`: checkpoint, model, dataset, split,
        inference, img_size, params, gmacs, top1, top5, macro_f1, ece, num_images, device) for one
        checkpoint, a list of rows for a list.
    """
    import os
    import warnings

    from .engine.evaluate_cli import evaluate_many

    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}.")
    single = isinstance(checkpoint_or_list, (str, os.PathLike))
    paths = [checkpoint_or_list] if single else list(checkpoint_or_list)

    def _on_error(ck, e):
        if on_error == "raise":
            raise e
        warnings.warn(f"{ck}: {e}", stacklevel=3)

    rows, _ = evaluate_many(paths, split=split, root=root, out=out, inference=inference, batch_size=batch_size,
                            device=device, progress=progress, count_macs=count_macs, results_csv=results_csv,
                            append=append, on_error=_on_error)
    return (rows[0] if rows else None) if single else rows


def cost(model, img_size=224, num_classes: int = 200, plugins=None, *, attention: bool = True, trainable=None,
         throughput: bool = False, device: str = "cpu", batch_size: int = 32, **model_kwargs):
    """``fgir cost``: parameters (total, trainable) and MACs, optionally measured throughput.

    Args:
        model: a registry / timm model name, a list of names, or a built ``nn.Module`` (counted as
            it is; ``num_classes``, ``plugins``, ``trainable`` and ``model_kwargs`` do not apply).
        img_size: input size, or a list of sizes.
        num_classes: classifier size of the built model.
        plugins: plug-in entries (``["cal"]``, ``[{"name": "cal", "num_maps": 16}]``) or a
            comma-separated string of names.
        attention: count the QK^T / AV matmuls (False: old-torchprofile conventions).
        trainable: ``model.trainable`` entries for the trainable count.
        throughput, device, batch_size: also measure throughput and latency there.

    Returns:
        The row ``fgir cost --json`` writes (model, plugins, img_size, num_classes, params,
        params_trainable, macs, gmacs, attention_counted, and the speed keys with ``throughput``)
        for one model and size; a list of rows (models x sizes, CLI order) when either is a list.
    """
    import torch.nn as nn

    from .benchmarks.cost import model_cost

    if isinstance(plugins, str):
        plugins = [p.strip() for p in plugins.split(",") if p.strip()]
    sizes = list(img_size) if isinstance(img_size, (list, tuple)) else [img_size]
    if isinstance(model, nn.Module):
        from .benchmarks.flops import count_macs, count_params

        rows = []
        for s in sizes:
            macs = count_macs(model, s, attention=attention)
            row = {"model": type(model).__name__, "plugins": [], "img_size": s,
                   "num_classes": getattr(model, "num_classes", None), "params": count_params(model),
                   "params_trainable": count_params(model, trainable_only=True), "macs": macs,
                   "gmacs": round(macs / 1e9, 4), "attention_counted": attention}
            if throughput:
                from .benchmarks.speed import measure_throughput

                speed = measure_throughput(model, s, batch_size=batch_size, device=device)
                row.update({k: speed[k] for k in ("img_per_s", "latency_ms_median", "peak_mem_allocated_mib")},
                           device=str(device), batch_size=batch_size)
            rows.append(row)
        return rows if isinstance(img_size, (list, tuple)) else rows[0]
    names = [model] if isinstance(model, str) else list(model)
    rows = [model_cost(m, s, num_classes, plugins=plugins or [], attention=attention, trainable=trainable or None,
                       throughput=throughput, device=device, batch_size=batch_size, **model_kwargs)
            for m in names for s in sizes]
    return rows if not isinstance(model, str) or isinstance(img_size, (list, tuple)) else rows[0]


def bench(models, img_size=None, batch_size=32, *, device: str = "auto", dtype: str | None = None, plugins=None,
          num_classes: int = 200, trainable=None, inference: str = "", train: bool = False, repeats: int = 3,
          warmup: int = 10, iters: int = 50, min_seconds: float = 10.0, threads: int | None = None,
          memory: bool = True, macs: bool = True, out_dir="bench_results"):
    """``fgir bench``: params, GMACs, batch-1 latency, batch throughput, peak memory (and with
    ``train`` the training-step throughput) of each model x size x batch size.

    Args:
        models: a registry / timm name, a checkpoint (run folder or ``.safetensors``), a built
            ``nn.Module``, or a list of them.
        img_size: a size or a list; None = 224 for names, the deployed size for checkpoints.
        batch_size: a batch size or a list (batch-1 latency is always measured).
        device, dtype: ``auto``/``cpu``/``cuda[:N]``; ``fp32``/``bf16``/``fp16`` (None: fp16 on CUDA,
            fp32 on CPU; fp16 needs CUDA).
        plugins: plug-in entries for names (``["cal"]``, a comma-separated string, or dicts).
        num_classes, trainable, inference: head size and ``model.trainable`` for names; the
            inference variant to time (empty: the checkpoint's own).
        train: also time forward + backward + optimiser steps.
        repeats, warmup, iters, min_seconds, threads: timing protocol (spec: 3, 10, 50, 10 s).
        memory, macs: measure peak memory / count GMACs.
        out_dir: append the rows to ``<out_dir>/bench_<fingerprint>.csv``; None = no file.

    Returns:
        One dict per model x size x batch with the columns of
        :data:`fgir.benchmarks.bench.BENCH_COLUMNS`.
    """
    import os

    import torch.nn as nn

    from .benchmarks.bench import run_bench

    if isinstance(plugins, str):
        plugins = [p.strip() for p in plugins.split(",") if p.strip()]
    models = [models] if isinstance(models, (str, os.PathLike, nn.Module)) else list(models)
    sizes = None if img_size is None else list(img_size) if isinstance(img_size, (list, tuple)) else [img_size]
    batches = list(batch_size) if isinstance(batch_size, (list, tuple)) else [batch_size]
    return run_bench([m if isinstance(m, nn.Module) else str(m) for m in models], sizes, batches, device=device,
                     dtype=dtype, plugins=plugins, num_classes=num_classes, trainable=trainable, inference=inference,
                     train=train, repeats=repeats, warmup=warmup, iters=iters, min_seconds=min_seconds,
                     threads=threads, memory=memory, macs=macs, out_dir=out_dir)


def predict(checkpoint, images, topk: int = 5, *, batch_size: int = 32, device: str = "", inference: str = "",
            out: str = "", on_skip=None) -> list[dict]:
    """``fgir predict``: top-k classes for image files, folders (recursive) or PIL images.

    Images are decoded one batch at a time. Unreadable images found in folders are skipped (and
    passed to ``on_skip(path, error)``, default: a warning); an unreadable file named directly
    raises.

    Args:
        checkpoint: a run folder, a ``.safetensors`` checkpoint, or a loaded ``fgir.load(...)``
            predictor.
        images: one image path, folder or PIL image, or a list of them.
        topk: classes per image.
        batch_size, device, inference: as ``fgir predict``'s flags.
        out: also write the rows there; the extension picks the format (``.csv``, ``.json``,
            ``.jsonl``) and is checked before any work.

    Returns:
        One dict per image, in order, as ``--out x.json`` holds them:
        ``{"image": path, "topk": [{"class_id", "class_name", "prob"}, ...]}``.
    """
    from .serve.predict import PredictionWriter, Predictor, check_output_path, predict_images

    if out:
        check_output_path(out)
    pred = checkpoint if isinstance(checkpoint, Predictor) else Predictor.from_checkpoint(
        checkpoint, device=device, inference=inference)
    rows = []
    if out:
        with PredictionWriter(out, min(topk, len(pred.class_names))) as w:
            for r in predict_images(pred, images, topk=topk, batch_size=batch_size, on_skip=on_skip):
                w.write(r)
                rows.append(r)
    else:
        rows = list(predict_images(pred, images, topk=topk, batch_size=batch_size, on_skip=on_skip))
    return rows


__all__ = ["Config", "load_config", "create_model", "create_dataset", "train", "load", "evaluate", "cost", "bench",
           "predict", "__version__"]
