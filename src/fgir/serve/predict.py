"""Offline prediction from an fgir checkpoint: top-k class names for image files or folders."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch
from PIL import Image

from ..data.datasets import read_image
from ..data.transforms import center_crop, load_resized, normalize, stored_size, to_model_size
from ..engine.checkpoint import load_model

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def list_images(path: str | os.PathLike) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise FileNotFoundError(f"No images ({', '.join(sorted(IMAGE_EXTS))}) under {p}.")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"Image not found: {p}")
    return [p]


class Predictor:
    """``fgir.load(ckpt).predict(images)`` -> one dict per image with the top-k classes.

    Args:
        model: the deployed model (its checkpoint metadata in ``meta``).
        device: where to run it.
        inference: inference variant (``default``, or one a plug-in adds, e.g. CAL's ``tta``);
            empty = the one the run was configured with (``model.inference``).
    """

    def __init__(self, model: torch.nn.Module, meta: dict, device: str = "cpu", inference: str = ""):
        from ..models.plugins import get_inference

        self.model, self.meta, self.device = model.to(device).eval(), meta, device
        self.inference = inference or meta["config"]["model"].get("inference", "default")
        self._forward = get_inference(self.model, self.inference)
        self.class_names = meta["class_names"]
        self.img_size = int(meta["img_size"])
        ratio = meta["config"]["data"]["resize_ratio"]
        self.stored = stored_size(self.img_size, ratio)
        self.mean, self.std = meta["mean"], meta["std"]
        self.model_img_size = int(meta.get("model_img_size") or self.img_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "", inference: str = "") -> Predictor:
        """``device``: empty = CUDA when present, else CPU."""
        from ..engine.distributed import pick_device

        dev = str(pick_device(device))
        model = load_model(path, dev)
        return cls(model, model.fgir_meta, dev, inference)

    def preprocess(self, images) -> torch.Tensor:
        arrs = []
        for im in images:
            if isinstance(im, (str, os.PathLike)):
                im = read_image(im)
            if not isinstance(im, Image.Image):
                raise TypeError(f"predict() takes image paths or PIL images, got {type(im).__name__}.")
            arrs.append(torch.from_numpy(load_resized(im, self.stored)).permute(2, 0, 1))
        x = normalize(center_crop(torch.stack(arrs), self.img_size), self.mean, self.std)
        return to_model_size(x, self.model_img_size)

    @torch.no_grad()
    def logits(self, images) -> torch.Tensor:
        return self._forward(self.preprocess(images).to(self.device)).float().cpu()

    def predict(self, images, topk: int = 5, batch_size: int = 32) -> list[dict]:
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        images = list(images)
        out: list[dict] = []
        k = min(topk, len(self.class_names))
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            probs = self.logits(chunk).softmax(-1)
            p, idx = probs.topk(k, dim=-1)
            for im, pr, ix in zip(chunk, p.tolist(), idx.tolist()):
                out.append({"image": str(im) if isinstance(im, (str, os.PathLike)) else "<PIL image>",
                            "topk": [{"class_id": c, "class_name": self.class_names[c], "prob": round(q, 6)}
                                     for c, q in zip(ix, pr)]})
        return out


def write_predictions(rows: list[dict], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".json":
        p.write_text(json.dumps(rows, indent=2))
    else:
        k = max(len(r["topk"]) for r in rows)
        with p.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image"] + [f"{f}{i + 1}" for i in range(k) for f in ("class_name", "class_id", "prob")])
            for r in rows:
                w.writerow([r["image"]] + [v for t in r["topk"] for v in (t["class_name"], t["class_id"], t["prob"])])
    return p
