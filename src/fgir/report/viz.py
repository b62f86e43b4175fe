"""`fgir viz KIND CKPT IMG`: visual explanations of one image through a trained model.

A visualisation is a function ``fn(model, image, out, **options) -> list[Path]`` registered under a
name in :data:`fgir.registry.VIZ` with :func:`register_viz`, next to the code whose behaviour it
shows (a plug-in module registers its own, e.g. the kept tokens of a token-reduction plug-in).
``model`` is the deployed model of the checkpoint (eval mode, ``fgir_meta`` attached), ``image``
the file path, ``out`` the PNG path to write (or a stem when several are written). The CLI loads the
checkpoint, checks the kind applies (``applies(model) -> str`` returns '' or the reason it does not),
and prints the written paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..registry import VIZ


def register_viz(name: str, *, help: str, options: dict | None = None,
                 applies: Callable | None = None) -> Callable:
    """Decorator: register ``fn(model, image, out, **options)`` as ``fgir viz <name>``.

    Args:
        help: one line for ``fgir viz --help``.
        options: extra CLI flags ``{"--flag": (type, default, help)}``, passed as keyword arguments
            (``--top-o`` -> ``top_o``).
        applies: ``applies(model) -> str``: '' when the visualisation works for this model, else
            the reason (shown as a one-line error).
    """

    def deco(fn: Callable) -> Callable:
        VIZ.add(name, fn, help=help, options=dict(options or {}), applies=applies)
        return fn

    return deco


def viz_names() -> list[str]:
    return VIZ.names()


def model_input(model, image: str | os.PathLike, device: str = "cpu"):
    """The checkpoint's test transform applied to ``image``: ``(x (1,3,S,S), display RGB uint8
    array of the same crop at S x S)`` so overlays line up with what the model saw."""
    import numpy as np

    from ..serve.predict import Predictor

    pred = Predictor(model, model.fgir_meta, device=device)
    x = pred.preprocess([image]).to(device)
    mean = torch_tensor(pred.mean).view(3, 1, 1)
    std = torch_tensor(pred.std).view(3, 1, 1)
    shown = (x[0].detach().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return x, (shown * 255).round().astype(np.uint8)


def torch_tensor(values):
    import torch

    return torch.tensor(list(values), dtype=torch.float32)


def run_viz(kind: str, checkpoint: str | os.PathLike, image: str | os.PathLike, out: str | os.PathLike = "",
            device: str = "cpu", **options) -> list[Path]:
    """Load ``checkpoint``, draw visualisation ``kind`` for ``image`` into ``out`` (default:
    ``<image stem>_<kind>.png`` next to the current folder), return the written files."""
    from ..engine.checkpoint import load_model

    fn = VIZ.get(kind)
    meta = VIZ.meta(kind)
    img = Path(image)
    if not img.is_file():
        raise FileNotFoundError(f"fgir viz {kind}: image not found: {img}")
    model = load_model(checkpoint, device=device)
    why = meta["applies"](model) if meta.get("applies") else ""
    if why:
        raise ValueError(f"fgir viz {kind}: does not apply to {checkpoint}: {why}")
    dest = Path(out) if out else Path(f"{img.stem}_{kind}.png")
    if dest.is_dir():
        dest = dest / f"{img.stem}_{kind}.png"
    dest.parent.mkdir(parents=True, exist_ok=True)
    return [Path(p) for p in fn(model, str(img), dest, **options)]


def save_panels(fig, axes, out: str | os.PathLike, dpi: int = 110) -> list[Path]:
    """Image panels without ticks, written to ``out`` (PNG) and closed: the end of every ``fgir viz``
    kind. Returns ``[Path(out)]``."""
    import matplotlib.pyplot as plt

    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return [Path(out)]
