"""`fgir eval` over many checkpoints (results CSV, overlap warning, errors), `fgir predict`
(formats, skipping, streaming) and the Python API that mirrors them."""

from __future__ import annotations

import csv
import json
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg
from torch.testing import assert_close

import fgir
from fgir.cli.main import main
from fgir.engine.evaluate_cli import RESULT_COLUMNS, SplitOverlapWarning
from fgir.serve.predict import Predictor


@pytest.fixture(scope="session")
def runs(tiny_root, tmp_path_factory) -> dict[str, Path]:
    """Two tiny trained runs (different seeds), trained once per session."""
    from fgir.engine.train import train

    out = tmp_path_factory.mktemp("evalruns")
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        train(tiny_cfg(tiny_root, out, "optim.epochs=1", "data.test_split=", f"run.name={name}",
                       f"run.seed={seed}"))
    return {"a": out / "a", "b": out / "b"}


@pytest.fixture()
def image_folder(tiny_root, tmp_path) -> Path:
    """18 readable images (two class folders, train and test), one corrupt .png and a text file."""
    folder = tmp_path / "imgs"
    for cls in ("blue_bar", "red_disc"):
        shutil.copytree(tiny_root / "images" / cls, folder / cls, ignore=shutil.ignore_patterns("val_*"))
    (folder / "red_disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _good_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if p.name != "broken.png")


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- eval
def test_eval_results_csv_has_one_row_per_checkpoint(runs, tmp_path, capsys):
    single = tmp_path / "single"
    assert main(["eval", str(runs["a"]), "--split", "test", "--out", str(single)]) == 0
    ref = json.loads((single / "test_metrics.json").read_text())
    capsys.readouterr()

    results = tmp_path / "results.csv"
    assert main(["eval", str(runs["a"]), str(runs["b"]), "--split", "test", "--results-csv", str(results)]) == 0
    out = capsys.readouterr().out
    with results.open(newline="") as fh:
        assert next(csv.reader(fh)) == RESULT_COLUMNS
    rows = _read_csv(results)
    assert [Path(r["checkpoint"]).parent.name for r in rows] == ["a", "b"]
    for r in rows:
        assert (r["model"], r["dataset"], r["split"], r["inference"], r["img_size"], r["num_images"], r["device"]) \
            == ("test_resnet", "tiny", "test", "default", "32", "9", "cpu")
        assert int(r["params"]) > 0 and float(r["gmacs"]) > 0
        assert r["top5"] == ""  # 3 classes: top-5 is not defined
    assert float(rows[0]["top1"]) == pytest.approx(ref["top1"], rel=0, abs=1e-9)
    assert float(rows[0]["macro_f1"]) == pytest.approx(ref["macro_f1"], rel=0, abs=1e-9)
    assert float(rows[0]["ece"]) == pytest.approx(ref["ece"], rel=0, abs=1e-9)
    # the console table lists both checkpoints; per-checkpoint eval folders are still written
    table = out[out.index("checkpoint"):]
    assert str(runs["a"] / "last.safetensors") in table and str(runs["b"] / "last.safetensors") in table
    assert (runs["b"] / "eval_test" / "test_metrics.json").is_file()

    # --append adds rows to the same file
    assert main(["eval", str(runs["a"]), "--results-csv", str(results), "--append", "--no-macs"]) == 0
    rows2 = _read_csv(results)
    assert len(rows2) == 3 and rows2[:2] == rows and rows2[2]["gmacs"] == ""


def test_eval_warns_when_the_split_overlaps_training(runs, capsys):
    assert main(["eval", str(runs["a"]), "--split", "train_val", "--no-macs"]) == 0
    err = capsys.readouterr().err
    assert "fgir: warning:" in err and "18 of 24 images of split 'train_val'" in err and "'train'" in err
    assert main(["eval", str(runs["a"]), "--split", "val", "--no-macs"]) == 0
    assert "warning" not in capsys.readouterr().err
    with pytest.warns(SplitOverlapWarning, match="is the training split"):
        fgir.evaluate(runs["a"], split="train", count_macs=False)


def test_eval_reports_a_bad_checkpoint_and_continues(runs, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    results = tmp_path / "results.csv"
    assert main(["eval", str(bad), str(runs["a"]), "--results-csv", str(results), "--no-macs"]) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fgir: error:")]
    assert len(err_lines) == 2  # the checkpoint's one line, then the summary
    assert err_lines[0].startswith(f"fgir: error: {bad}:") and "1 of 2 checkpoint(s) failed" in err_lines[1]
    rows = _read_csv(results)
    assert len(rows) == 1 and rows[0]["checkpoint"] == str(runs["a"] / "last.safetensors")


def test_api_evaluate_returns_the_csv_rows(runs, tmp_path):
    results = tmp_path / "results.csv"
    assert main(["eval", str(runs["a"]), str(runs["b"]), "--results-csv", str(results)]) == 0
    rows = fgir.evaluate([runs["a"], runs["b"]], split="test")
    assert [list(r) for r in rows] == [RESULT_COLUMNS] * 2
    written = _read_csv(results)
    for api, cli in zip(rows, written):
        assert {k: "" if v is None else (repr(v) if isinstance(v, float) else str(v)) for k, v in api.items()} == cli
    one = fgir.evaluate(runs["a"], count_macs=False)
    assert isinstance(one, dict) and one["top1"] == rows[0]["top1"] and one["gmacs"] is None
    with pytest.raises(ValueError, match="not a readable safetensors"):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"junk")
        fgir.evaluate([bad, runs["a"]], count_macs=False)
    with pytest.warns(UserWarning, match="bad.safetensors"):
        assert len(fgir.evaluate([tmp_path / "bad.safetensors", runs["a"]], count_macs=False, on_error="warn")) == 1


def test_api_cost_matches_cli_json(tmp_path, capsys):
    out = tmp_path / "cost.json"
    assert main(["cost", "test_resnet", "--img-size", "32", "--num-classes", "3", "--plugins", "cal",
                 "--json", str(out)]) == 0
    assert fgir.cost("test_resnet", img_size=32, num_classes=3, plugins="cal") == json.loads(out.read_text())[0]
    rows = fgir.cost("test_resnet", img_size=[32, 48], num_classes=3)
    assert [r["img_size"] for r in rows] == [32, 48] and rows[1]["macs"] > rows[0]["macs"]
    module = fgir.create_model("test_resnet", num_classes=3)
    assert fgir.cost(module, img_size=32)["macs"] == rows[0]["macs"]


# ----------------------------------------------------------------------------- predict
def test_predict_skips_a_corrupt_file_in_a_folder(runs, image_folder, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(runs["a"]), str(image_folder), "--out", str(out), "--topk", "2"]) == 0
    cap = capsys.readouterr()
    assert "broken.png" in cap.err and "notes.txt" in cap.err
    rows = _read_csv(out)
    assert [r["image"] for r in rows] == [str(p) for p in _good_images(image_folder)]
    assert list(rows[0]) == ["image", "class_name1", "class_id1", "prob1", "class_name2", "class_id2", "prob2"]
    assert "18 images, 1 skipped" in cap.out


def test_predict_a_named_corrupt_file_is_an_error(runs, image_folder, capsys):
    assert main(["predict", str(runs["a"]), str(image_folder / "red_disc" / "broken.png")]) == 2
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.parametrize("out, message", [("p.txt", "unknown output format '.txt'"),
                                          ("p", "unknown output format '(no extension)'"),
                                          (".", "is a folder")])
def test_predict_bad_out_is_refused_before_work(runs, image_folder, tmp_path, monkeypatch, capsys, out, message):
    def no_work(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(no_work))
    target = tmp_path if out == "." else tmp_path / out
    assert main(["predict", str(runs["a"]), str(image_folder), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / out).is_file()


def test_predict_formats_parse_and_agree(runs, image_folder, tmp_path, capsys):
    for ext in ("csv", "json", "jsonl"):
        assert main(["predict", str(runs["a"]), str(image_folder), "--topk", "3", "--quiet",
                     "--out", str(tmp_path / f"p.{ext}")]) == 0
    from_json = json.loads((tmp_path / "p.json").read_text())
    from_jsonl = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    from_csv = _read_csv(tmp_path / "p.csv")
    assert from_json == from_jsonl and len(from_json) == 18
    for j, c in zip(from_json, from_csv):
        assert c["image"] == j["image"]
        assert [c[f"class_name{i + 1}"] for i in range(3)] == [t["class_name"] for t in j["topk"]]
        assert [float(c[f"prob{i + 1}"]) for i in range(3)] == [t["prob"] for t in j["topk"]]
    # the API returns what the CLI writes
    assert fgir.predict(runs["a"], image_folder, topk=3, on_skip=lambda p, e: None) == from_json


def test_predict_quiet_prints_no_per_image_lines(runs, image_folder, tmp_path, capsys):
    args = ["predict", str(runs["a"]), str(image_folder), "--out", str(tmp_path / "p.jsonl")]
    assert main(args) == 0
    loud = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(str(image_folder)) for line in loud) == 18
    assert main(args + ["--quiet"]) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert not any(str(image_folder) in line for line in quiet) and len(quiet) == 1 and quiet[0].startswith("wrote")


def test_batched_predictions_equal_batch_size_one(runs, image_folder):
    pred = Predictor.from_checkpoint(runs["a"], device="cpu")
    files = _good_images(image_folder)
    with torch.no_grad():
        one = torch.cat([pred.logits([f]) for f in files]).softmax(-1)
        batched = torch.cat([pred.logits(files[i:i + 5]) for i in range(0, len(files), 5)]).softmax(-1)
    assert_close(batched, one, rtol=1e-5, atol=1e-6)
    rows1 = pred.predict(files, topk=3, batch_size=1)
    rows5 = pred.predict(files, topk=3, batch_size=5)
    assert [r["image"] for r in rows1] == [r["image"] for r in rows5]
    assert_close(torch.tensor([[t["prob"] for t in r["topk"]] for r in rows5]),
                 torch.tensor([[t["prob"] for t in r["topk"]] for r in rows1]), rtol=0, atol=2e-6)
    assert [[t["class_id"] for t in r["topk"]] for r in rows5] == [[t["class_id"] for t in r["topk"]] for r in rows1]


def test_predict_streams_with_at_most_a_batch_decoded(runs, tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(200):
        Image.new("RGB", (8, 8), (i, 255 - i, 40)).save(folder / f"{i:03d}.png")
    pred = Predictor.from_checkpoint(runs["a"], device="cpu")
    alive, peak, consumed = [0], [0], [0]
    decode = Predictor.decode

    def counting_decode(self, image):
        t = decode(self, image)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(t, lambda: alive.__setitem__(0, alive[0] - 1))
        return t

    def paths():
        for p in sorted(folder.iterdir()):
            consumed[0] += 1
            yield p

    monkeypatch.setattr(Predictor, "decode", counting_decode)
    rows = pred.iter_predict(paths(), topk=2, batch_size=16)
    first = next(rows)
    assert consumed[0] <= 16  # the source is read lazily, one batch ahead at most
    n = 1 + sum(1 for _ in rows)
    assert n == 200 and first["image"].endswith("000.png")
    assert 0 < peak[0] <= 16 and alive[0] == 0
