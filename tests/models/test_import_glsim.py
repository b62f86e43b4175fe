"""`fgir import glsim`: a legacy ViTGLSim checkpoint (key names of spec glsim.md §7) becomes an fgir
checkpoint whose logits equal an independent re-implementation of the legacy forward."""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fgir.cli.main import main
from fgir.engine import checkpoint as ckpt
from fgir.engine.import_glsim import import_glsim, map_glsim_state
from fgir.models.plugins.glsim import crop_boxes, crop_resize_loop, gls_scores, select_top_o

D, DEPTH, HEADS, P, S, C, TOP = 192, 12, 3, 16, 32, 5, 2   # timm vit_tiny_patch16_224 geometry at 32 px


class _Payload:
    """Unpickling this would raise; the safe reader must never run it."""

    def __reduce__(self):
        return (eval, ("1/0",))


def _legacy_state(seed: int = 0, anchor: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def block(p: str) -> dict:
        out = {f"{p}norm{i}.{w}": (1 + r(D)) if w == "weight" else r(D) for i in (1, 2) for w in ("weight", "bias")}
        for q in "qkv":
            out[f"{p}attn.proj_{q}.weight"], out[f"{p}attn.proj_{q}.bias"] = r(D, D), r(D)
        out[f"{p}proj.weight"], out[f"{p}proj.bias"] = r(D, D), r(D)
        out[f"{p}pwff.fc1.weight"], out[f"{p}pwff.fc1.bias"] = r(4 * D, D), r(4 * D)
        out[f"{p}pwff.fc2.weight"], out[f"{p}pwff.fc2.bias"] = r(D, 4 * D), r(D)
        return out

    sd = {"class_token": r(1, 1, D, scale=1.0), "patch_embedding.weight": r(D, 3, P, P),
          "patch_embedding.bias": r(D), "positional_embedding.pos_embedding": r(1, 1 + (S // P) ** 2, D, scale=0.5),
          "encoder_norm.weight": 1 + r(D), "encoder_norm.bias": r(D), "aggregator_norm.weight": 1 + r(D),
          "aggregator_norm.bias": r(D), "head.weight": r(C, D, scale=0.5), "head.bias": r(C)}
    if anchor:
        sd["anchor_class_token"] = r(1, 1, D, scale=1.0)
    for i in range(DEPTH):
        sd.update(block(f"encoder.blocks.{i}."))
    sd.update(block("aggregator.blocks.0."))
    return sd


def _legacy_block(sd: dict, p: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    """spec §7: pre-norm, LN eps 1e-12, separate q/k/v, softmax(q k^T / sqrt(hd)) v, exact GELU."""
    b, n, d = x.shape
    h = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-12)
    q, k, v = (F.linear(h, sd[f"{p}attn.proj_{c}.weight"], sd[f"{p}attn.proj_{c}.bias"])
               .view(b, n, heads, d // heads).transpose(1, 2) for c in "qkv")
    a = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    x = x + F.linear((a @ v).transpose(1, 2).reshape(b, n, d), sd[p + "proj.weight"], sd[p + "proj.bias"])
    h = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-12)
    h = F.linear(F.gelu(F.linear(h, sd[p + "pwff.fc1.weight"], sd[p + "pwff.fc1.bias"])),
                 sd[p + "pwff.fc2.weight"], sd[p + "pwff.fc2.bias"])
    return x + h


def _legacy_encode(sd: dict, img: torch.Tensor) -> torch.Tensor:
    x = F.conv2d(img, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=P).flatten(2).transpose(1, 2)
    x = torch.cat([sd["class_token"].expand(x.shape[0], -1, -1), x], 1) + sd["positional_embedding.pos_embedding"]
    for i in range(DEPTH):
        x = _legacy_block(sd, f"encoder.blocks.{i}.", x, HEADS)
    return F.layer_norm(x, (D,), sd["encoder_norm.weight"], sd["encoder_norm.bias"], 1e-12)


def _legacy_logits(sd: dict, img: torch.Tensor) -> torch.Tensor:
    """The legacy ViTGLSim forward: crop from the LN'd tokens, second pass with class_token, aggregator."""
    h = _legacy_encode(sd, img)
    idx = select_top_o(gls_scores(h[:, 0], h[:, 1:]), TOP)
    crops = crop_resize_loop(img, crop_boxes(idx, S // P, P, S))
    z = torch.stack([h[:, 0], _legacy_encode(sd, crops)[:, 0]], 1)
    z = _legacy_block(sd, "aggregator.blocks.0.", z, D // 64)
    z = F.layer_norm(z, (D,), sd["aggregator_norm.weight"], sd["aggregator_norm.bias"], 1e-12)
    return F.linear(z[:, 0], sd["head.weight"], sd["head.bias"])


def _save(path, sd, **config):
    ns = argparse.Namespace(model_name="vit_b16", num_classes=C, image_size=S, dynamic_top=TOP,
                            device=torch.device("cpu"), payload=_Payload(), **config)
    torch.save({"config": ns, "model": sd, "accuracy": np.float64(91.2), "epoch": 49, "optimizer": {}}, path)
    return path


def test_imported_logits_equal_the_legacy_forward(tmp_path):
    sd = _legacy_state()
    pth = _save(tmp_path / "cub_vit_b16_16_2.pth", sd)
    with pytest.raises(pickle.UnpicklingError):  # the standard safe loader refuses the Namespace
        torch.load(pth, weights_only=True)
    res = import_glsim(str(pth), str(tmp_path / "g.safetensors"), model_name="vit_tiny_patch16_224")
    assert (res["img_size"], res["num_classes"], res["top_o"], res["crop_cls"]) == (S, C, TOP, "shared")
    model = ckpt.load_model(tmp_path / "g.safetensors").eval()
    x = torch.rand(3, 3, S, S, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert_close(model(x), _legacy_logits(sd, x), atol=1e-5, rtol=1e-5)  # model.norm_eps 1e-12, as legacy


def test_metadata_records_the_source_and_recorded_accuracy(tmp_path):
    pth = _save(tmp_path / "cub.pth", _legacy_state(), custom_mean_std=True)
    import_glsim(str(pth), str(tmp_path / "g.safetensors"), model_name="vit_tiny_patch16_224")
    meta = ckpt.read_meta(tmp_path / "g.safetensors")
    assert meta["metrics"]["reference_accuracy"] == pytest.approx(91.2)
    assert meta["mean"] == [0.5] * 3 and meta["img_size"] == S
    assert meta["source"]["reference_config"]["dynamic_top"] == TOP
    assert "payload" not in meta["source"]["reference_config"]


def test_crop_cls_separate_loads_the_anchor_token(tmp_path):
    sd = _legacy_state()
    pth = _save(tmp_path / "cub.pth", sd)
    import_glsim(str(pth), str(tmp_path / "g.safetensors"), model_name="vit_tiny_patch16_224", crop_cls="separate")
    model = ckpt.load_model(tmp_path / "g.safetensors")
    assert_close(model.crop_cls_token.detach(), sd["anchor_class_token"], atol=0, rtol=0)
    assert_close(model.backbone.cls_token.detach(), sd["class_token"], atol=0, rtol=0)


def test_qkv_is_stacked_in_q_k_v_order():
    sd = _legacy_state()
    out = map_glsim_state(sd)
    w = out["backbone.blocks.3.attn.qkv.weight"]
    assert_close(w[D:2 * D], sd["encoder.blocks.3.attn.proj_k.weight"], atol=0, rtol=0)
    assert "crop_cls_token" not in out


def test_unknown_legacy_keys_are_named():
    sd = _legacy_state()
    sd["encoder.blocks.0.attn.rel_pos"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"encoder\.blocks\.0\.attn\.rel_pos"):
        map_glsim_state(sd)


def test_input_size_is_read_from_the_position_embedding(tmp_path):
    sd = _legacy_state()
    torch.save({"model": sd, "epoch": 1}, tmp_path / "plain.pth")
    res = import_glsim(str(tmp_path / "plain.pth"), str(tmp_path / "g.safetensors"),
                       model_name="vit_tiny_patch16_224", top_o=TOP)
    assert res["img_size"] == S


def test_cli_import_then_predict(tmp_path, capsys):
    from PIL import Image

    pth = _save(tmp_path / "cub.pth", _legacy_state())
    (tmp_path / "names.txt").write_text("a\nb\nc\nd\ne\n")
    assert main(["import", "glsim", str(pth), "--out", str(tmp_path / "g.safetensors"), "--model",
                 "vit_tiny_patch16_224", "--class-names", str(tmp_path / "names.txt")]) == 0
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "img.png")
    assert main(["predict", str(tmp_path / "g.safetensors"), str(tmp_path / "img.png"), "--device", "cpu"]) == 0
    assert ckpt.read_meta(tmp_path / "g.safetensors")["class_names"] == list("abcde")


def test_cli_unknown_model_name_is_one_line(tmp_path, capsys):
    ns_bad = tmp_path / "bad.pth"
    torch.save({"config": argparse.Namespace(model_name="swin_b"), "model": _legacy_state()}, ns_bad)
    assert main(["import", "glsim", str(ns_bad), "--out", str(tmp_path / "g.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "swin_b" in err and "--model" in err and "Traceback" not in err


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    assert main(["import", "glsim", str(tmp_path / "notes.pth"), "--out", str(tmp_path / "g.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "not a PyTorch checkpoint" in err and "notes.pth" in err and "Traceback" not in err


def test_import_reports_whether_the_anchor_token_was_trained(tmp_path):
    from fgir.engine.import_glsim import anchor_report

    sd = _legacy_state()
    assert anchor_report(sd).startswith("differs from class_token")
    sd["anchor_class_token"] = sd["class_token"].clone()  # the legacy code copies it and never updates it
    assert anchor_report(sd).startswith("equal to class_token")
    del sd["anchor_class_token"]
    assert anchor_report(sd) == "absent"
    res = import_glsim(str(_save(tmp_path / "cub.pth", sd)), str(tmp_path / "g.safetensors"),
                       model_name="vit_tiny_patch16_224")
    assert res["anchor_class_token"] == "absent"


def test_a_state_dict_without_the_patch_embedding_is_one_line(tmp_path, capsys):
    sd = _legacy_state()
    del sd["patch_embedding.weight"], sd["patch_embedding.bias"]
    pth = _save(tmp_path / "cub.pth", sd)
    assert main(["import", "glsim", str(pth), "--out", str(tmp_path / "g.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "no patch_embedding.weight in the state dict" in err and "cub.pth" in err and "Traceback" not in err


def test_a_negative_input_size_is_refused(tmp_path):
    pth = _save(tmp_path / "cub.pth", _legacy_state())
    with pytest.raises(ValueError, match="--img-size -64: expected a positive input size"):
        import_glsim(str(pth), str(tmp_path / "g.safetensors"), model_name="vit_tiny_patch16_224", img_size=-64)


def test_mean_without_std_is_refused(tmp_path):
    pth = _save(tmp_path / "cub.pth", _legacy_state())
    with pytest.raises(ValueError, match="--mean and --std go together"):
        import_glsim(str(pth), str(tmp_path / "g.safetensors"), model_name="vit_tiny_patch16_224", mean=(0.5,) * 3)
