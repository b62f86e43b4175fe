"""The shallow CNN baseline of Animesion (arXiv 2101.08674; spec ``animesion.md`` §3.1).

Two conv5x5 (no padding) -> BatchNorm -> ReLU -> max-pool 2 stages (3 -> 16 -> 32 channels), then
Flatten -> Linear(32 g^2 -> 512) -> ReLU -> Dropout 0.2 -> Linear(512 -> K), where g is the feature
grid side: 53 at the reference 224 px input (flatten 89,888; 47,711,231 parameters at K = 3,263).

The reference is hard-wired to 224 px and fails at the first Linear for any other size. Here the
flatten size is computed from ``img_size`` (default 224, the reference shape), and an input of
another size is a clear error; with ``adaptive=True`` an adaptive average pool brings any input to
the ``img_size`` grid, so one model (and one parameter count) serves every resolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..factory import register_model, timm_builder_kwargs

__all__ = ["ShallowNet", "animesion_shallow", "shallow_grid"]


def shallow_grid(img_size: int) -> int:
    """Side of the feature map after both stages: ``((S - 4) // 2 - 4) // 2`` (53 at 224)."""
    return ((int(img_size) - 4) // 2 - 4) // 2


def _pretrained_cfg(num_classes: int, img_size: int = 224, **overrides: Any) -> dict[str, Any]:
    cfg = {"url": "", "num_classes": num_classes, "input_size": (3, img_size, img_size), "pool_size": None,
           "crop_pct": 1.0, "interpolation": "bilinear", "fixed_input_size": True, "mean": (0.5, 0.5, 0.5),
           "std": (0.5, 0.5, 0.5), "first_conv": "conv1", "classifier": "fc", "license": "apache-2.0"}
    cfg.update(overrides)
    return cfg


class ShallowNet(nn.Module):
    """The Animesion shallow CNN (see the module docstring).

    Args:
        num_classes: classes K (0 = no classifier: ``forward`` returns the 512-d pre-logits).
        img_size: the input side the flatten size is computed for (reference 224).
        adaptive: accept any input size by adaptive-average-pooling the features to the ``img_size`` grid.
        in_chans: input channels.
        hidden: width of the hidden Linear (reference 512).
        drop_rate: dropout after the hidden Linear (reference 0.2).
    """

    def __init__(self, num_classes: int = 1000, img_size: int | tuple[int, int] = 224, adaptive: bool = False,
                 in_chans: int = 3, hidden: int = 512, drop_rate: float = 0.2):
        super().__init__()
        if isinstance(img_size, (tuple, list)):
            if len(set(img_size)) != 1:
                raise ValueError(f"animesion_shallow takes square inputs, got img_size={tuple(img_size)}.")
            img_size = img_size[0]
        grid = shallow_grid(img_size)
        if grid < 1:
            raise ValueError(f"animesion_shallow needs img_size >= 16 (two conv5x5 + max-pool 2 stages), "
                             f"got {img_size}.")
        self.img_size, self.grid, self.adaptive = int(img_size), grid, bool(adaptive)
        self.conv1 = nn.Conv2d(in_chans, 16, kernel_size=5)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.bn2 = nn.BatchNorm2d(32)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.resize = nn.AdaptiveAvgPool2d(grid) if adaptive else nn.Identity()
        self.fc1 = nn.Linear(32 * grid * grid, hidden)
        self.drop = nn.Dropout(drop_rate)
        self.num_features = self.head_hidden_size = hidden
        self.num_classes = num_classes
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [{"num_chs": 16, "reduction": 2, "module": "bn1"},
                             {"num_chs": 32, "reduction": 4, "module": "bn2"}]
        self.pretrained_cfg = self.default_cfg = _pretrained_cfg(num_classes, self.img_size)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.adaptive and tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"animesion_shallow was built for {self.img_size}x{self.img_size} inputs (flatten "
                             f"{32 * self.grid ** 2:,}); got {x.shape[-2]}x{x.shape[-1]}. Build it with "
                             f"img_size={x.shape[-1]} (model.img_size / data.img_size) or adaptive=True "
                             "(model.kwargs.adaptive=true).")
        a = self.pool(self.act(self.bn1(self.conv1(x))))
        return [a, self.pool(self.act(self.bn2(self.conv2(a))))]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 32-channel feature map, ``B x 32 x g x g`` at the built size."""
        return self._stages(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(self.resize(x).flatten(1))))
        return x if pre_logits else self.fc(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's interface: the output of each stage (``indices`` as in timm: last n, or a list)."""
        if output_fmt != "NCHW":
            raise ValueError(f"animesion_shallow gives NCHW intermediates, not {output_fmt}.")
        feats = self._stages(x)
        if indices is None:
            take = list(range(len(feats)))
        elif isinstance(indices, int):
            take = list(range(len(feats) - indices, len(feats)))
        else:
            take = [i % len(feats) for i in indices]
        inter = [feats[i] for i in take]
        return inter if intermediates_only else (feats[-1], inter)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Any = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Picked up by timm's register_model: ``fixed_input_size`` makes build_model pass data.img_size.
default_cfgs = {"animesion_shallow": _pretrained_cfg(1000)}


@register_model
def animesion_shallow(pretrained: bool = False, **kwargs: Any) -> ShallowNet:
    """Animesion's shallow CNN baseline (224 px reference shape; ``adaptive=True`` for any size)."""
    kwargs, device, dtype = timm_builder_kwargs("animesion_shallow", pretrained, kwargs)
    model = ShallowNet(**kwargs)
    model.pretrained_cfg = model.default_cfg = _pretrained_cfg(model.num_classes, model.img_size,
                                                               architecture="animesion_shallow")
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model
