"""Every `fgir viz` kind draws a PNG for a real checkpoint of a model it applies to."""

from __future__ import annotations

import pytest
from conftest import tiny_cfg
from PIL import Image

from fgir.engine.train import train
from fgir.registry import VIZ
from fgir.report.viz import run_viz

VIT = ["model.name=vit_tiny_patch16_224", "model.kwargs={depth: 4}", "data.img_size=64", "data.test_split=",
       "optim.epochs=1", "run.max_steps_per_epoch=1"]
PLUGINS = {  # kind -> the plug-ins its checkpoint needs
    "cam": "[]",
    "glsim": "[{name: glsim, top_o: 2}]",
    "rollout": "[]",
    "tokens": "[{name: token_reduction, method: evit, keep_rate: 0.5, locations: [1, 2]}]",
}


def test_every_kind_is_covered():
    assert set(VIZ.names()) == set(PLUGINS)


@pytest.mark.parametrize("kind", sorted(PLUGINS))
def test_viz_kind_writes_a_png(kind, tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root, tmp_path, *VIT, f"model.plugins={PLUGINS[kind]}", f"run.name={kind}")
    run = train(cfg)["run_dir"]
    img = next((tiny_root / "images").rglob("*.png"))
    (out,) = run_viz(kind, run, img, out=tmp_path / f"{kind}.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_glsim_viz_draws_the_selected_tokens_in_select_top_k_mode(tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root, tmp_path, *VIT, "model.plugins=[{name: glsim, top_o: 2, mode: select_top_k}]",
                   "run.name=topk")
    run = train(cfg)["run_dir"]
    img = next((tiny_root / "images").rglob("*.png"))
    (out,) = run_viz("glsim", run, img, out=tmp_path / "topk.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200
