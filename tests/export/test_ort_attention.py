"""timm self-attention exported as onnxruntime's fused Attention operator (fgir export --ort-attention)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch
from torch.testing import assert_close

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).parent))
from export_helpers import make_checkpoint  # noqa: E402

from fgir.export import export_onnx  # noqa: E402
from fgir.export.ort_attention import with_ort_attention  # noqa: E402
from fgir.models import create_model  # noqa: E402


def _x(b: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def vitfs_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ortattn"), "vitfs_nano", [], {})


def test_replaced_attention_computes_the_same_logits():
    torch.manual_seed(0)
    model = create_model("test_vit", num_classes=3).eval()
    fused, n = with_ort_attention(model)
    assert n == len(model.blocks)
    with torch.no_grad():
        assert_close(fused(_x()), model(_x()), rtol=1e-5, atol=1e-6)


def test_attention_with_qk_norm_is_left_alone():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, qk_norm=True, num_classes=3).eval()
    assert with_ort_attention(model) == (model, 0)


def test_export_writes_one_fused_node_per_block_and_keeps_parity(vitfs_ckpt, tmp_path):
    res = export_onnx(vitfs_ckpt, tmp_path / "m.onnx", card=False, ort_attention=True)
    ops = Counter(n.op_type for n in onnx.load(res.path).graph.node)
    depth = len(create_model("vitfs_nano", num_classes=3).blocks)
    assert res.ort_attention == depth and ops["Attention"] == depth and ops["Softmax"] == 0
    assert res.max_abs_diff <= res.atol


def test_fused_attention_graph_runs_at_another_batch_size(vitfs_ckpt, tmp_path):
    res = export_onnx(vitfs_ckpt, tmp_path / "d.onnx", card=False, ort_attention=True, dynamic_batch=True)
    assert res.batch_sizes == [2, 3] and res.max_abs_diff <= res.atol


def test_dynamo_exporter_with_fused_attention_is_a_clear_error(vitfs_ckpt, tmp_path):
    with pytest.raises(ValueError, match="TorchScript-based exporter"):
        export_onnx(vitfs_ckpt, tmp_path / "x.onnx", card=False, ort_attention=True, exporter="dynamo")
