"""`fgir push` -> `hf-hub:` load round trip through a local stand-in for the hub (a pushed folder
laid out as the Hugging Face cache holds a download; offline, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

pytest.importorskip("huggingface_hub", reason="publishing needs huggingface_hub (the 'export' extra); CI has it")

from export_helpers import FAMILIES, family_checkpoints, publish_to_cache  # noqa: E402

from fgir.cli.main import main  # noqa: E402
from fgir.engine.checkpoint import load_model  # noqa: E402
from fgir.models.factory import create_model  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return family_checkpoints(tmp_path_factory.mktemp("hub_ckpts"))


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline: what is not in it cannot be fetched."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _push(ckpt: Path, repo_id: str, tmp_path: Path, cache: Path) -> Path:
    folder = tmp_path / "repo"
    assert main(["push", str(ckpt), repo_id, "--local-dir", str(folder)]) == 0
    publish_to_cache(folder, repo_id, cache)
    return folder


def _x() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_push_then_load_gives_identical_outputs(family, ckpts, tmp_path, hub_cache):
    _push(ckpts[family], f"fgir-test/{family}", tmp_path, hub_cache)
    ref = load_model(ckpts[family])
    got = create_model(f"hf-hub:fgir-test/{family}", pretrained=True).eval()
    with torch.no_grad():
        assert_close(got(_x()), ref(_x()), rtol=0, atol=1e-6)


def test_repository_has_the_timm_layout(ckpts, tmp_path, hub_cache):
    folder = _push(ckpts["timm_vit"], "fgir-test/vit", tmp_path, hub_cache)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "test_vit" and cfg["num_classes"] == 3 and cfg["model_args"] == {"img_size": 32}
    assert cfg["label_names"] == ["red_disc", "green_square", "blue_bar"]
    pc = cfg["pretrained_cfg"]
    meta = load_model(ckpts["timm_vit"]).fgir_meta
    assert pc["input_size"] == [3, 32, 32] and pc["mean"] == meta["mean"] and pc["std"] == meta["std"]
    assert (folder / "README.md").read_text().startswith("---\nlibrary_name: timm\n")


def test_timm_alone_loads_a_pushed_timm_architecture(ckpts, tmp_path, hub_cache):
    import timm

    _push(ckpts["timm_cnn"], "fgir-test/cnn", tmp_path, hub_cache)
    got = timm.create_model("hf-hub:fgir-test/cnn", pretrained=True).eval()
    with torch.no_grad():
        assert_close(got(_x()), load_model(ckpts["timm_cnn"])(_x()), rtol=0, atol=1e-6)


def test_config_model_name_hf_hub_builds_the_published_model(ckpts, tmp_path, hub_cache):
    from fgir.config import load_config
    from fgir.engine.build import build_model

    _push(ckpts["lrnet"], "fgir-test/lrnet", tmp_path, hub_cache)
    cfg = load_config(overrides=["model.name=hf-hub:fgir-test/lrnet", "model.pretrained=true", "data.img_size=32"])
    model = build_model(cfg, 3).eval()
    with torch.no_grad():
        assert_close(model(_x()), load_model(ckpts["lrnet"])(_x()), rtol=0, atol=1e-6)
    meta = load_model(ckpts["lrnet"]).fgir_meta
    assert model.pretrained_cfg["mean"] == tuple(meta["mean"]) and model.pretrained_cfg["std"] == tuple(meta["std"])
    # another class count (fine-tuning elsewhere) keeps the backbone and re-initialises the head
    five = create_model("hf-hub:fgir-test/lrnet", num_classes=5, pretrained=True).eval()
    with torch.no_grad():
        assert five(_x()).shape == (3, 5)
        assert_close(five.forward_features(_x()), model.forward_features(_x()), rtol=0, atol=1e-6)


def test_an_uncached_repository_offline_says_what_to_do(hub_cache):
    from fgir.models.pretrained import PretrainedUnavailable

    with pytest.raises(PretrainedUnavailable, match="not in the local Hugging Face cache"):
        create_model("hf-hub:fgir-test/absent", pretrained=True)


def test_push_rejects_a_bad_repo_id(ckpts, tmp_path, capsys):
    assert main(["push", str(ckpts["timm_cnn"]), "no-owner", "--local-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == "fgir: error: REPO_ID must be OWNER/NAME, got 'no-owner'."
