"""Model cards: written at the end of training (run folder README.md) and next to exports; every
value comes from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CLASSES, tiny_cfg

from fgir.benchmarks.flops import count_macs, count_params
from fgir.engine.checkpoint import load_model, read_meta


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory) -> Path:
    from fgir.engine.train import train

    out = tmp_path_factory.mktemp("cardrun")
    train(tiny_cfg(tiny_root, out, "optim.epochs=1", "run.name=card"))
    return out / "card"


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_training_writes_a_card_with_the_checkpoint_values(run):
    text = (run / "README.md").read_text()
    fm = _front_matter(text)
    assert fm["library_name"] == "timm" and fm["pipeline_tag"] == "image-classification"
    assert fm["datasets"] == ["tiny"] and "test_resnet" in fm["tags"] and "accuracy" in fm["metrics"]
    final = json.loads((run / "final.json").read_text())
    result = {m["name"]: m["value"] for m in fm["model-index"][0]["results"][0]["metrics"]}
    assert result["test top1"] == pytest.approx(final["test_top1"], abs=1e-6)
    meta = read_meta(run / "last.safetensors")
    model = load_model(run / "last.safetensors")
    assert f"- parameters: {count_params(model):,}" in text
    assert f"- MACs (one image at 32 px): {count_macs(model, 32):,}" in text
    assert f"normalisation: mean {meta['mean']}, std {meta['std']}" in text
    assert "centre-cropped to 32 px" in text and "- architecture: `test_resnet`" in text
    assert ", ".join(f"{i}: {n}" for i, n in enumerate(TINY_CLASSES)) in text
    assert f"| val (`val`) | {meta['metrics']['val_top1']:.4f} |" in text
    assert f"| test (`test`) | {final['test_top1']:.4f} |" in text
    assert "trained on `train`, validated on `val`, tested on `test`" in text
    # pytest is not an fgir process: the command is the one that reruns the saved config
    assert f"## How it was made\n\n```\nfgir train -c {run / 'config.yaml'}\n```" in text
    assert "Trained with:" not in text


def test_export_writes_a_card_with_the_export_and_the_command(run, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the 'export' extra; CI has it")
    from fgir.export import export_onnx

    res = export_onnx(run, tmp_path / "m.onnx", dynamic_batch=True, command="fgir export RUN --format onnx")
    text = Path(res.card).read_text()
    assert Path(res.card) == tmp_path / "m.md" and "onnx" in _front_matter(text)["tags"]
    assert "- export: onnx opset 17, exporter torchscript, variant `default (forward)`, dynamic batch" in text
    assert "```\nfgir export RUN --format onnx\n```" in text and "Trained with:" in text


def test_the_recorded_command_is_the_fgir_argv(monkeypatch):
    from fgir.export.card import command_line

    monkeypatch.setattr("sys.argv", ["/venv/bin/fgir", "export", "runs/a b", "--format", "onnx"])
    assert command_line("fallback") == "fgir export 'runs/a b' --format onnx"
    monkeypatch.setattr("sys.argv", ["/venv/lib/pytest/__main__.py", "-q"])
    assert command_line("fallback") == "fallback"
