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
