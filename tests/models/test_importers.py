"""TGDA checkpoint importer (tgda.md §6.3, §12; checklist §15 item 26)."""

from __future__ import annotations

import argparse
import json
import pickle
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fgir.models import create_model
from fgir.models.backbones.vitfs import posemb_sincos_2d
from fgir.models.importers import (
    import_tgda_checkpoint,
    read_tgda_checkpoint,
    save_imported,
    tgda_model_kwargs,
)

_CALLED: list[str] = []


def _side_effect(tag: str) -> str:
    _CALLED.append(tag)
    return tag


class _Payload:
    """Unpickling this would call ``_side_effect``; the safe reader must never do that."""

    def __reduce__(self):
        return (_side_effect, ("executed",))


def _to_reference(model: torch.nn.Module, token_model: bool, bn_sequential: bool = False) -> dict:
    """Our state dict renamed into the reference CAL-student layout."""
    enc = "model.encoder.0." if token_model else "model.encoder."
    head = "head." if token_model else "fc."
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith(head):
            out["model.dfsm.1." + k[len(head):]] = v.clone()
            continue
        if bn_sequential:
            k = re.sub(r"^((?:blocks\.\d+\.)?norm\d?)\.(weight|bias|running_\w+|num_batches_tracked)$",
                       r"\1.1.\2", k)
        out[enc + k] = v.clone()
    return out


def _randomise_bn_stats(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)


@pytest.mark.parametrize(("name", "token_model", "size"), [("lrnet14", False, 64), ("vitfs_tiny", True, 64)])
def test_round_trip_no_missing_or_unexpected(name, token_model, size):
    """Checklist 26: model.encoder[.0].* and model.dfsm.1.* map onto our names exactly."""
    extra = {"legacy_register_slice": "wrapper"} if token_model else {"stem_bn": True}
    src = create_model(name, num_classes=200, **extra).eval()
    _randomise_bn_stats(src)
    ref = _to_reference(src, token_model)
    assert sum(k.startswith("model.dfsm.1.") for k in ref) == 2
    state = import_tgda_checkpoint(ref, name)
    kwargs = tgda_model_kwargs(state, name)
    assert kwargs == {"num_classes": 200, **extra}
    dst = create_model(name, **kwargs).eval()
    result = dst.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_vitfs_alternative_layouts():
    """BN written as Sequential(Rearrange, BatchNorm1d, Rearrange) and a stored sin-cos table."""
    src = create_model("vitfs_tiny", num_classes=200)
    ref = _to_reference(src, token_model=True, bn_sequential=True)
    assert "model.encoder.0.blocks.0.norm1.1.weight" in ref and "model.encoder.0.norm.1.running_var" in ref
    ref["model.encoder.0.pos_embed"] = posemb_sincos_2d(14, 14, 192)[None]
    state = import_tgda_checkpoint(ref, "vitfs_tiny_patch16_gap_reg4_dinov2_bn_init", num_classes=200)
    assert set(state) == set(src.state_dict())
    for k, v in src.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    ref["model.encoder.0.pos_embed"] = torch.zeros(1, 196, 192)
    with pytest.warns(UserWarning, match="sin-cos"):
        import_tgda_checkpoint(ref, "vitfs_tiny")


def test_lrnet_without_stem_bn():
    """Early reference runs have no stem bn1.*: the import targets stem_bn=False."""
    src = create_model("lrnet14", num_classes=200, stem_bn=False)
    state = import_tgda_checkpoint(_to_reference(src, token_model=False), "lrnet14")
    kwargs = tgda_model_kwargs(state, "lrnet14")
    assert kwargs == {"num_classes": 200, "stem_bn": False}
    create_model("lrnet14", **kwargs).load_state_dict(state, strict=True)


def test_mismatches_raise():
    src = create_model("lrnet14", num_classes=200)
    ref = _to_reference(src, token_model=False)
    with pytest.raises(ValueError, match="num_classes=100"):
        import_tgda_checkpoint(ref, "lrnet14", num_classes=100)
    with pytest.raises(ValueError, match="shape mismatch|missing|unexpected"):
        import_tgda_checkpoint(ref, "lrnet18")
    bad = dict(ref)
    bad["model.teacher.fc.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="outside the student"):
        import_tgda_checkpoint(bad, "lrnet14")
    bad = {k: v for k, v in ref.items() if "layer5.0.conv2" not in k}
    with pytest.raises(ValueError, match=r"missing \['layer5.0.conv2.weight'\]"):
        import_tgda_checkpoint(bad, "lrnet14")
    bad = {k.replace("layer1.0.conv1", "layer1.0.convA"): v for k, v in ref.items()}
    renamed = import_tgda_checkpoint(bad, "lrnet14", extra_renames=[(r"\.convA\.", ".conv1.")])
    assert "layer1.0.conv1.weight" in renamed
    with pytest.raises(ValueError, match="unsupported student"):
        import_tgda_checkpoint(ref, "resnet18")


def test_safe_read_of_pickled_namespace(tmp_path):
    """A reference-style .pth (pickled Namespace + other objects) is read without running pickled
    code; tensors, whitelisted config values, accuracy and epoch survive."""
    src = create_model("lrnet14", num_classes=200)
    ref = _to_reference(src, token_model=False)
    config = argparse.Namespace(temp=4.0, loss_kd_weight=1.0, loss_orig_weight=1.0, model_name="lrnet14",
                                num_classes=200, image_size=128, device=torch.device("cpu"),
                                payload=_Payload(), not_whitelisted="x")
    path = tmp_path / "cub_lrnet14_resnet101_cal_tgda_201.pth"
    torch.save({"config": config, "model": ref, "accuracy": np.float64(80.48), "epoch": 800,
                "extra": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):  # the standard safe loader refuses this file
        torch.load(path, weights_only=True)
    _CALLED.clear()
    ckpt = read_tgda_checkpoint(path)
    assert _CALLED == []
    assert ckpt["config"] == {"temp": 4.0, "loss_kd_weight": 1.0, "loss_orig_weight": 1.0,
                              "model_name": "lrnet14", "num_classes": 200, "image_size": 128}
    assert ckpt["accuracy"] == pytest.approx(80.48) and ckpt["epoch"] == 800
    assert set(ckpt["model"]) == set(ref)
    for k, v in ref.items():
        torch.testing.assert_close(ckpt["model"][k], v, rtol=0, atol=0)
    state = import_tgda_checkpoint(path, "lrnet14", num_classes=200)
    assert _CALLED == []

    out = save_imported(state, tmp_path / "lrnet14_cub.safetensors", meta=ckpt["config"])
    loaded = load_file(str(out))
    assert set(loaded) == set(state)
    for k, v in state.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
    assert json.loads(out.with_suffix(".json").read_text())["temp"] == 4.0


def test_plain_state_dict_file_uses_weights_only(tmp_path):
    src = create_model("vitfs_nano", num_classes=10)
    path = tmp_path / "plain.pth"
    torch.save({"model": _to_reference(src, token_model=True), "epoch": 3}, path)
    ckpt = read_tgda_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["config"] == {}
    state = import_tgda_checkpoint(path, "vitfs_nano")
    create_model("vitfs_nano", num_classes=10).load_state_dict(state, strict=True)
