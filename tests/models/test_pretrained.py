"""model.pretrained=true: the local caches first, and a clear, immediate error when offline."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import fgir
from fgir.models import pretrained as pt

NAME = "test_vit.r160_in1k"  # timm's tiny test ViT, hosted as timm/test_vit.r160_in1k


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hub"


def _fill_cache(cache, seed=0):
    torch.manual_seed(seed)
    src = fgir.create_model(NAME.split(".")[0], num_classes=1000)
    repo = cache / "models--timm--test_vit.r160_in1k"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(snap / "model.safetensors"))
    return src


def test_cached_weights_load_without_network(hf_cache, monkeypatch):
    src = _fill_cache(hf_cache)
    monkeypatch.setattr(pt, "reachable", lambda *a, **k: pytest.fail("network probed although cached"))
    model = fgir.create_model(NAME, num_classes=7, pretrained=True)
    torch.testing.assert_close(model.pos_embed, src.pos_embed, rtol=0, atol=0)
    assert model.get_classifier().out_features == 7


def test_offline_without_cache_fails_at_once(hf_cache, monkeypatch):
    monkeypatch.setattr(pt, "reachable", lambda *a, **k: False)
    with pytest.raises(pt.PretrainedUnavailable, match="not in the local cache.*unreachable.*model.checkpoint"):
        fgir.create_model(NAME, num_classes=7, pretrained=True)


def test_hf_hub_offline_env_is_respected(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pt, "reachable", lambda *a, **k: True)
    with pytest.raises(pt.PretrainedUnavailable, match="HF_HUB_OFFLINE is set"):
        fgir.create_model(NAME, num_classes=7, pretrained=True)


def test_cli_offline_error_is_one_line_and_leaves_no_run(hf_cache, monkeypatch, tmp_path, capsys):
    from fgir.cli.main import main

    monkeypatch.setattr(pt, "reachable", lambda *a, **k: False)
    out = tmp_path / "runs"
    rc = main(["train", f"model.name={NAME}", "model.pretrained=true", f"run.output_dir={out}", "optim.epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("fgir: error: model.pretrained=true")
    assert not out.exists()


def test_unknown_pretrained_tag_names_the_lister():
    with pytest.raises(KeyError, match="list models --pretrained"):
        pt.pretrained_source("resnet18.no_such_tag")
