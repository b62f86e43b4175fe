"""ONNX export of a checkpoint's deployed model, with a parity check in onnxruntime.

:func:`export_onnx` rebuilds the deployed model from an fgir checkpoint, traces its export form
(:func:`fgir.export.forms.export_form`), embeds the metadata a predictor needs (class names,
mean/std, input sizes, the inference variant, the fgir version and the checkpoint metadata) in
the model's ``metadata_props``, runs the file in onnxruntime on a seeded batch and compares the
logits with PyTorch's. A file whose largest absolute difference exceeds ``atol`` is not kept.

The graph's input is ``image``: ``B x 3 x S x S`` float32, already normalised (the predictor
resizes, crops and normalises as for the checkpoint); its output is ``logits``: ``B x K``.

NOTE: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used when this
torch still has it: it needs no extra package and traces every model family here. The dynamo
exporter (needs ``onnxscript``) is the fallback and can be forced with ``exporter="dynamo"``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.transforms import eval_resize_ratio
from .forms import export_form, export_notes

__all__ = ["ExportResult", "ParityError", "export_onnx", "export_module", "read_onnx_meta", "onnx_session",
           "EXPORTERS"]

EXPORTERS = ("auto", "torchscript", "dynamo")
META_KEY = "fgir_meta"
"""``metadata_props`` key holding the checkpoint-style metadata (JSON) of an exported model."""


class ParityError(ValueError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""

    path: str
    variant: str
    max_abs_diff: float
    atol: float
    batch_sizes: list[int]
    img_size: int
    opset: int
    dynamic_batch: bool
    exporter: str
    card: str = ""
    metadata: dict = field(default_factory=dict)
    folded_norms: int = 0
    ort_attention: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"{what} needs the '{module}' package: pip install 'fgir[export]' "
                           f"(onnx, onnxruntime, huggingface_hub).") from e


def onnx_session(path: str | os.PathLike, device: str = "cpu", threads: int = 0):
    """An onnxruntime session for ``path`` (CUDA provider for a ``cuda`` device when available)."""
    ort = _require("onnxruntime", "running an ONNX model")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: shape-inference notes on gather/scatter graphs are not for users
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def read_onnx_meta(path: str | os.PathLike) -> dict:
    """The fgir metadata embedded in an exported ``.onnx`` file (checkpoint-style dict plus an
    ``export`` entry). Raises ValueError for a file fgir did not export."""
    onnx = _require("onnx", "reading ONNX metadata")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX model not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise ValueError(f"{p} is not a readable ONNX model: {e}") from e
    props = {m.key: m.value for m in model.metadata_props}
    if META_KEY not in props:
        raise ValueError(f"{p} has no fgir metadata (not written by `fgir export`); export it with "
                         "`fgir export CKPT --format onnx`.")
    return json.loads(props[META_KEY])


def export_module(module: torch.nn.Module, x: torch.Tensor, path: str | os.PathLike, *, opset: int = 17,
                  dynamic_batch: bool = False, exporter: str = "auto", custom_opsets: dict | None = None) -> str:
    """Trace ``module`` (eval mode) on ``x`` into ``path`` (input ``image``, output ``logits``);
    returns the exporter used. No metadata, no parity check: see :func:`export_onnx`.
    ``custom_opsets``: opset imports of contrib domains (e.g. onnxruntime's, TorchScript exporter only)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}; expected one of {list(EXPORTERS)}.")
    with torch.no_grad():
        return _torch_export(module.eval(), x, Path(path), opset, dynamic_batch, exporter, custom_opsets)


def _torch_export(module, x, path: Path, opset: int, dynamic_batch: bool, exporter: str,
                  custom_opsets: dict | None = None) -> str:
    kw = dict(input_names=["image"], output_names=["logits"], opset_version=opset)
    if custom_opsets:
        if exporter == "dynamo":
            raise ValueError("onnxruntime's fused attention (--ort-attention) needs the TorchScript-based exporter "
                             "(--exporter auto or torchscript), not dynamo.")
        kw["custom_opsets"] = custom_opsets
    if exporter in ("auto", "torchscript"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
                torch.onnx.export(module, (x,), str(path), dynamo=False, do_constant_folding=True,
                                  dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}
                                  if dynamic_batch else None, **kw)
            return "torchscript"
        except TypeError as e:  # a torch without the TorchScript-based exporter
            if exporter == "torchscript" or "dynamo" not in str(e):
                raise
    _require("onnxscript", "the dynamo ONNX exporter")
    shapes = ({"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=True, dynamic_shapes=shapes, external_data=False, **kw)
    return "dynamo"


def _set_metadata(path: Path, props: dict[str, str]) -> None:
    onnx = _require("onnx", "ONNX export")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.doc_string = f"fgir export: {props.get('architecture', '')} ({props.get('variant', '')})"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _inputs(meta: dict, size: int, batch: int, seed: int, images, model=None) -> torch.Tensor:
    if images:
        from ..serve.predict import Predictor, collect_images

        files, _ = collect_images(images)
        return Predictor(model, {**meta, "model_img_size": size}, "cpu", "default").preprocess(files[:batch])
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike = "", *, img_size: int = 0,
                dynamic_batch: bool = False, opset: int = 17, atol: float = 1e-4, batch_size: int = 2,
                seed: int = 0, images=None, inference: str = "", exporter: str = "auto", card: bool = True,
                command: str = "", fold_norms: bool = True, ort_attention: bool = False) -> ExportResult:
    """Export the deployed model of ``checkpoint`` to ONNX and check it against PyTorch.

    Args:
        checkpoint: run folder or ``.safetensors`` checkpoint.
        out: the ``.onnx`` file (default: ``<checkpoint stem>.onnx`` next to the checkpoint).
        img_size: the graph's input size; 0 = the size the model sees (``model_img_size``).
        dynamic_batch: a symbolic batch dimension (checked at two batch sizes); else fixed at
            ``batch_size``.
        opset: ONNX opset version.
        atol: the largest allowed ``max |onnx - torch|`` of the logits (fp32).
        batch_size: images of the parity batch.
        seed: seed of the random parity batch.
        images: image files or folders for the parity batch instead of random inputs.
        inference: inference variant to export; empty = the checkpoint's ``model.inference``
            (``default`` uses a plug-in's declared export form, see :mod:`fgir.export.forms`).
        exporter: ``auto`` (TorchScript-based when available, else dynamo), ``torchscript`` or ``dynamo``.
        card: also write a model card (``<out stem>.md``) next to the file.
        command: the command line recorded in the card (default: this process's argv).
        fold_norms: fold eval-mode token BatchNorms into the Linear that reads them
            (:mod:`fgir.export.fold`; ViTFS: 24 norms and 48 transposes fewer), kept only when the
            folded model matches the original within ``atol / 10`` on the parity batch.
        ort_attention: write timm's self-attention as onnxruntime's fused ``Attention``
            operator (:mod:`fgir.export.ort_attention`): faster on onnxruntime, but the file then
            runs on onnxruntime only.

    Raises:
        ParityError: the difference exceeds ``atol`` (no file is left behind).
        ValueError: bad arguments.
    """
    from .. import __version__
    from ..engine.checkpoint import load_model, resolve_checkpoint

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}; expected one of {list(EXPORTERS)}.")
    if atol <= 0 or not np.isfinite(atol):
        raise ValueError(f"--atol must be a positive number, got {atol}.")
    if batch_size < 1 or img_size < 0 or opset < 7:
        raise ValueError(f"batch_size must be >= 1, img_size >= 0 and opset >= 7; got {batch_size}, {img_size}, "
                         f"{opset}.")
    _require("onnx", "ONNX export")
    _require("onnxruntime", "the ONNX parity check")
    ck = resolve_checkpoint(checkpoint)
    model = load_model(ck, "cpu")
    meta = model.fgir_meta
    size = int(img_size or meta.get("model_img_size") or meta["img_size"])
    variant_name = inference or meta["config"]["model"].get("inference", "default")
    form = export_form(model, variant_name)
    path = Path(out) if out else ck.with_suffix(".onnx")
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"--out {path}: the ONNX file name must end in .onnx.")
    path.parent.mkdir(parents=True, exist_ok=True)

    x = _inputs(meta, size, batch_size, seed, images, model)
    batch_size = int(x.shape[0])
    with torch.no_grad():
        try:
            ref = form.module(x)
        except Exception as e:
            raise ValueError(f"the deployed model ({meta['config']['model']['name']}, {form.variant}) does not run "
                             f"on {size} px inputs: {e}") from e
    notes = export_notes(form.module)  # what the traced graph fixes (e.g. token counts), known after a forward
    variant = f"{form.variant}; {'; '.join(notes)}" if notes else form.variant
    traced, folded = form.module, 0
    if fold_norms:
        from .fold import fold_if_equal

        traced, folded, _ = fold_if_equal(form.module, x, atol / 10)
    fused_attn, opsets = 0, None
    if ort_attention:
        from .ort_attention import ORT_OPSETS, with_ort_attention

        traced, fused_attn = with_ort_attention(traced)
        opsets = ORT_OPSETS if fused_attn else None
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with torch.no_grad():
            used = _torch_export(traced, x, tmp, opset, dynamic_batch, exporter, opsets)
        cfg = meta["config"]
        export_info = {"format": "onnx", "variant": variant, "opset": opset, "dynamic_batch": dynamic_batch,
                       "img_size": size, "exporter": used, "source": ck.name, "fgir_version": __version__,
                       "torch_version": torch.__version__, "folded_norms": folded,
                       "ort_attention": fused_attn}
        onnx_meta = {**meta, "model_img_size": size, "export": export_info}
        props = {"fgir_version": __version__, "architecture": cfg["model"]["name"],
                 "plugins": json.dumps([p.get("name") for p in cfg["model"].get("plugins", [])]),
                 "variant": variant, "class_names": json.dumps(meta["class_names"]),
                 "num_classes": str(meta["num_classes"]), "mean": json.dumps(meta["mean"]),
                 "std": json.dumps(meta["std"]), "img_size": str(size), "input_layout": "NCHW float32 normalised",
                 "resize_ratio": str(eval_resize_ratio(cfg["data"])), META_KEY: json.dumps(onnx_meta)}
        _set_metadata(tmp, props)
        sess = onnx_session(tmp)
        batches = [x] + ([_inputs(meta, size, batch_size + 1, seed + 1, None)] if dynamic_batch else [])
        diff = 0.0
        # a declared form of the default variant (merged weights, batched crop) re-expresses model.forward:
        # the file is compared with the model itself as well
        also_model = form.module is not model and variant.startswith("default")
        for i, xb in enumerate(batches):
            with torch.no_grad():
                refs = [ref if i == 0 else form.module(xb)] + ([model(xb)] if also_model else [])
            got = sess.run(["logits"], {"image": xb.numpy()})[0]
            for r in refs:
                if got.shape != tuple(r.shape):
                    raise ParityError(f"ONNX output shape {got.shape} != PyTorch {tuple(r.shape)} at batch "
                                      f"{xb.shape[0]}.")
                diff = max(diff, float(np.abs(got - r.float().numpy()).max()))
        if not diff <= atol:
            raise ParityError(f"ONNX parity check failed: max |onnx - torch| = {diff:.3g} > --atol {atol:g} "
                              f"({cfg['model']['name']}, {variant}, {size} px, batch "
                              f"{'/'.join(str(int(b.shape[0])) for b in batches)}); no file written. Loosen --atol "
                              "or try another --opset.")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    res = ExportResult(str(path), variant, diff, atol, [int(b.shape[0]) for b in batches], size, opset,
                       dynamic_batch, used, metadata={k: v for k, v in props.items() if k != META_KEY},
                       folded_norms=folded, ort_attention=fused_attn)
    if card:
        from .card import write_model_card

        res.card = str(write_model_card(ck, path.with_suffix(".md"), command=command, export=export_info,
                                        model=model))
    return res
