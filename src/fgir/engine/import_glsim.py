"""`fgir import glsim PTH --out CKPT`: a released legacy GLSim checkpoint as an fgir checkpoint.

The GLSim authors' checkpoints (HF ``NYCU-PCSxNTHU-MIS/GLSim``, ``{ds}_vit_b16_16_{serial}.pth``)
are ``torch.save`` dicts with ``config`` (a pickled ``argparse.Namespace``), ``epoch``, ``model``,
``accuracy`` and ``optimizer``, holding the legacy ``ViTGLSim`` (spec glsim.md §7). They are read
without executing pickled code (the restricted reader of :mod:`fgir.models.importers`) and mapped
onto a timm ViT with our ``glsim`` plug-in:

==========================================================  ==============================================
legacy key                                                  fgir key
==========================================================  ==============================================
``class_token``                                             ``backbone.cls_token``
``anchor_class_token``                                      ``crop_cls_token`` (``--crop-cls separate``)
``patch_embedding.{weight,bias}``                           ``backbone.patch_embed.proj.*``
``positional_embedding.pos_embedding``                      ``backbone.pos_embed``
``encoder.blocks.{i}.attn.proj_{q,k,v}.*``                  ``backbone.blocks.{i}.attn.qkv.*`` (q, k, v
                                                            stacked in that order, timm's layout)
``encoder.blocks.{i}.proj.*``                               ``backbone.blocks.{i}.attn.proj.*``
``encoder.blocks.{i}.norm{1,2}.*``                          ``backbone.blocks.{i}.norm{1,2}.*``
``encoder.blocks.{i}.pwff.fc{1,2}.*``                       ``backbone.blocks.{i}.mlp.fc{1,2}.*``
``encoder_norm.*``                                          ``backbone.norm.*``
``aggregator.blocks.{j}.*`` (same names as the encoder)     ``aggregator.{j}.*``
``aggregator_norm.*``, ``head.*``                           the same
==========================================================  ==============================================

The crop pass of the legacy code always uses ``class_token`` (``anchor_class_token`` is allocated
but never used, spec §5), so the default is ``crop_cls: shared``, which reproduces the released
numbers; ``--crop-cls separate`` loads ``anchor_class_token`` as our separate crop token instead.
The plug-in entry is the legacy-parity preset of spec §9 (reference box, aggregator LN eps
1e-12) with the recorded ``dynamic_top`` as ``top_o`` (the value saved is already the one the run
used, so no per-dataset override is applied again). The input size comes from the recorded
``image_size`` or, failing that, from the position-embedding length. The encoder's LayerNorms get
the legacy eps 1e-12 (``model.norm_eps``; timm's default is 1e-6).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from ..config import Config, from_dict
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..models.importers import strip_ddp_prefix
from .import_tgda import checkpoint_file, resolve_class_names, save_imported_checkpoint

#: Legacy model names (pytorch-pretrained-vit configs) -> timm architectures.
LEGACY_MODELS: dict[str, str] = {
    "vit_b16": "vit_base_patch16_224", "vit_b32": "vit_base_patch32_224",
    "vit_l16": "vit_large_patch16_224", "vit_l32": "vit_large_patch32_224",
    "b16": "vit_base_patch16_224", "b32": "vit_base_patch32_224",
    "l16": "vit_large_patch16_224", "l32": "vit_large_patch32_224",
}

_BLOCK = re.compile(r"^(encoder|aggregator)\.blocks\.(\d+)\.(.+)$")
_INNER = {"proj": "attn.proj", "norm1": "norm1", "norm2": "norm2", "pwff.fc1": "mlp.fc1", "pwff.fc2": "mlp.fc2"}
_TOP = {"class_token": "backbone.cls_token", "patch_embedding.weight": "backbone.patch_embed.proj.weight",
        "patch_embedding.bias": "backbone.patch_embed.proj.bias",
        "positional_embedding.pos_embedding": "backbone.pos_embed", "encoder_norm.weight": "backbone.norm.weight",
        "encoder_norm.bias": "backbone.norm.bias", "aggregator_norm.weight": "aggregator_norm.weight",
        "aggregator_norm.bias": "aggregator_norm.bias", "head.weight": "head.weight", "head.bias": "head.bias"}


def map_glsim_state(src: Mapping[str, torch.Tensor], crop_cls: str = "shared") -> dict[str, torch.Tensor]:
    """The legacy ``ViTGLSim`` state dict under our names (see the module docstring).

    Raises:
        ValueError: naming every legacy key that does not map, or a block without all of q, k, v.
    """
    src = {strip_ddp_prefix(k): v for k, v in src.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for k, v in src.items():
        if k in _TOP:
            out[_TOP[k]] = v
        elif k == "anchor_class_token":
            if crop_cls == "separate":
                out["crop_cls_token"] = v
        elif m := _BLOCK.match(k):
            part, i, rest = m.groups()
            dst = f"backbone.blocks.{i}" if part == "encoder" else f"aggregator.{i}"
            if a := re.match(r"^attn\.proj_([qkv])\.(weight|bias)$", rest):
                qkv.setdefault(f"{dst}.attn.qkv.{a.group(2)}", {})[a.group(1)] = v
                continue
            inner, _, leaf = rest.rpartition(".")
            if inner in _INNER and leaf in ("weight", "bias"):
                out[f"{dst}.{_INNER[inner]}.{leaf}"] = v
            else:
                unknown.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"{len(unknown)} legacy GLSim keys do not map onto fgir's glsim model, e.g. "
                         f"{sorted(unknown)[:5]}; is this a ViTGLSim checkpoint?")
    for dst, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{dst}: the checkpoint has proj_{'/'.join(sorted(parts))} but not all of q, k, v.")
        out[dst] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if crop_cls == "separate" and "crop_cls_token" not in out:
        raise ValueError("--crop-cls separate needs anchor_class_token, which this checkpoint does not have.")
    return out


def import_glsim(pth: str, out: str, model_name: str = "", img_size: int = 0, top_o: int = 0,
                 crop_cls: str = "shared", dataset: str = "", root: str = "", class_names: str = "",
                 mean: tuple = (), std: tuple = ()) -> dict:
    """Convert a legacy GLSim ``.pth`` into an fgir checkpoint at ``out``; returns a summary.

    Args:
        pth: the released ``.pth``.
        out: the ``.safetensors`` file to write.
        model_name: timm architecture (default: from the recorded ``model_name``, e.g. vit_b16).
        img_size: input side (default: recorded ``image_size``, else from the position embedding).
        top_o: selected patches O (default: the recorded ``dynamic_top``, else 8).
        crop_cls: ``shared`` (what the legacy code ran) or ``separate`` (load ``anchor_class_token``).
        dataset, root, class_names: where the class names come from (as ``fgir import tgda``).
        mean, std: normalisation (default: ImageNet; 0.5 when the run recorded ``custom_mean_std``).
    """
    from ..models.importers import read_reference_checkpoint

    if crop_cls not in ("shared", "separate"):
        raise ValueError(f"--crop-cls {crop_cls!r}: expected shared (the legacy behaviour) or separate.")
    if img_size < 0:
        raise ValueError(f"--img-size {img_size}: expected a positive input size (or 0: from the checkpoint).")
    if bool(mean) != bool(std):
        raise ValueError("--mean and --std go together: give both (3 values each) or neither.")
    src = checkpoint_file(pth)
    raw = read_reference_checkpoint(src, extra_keys=("dynamic_top", "custom_mean_std"))
    ref = raw["config"]
    state = map_glsim_state(raw["model"], crop_cls)
    anchor = anchor_report(raw["model"])
    needed = {"head.weight": "head.weight", "backbone.pos_embed": "positional_embedding.pos_embedding",
              "backbone.patch_embed.proj.weight": "patch_embedding.weight"}
    missing = [legacy for ours, legacy in needed.items() if ours not in state]
    if missing:
        raise ValueError(f"{src}: no {', '.join(missing)} in the state dict; is this a ViTGLSim checkpoint?")
    legacy = str(ref.get("model_name", ""))
    name = model_name or LEGACY_MODELS.get(legacy, "")
    if not name:
        raise ValueError(f"{src}: model_name {legacy!r} is not a known legacy ViT ({sorted(LEGACY_MODELS)}); pass "
                         "--model with the timm architecture (e.g. vit_base_patch16_224).")
    patch = int(state["backbone.patch_embed.proj.weight"].shape[-1])
    cells = int(state["backbone.pos_embed"].shape[1]) - 1
    side = math.isqrt(cells)
    size = int(img_size or ref.get("image_size") or (side * patch if side * side == cells else 0))
    if size <= 0:
        raise ValueError(f"{src}: cannot tell the input size (no image_size recorded, {cells} position cells); "
                         "pass --img-size.")
    num_classes = int(state["head.weight"].shape[0])
    names = resolve_class_names(num_classes, class_names, dataset, root)
    if not mean:
        mean, std = ((0.5,) * 3, (0.5,) * 3) if ref.get("custom_mean_std") else (IMAGENET_MEAN, IMAGENET_STD)
    entry = {"name": "glsim", "top_o": int(top_o or ref.get("dynamic_top") or 8), "top_o_dataset_overrides": {},
             "crop_cls": crop_cls, "crop_box": "reference", "aggregator_norm_eps": 1e-12,
             "aggregator_depth": sum(1 for k in state if re.match(r"^aggregator\.\d+\.norm1\.weight$", k))}
    cfg: Config = from_dict(Config, {"model": {"name": name, "plugins": [entry], "norm_eps": 1e-12},
                                     "data": {"name": dataset or "imported", "root": root, "img_size": size,
                                              "mean": list(mean), "std": list(std)}})
    path = save_imported_checkpoint(cfg, num_classes, names, state, raw, src, out)
    return {"checkpoint": str(path), "model": name, "num_classes": num_classes, "img_size": size,
            "top_o": entry["top_o"], "crop_cls": crop_cls, "anchor_class_token": anchor}


def anchor_report(src: Mapping[str, torch.Tensor]) -> str:
    """Whether the checkpoint's ``anchor_class_token`` was trained (spec §5 leaves it open for the
    released files): absent, equal to its initial copy of ``class_token``, or different."""
    src = {strip_ddp_prefix(k): v for k, v in src.items()}
    a, c = src.get("anchor_class_token"), src.get("class_token")
    if a is None:
        return "absent"
    if c is None or a.shape != c.shape:
        return "present, not comparable with class_token"
    diff = float((a.float() - c.float()).abs().max())
    return ("equal to class_token (never trained: crop_cls shared is what ran)" if diff == 0 else
            f"differs from class_token (max |difference| {diff:.3g}): it may have been trained; crop_cls separate "
            "loads it")
