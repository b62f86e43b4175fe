"""Class-activation maps: Grad-CAM (through the ``grad-cam`` library) for CNNs and ViTs, and
attention rollout for ViTs; ``fgir viz cam CKPT IMG [--method gradcam|rollout]`` draws them.

Where Grad-CAM looks, found through the backbone contract (design.md §2):

* **CNNs** (and plug-in models such as CAL that keep ``forward == forward_head(forward_features)``):
  the map ``forward_features`` returns (``B x C x h x w``, the output of the last conv stage), made a
  hookable layer by running the model as ``forward_head(identity(forward_features(x)))``;
* **ViTs** (timm ``blocks``, and models wrapping one as ``backbone`` such as GLSim): with a class
  token, the input of the last block's attention (``blocks[-1].norm1``, the usual Grad-CAM layer
  for ViTs: the patch tokens reach the CLS output only through that attention); without one
  (pooled over the patches, e.g. ViTFS), the last block's output. The ``num_prefix_tokens``
  prefix tokens (CLS, registers — ViTFS has 4 registers and no CLS) are dropped and the patch
  tokens reshaped to their square grid.

Attention rollout is :func:`fgir.models.plugins.selection.rollout_map` (fused attention handled
there). Every map is ``B x H x W`` float32 in [0, 1] at the model's input size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .viz import register_viz

CAM_METHODS = ("gradcam", "rollout")
"""``gradcam``: Grad-CAM of the target class (default: the top-1 prediction); ``rollout``: attention
rollout (ViTs only, class-agnostic)."""

_INSTALL = "Grad-CAM needs the `grad-cam` package: pip install 'fgir[serve]' (or pip install grad-cam)."


def _is_vit(model: nn.Module) -> bool:
    from ..models.plugins.selection import attention_modules

    try:
        attention_modules(model)
    except TypeError:
        return False
    return True


class _FeaturesThenHead(nn.Module):
    """``model`` run as ``forward_head(features(forward_features(x)))``: ``features`` (an identity)
    is the hookable Grad-CAM layer holding the last feature map."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(self.model.forward_features(x))
        if f.ndim != 4:
            raise ValueError(f"Grad-CAM: {type(self.model).__name__}.forward_features gives shape {tuple(f.shape)}, "
                             "not a B x C x h x w map; this model is neither a CNN nor a timm ViT.")
        return self.model.forward_head(f)


def _patch_grid(num_prefix_tokens: int):
    """reshape_transform: ``B x (R + N) x D`` tokens -> ``B x D x g x g`` patch map."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        patches = t[:, num_prefix_tokens:]
        g = math.isqrt(patches.shape[1])
        if g * g != patches.shape[1]:
            raise ValueError(f"Grad-CAM: {patches.shape[1]} patch tokens at the last block do not form a square "
                             "grid (a token-reduction plug-in dropped tokens?); use --method rollout on the plain "
                             "model or a CNN.")
        return patches.reshape(t.shape[0], g, g, t.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def gradcam_target(model: nn.Module) -> tuple[nn.Module, nn.Module, object]:
    """``(module to run, target layer, reshape_transform or None)`` for Grad-CAM on ``model``."""
    if _is_vit(model):
        from ..models.plugins.selection import vit_root

        root = vit_root(model)
        block = root.blocks[-1]
        if getattr(root, "cls_token", None) is None:  # pooled over the patch tokens: they reach the head directly
            layer = block
        else:  # a CLS head: the patch tokens reach it only through the last attention
            layer = getattr(block, "norm1", None)
            if layer is None:
                raise TypeError(f"Grad-CAM: the last block of {type(root).__name__} has no norm1 (not a timm Block).")
        return model, layer, _patch_grid(int(getattr(root, "num_prefix_tokens", 1)))
    missing = [a for a in ("forward_features", "forward_head") if not callable(getattr(model, a, None))]
    if missing:
        raise TypeError(f"Grad-CAM: {type(model).__name__} lacks {missing} of the backbone contract.")
    wrapped = _FeaturesThenHead(model)
    return wrapped, wrapped.features, None


def method_reason(model: nn.Module, method: str) -> str:
    """'' when ``method`` applies to ``model``, else why not (one line)."""
    if method not in CAM_METHODS:
        return f"unknown CAM method '{method}'; expected one of {', '.join(CAM_METHODS)}."
    if method == "rollout":
        return "" if _is_vit(model) else (f"attention rollout needs a ViT (timm blocks with attention); "
                                          f"{type(model).__name__} has none. Use --method gradcam.")
    try:
        gradcam_target(model)
    except TypeError as e:
        return str(e)
    return ""


def default_method(model: nn.Module) -> str:
    """The overlay a viewer gets by default: attention rollout for ViTs, Grad-CAM otherwise."""
    return "rollout" if _is_vit(model) else "gradcam"


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | list[int] | None = None) -> np.ndarray:
    """Grad-CAM maps ``B x H x W`` (float32, [0, 1], input size) of ``target`` (class ids, one per
    image or one for all; default: each image's top-1 class) through the ``grad-cam`` library.

    Gradients are computed w.r.t. the input as well, so frozen (``requires_grad=False``) models
    work; the model's parameter gradients are cleared afterwards.
    """
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise RuntimeError(_INSTALL) from e
    run, layer, reshape = gradcam_target(model)
    targets = None
    if target is not None:
        ids = [target] * x.shape[0] if isinstance(target, int) else list(target)
        targets = [ClassifierOutputTarget(int(c)) for c in ids]
    was_training = model.training
    try:
        with torch.enable_grad(), GradCAM(model=run, target_layers=[layer], reshape_transform=reshape) as cam:
            cam.compute_input_gradient = True  # frozen weights still give activation gradients
            maps = cam(input_tensor=x.detach().clone(), targets=targets)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)


def rollout_cam(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Attention rollout (:func:`fgir.models.plugins.selection.rollout_map`) min-max scaled to [0, 1]
    and bilinearly upsampled to the input size: ``B x H x W`` float32."""
    from ..models.plugins.selection import rollout_map

    m = rollout_map(model, x).float()[:, None]
    m = torch.nn.functional.interpolate(m, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    lo = m.flatten(1).amin(1).view(-1, 1, 1)
    hi = m.flatten(1).amax(1).view(-1, 1, 1)
    return ((m - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).cpu().numpy().astype(np.float32)


def compute_cam(model: nn.Module, x: torch.Tensor, method: str = "gradcam",
                target: int | list[int] | None = None) -> np.ndarray:
    """The ``method`` map (:data:`CAM_METHODS`) of ``x`` through ``model``: ``B x H x W`` in [0, 1].

    Raises:
        ValueError: the method does not apply to this model (the message says why).
    """
    why = method_reason(model, method)
    if why:
        raise ValueError(why)
    return grad_cam(model, x, target) if method == "gradcam" else rollout_cam(model, x)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (H x W x 3 uint8) blended with the ``cam`` map (H x W, [0, 1]) in the jet colour map
    (the ``grad-cam`` library's ``show_cam_on_image``): H x W x 3 uint8."""
    try:
        from pytorch_grad_cam.utils.image import show_cam_on_image
    except ImportError as e:
        raise RuntimeError(_INSTALL) from e
    return show_cam_on_image(image.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=1.0 - alpha)


def _cam_applies(model: nn.Module) -> str:
    reasons = [method_reason(model, m) for m in CAM_METHODS]
    return "" if any(not r for r in reasons) else reasons[0]


@register_viz("cam", help="Grad-CAM (CNNs and ViTs, grad-cam library) or attention rollout (ViTs) over the image.",
              options={"--method": (str, "gradcam", f"one of {', '.join(CAM_METHODS)} (default: gradcam)"),
                       "--target": (int, -1, "class id Grad-CAM explains (default: the top-1 prediction; "
                                                   "rollout is class-agnostic)")},
              applies=_cam_applies)
def viz_cam(model: nn.Module, image: str | os.PathLike, out, method: str = "gradcam", target: int = -1) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz import model_input, save_panels

    why = method_reason(model, method)
    if why:
        raise ValueError(f"fgir viz cam: {why}")
    names = model.fgir_meta["class_names"]
    if target >= len(names):
        raise ValueError(f"fgir viz cam: --target {target} is not a class id of this checkpoint (0..{len(names) - 1}).")
    x, shown = model_input(model, image, device=str(next(model.parameters()).device))
    with torch.no_grad():
        probs = model.eval()(x).float().softmax(-1)[0]
    cls = int(probs.argmax()) if target < 0 else target
    cam = compute_cam(model, x, method, cls)[0]
    fig, axes = plt.subplots(1, 2, figsize=(8.2, 4.0), constrained_layout=True)
    axes[0].imshow(shown)
    axes[0].set_title("input (test transform)")
    axes[1].imshow(shown)
    s = x.shape[-1]
    im = axes[1].imshow(cam, cmap="jet", alpha=0.5, extent=(0, s, s, 0), vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02, label="relevance (scaled to [0, 1])")
    if method == "gradcam":
        title = f"Grad-CAM of {names[cls]} (p = {float(probs[cls]):.2f})"
    else:  # class-agnostic
        title = f"attention rollout (top-1: {names[cls]}, p = {float(probs[cls]):.2f})"
    axes[1].set_title(title, fontsize=10)
    return save_panels(fig, axes, out)
