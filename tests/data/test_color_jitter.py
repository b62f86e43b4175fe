"""data.color_jitter: torchvision ColorJitter semantics on uint8 batches, per-image draws from the generator."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torchvision.transforms.v2 import functional as TF

from fgir.config import ConfigError, load_config
from fgir.data.transforms import BatchTransform, color_jitter, hsv_to_rgb, jitter_op, rgb_to_hsv

TV_OPS = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]


@pytest.mark.parametrize("op,factor", [(0, 1.08), (1, 0.93), (2, 1.1), (3, 0.07), (3, -0.1)])
def test_ops_match_torchvision(op, factor):
    x = torch.rand(3, 3, 16, 16)
    want = torch.stack([TV_OPS[op](img, factor) for img in x])
    assert_close(jitter_op(x, op, torch.full((3,), factor)), want, rtol=0, atol=1e-5)


def test_hsv_round_trip():
    x = torch.rand(2, 3, 8, 8)
    assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, rtol=0, atol=1e-6)


def test_factors_are_drawn_per_image_from_the_generator():
    x = torch.full((4, 3, 8, 8), 128, dtype=torch.uint8)
    x[:, 0] = 200
    a = color_jitter(x, (0.1, 0.1, 0.1, 0.1), torch.Generator().manual_seed(1))
    b = color_jitter(x, (0.1, 0.1, 0.1, 0.1), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.uint8
    assert len({tuple(img[:, 0, 0].tolist()) for img in a}) == 4  # four images, four different draws


def test_zero_strengths_change_nothing():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(color_jitter(x, (0, 0, 0, 0), torch.Generator().manual_seed(0)), x)


def test_brightness_stays_within_its_range():
    x = torch.full((64, 3, 4, 4), 100, dtype=torch.uint8)
    y = color_jitter(x, (0.1, 0, 0, 0), torch.Generator().manual_seed(0)).float()
    assert y.min() >= 90 and y.max() <= 110 and y.std() > 1


def test_batch_transform_applies_it_only_in_training():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    kw = dict(img_size=8, mean=(0.0,) * 3, std=(1.0,) * 3, hflip=False, color_jitter=(0.4, 0, 0, 0))
    assert not torch.equal(BatchTransform(train=True, **kw)(x, torch.Generator().manual_seed(0)), x.float() / 255)
    assert_close(BatchTransform(train=False, **kw)(x), x.float() / 255, rtol=0, atol=1e-6)


@pytest.mark.parametrize("value", ["[0.1,0.1]", "[0.1,0.1,0.1,0.6]", "[-0.1,0,0,0]"])
def test_bad_values_are_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"data\.color_jitter"):
        load_config([], [f"data.color_jitter={value}"])
