"""Publishing checkpoints on the Hugging Face hub and loading them back.

``fgir push CKPT REPO_ID`` writes a repository in the layout timm's ``hf-hub:`` loader reads:

* ``model.safetensors`` — the deployed model's state dict (plain tensors);
* ``config.json`` — ``architecture``, ``num_classes``, ``num_features``, ``label_names``,
  ``model_args`` (builder arguments, e.g. a ViT's ``img_size``) and ``pretrained_cfg``
  (``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``, ``classifier``), plus an
  ``fgir`` entry with the checkpoint metadata (config, plug-ins, metrics) for an exact rebuild;
* ``README.md`` — the model card (:mod:`fgir.export.card`).

Loading: ``model.name=hf-hub:OWNER/NAME model.pretrained=true`` in a config (or
``fgir.create_model("hf-hub:OWNER/NAME", pretrained=True)``); ``local-dir:PATH`` reads a folder
in the same layout. The cached snapshot is used when it is complete (no network), else the two
files are downloaded with ``huggingface_hub``. Plain timm architectures go through
``timm.create_model("local-dir:<snapshot>")``, so ``timm.create_model("hf-hub:OWNER/NAME",
pretrained=True)`` reads the same repository without fgir. fgir's own architectures (LRNet,
ViTFS) are rebuilt with their registered builders and ``model_args``; a model with plug-ins (a
CAL teacher, ...) is rebuilt from the embedded fgir metadata, since its state dict is not a timm
architecture's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch.nn as nn

__all__ = ["hub_config", "save_for_hub", "push_to_hub", "create_from_hub", "is_hub_name", "HUB_PREFIXES"]

HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
WEIGHTS = "model.safetensors"


def is_hub_name(name: str) -> bool:
    """Whether a model name points at a hub repository or a local folder in the hub layout."""
    return isinstance(name, str) and name.startswith(HUB_PREFIXES)


def hub_config(meta: dict, model: nn.Module) -> dict:
    """``config.json`` for a checkpoint's metadata and its rebuilt deployed model."""
    from .. import __version__
    from ..data.transforms import eval_resize_ratio, stored_size
    from ..engine.build import _fixed_input_size

    cfg = meta["config"]
    m = cfg["model"]
    size = int(meta.get("model_img_size") or meta["img_size"])
    model_args = dict(m.get("kwargs") or {})
    if "img_size" not in model_args and (_fixed_input_size(m["name"]) or m.get("img_size")):
        model_args["img_size"] = size
    pc = dict(getattr(model, "pretrained_cfg", None) or {})
    pretrained_cfg = {
        "input_size": [3, size, size], "mean": list(meta["mean"]), "std": list(meta["std"]),
        "crop_pct": round(meta["img_size"] / stored_size(meta["img_size"], eval_resize_ratio(cfg["data"])), 4),
        "crop_mode": "center", "interpolation": "bicubic", "num_classes": meta["num_classes"],
        "fixed_input_size": bool(pc.get("fixed_input_size", False)),
    }
    for key in ("classifier", "first_conv", "pool_size"):
        if pc.get(key) is not None:
            pretrained_cfg[key] = list(pc[key]) if isinstance(pc[key], tuple) else pc[key]
    out = {"architecture": m["name"], "num_classes": meta["num_classes"],
           "num_features": int(getattr(model, "num_features", 0) or 0), "label_names": list(meta["class_names"])}
    if model_args:
        out["model_args"] = model_args
    out["pretrained_cfg"] = pretrained_cfg
    out["fgir"] = {"version": __version__, "plugins": [p.get("name") for p in m.get("plugins") or []],
                   "meta": meta}
    return out


def save_for_hub(checkpoint: str | os.PathLike, folder: str | os.PathLike, command: str = "") -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for ``checkpoint`` into ``folder``."""
    from safetensors.torch import save_file

    from ..engine.checkpoint import load_model, resolve_checkpoint
    from .card import write_model_card

    ck = resolve_checkpoint(checkpoint)
    model = load_model(ck, "cpu")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd, seen = {}, set()
    for k, v in model.state_dict().items():  # safetensors refuses shared storage
        v = v.detach().cpu()
        sd[k] = v.clone().contiguous() if (v.data_ptr() in seen and v.numel()) else v.contiguous()
        seen.add(v.data_ptr())
    save_file(sd, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hub_config(model.fgir_meta, model), indent=2))
    write_model_card(ck, folder / "README.md", model=model, command=command)
    return folder


def push_to_hub(checkpoint: str | os.PathLike, repo_id: str, *, private: bool = False, local_dir: str = "",
                token: str | None = None, command: str = "") -> str:
    """Publish ``checkpoint`` as hub repository ``repo_id``.

    With ``local_dir`` the repository folder is only written there (nothing is uploaded;
    ``hf upload REPO_ID DIR`` uploads it later). Returns the folder or the repository URL.
    """
    if not repo_id or repo_id.count("/") != 1 or any(not part for part in repo_id.split("/")):
        raise ValueError(f"REPO_ID must be OWNER/NAME, got {repo_id!r}.")
    if local_dir:
        return str(save_for_hub(checkpoint, local_dir, command=command))
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        raise RuntimeError("fgir push needs huggingface_hub: pip install 'fgir[export]'.") from e
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hub(checkpoint, tmp, command=command)
        api = HfApi(token=token, library_name="fgir")
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, folder_path=tmp, commit_message="Add fgir model")
        return str(url)


def _snapshot(name: str, need_weights: bool) -> Path:
    """The local folder holding ``config.json`` (and the weights) for a hub or local-dir name."""
    source, _, rid = name.partition(":")
    if source == "local-dir":
        p = Path(rid)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{name}: no config.json in {p} (write one with `fgir push CKPT OWNER/NAME "
                                    "--local-dir DIR`).")
        return p
    repo, _, rev = rid.partition("@")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    files = ["config.json"] + ([WEIGHTS] if need_weights else [])
    hits = [try_to_load_from_cache(repo, f, revision=rev or None) for f in files]
    if all(isinstance(h, str) and Path(h).is_file() for h in hits):
        return Path(hits[0]).parent
    from ..models.pretrained import PretrainedUnavailable, _offline_env, hub_endpoint, reachable

    if _offline_env() or not reachable(hub_endpoint()):
        raise PretrainedUnavailable(f"{name}: the repository is not in the local Hugging Face cache and the hub is "
                                    "unreachable (or HF_HUB_OFFLINE is set). Download it once with "
                                    f"`hf download {repo}` on a machine with network, or use local-dir:PATH.")
    paths = [hf_hub_download(repo, f, revision=rev or None) for f in files]
    return Path(paths[0]).parent


def create_from_hub(name: str, num_classes: int | None = None, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build the model published as ``hf-hub:OWNER/NAME[@REV]`` (or ``local-dir:PATH``).

    Args:
        name: the prefixed name.
        num_classes: classifier width; a different count than the published one re-initialises
            the classifier (fine-tuning on another dataset).
        pretrained: load the published weights (else only the architecture).
        **kwargs: builder arguments (``drop_rate``, ...) on top of the published ``model_args``.
    """
    import timm
    from safetensors.torch import load_file

    from ..engine.checkpoint import build_from_meta, load_weights_into
    from ..registry import MODELS

    if name.startswith("hf_hub:"):
        name = "hf-hub:" + name[len("hf_hub:"):]
    folder = _snapshot(name, pretrained)
    cfg = json.loads((folder / "config.json").read_text())
    arch, k = cfg.get("architecture"), int(cfg.get("num_classes") or 0)
    fg = cfg.get("fgir") or {}
    if fg.get("plugins") and fg.get("meta"):
        model, _ = build_from_meta(fg["meta"])
    elif arch in MODELS:
        from ..models.factory import create_model

        model = create_model(arch, num_classes=k, **{**(cfg.get("model_args") or {}), **kwargs})
    else:
        model = timm.create_model(f"local-dir:{folder}", pretrained=pretrained, num_classes=k, **kwargs)
        pretrained = False  # timm loaded them
    if pretrained:
        load_weights_into(model, load_file(str(folder / WEIGHTS)), where=name)
    pc = dict(getattr(model, "pretrained_cfg", None) or {})
    hub_pc = cfg.get("pretrained_cfg") or {}
    pc.update({key: tuple(hub_pc[key]) for key in ("mean", "std", "input_size") if key in hub_pc})
    pc.update({"hf_hub_id": name.split(":", 1)[1]} if name.startswith("hf-hub:") else {"file": str(folder)})
    model.pretrained_cfg = model.default_cfg = pc
    model.fgir_hub_config = cfg
    if num_classes is not None and num_classes != k:
        model.reset_classifier(num_classes)
    return model
