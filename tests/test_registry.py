import pytest
import timm

from fgir import create_model
from fgir.registry import Registry


def test_duplicate_registration_raises():
    reg = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)


def test_unknown_name_suggests_close_match():
    reg = Registry("thing")
    reg.add("resnet_tiny", 1)
    with pytest.raises(KeyError, match="Did you mean: resnet_tiny"):
        reg.get("resnet_tinny")


def test_create_model_serves_timm_names():
    m = create_model("test_resnet", num_classes=7)
    assert m.num_classes == 7


def test_create_model_unknown_name_lists_matches():
    with pytest.raises(KeyError, match="resnet18"):
        create_model("resnet81", num_classes=3)


def test_our_models_visible_to_timm():
    m = timm.create_model("lrnet14", num_classes=5)
    assert m.num_classes == 5


@pytest.mark.parametrize("name", ["lrnet14", "vitfs_nano_patch16_gap_reg4_dinov2_bn"])
def test_backbone_contract(name):
    import torch

    m = create_model(name, num_classes=4).eval()
    x = torch.rand(2, 3, 64, 64)
    feats = m.forward_features(x)
    torch.testing.assert_close(m.forward_head(feats), m(x), rtol=1e-5, atol=1e-5)
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)
    m.reset_classifier(9)
    assert m(x).shape == (2, 9)
    assert {"mean", "std"} <= set(m.pretrained_cfg)
    assert isinstance(m.forward_intermediates(x, intermediates_only=True), list)
