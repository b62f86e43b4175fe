"""The backbone contract, driven by the model registry (design.md §2, §7): every fgir model."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from fgir import create_model
from fgir.engine.checkpoint import load_weights_into
from fgir.models.factory import model_names

OURS = model_names(include_timm=False)


def create_model_64(name, **kwargs):
    """``name`` built for the tests' 64 px inputs (fixed-input-size models are built for 64 px)."""
    from timm.models import get_pretrained_cfg

    if getattr(get_pretrained_cfg(name), "fixed_input_size", False):
        kwargs.setdefault("img_size", 64)
    return create_model(name, **kwargs)


@pytest.mark.parametrize("name", OURS)
def test_forward_shapes_and_finite(name):
    m = create_model_64(name, num_classes=4).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", OURS)
def test_contract_methods(name):
    m = create_model_64(name, num_classes=4).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert_close(m.forward_head(feats), m(x), rtol=1e-5, atol=1e-5)
        assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)
        assert isinstance(m.forward_intermediates(x, intermediates_only=True), list)
    assert {"mean", "std", "input_size"} <= set(m.pretrained_cfg)
    m.reset_classifier(9)
    assert m.num_classes == 9 and m(x).shape == (2, 9)


@pytest.mark.parametrize("name", OURS)
def test_save_load_gives_identical_outputs(name):
    m = create_model_64(name, num_classes=4).eval()
    m2 = create_model_64(name, num_classes=4).eval()
    load_weights_into(m2, {k: v.clone() for k, v in m.state_dict().items()}, where="test")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(m2(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", OURS)
def test_every_parameter_gets_a_gradient(name):
    m = create_model_64(name, num_classes=4).train()
    m(torch.rand(2, 3, 64, 64)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
