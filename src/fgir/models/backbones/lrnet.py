"""LRNet: low-resolution ResNets, the TGDA CNN students (arXiv 2507.12157, spec tgda.md §6.1).

A ResNet for small inputs (128 px in the paper): one 3x3 stride-2 stem conv (32 channels, no
bias) + BN + ReLU, **no max-pool**, then five residual stages (strides 1, 2, 2, 2, 2; planes 64,
64, 128, 256, 512), global average pooling and a linear classifier. The total stride is 32, so at
128 px the stages run at 64/32/16/8/4 px.

The residual blocks are timm's own ``BasicBlock`` / ``Bottleneck``; this file only arranges them.
Module names follow timm's ResNet (``conv1``/``bn1``/``act1``, ``layer1``..``layer5``, blocks
``conv1``/``bn1``/.../``downsample.{0,1}``, head ``fc``), which is also the naming of the reference
``LRResNet`` (built from timm's ``make_blocks``), so the TGDA checkpoints map by a prefix strip
(see :mod:`fgir.models.importers`).

Registered names: ``lrnet14``, ``lrnet18``, ``lrnet26``, ``lrnet50``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import DropPath, create_classifier
from timm.models.resnet import BasicBlock, Bottleneck

from ..factory import register_model, timm_builder_kwargs

__all__ = ["LRNet", "feature_take_indices"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The reference test transform resizes to int(1.34 * S) and centre-crops S (tgda.md §7).
TGDA_CROP_PCT = 1 / 1.34

_STAGE_PLANES = (64, 64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2, 2)


def feature_take_indices(num_features: int,
                         indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """timm's ``forward_intermediates`` index convention.

    ``None`` takes every feature point, an int ``n`` takes the last ``n``, a sequence takes those
    indices (negative ones count from the end). Returns the sorted indices and the largest one.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices={indices}: expected 1..{num_features} feature points.")
        take = list(range(num_features - indices, num_features))
    else:
        take = []
        for i in indices:
            j = num_features + i if i < 0 else i
            if not 0 <= j < num_features:
                raise ValueError(f"index {i} out of range for {num_features} feature points.")
            take.append(j)
        take = sorted(set(take))
        if not take:
            raise ValueError("indices is empty; pass None for all feature points.")
    return take, max(take)


def _pretrained_cfg(num_classes: int, **overrides: Any) -> dict[str, Any]:
    cfg = {
        "url": "", "num_classes": num_classes, "input_size": (3, 128, 128), "pool_size": (4, 4),
        "crop_pct": TGDA_CROP_PCT, "interpolation": "bicubic", "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD, "first_conv": "conv1", "classifier": "fc",
        "paper_ids": "arXiv:2507.12157",
    }
    cfg.update(overrides)
    return cfg


class LRNet(nn.Module):
    """Low-resolution ResNet (TGDA student).

    Args:
        block: ``BasicBlock`` (expansion 1) or ``Bottleneck`` (expansion 4), timm's classes.
        layers: blocks per stage, five entries.
        num_classes: classifier width; 0 gives a backbone without a classifier.
        in_chans: input channels.
        global_pool: timm pooling type for the head (``'avg'``; ``''`` keeps the map).
        stem_width: stem conv output channels (32).
        stem_bn: ``False`` drops the stem BN and ReLU, as in the reference's early runs whose
            checkpoints have no ``bn1.*`` keys (tgda.md §6.1). Use ``True`` for new models.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic-depth rate, linear from 0 at the first block to this value at
            the last block, over all blocks of all stages.
        zero_init_last: zero the last BN weight of every residual branch.
    """

    def __init__(self, block: type[nn.Module], layers: Sequence[int], num_classes: int = 1000,
                 in_chans: int = 3, global_pool: str = "avg", stem_width: int = 32, stem_bn: bool = True,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, zero_init_last: bool = True):
        super().__init__()
        if len(layers) != len(_STAGE_PLANES):
            raise ValueError(f"layers must have {len(_STAGE_PLANES)} entries (one per stage), "
                             f"got {list(layers)}.")
        if block not in (BasicBlock, Bottleneck):
            raise TypeError(f"block must be timm's BasicBlock or Bottleneck, got {block!r}.")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem_bn = stem_bn
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width) if stem_bn else nn.Identity()
        self.act1 = nn.ReLU(inplace=True) if stem_bn else nn.Identity()
        self.feature_info = [dict(num_chs=stem_width, reduction=2, module="act1")]

        total_blocks = sum(layers)
        block_idx = 0
        in_chs, reduction = stem_width, 2
        for i, (n, planes, stride) in enumerate(zip(layers, _STAGE_PLANES, _STAGE_STRIDES, strict=True)):
            out_chs = planes * block.expansion
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                downsample = None
                if s != 1 or in_chs != out_chs:
                    downsample = nn.Sequential(
                        nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=s, bias=False),
                        nn.BatchNorm2d(out_chs))
                dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                blocks.append(block(in_chs, planes, stride=s, downsample=downsample,
                                    drop_path=DropPath(dpr) if dpr > 0 else None))
                in_chs = out_chs
                block_idx += 1
            reduction *= stride
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"layer{i + 1}"))

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights(zero_init_last=zero_init_last)

    @property
    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(_STAGE_PLANES))]

    @torch.no_grad()
    def init_weights(self, zero_init_last: bool = True) -> None:
        """Kaiming-normal (fan_out, relu) convs, BN (1, 0), zero last BN per branch; Linear keeps
        PyTorch's default init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``num_classes``-way linear layer (0: no classifier)."""
        self.num_classes = num_classes
        pool = global_pool if global_pool is not None else self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``B x C_in x H x W`` -> last stage map ``B x num_features x H/32 x W/32``."""
        x = self.forward_stem(x)
        for stage in self.stages:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> pooled ``B x num_features`` (``pre_logits``) or logits ``B x num_classes``."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Maps at the six feature points of ``feature_info`` (stem, layer1..layer5).

        Args:
            indices: ``None`` for all, ``n`` for the last ``n``, or explicit indices.
            norm: accepted for the contract; LRNet has no final norm, so it changes nothing.
            stop_early: stop after the last requested feature point (the returned final map is
                then that point's output).
            output_fmt: only ``'NCHW'``.
            intermediates_only: return only the list.

        Returns:
            The list of maps, or ``(final_map, list)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: LRNet only outputs 'NCHW' maps.")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        out = []
        x = self.forward_stem(x)
        if 0 in take:
            out.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages, start=1):
            x = stage(x)
            if i in take:
                out.append(x)
        if intermediates_only:
            return out
        return x, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_VARIANTS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "lrnet14": (BasicBlock, (1, 2, 1, 1, 1)),
    "lrnet18": (BasicBlock, (2, 2, 2, 1, 1)),
    "lrnet26": (Bottleneck, (2, 2, 2, 1, 1)),
    "lrnet50": (Bottleneck, (3, 3, 3, 4, 3)),
}

# Picked up by timm's register_model, so ``timm.models.get_pretrained_cfg("lrnet14")`` works.
default_cfgs = {name: _pretrained_cfg(1000) for name in _VARIANTS}


def _create_lrnet(variant: str, pretrained: bool = False, **kwargs: Any) -> LRNet:
    kwargs, device, dtype = timm_builder_kwargs(variant, pretrained, kwargs)
    block, layers = _VARIANTS[variant]
    model = LRNet(block, layers, **kwargs)
    model.pretrained_cfg = model.default_cfg = _pretrained_cfg(model.num_classes, architecture=variant)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


@register_model
def lrnet14(pretrained: bool = False, **kwargs: Any) -> LRNet:
    """LRNet-14 (LRN14, paired with ResNet-18): BasicBlock, [1, 2, 1, 1, 1]."""
    return _create_lrnet("lrnet14", pretrained, **kwargs)


@register_model
def lrnet18(pretrained: bool = False, **kwargs: Any) -> LRNet:
    """LRNet-18 (LRN18, paired with ResNet-34): BasicBlock, [2, 2, 2, 1, 1]."""
    return _create_lrnet("lrnet18", pretrained, **kwargs)


@register_model
def lrnet26(pretrained: bool = False, **kwargs: Any) -> LRNet:
    """LRNet-26 (LRN26, paired with ResNet-50): Bottleneck, [2, 2, 2, 1, 1]."""
    return _create_lrnet("lrnet26", pretrained, **kwargs)


@register_model
def lrnet50(pretrained: bool = False, **kwargs: Any) -> LRNet:
    """LRNet-50 (LRN50, paired with ResNet-101): Bottleneck, [3, 3, 3, 4, 3]."""
    return _create_lrnet("lrnet50", pretrained, **kwargs)
