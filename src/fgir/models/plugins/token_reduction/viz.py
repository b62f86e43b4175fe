"""``fgir viz tokens CKPT IMG``: which patches were kept, fused, merged or dropped at each reduction location.

The assignment maps recorded by the reducers (``token_reduction`` with ``record``) are composed
from the patch grid through every location: a patch is *kept* when its token survives alone,
*grouped* when its token shares an output token with other patches (EViT's fused token, ToMe
merges, SiT / PatchMerger / DPC-KNN pooling by largest weight) and *dropped* otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["token_fate"]

_COLOURS = (1, 3, 0, 2, 4, 6, 8, 9, 5)  # tab10 without grey: orange, red, blue, green, ...


def token_fate(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Per reduction location of one eval forward on ``x`` (batch 1): for every original patch the
    output token it went into (-1 dropped) and the number of patches sharing that token."""
    path = model.token_path
    saved = path.record
    path.record = True
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        path.record = saved
    npt = model.num_prefix_tokens
    records = path.last_assign
    if not records:
        return []
    n0 = records[0]["n_in"]
    num_patches = n0 - npt - path.num_clr
    pos = torch.arange(npt, npt + num_patches)
    out = []
    for rec in records:
        a = rec["assign"][0]
        new = torch.where(pos >= 0, a[pos.clamp_min(0)], torch.full_like(pos, -1))
        valid = new >= 0
        share = torch.zeros_like(new)
        if valid.any():
            share[valid] = torch.bincount(new[valid])[new[valid]]
        out.append({"block": rec["block"], "kind": rec["kind"], "token": new.clone(), "share": share,
                    "n_out": int(a.max()) + 1})
        pos = new
    return out


def _applies(model: nn.Module) -> str:
    path = getattr(model, "token_path", None)
    if path is None or path.reducer is None:
        return "the model has no active token_reduction plug-in (keep_rate < 1)."
    return ""


def _register_viz() -> None:
    from ....report.viz import register_viz

    @register_viz("tokens", help="Kept / fused-merged / dropped patches at each token-reduction location over the "
                  "image.", applies=_applies)
    def viz_tokens(model: nn.Module, image: str, out) -> list:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.patches import Patch

        from ....report.viz import model_input, save_panels

        x, shown = model_input(model, image, device=str(next(model.parameters()).device))
        fates = token_fate(model, x)
        s = x.shape[-1]
        cols = 1 + len(fates)
        fig, axes = plt.subplots(1, cols, figsize=(3.4 * cols, 4.2), constrained_layout=True)
        axes = np.atleast_1d(axes)
        axes[0].imshow(shown)
        axes[0].set_title("input (test transform)", fontsize=9)
        palette = plt.get_cmap("tab10")
        method = model.token_path.reducer.method
        for ax, f in zip(axes[1:], fates, strict=True):
            tok, share = f["token"], f["share"]
            g = math.isqrt(tok.numel())
            rgba = np.zeros((g * g, 4))
            dropped = (tok < 0).numpy()
            grouped = (share > 1).numpy()
            rgba[dropped] = (0.05, 0.05, 0.05, 0.85)
            ids = tok.numpy()
            rank = {t: j for j, t in enumerate(dict.fromkeys(ids[grouped].tolist()))}  # groups in raster order
            for i in np.flatnonzero(grouped):
                r, gg, b, _ = palette(_COLOURS[rank[ids[i]] % len(_COLOURS)])
                rgba[i] = (r, gg, b, 0.6)
            ax.imshow(shown)
            ax.imshow(rgba.reshape(g, g, 4), extent=(0, s, s, 0), interpolation="nearest")
            kept = int(((share == 1) & (tok >= 0)).sum())
            groups = len(set(ids[grouped].tolist()))
            ax.set_title(f"{method} at block {f['block']}: {f['n_out']} tokens out\n"
                         f"{kept} kept alone, {int(grouped.sum())} in {groups} group{'' if groups == 1 else 's'}, "
                         f"{int(dropped.sum())} dropped",
                         fontsize=8)
        fig.legend(handles=[Patch(color=(0.05, 0.05, 0.05), label="dropped"),
                            Patch(color=palette(_COLOURS[0]), label="fused / merged / pooled (colour = output token)"),
                            Patch(facecolor="white", edgecolor="gray", label="kept alone")],
                   loc="outside lower center", ncol=3, fontsize=8)
        return save_panels(fig, axes, out)



_register_viz()
