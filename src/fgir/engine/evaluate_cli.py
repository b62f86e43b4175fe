"""`fgir eval`: evaluate a checkpoint on a split of the dataset recorded in it."""

from __future__ import annotations

from pathlib import Path

from ..data.datasets import ManifestDataset
from ..data.transforms import to_model_size
from .checkpoint import load_model, resolve_checkpoint
from .distributed import DistInfo
from .evaluate import run_inference, write_eval_outputs


def evaluate_checkpoint(path: str, split: str = "test", root: str = "", out: str = "", tta: bool = False,
                        batch_size: int = 64) -> dict:
    from .checkpoint import build_from_meta
    from .train import make_loader

    ck = resolve_checkpoint(path)
    model = load_model(ck)
    meta = model.fgir_meta
    _, cfg = build_from_meta(meta)
    if root:
        cfg.data.root = root
    cfg.optim.batch_size = batch_size
    ds = ManifestDataset(cfg.data.name, split, cfg.data.root, cfg.data.num_classes)
    if ds.num_classes != meta["num_classes"]:
        raise ValueError(f"Checkpoint {ck} predicts {meta['num_classes']} classes but dataset "
                         f"'{cfg.data.name}' has {ds.num_classes}.")
    loader = make_loader(cfg, ds, False, meta["mean"], meta["std"], DistInfo())
    size = int(meta.get("model_img_size") or meta["img_size"])
    predict = getattr(model, "predict_tta", None) if tta else (lambda x: model(to_model_size(x, size)))
    if tta and predict is None:
        raise ValueError(f"--tta: model '{cfg.model.name}' ({cfg.task.name}) has no test-time augmentation.")
    acc = run_inference(model, loader, ds.num_classes, ds.class_names, progress=True, desc=f"eval {split}",
                        predict_fn=predict)
    res = acc.compute()
    out_dir = Path(out) if out else ck.parent / f"eval_{split}{'_tta' if tta else ''}"
    summary = write_eval_outputs(out_dir, split, acc, res, ds.class_names)
    return {"checkpoint": str(ck), "split": split, "out_dir": str(out_dir), **summary}
