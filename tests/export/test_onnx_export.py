"""`fgir export --format onnx`: parity with PyTorch for every exportable family, dynamic batch,
embedded metadata, the parity failure path, export forms declared by plug-ins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnx", reason="ONNX export needs the 'export' extra (pip install 'fgir[export]'); CI has it")
pytest.importorskip("onnxruntime", reason="the ONNX parity check needs onnxruntime (the 'export' extra); CI has it")

from export_helpers import FAMILIES, family_checkpoints  # noqa: E402

from fgir.cli.main import main  # noqa: E402
from fgir.engine.checkpoint import load_model  # noqa: E402
from fgir.export import export_form, export_onnx, onnx_session, read_onnx_meta, register_export_form  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return family_checkpoints(tmp_path_factory.mktemp("onnx_ckpts"))


def _ort_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    return onnx_session(path).run(["logits"], {"image": x.numpy()})[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_matches_pytorch(family, ckpts, tmp_path):
    out = tmp_path / f"{family}.onnx"
    res = export_onnx(ckpts[family], out, card=False)
    assert res.path == str(out) and out.is_file() and res.variant == "default (forward)"
    assert 0 <= res.max_abs_diff <= 1e-4
    # an independent check on a new batch
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = load_model(ckpts[family])(x).numpy()
    np.testing.assert_allclose(_ort_logits(out, x), ref, rtol=0, atol=1e-4)


def test_dynamic_batch_runs_at_another_batch_size(ckpts, tmp_path):
    out = tmp_path / "dyn.onnx"
    res = export_onnx(ckpts["timm_vit"], out, dynamic_batch=True, batch_size=2, card=False)
    assert res.dynamic_batch and res.batch_sizes == [2, 3]
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = load_model(ckpts["timm_vit"])(x).numpy()
    got = _ort_logits(out, x)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_fixed_batch_graph_refuses_another_batch_size(ckpts, tmp_path):
    out = tmp_path / "fixed.onnx"
    export_onnx(ckpts["timm_cnn"], out, batch_size=2, card=False)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _ort_logits(out, torch.zeros(3, 3, 32, 32))


def test_metadata_is_embedded(ckpts, tmp_path):
    import onnx

    out = tmp_path / "meta.onnx"
    export_onnx(ckpts["lrnet"], out, card=False)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    src = load_model(ckpts["lrnet"]).fgir_meta
    assert json.loads(props["class_names"]) == src["class_names"] == ["red_disc", "green_square", "blue_bar"]
    assert json.loads(props["mean"]) == src["mean"] and json.loads(props["std"]) == src["std"]
    assert props["img_size"] == "32" and props["architecture"] == "lrnet14" and props["variant"] == "default (forward)"
    import fgir

    assert props["fgir_version"] == fgir.__version__
    meta = read_onnx_meta(out)
    assert meta["export"]["opset"] == 17 and meta["config"]["model"]["kwargs"] == {"stem_width": 8}


def test_parity_failure_is_a_one_line_error_and_leaves_no_file(ckpts, tmp_path, capsys):
    out = tmp_path / "strict.onnx"
    rc = main(["export", str(ckpts["cal_teacher"]), "--out", str(out), "--atol", "1e-12", "--no-card"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("fgir: error: ONNX parity check failed: max |onnx - torch| = ")
    assert "> --atol 1e-12" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_invalid_tolerance_is_a_one_line_error(ckpts, tmp_path, capsys):
    rc = main(["export", str(ckpts["timm_cnn"]), "--out", str(tmp_path / "m.onnx"), "--atol", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["fgir: error: --atol must be a positive number, got -1.0."]


def test_cli_export_reports_variant_and_parity(ckpts, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(ckpts["vitfs"]), "--format", "onnx", "--out", str(out), "--dynamic-batch",
                 "--opset", "17", "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (onnx, opset 17" in text and "variant default (forward)" in text and "dynamic batch" in text
    rep = json.loads((tmp_path / "r.json").read_text())
    assert f"parity: max |onnx - torch| = {rep['max_abs_diff']:.3g} <= atol 0.0001" in text
    assert rep["card"] == str(out.with_suffix(".md")) and out.with_suffix(".md").is_file()


# ----------------------------------------------------------------------------- export forms
class _Doubled(nn.Module):
    export_variant = "doubled:static"

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


class _WithExportModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)

    def export_module(self) -> nn.Module:
        return _Doubled(self)


def test_export_form_defaults_to_forward():
    m = nn.Linear(4, 2)
    form = export_form(m)
    assert form.module is m and form.variant == "default (forward)"


def test_plugin_export_module_method_is_used():
    m = _WithExportModule()
    form = export_form(m)
    x = torch.randn(3, 4)
    assert form.variant == "doubled:static"
    torch.testing.assert_close(form.module(x), 2 * m(x), rtol=0, atol=0)


def test_registered_export_form_is_used():
    m = nn.Linear(4, 2)
    m.static_copy = lambda: _Doubled(m)  # a plug-in's apply_<name> would add a real method
    register_export_form(m, "static_copy", "doubled:registered")
    form = export_form(m)
    assert form.variant == "doubled:registered" and isinstance(form.module, _Doubled)


def test_export_of_an_unknown_variant_lists_the_available_ones(ckpts):
    with pytest.raises(ValueError, match=r"available: \['default', 'flip', 'tta'\]"):
        export_form(load_model(ckpts["cal_teacher"]), "multiscale")
