"""Offline prediction from an fgir checkpoint or an exported ``.onnx`` model: top-k class names
for image files or folders.

A :class:`Predictor` runs a *backend*: the rebuilt PyTorch model (through its inference variant)
or :class:`OnnxBackend` (onnxruntime on a file written by ``fgir export``, whose embedded metadata
holds the same class names, sizes and normalisation); decoding, batching and the output rows are
the same for both.

Prediction streams: :meth:`Predictor.iter_predict` takes any iterable of images (paths or PIL
images), reads and decodes one batch at a time and yields one row per image, and
:class:`PredictionWriter` writes rows as they come (``.csv``, ``.jsonl``; ``.json`` keeps the small
rows until the end), so memory stays flat on folders of any size.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image

from ..data.datasets import ImageReadError, read_image
from ..data.transforms import center_crop, eval_resize_ratio, load_resized, normalize, stored_size, to_model_size
from ..engine.checkpoint import load_model
from ..utils import atomic_path

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
OUTPUT_FORMATS = (".csv", ".json", ".jsonl")


def list_images(path: str | os.PathLike, skipped: list[Path] | None = None) -> list[Path]:
    """The image files under a folder (recursively, by extension, sorted), or ``[path]`` for a file.

    Args:
        path: an image file or a folder.
        skipped: when given, files in the folder without an image extension (hidden files aside)
            are appended to it.

    Raises:
        FileNotFoundError: the path does not exist, or a folder holds no image files.
    """
    p = Path(path)
    if p.is_dir():
        files, other = [], []
        for f in sorted(p.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
                continue
            (files if f.suffix.lower() in IMAGE_EXTS else other).append(f)
        if skipped is not None:
            skipped.extend(other)
        if not files:
            raise FileNotFoundError(f"No images ({', '.join(sorted(IMAGE_EXTS))}) under {p}.")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"Image not found: {p}")
    return [p]


def check_output_path(path: str | os.PathLike) -> Path:
    """``--out``: a file ending in ``.csv``, ``.json`` or ``.jsonl`` that is not a folder; checked
    before any work. Raises ValueError otherwise."""
    p = Path(path)
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        raise ValueError(f"--out {path} is a folder; give a file name ending in {', '.join(OUTPUT_FORMATS)}, "
                         f"e.g. {p / 'predictions.csv'}.")
    if p.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"--out {path}: unknown output format '{p.suffix or '(no extension)'}'; the extension picks "
                         f"it: {', '.join(OUTPUT_FORMATS)}.")
    return p


class OnnxBackend:
    """A predictor backend running an exported ``.onnx`` model in onnxruntime.

    Called with a normalised ``B x 3 x S x S`` tensor, returns the ``B x K`` logits (a torch
    tensor). ``meta`` is the checkpoint-style metadata embedded by ``fgir export`` and
    ``variant`` the inference variant the graph computes.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int = 0):
        from ..export.onnx import onnx_session, read_onnx_meta

        self.path = Path(path)
        self.meta = read_onnx_meta(self.path)
        self.variant = self.meta.get("export", {}).get("variant", "default (forward)")
        self.session = onnx_session(self.path, device, threads)
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().float().numpy()
        if self.fixed_batch and arr.shape[0] != self.fixed_batch:  # a fixed-batch graph: pad, then trim
            import numpy as np

            outs = []
            for i in range(0, arr.shape[0], self.fixed_batch):
                chunk = arr[i:i + self.fixed_batch]
                pad = np.zeros((self.fixed_batch - chunk.shape[0], *chunk.shape[1:]), dtype=chunk.dtype)
                outs.append(self.session.run(None, {self.input_name: np.concatenate([chunk, pad])})[0][:len(chunk)])
            return torch.from_numpy(np.concatenate(outs))
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])


class Predictor:
    """``fgir.load(ckpt).predict(images)`` -> one dict per image with the top-k classes.

    Args:
        model: the deployed model (its checkpoint metadata in ``meta``), or a backend: a callable
            mapping normalised images to logits, such as :class:`OnnxBackend`.
        device: where to run it.
        inference: inference variant (``default``, or one a plug-in adds, e.g. CAL's ``tta``);
            empty = the one the run was configured with (``model.inference``). A backend runs the
            variant it was exported with (``backend.variant``).
    """

    def __init__(self, model, meta: dict, device: str = "cpu", inference: str = ""):
        from ..models.plugins import get_inference

        self.meta, self.device = meta, device
        if isinstance(model, torch.nn.Module):
            self.model = model.to(device).eval()
            self.inference = inference or meta["config"]["model"].get("inference", "default")
            self._forward = get_inference(self.model, self.inference)
        else:
            variant = getattr(model, "variant", "default")
            if inference and inference not in (variant, variant.split(" ")[0]):
                raise ValueError(f"inference variant '{inference}' is not in this exported model; it computes "
                                 f"'{variant}'. Export that variant with `fgir export CKPT --inference {inference}`.")
            self.model, self.inference, self._forward = model, variant, model
        self.class_names = meta["class_names"]
        self.img_size = int(meta["img_size"])
        ratio = eval_resize_ratio(meta["config"]["data"])
        self.stored = stored_size(self.img_size, ratio)
        self.mean, self.std = meta["mean"], meta["std"]
        self.model_img_size = int(meta.get("model_img_size") or self.img_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "", inference: str = "") -> Predictor:
        """``device``: empty = CUDA when present, else CPU. An ``.onnx`` file runs in onnxruntime
        (:meth:`from_onnx`)."""
        from ..engine.distributed import pick_device

        dev = str(pick_device(device))
        if Path(path).suffix.lower() == ".onnx":
            return cls.from_onnx(path, device=dev, inference=inference)
        model = load_model(path, dev)
        return cls(model, model.fgir_meta, dev, inference)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, device: str = "cpu", inference: str = "",
                  threads: int = 0) -> Predictor:
        """A predictor running a model exported by ``fgir export`` (onnxruntime; CUDA provider
        when ``device`` is CUDA and onnxruntime has it)."""
        backend = OnnxBackend(path, device, threads)
        return cls(backend, backend.meta, "cpu", inference)

    def decode(self, image) -> torch.Tensor:
        """One image (path or PIL image) -> its resized ``3 x S x S`` uint8 tensor.

        Raises:
            ImageReadError: a path that is not a readable image.
            TypeError: anything else than a path or a PIL image.
        """
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"predict() takes image paths or PIL images, got {type(image).__name__}.")
        return torch.from_numpy(load_resized(image, self.stored)).permute(2, 0, 1)

    def _batch(self, arrs: list[torch.Tensor]) -> torch.Tensor:
        x = normalize(center_crop(torch.stack(arrs), self.img_size), self.mean, self.std)
        return to_model_size(x, self.model_img_size)

    def preprocess(self, images) -> torch.Tensor:
        return self._batch([self.decode(im) for im in images])

    @torch.no_grad()
    def logits(self, images) -> torch.Tensor:
        return self._forward(self.preprocess(images).to(self.device)).float().cpu()

    @torch.no_grad()
    def iter_predict(self, images, topk: int = 5, batch_size: int = 32,
                     on_error: Callable[[object, Exception], None] | None = None) -> Iterator[dict]:
        """Stream predictions: consume ``images`` (any iterable, read lazily) ``batch_size`` at a
        time, decode only that batch, yield one row per image in order.

        Args:
            images: paths or PIL images (a single one is accepted too).
            topk: classes per row (at most the class count).
            batch_size: images decoded and run together.
            on_error: called with ``(image, ImageReadError)`` for an unreadable image, which is then
                skipped; it may raise to stop. Without it an unreadable image raises.

        Yields:
            ``{"image": path or "<PIL image>", "topk": [{"class_id", "class_name", "prob"}, ...]}``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        k = min(topk, len(self.class_names))
        if k < 1:
            raise ValueError(f"topk must be >= 1, got {topk}.")
        it = iter(images)
        while True:
            names: list[str] = []
            arrs: list[torch.Tensor] = []
            for im in it:
                try:
                    arrs.append(self.decode(im))
                except ImageReadError as e:
                    if on_error is None:
                        raise
                    on_error(im, e)
                    continue
                names.append(str(im) if isinstance(im, (str, os.PathLike)) else "<PIL image>")
                if len(arrs) == batch_size:
                    break
            if not arrs:
                return
            x = self._batch(arrs)
            del arrs  # only the stacked batch stays alive while the model runs
            probs = self._forward(x.to(self.device)).float().cpu().softmax(-1)
            p, idx = probs.topk(k, dim=-1)
            for name, pr, ix in zip(names, p.tolist(), idx.tolist()):
                yield {"image": name, "topk": [{"class_id": c, "class_name": self.class_names[c], "prob": round(q, 6)}
                                               for c, q in zip(ix, pr)]}

    def predict(self, images, topk: int = 5, batch_size: int = 32,
                on_error: Callable[[object, Exception], None] | None = None) -> list[dict]:
        """All rows of :meth:`iter_predict` as a list."""
        return list(self.iter_predict(images, topk=topk, batch_size=batch_size, on_error=on_error))


class PredictionWriter:
    """Write prediction rows to ``.csv`` / ``.jsonl`` as they come (``.json``: at close).

    The file appears atomically when the writer closes without error; on an error nothing is
    left behind. CSV columns: ``image`` (the path), then ``class_name<i>, class_id<i>, prob<i>``
    for each of the ``topk`` ranks.

    Example:
        >>> with PredictionWriter("preds.csv", topk=5) as w:          # doctest: +SKIP
        ...     for row in predictor.iter_predict(files):
        ...         w.write(row)
    """

    def __init__(self, path: str | os.PathLike, topk: int):
        self.path = check_output_path(path)
        self.format = self.path.suffix.lower()
        self.topk, self.count = topk, 0
        self._rows: list[dict] = []

    def __enter__(self) -> PredictionWriter:
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._fh = open(self._tmp, "x", newline="")
        if self.format == ".csv":
            self._csv = csv.writer(self._fh)
            self._csv.writerow(["image"] + [f"{f}{i + 1}" for i in range(self.topk)
                                            for f in ("class_name", "class_id", "prob")])
        return self

    def write(self, row: dict) -> None:
        self.count += 1
        if self.format == ".csv":
            self._csv.writerow([row["image"]] + [v for t in row["topk"]
                                                 for v in (t["class_name"], t["class_id"], t["prob"])])
        elif self.format == ".jsonl":
            self._fh.write(json.dumps(row) + "\n")
        else:
            self._rows.append(row)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None and self.format == ".json":
                json.dump(self._rows, self._fh, indent=2)
        finally:
            self._fh.close()
            self._ctx.__exit__(exc_type, exc, tb)
        return False


def write_predictions(rows: Iterable[dict], path: str | os.PathLike, topk: int = 0) -> Path:
    """Write rows to ``path`` (format from the extension: ``.csv``, ``.json``, ``.jsonl``).
    ``topk``: CSV rank columns (default: taken from the first row)."""
    rows = iter(rows)
    first = next(rows, None)
    k = topk or (len(first["topk"]) if first else 0)
    with PredictionWriter(path, k) as w:
        if first is not None:
            w.write(first)
        for r in rows:
            w.write(r)
    return w.path


def collect_images(sources, not_images: list[Path] | None = None) -> tuple[list, set[str]]:
    """Expand image files, folders and PIL images into ``(items, named)``: ``named`` holds the
    files given directly (an unreadable one is an error), the others were found in folders
    (an unreadable one is skipped). Folder files without an image extension go to ``not_images``."""
    if isinstance(sources, (str, os.PathLike, Image.Image)):
        sources = [sources]
    items: list = []
    named: set[str] = set()
    for src in sources:
        if isinstance(src, Image.Image):
            items.append(src)
            continue
        files = list_images(src, not_images)
        if not Path(src).is_dir():
            named.update(str(f) for f in files)
        items.extend(files)
    return items, named


def skip_policy(named: set[str], on_skip: Callable[[Path, Exception], None] | None = None):
    """The ``on_error`` of :meth:`Predictor.iter_predict` for :func:`collect_images` items: raise for
    a named file or a PIL image, else report through ``on_skip`` (default: a warning) and skip."""
    import warnings

    def on_error(im, e):
        if not isinstance(im, (str, os.PathLike)) or str(im) in named:
            raise e
        if on_skip is None:
            warnings.warn(f"skipped unreadable image: {e}", stacklevel=2)
        else:
            on_skip(Path(im), e)

    return on_error


def predict_images(predictor: Predictor, sources, topk: int = 5, batch_size: int = 32,
                   on_skip: Callable[[Path, Exception], None] | None = None) -> Iterator[dict]:
    """Stream rows for image files, folders and PIL images (:func:`collect_images`,
    :func:`skip_policy`)."""
    items, named = collect_images(sources)
    yield from predictor.iter_predict(items, topk=topk, batch_size=batch_size,
                                      on_error=skip_policy(named, on_skip))
