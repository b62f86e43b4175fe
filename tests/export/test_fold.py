"""Folding eval-mode token BatchNorms into the Linear that reads them (fgir.export.fold)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).parent))
from export_helpers import make_checkpoint  # noqa: E402

from fgir.export import export_onnx  # noqa: E402
from fgir.export.fold import fold_if_equal, fold_token_norms  # noqa: E402
from fgir.models import create_model  # noqa: E402
from fgir.models.backbones.vitfs import TokenBatchNorm1d  # noqa: E402


def _vitfs(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("vitfs_nano", num_classes=3, img_size=32)
    with torch.no_grad():  # non-trivial statistics and affine parameters: the fold is not an identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _x() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_folded_vitfs_computes_the_same_logits():
    model = _vitfs()
    folded, n = fold_token_norms(model)
    assert n == 2 * len(model.blocks)
    with torch.no_grad():
        assert_close(folded(_x()), model(_x()), rtol=1e-5, atol=1e-5)


def test_fold_replaces_block_norms_and_leaves_the_original_alone():
    model = _vitfs()
    folded, _ = fold_token_norms(model)
    assert all(isinstance(b.norm1, nn.Identity) and isinstance(b.norm2, nn.Identity) for b in folded.blocks)
    assert all(type(b.norm1) is TokenBatchNorm1d and type(b.norm2) is TokenBatchNorm1d for b in model.blocks)


def test_training_mode_model_is_not_folded():
    model = _vitfs().train()
    folded, n = fold_token_norms(model)
    assert n == 0 and folded is model


def test_layernorm_vit_has_nothing_to_fold():
    model = create_model("test_vit", num_classes=3).eval()
    assert fold_token_norms(model) == (model, 0)


class _ReadsNormOutside(nn.Module):
    """A wrapper that also feeds block 0's norm to another layer (as an adapter beside the attention
    would): folding that norm away changes its output."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit, self.side = vit, nn.Linear(vit.embed_dim, 3)

    def forward(self, x):
        tokens = self.vit.forward_features(x)
        return self.vit.forward_head(tokens) + self.side(self.vit.blocks[0].norm1(tokens)).mean(1)


def test_fold_is_dropped_when_a_norm_is_read_elsewhere():
    model = _ReadsNormOutside(_vitfs()).eval()
    kept, n, _ = fold_if_equal(model, _x(), atol=1e-5)
    assert n == 0 and kept is model


def test_exported_vitfs_graph_holds_no_block_norms(tmp_path):
    onnx = pytest.importorskip("onnx")
    ck = make_checkpoint(tmp_path / "v", "vitfs_nano", [], {})
    folded = export_onnx(ck, tmp_path / "f.onnx", card=False)
    plain = export_onnx(ck, tmp_path / "p.onnx", card=False, fold_norms=False)
    ops = {name: Counter(n.op_type for n in onnx.load(p).graph.node)
           for name, p in (("folded", folded.path), ("plain", plain.path))}
    assert folded.folded_norms > 0 and plain.folded_norms == 0
    assert ops["plain"]["BatchNormalization"] - ops["folded"]["BatchNormalization"] == folded.folded_norms
