"""Grad-CAM and attention-rollout maps (fgir.report.cam) and the `fgir viz cam` kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from fgir import create_model
from fgir.report.cam import _patch_grid, compute_cam, default_method, method_reason

pytest.importorskip("pytorch_grad_cam", reason="the grad-cam package (test extra) is not installed")


class BrightSpotCNN(nn.Module):
    """A contract CNN whose class-0 evidence is the image brightness: Grad-CAM must peak where the
    image is bright. forward_features: 4x4 average pool -> ReLU(1x1 conv, positive weights)."""

    def __init__(self):
        super().__init__()
        self.num_features, self.num_classes = 4, 2
        self.pool = nn.AvgPool2d(4)
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.uniform_(0.5, 1.0)
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, 0.8, 0.6, 0.9], [-1.0, -0.5, -0.7, -0.2]]))
            self.fc.bias.zero_()

    def forward_features(self, x):
        return torch.relu(self.conv(self.pool(x)))

    def forward_head(self, f, pre_logits=False):
        f = f.mean((2, 3))
        return f if pre_logits else self.fc(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_gradcam_cnn_peaks_on_the_evidence():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 4:12, 4:12] = 1.0  # a bright square in the top-left quadrant
    cam = compute_cam(BrightSpotCNN().eval(), x, "gradcam", target=0)
    assert cam.shape == (1, 32, 32) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    r, c = np.unravel_index(cam[0].argmax(), cam[0].shape)
    assert 4 <= r < 12 and 4 <= c < 12
    assert cam[0, 20:, 20:].max() == 0.0  # no evidence in the dark bottom-right


@pytest.mark.parametrize("name,kwargs", [("test_resnet", {}), ("test_vit", {}), ("vitfs_nano", {"depth": 2})])
@pytest.mark.parametrize("method", ["gradcam", "rollout"])
def test_cam_shape_and_range(name, kwargs, method):
    model = create_model(name, num_classes=3, **kwargs).eval().requires_grad_(False)  # frozen weights work too
    if method_reason(model, method):
        assert method == "rollout" and name == "test_resnet"
        return
    cam = compute_cam(model, torch.rand(2, 3, 64, 64), method)
    assert cam.shape == (2, 64, 64) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert all(p.grad is None for p in model.parameters())


def test_vit_gradcam_equals_the_manual_computation():
    """ViTFS (4 registers, no CLS, mean pool): Grad-CAM at the last block's output, registers dropped,
    patches on their grid, equals ReLU(sum_d mean_tokens(dy/dA) * A) upsampled and min-max scaled."""
    model = create_model("vitfs_nano", num_classes=3, depth=2).eval()
    x = torch.rand(1, 3, 64, 64)
    acts = {}
    h = model.blocks[-1].register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    logits = model(x)
    h.remove()
    target = int(logits.argmax())
    (grad,) = torch.autograd.grad(logits[0, target], acts["a"])
    r = model.num_prefix_tokens
    a, g = acts["a"][0, r:].detach(), grad[0, r:]
    grid = torch.relu((a * g.mean(0)).sum(-1)).reshape(1, 1, 4, 4)
    up = torch.nn.functional.interpolate(grid, size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    want = (up - up.min()) / (up.max() - up.min())
    got = torch.from_numpy(compute_cam(model, x, "gradcam", target)[0])
    assert_close(got, want, rtol=0, atol=2e-4)


def test_patch_grid_drops_prefix_tokens_in_raster_order():
    g, d, prefix = 3, 2, 5
    tokens = torch.full((1, prefix + g * g, d), -1.0)
    tokens[0, prefix:] = torch.arange(g * g, dtype=torch.float32)[:, None].expand(g * g, d)
    grid = _patch_grid(prefix)(tokens)
    assert grid.shape == (1, d, g, g)
    assert_close(grid[0, 0], torch.arange(9.0).reshape(3, 3), rtol=0, atol=0)


def test_patch_grid_refuses_a_non_square_token_count():
    with pytest.raises(ValueError, match="square grid"):
        _patch_grid(1)(torch.rand(1, 1 + 7, 4))


def test_default_overlay_is_rollout_for_vits_and_gradcam_for_cnns():
    assert default_method(create_model("test_vit", num_classes=3)) == "rollout"
    assert default_method(create_model("test_resnet", num_classes=3)) == "gradcam"


def test_rollout_on_a_cnn_says_why_not():
    with pytest.raises(ValueError, match="needs a ViT"):
        compute_cam(create_model("test_resnet", num_classes=3).eval(), torch.rand(1, 3, 32, 32), "rollout")


def test_viz_cam_writes_a_png_for_a_cnn_checkpoint(tiny_root, tmp_path):
    from conftest import tiny_cfg
    from PIL import Image

    from fgir.engine.train import train
    from fgir.report.viz import run_viz

    run = train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))["run_dir"]
    img = next((tiny_root / "images").rglob("*.png"))
    (out,) = run_viz("cam", run, img, out=tmp_path / "cam.png", method="gradcam")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200
