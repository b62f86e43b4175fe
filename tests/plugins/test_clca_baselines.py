"""H2T and VQT baselines (spec clca.md §13) and the frozen / linear-probe modes via model.trainable."""

from __future__ import annotations

import torch
from test_token_reduction import plug, tiny
from torch.testing import assert_close

from fgir.config import load_config
from fgir.engine.build import build_model


def test_h2t_head_width_and_training():
    m = plug(tiny("vit"), "{name: h2t, lasso_weight: 1.0e-4}").train()
    assert m.head.in_features == 4 * 7 * 64 + 2 * 64  # G * 7D + 2D (all 4 blocks)
    out = m(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 5)
    (out.sum() + sum(m.fgir_aux_losses().values())).backward()
    assert m.head.weight.grad is not None


def test_h2t_groups():
    m = plug(tiny("vit"), "{name: h2t, locations: [1, 3]}")
    assert m.head.in_features == 2 * 7 * 64 + 2 * 64


def test_vqt_leaves_tokens_and_cls_untouched():
    m = tiny("vit")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = m.forward_features(x)
        plug(m, "{name: vqt, locations: [1, 3]}")
        assert_close(m.forward_features(x), ref, atol=0, rtol=0)
    assert m.head.in_features == (2 * 5 + 1) * 64


def test_vqt_prompts_get_gradients():
    m = plug(tiny("deit3"), "{name: vqt}").train()
    m(torch.rand(2, 3, 64, 64)).sum().backward()
    assert m.vqt_prompts.grad is not None and m.vqt_prompts.grad.abs().sum() > 0


def _cfg(trainable: str, plugins: str = "[]"):
    return load_config(overrides=["model.name=vit_tiny_patch16_224", "data.img_size=32", "model.kwargs={depth: 2}",
                                  f"model.plugins={plugins}", f"model.trainable={trainable}"])


def test_linear_probe_trains_only_the_head():
    m = build_model(_cfg("[head]"), 5)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


def test_frozen_backbone_trains_clca_parts():
    plugins = "[{name: token_reduction, method: evit, keep_rate: 0.5, locations: [0]}, {name: clca}]"
    m = build_model(_cfg("[plugins, head]", plugins), 5)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"clr", "clr_pos"} <= names and all(n.startswith(("clr", "head.")) for n in names)
