"""timm's ``forward_intermediates`` on a token-reduced / CLCA ViT follows the token path (it used
to run the plain blocks silently, as if no token had been dropped)."""

from __future__ import annotations

import pytest
import torch
from test_token_reduction import BACKBONES, plug, tiny, tr
from torch.testing import assert_close

from fgir.models.plugins.token_reduction import METHODS


def _x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(2, 3, 64, 64)


def _reduced(method: str, backbone: str, **kw):
    """(model, forward_features, forward_intermediates(NLC, **kw)) of a tiny model at keep rate 0.5."""
    torch.manual_seed(0)
    m = plug(tiny(backbone), tr(method, 0.5))
    x = _x()
    with torch.no_grad():
        return m, m.forward_features(x), m.forward_intermediates(x, output_fmt="NLC", **kw)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_final_features_are_forward_features(method, backbone):
    m, ref, (feats, inter) = _reduced(method, backbone)
    assert_close(feats, ref, atol=0, rtol=0)
    assert len(inter) == len(m.blocks)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_last_normed_intermediate_is_the_final_patch_tokens(method, backbone):
    m, _, (feats, inter) = _reduced(method, backbone, indices=1, norm=True)
    assert_close(inter[-1], feats[:, m.num_prefix_tokens:], atol=0, rtol=0)


@pytest.mark.parametrize("method", ["evit", "topk", "tome"])
def test_intermediates_shrink_where_tokens_are_reduced(method):
    torch.manual_seed(0)
    m = plug(tiny("vit"), tr(method, 0.5, locs="[1]"))
    with torch.no_grad():
        inter = m.forward_intermediates(_x(), output_fmt="NLC", intermediates_only=True)
    lengths = [y.shape[1] for y in inter]
    assert lengths[0] == 16 and lengths[1] < 16 and lengths[2] == lengths[1]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_without_reduction_intermediates_equal_timms(backbone):
    # a keep rate so close to 1 that every token is kept: the path must give timm's own numbers
    torch.manual_seed(0)
    plain = tiny(backbone)
    x = _x()
    with torch.no_grad():
        ref_feats, ref = plain.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True)
        m = plug(plain, tr("evit", 0.999))
        feats, inter = m.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True)
    assert_close(feats, ref_feats, atol=1e-5, rtol=1e-5)
    for (tok, pre), (rtok, rpre) in zip(inter, ref):
        assert_close(tok, rtok, atol=1e-5, rtol=1e-5)
        assert_close(pre, rpre, atol=1e-5, rtol=1e-5)


def test_clca_intermediates_carry_the_reinjected_cache():
    torch.manual_seed(0)
    m = plug(tiny("vit"), tr("evit", 0.5, locs="[1]"), "{name: clca}")
    with torch.no_grad():
        out = m.forward_intermediates(_x(), output_fmt="NLC", output_dict=True)
    path = m.token_path
    assert len(out["image_intermediates"]) == len(m.blocks)
    assert_close(out["image_features"], m.forward_features(_x()), atol=0, rtol=0)
    # after a recovery block the sequence is longer than the block's MLP input by the flushed cache
    rec = path.recovery[0]
    assert out["image_intermediates"][rec].shape[1] + m.num_prefix_tokens > path.last_counts[rec][1]


def test_nchw_is_refused_with_one_line():
    m = plug(tiny("vit"), tr("evit", 0.5))
    with pytest.raises(ValueError, match="only output_fmt='NLC'"):
        m.forward_intermediates(_x())


def test_the_path_does_not_keep_the_intermediates_after_returning_them():
    m, _, (_, inter) = _reduced("evit", "vit")
    assert len(inter) == len(m.blocks) and m.token_path.last_blocks == []
