"""Pretrained weights for timm models, offline-first.

``model.pretrained=true`` asks timm for the weights of ``model.name`` (a timm tag such as
``resnet101.tv_in1k``; ``fgir list models --pretrained`` lists them). timm downloads them from the
Hugging Face hub (or the URL of its pretrained config) on first use and keeps them in the local
caches. This module looks in those caches first, so a machine that has the weights never touches
the network, and with no network and no cached copy it fails at once with a message saying what to
do, instead of retrying the hub for about a minute.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
"""File names timm tries in a hub repository, in its order of preference."""


class PretrainedUnavailable(RuntimeError):
    """The weights are neither cached nor downloadable; the message says how to get them."""


def pretrained_source(name: str) -> dict:
    """Where timm would fetch ``name``'s weights: ``{"hf_hub_id", "hf_hub_filename", "url"}``
    (missing entries are empty). Raises ``KeyError`` for a name with no pretrained config."""
    from timm.models import get_pretrained_cfg

    if name.startswith("hf-hub:") or name.startswith("hf_hub:"):
        return {"hf_hub_id": name.split(":", 1)[1].split("@")[0], "hf_hub_filename": "", "url": ""}
    try:
        pc = get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag (x) for arch"
        pc = None
    if pc is None:
        raise KeyError(f"model.pretrained=true: timm has no pretrained weights for '{name}'; "
                       f"see `fgir list models --pretrained --filter {name.split('.')[0]}`.")
    hub = pc.hf_hub_id or ""
    return {"hf_hub_id": hub.split("@")[0] if hub else "",
            "hf_hub_filename": getattr(pc, "hf_hub_filename", None) or "", "url": pc.url or ""}


def cached_weights(name: str) -> Path | None:
    """The locally cached weight file for ``name`` (Hugging Face hub cache, then torch hub's
    ``checkpoints`` folder for URL-hosted weights), or None."""
    src = pretrained_source(name)
    if src["hf_hub_id"]:
        from huggingface_hub import try_to_load_from_cache

        for fn in ([src["hf_hub_filename"]] if src["hf_hub_filename"] else []) + list(WEIGHT_FILES):
            hit = try_to_load_from_cache(src["hf_hub_id"], fn)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    if src["url"]:
        import torch.hub

        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(src["url"]).path)
        if p.is_file():
            return p
    return None


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_env() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def pretrained_overlay(name: str) -> dict:
    """Keyword arguments for ``timm.create_model(name, pretrained=True, ...)``: a cached file when
    there is one (``pretrained_cfg_overlay={"file": ...}``: no network), else ``{}`` after checking
    that the source is reachable. Raises :class:`PretrainedUnavailable` (offline, nothing cached)."""
    hit = cached_weights(name)
    if hit is not None:
        return {"pretrained_cfg_overlay": {"file": str(hit)}}
    src = pretrained_source(name)
    where = hub_endpoint() if src["hf_hub_id"] else src["url"]
    if _offline_env() or not where or not reachable(where):
        why = "HF_HUB_OFFLINE is set" if _offline_env() else f"{urlparse(where).hostname or where} is unreachable"
        raise PretrainedUnavailable(
            f"model.pretrained=true: the weights of '{name}' are not in the local cache "
            f"({'HF hub ' + src['hf_hub_id'] if src['hf_hub_id'] else src['url']}) and {why}. Fetch them once on a "
            f"machine with network (python -c \"import timm; timm.create_model('{name}', pretrained=True)\") "
            "and copy ~/.cache/huggingface (or ~/.cache/torch/hub), or start from a file with "
            "model.checkpoint=PATH (an fgir run, .safetensors or a timm state dict) and model.pretrained=false.")
    return {}
