"""`fgir eval`: evaluate a checkpoint on a split of the dataset recorded in it."""

from __future__ import annotations

from pathlib import Path

from ..data.datasets import ManifestDataset
from ..data.transforms import to_model_size
from .checkpoint import load_model, resolve_checkpoint
from .distributed import DistInfo, pick_device
from .evaluate import run_inference, write_eval_outputs


def evaluate_checkpoint(path: str, split: str = "test", root: str = "", out: str = "", inference: str = "",
                        batch_size: int = 64, device: str = "") -> dict:
    """Metrics of a checkpoint on ``split``; ``inference`` picks a variant (default: the one the run
    was configured with, ``model.inference``); outputs go to ``<run>/eval_<split>[_<variant>]``."""
    from ..models.plugins import get_inference
    from .checkpoint import build_from_meta
    from .train import make_loader

    ck = resolve_checkpoint(path)
    dev = pick_device(device)
    model = load_model(ck, device=str(dev))
    meta = model.fgir_meta
    _, cfg = build_from_meta(meta)
    if root:
        cfg.data.root = root
    cfg.optim.batch_size = batch_size
    variant = inference or cfg.model.inference
    fn = get_inference(model, variant)
    ds = ManifestDataset(cfg.data.name, split, cfg.data.root, cfg.data.num_classes)
    if ds.num_classes != meta["num_classes"]:
        raise ValueError(f"Checkpoint {ck} predicts {meta['num_classes']} classes but dataset "
                         f"'{cfg.data.name}' has {ds.num_classes}.")
    loader = make_loader(cfg, ds, False, meta["mean"], meta["std"], DistInfo(device=dev))
    size = int(meta.get("model_img_size") or meta["img_size"])
    acc = run_inference(model, loader, ds.num_classes, ds.class_names, device=dev, progress=True,
                        desc=f"eval {split}", predict_fn=lambda x: fn(to_model_size(x, size)))
    res = acc.compute()
    suffix = f"_{variant}" if variant not in ("", "default") else ""
    out_dir = Path(out) if out else ck.parent / f"eval_{split}{suffix}"
    summary = write_eval_outputs(out_dir, split, acc, res, ds.class_names)
    return {"checkpoint": str(ck), "split": split, "inference": variant or "default", "device": str(dev),
            "out_dir": str(out_dir), **summary}
