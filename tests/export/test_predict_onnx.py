"""`fgir predict` on an exported `.onnx` file: same rows as on the checkpoint, through the same
streaming predictor (an onnxruntime backend)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="ONNX prediction needs onnxruntime (the 'export' extra); CI has it")

from export_helpers import make_checkpoint  # noqa: E402

from fgir.cli.main import main  # noqa: E402
from fgir.export import export_onnx  # noqa: E402
from fgir.serve.predict import OnnxBackend, Predictor  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("predict_onnx")
    ck = make_checkpoint(root / "cnn", "test_resnet", [], {})
    out = root / "cnn.onnx"
    export_onnx(ck, out, dynamic_batch=True, card=False)
    return ck, out


@pytest.fixture()
def images(tiny_root, tmp_path) -> Path:
    folder = tmp_path / "imgs"
    for cls in ("blue_bar", "red_disc"):
        shutil.copytree(tiny_root / "images" / cls, folder / cls)
    return folder


def test_onnx_and_checkpoint_give_the_same_top1(exported, images):
    ck, onnx_file = exported
    files = sorted(images.rglob("*.png"))[:7]
    a = Predictor.from_checkpoint(ck, device="cpu").predict(files, topk=3, batch_size=3)
    b = Predictor.from_checkpoint(onnx_file, device="cpu").predict(files, topk=3, batch_size=3)
    assert isinstance(Predictor.from_onnx(onnx_file)._forward, OnnxBackend)
    assert [r["image"] for r in a] == [r["image"] for r in b] == [str(f) for f in files]
    assert [r["topk"][0]["class_id"] for r in a] == [r["topk"][0]["class_id"] for r in b]
    for ra, rb in zip(a, b):
        for ta, tb in zip(ra["topk"], rb["topk"]):
            assert ta["class_name"] == tb["class_name"] and ta["prob"] == pytest.approx(tb["prob"], abs=1e-5)


def test_cli_predict_on_onnx_writes_the_checkpoint_format(exported, images, tmp_path):
    ck, onnx_file = exported
    out_ck, out_onnx = tmp_path / "ck.csv", tmp_path / "onnx.csv"
    assert main(["predict", str(ck), str(images), "--out", str(out_ck), "-q", "--batch-size", "4",
                 "--device", "cpu"]) == 0
    assert main(["predict", str(onnx_file), str(images), "--out", str(out_onnx), "-q", "--batch-size", "4",
                 "--device", "cpu"]) == 0
    with out_ck.open(newline="") as f1, out_onnx.open(newline="") as f2:
        rows_ck, rows_onnx = list(csv.DictReader(f1)), list(csv.DictReader(f2))
    assert rows_ck and list(rows_ck[0]) == list(rows_onnx[0])
    assert [(r["image"], r["class_name1"]) for r in rows_ck] == [(r["image"], r["class_name1"]) for r in rows_onnx]


def test_a_fixed_batch_export_predicts_any_number_of_images(tmp_path, images):
    ck = make_checkpoint(tmp_path / "fixed", "test_resnet", [], {})
    out = tmp_path / "fixed.onnx"
    export_onnx(ck, out, batch_size=4, card=False)
    files = sorted(images.rglob("*.png"))[:6]
    rows = Predictor.from_onnx(out).predict(files, topk=1, batch_size=5)
    ref = Predictor.from_checkpoint(ck, device="cpu").predict(files, topk=1, batch_size=5)
    assert [r["topk"][0]["class_id"] for r in rows] == [r["topk"][0]["class_id"] for r in ref]


def test_asking_an_onnx_model_for_another_variant_says_how_to_export_it(exported):
    with pytest.raises(ValueError, match="fgir export CKPT --inference tta"):
        Predictor.from_onnx(exported[1], inference="tta")
