"""`fgir report`: every file written, rows and aggregates right, clear errors and warnings."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import tiny_cfg
from PIL import Image

from fgir.cli.main import main
from fgir.engine import train as train_mod
from fgir.engine.seeds import train_seeds
from fgir.report import compare

TWO_EPOCHS = ("optim.epochs=2",)


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    """A 2-seed run ('ms') and a single run with another learning rate ('single'), 2 epochs, with val."""
    out = tmp_path_factory.mktemp("report-runs")
    train_seeds(tiny_cfg(tiny_root, out, *TWO_EPOCHS, "run.name=ms"), [0, 1], log=lambda m: None)
    train_mod.train(tiny_cfg(tiny_root, out, *TWO_EPOCHS, "run.name=single", "optim.lr=0.02"))
    return out


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    files = compare.write_report([runs / "ms", runs / "single"], out, warn=lambda m: pytest.fail(m))
    return out, files


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 5000, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 600


def test_report_writes_every_file(report):
    out, files = report
    assert {p.name for p in out.iterdir()} == {"report.md", "report.html", "report.json",
                                               "accuracy_vs_gmacs.png", "curves.png"}
    _assert_png(files["scatter"])
    _assert_png(files["curves"])


def test_markdown_table_has_one_row_per_run_with_seed_aggregate(report, runs):
    md = report[1]["md"].read_text()
    seeds = json.loads((runs / "ms" / "seeds.json").read_text())["metrics"]
    top1 = seeds["test_top1"]
    rows = [line for line in md.splitlines() if line.startswith("| ms |") or line.startswith("| single |")]
    assert len(rows) == 2
    assert f"{top1['mean']:.2f} ± {top1['std']:.2f}" in rows[0] and "| 2 |" in rows[0]
    single = json.loads((runs / "single" / "final.json").read_text())
    assert f"{single['test_top1']:.2f}" in rows[1] and "| 1 |" in rows[1]
    for col in ("top-1", "mean/class", "macro-F1", "ECE ↓", "params (M)", "GMACs", "train time"):
        assert f"| {col} |" in md


def test_report_json_rows_match_the_seed_runs(report, runs):
    rows = {r["label"]: r for r in json.loads(report[1]["json"].read_text())}
    finals = [json.loads((runs / "ms" / f"seed{s}" / "final.json").read_text()) for s in (0, 1)]
    a, b = (f["test_macro_f1"] for f in finals)
    torch.testing.assert_close(rows["ms"]["macro_f1"], (a + b) / 2, rtol=0, atol=1e-9)
    torch.testing.assert_close(rows["ms"]["macro_f1_std"], abs(a - b) / 2 ** 0.5, rtol=0, atol=1e-9)
    assert rows["ms"]["n"] == 2 and rows["single"]["n"] == 1 and rows["single"]["top1_std"] is None


def test_gmacs_are_counted_from_the_checkpoint(report, runs):
    from fgir.benchmarks.flops import count_macs
    from fgir.engine.checkpoint import load_model

    rows = {r["label"]: r for r in json.loads(report[1]["json"].read_text())}
    expected = count_macs(load_model(runs / "single"), 32) / 1e9
    torch.testing.assert_close(rows["single"]["gmacs"], expected, rtol=1e-9, atol=0)


def test_html_is_self_contained_and_links_run_figures(report):
    out, files = report
    page = files["html"].read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert not re.search(r"<script|<link|(src|href)=\"https?://", page)
    links = re.findall(r'href="([^"]+\.png)"', page)
    assert any(link.endswith("seed1/test_confusion_matrix.png") for link in links)
    assert all((out / link).resolve().is_file() for link in links)


def test_curve_of_a_multi_seed_run_is_the_mean_and_std_over_seeds(runs):
    s = compare.load_run(runs / "ms", count_macs=False)
    x, mean, std = compare.curve(s, "val_top1")
    logs = [[json.loads(line) for line in (runs / "ms" / f"seed{k}" / "metrics.jsonl").read_text().splitlines()]
            for k in (0, 1)]
    vals = torch.tensor([[r["val_top1"] for r in log] for log in logs], dtype=torch.float64)
    assert x.tolist() == [1.0, 2.0]
    torch.testing.assert_close(torch.from_numpy(mean), vals.mean(0), rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.from_numpy(std), vals.std(0, unbiased=True), rtol=0, atol=1e-9)


def test_folder_without_a_run_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "is not a run folder" in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_run_without_test_metrics_is_left_out_with_a_warning(runs, tmp_path, capsys):
    shutil.copytree(runs / "single", tmp_path / "running")
    (tmp_path / "running" / "final.json").unlink()
    assert main(["report", str(runs / "single"), str(tmp_path / "running"), "--out", str(tmp_path / "rep"),
                 "--no-macs"]) == 0
    assert "running: no test metrics (no final.json" in capsys.readouterr().err
    assert [r["label"] for r in json.loads((tmp_path / "rep" / "report.json").read_text())] == ["single"]
