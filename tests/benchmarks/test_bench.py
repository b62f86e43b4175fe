"""`fgir bench` on tiny models: rows, the fingerprinted CSV, checkpoints, memory, one-line errors
(protocol and bookkeeping only: no timing value is asserted)."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn as nn

import fgir
from fgir.benchmarks.bench import BENCH_COLUMNS, peak_rss_growth
from fgir.cli.main import main

FAST = ["--device", "cpu", "--repeats", "2", "--warmup", "1", "--iters", "2", "--min-seconds", "0", "--threads", "1"]
FAST_API = {"device": "cpu", "repeats": 2, "warmup": 1, "iters": 2, "min_seconds": 0.0, "threads": 1}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_appends_rows_to_a_csv_named_after_the_environment(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "test_resnet", "--img-size", "32", "--batch-size", "2", "--out-dir", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    files = list(out.glob("*.csv"))
    assert len(files) == 1
    name = files[0].name
    assert name.startswith("bench_") and f"torch{torch.__version__}" in name and name.endswith("_fp32_t1.csv")
    assert "GMACs" in printed and "test_resnet" in printed and f"appended 1 row to {files[0]}" in printed
    with open(files[0], newline="") as f:
        assert next(csv.reader(f)) == BENCH_COLUMNS
    (row,) = _rows(files[0])
    assert (row["model"], row["img_size"], row["batch_size"], row["device"], row["dtype"], row["threads"]) == \
        ("test_resnet", "32", "2", "cpu", "fp32", "1")
    assert int(row["params"]) == int(row["params_trainable"]) > 0
    for key in ("gmacs", "latency_ms", "latency_ms_p90", "infer_img_per_s", "infer_img_per_s_min",
                "infer_peak_mem_mib"):
        assert float(row[key]) > 0, key
    assert float(row["infer_img_per_s_min"]) <= float(row["infer_img_per_s"]) <= float(row["infer_img_per_s_max"])
    assert float(row["infer_spread_pct"]) >= 0 and float(row["infer_peak_mem_growth_mib"]) >= 0
    assert row["mem_method"] in ("vmhwm", "rss_sampled") and row["train_img_per_s"] == ""

    assert main(["bench", "test_resnet", "--img-size", "32", "--batch-size", "1", "--out-dir", str(out), "--no-memory",
                 "--no-macs", *FAST]) == 0
    rows = _rows(files[0])
    assert len(rows) == 2 and rows[0] == row
    assert rows[1]["batch_size"] == "1" and rows[1]["gmacs"] == rows[1]["infer_peak_mem_mib"] == ""


def test_checkpoint_run_folder_is_benchmarked_at_its_deployed_size(tmp_path):
    from fgir.config import load_config
    from fgir.engine.build import build_model
    from fgir.engine.checkpoint import checkpoint_meta, save_weights

    cfg = load_config(overrides=["model.name=test_resnet", "data.name=fonts", "data.img_size=40",
                                 "data.resize_ratio=1.0"])
    model = build_model(cfg, 3)
    meta = checkpoint_meta(cfg, 3, ["a", "b", "c"], 1, 1, (0.5,) * 3, (0.5,) * 3)
    ck = save_weights(model.eval(), tmp_path / "run" / "last.safetensors", meta)
    (row,) = fgir.bench(tmp_path / "run", batch_size=2, memory=False, out_dir=None, **FAST_API)
    assert (row["model"], row["checkpoint"], row["img_size"], row["num_classes"]) == ("test_resnet", str(ck), 40, 3)
    assert row["params"] == sum(p.numel() for p in model.parameters())


def test_module_with_train_and_in_process_memory(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    net.num_classes = 5
    before = net[-1].weight.detach().clone()
    rows = fgir.bench(net, img_size=[16, 24], batch_size=[2, 3], train=True, out_dir=tmp_path, **FAST_API)
    assert [(r["img_size"], r["batch_size"]) for r in rows] == [(16, 2), (16, 3), (24, 2), (24, 3)]
    for r in rows:
        assert r["train_img_per_s_min"] <= r["train_img_per_s"] <= r["train_img_per_s_max"]
        assert r["train_img_per_s"] > 0 and r["train_peak_mem_mib"] > 0 and r["mem_method"].endswith("_in_process")
    assert rows[0]["latency_ms"] == rows[1]["latency_ms"]  # batch-1 latency: once per model and size
    assert not torch.equal(before, net[-1].weight) and not net.training  # trained, left in eval mode
    assert len(_rows(next(tmp_path.glob("bench_*.csv")))) == 4


def test_peak_rss_growth_sees_a_64_mib_temporary():
    res = peak_rss_growth(lambda: torch.ones(16 * 2**20).sum())
    if res["method"] == "unavailable":
        pytest.skip("no /proc on this system")
    assert res["growth_mib"] >= 60 and res["peak_mib"] > res["growth_mib"]


@pytest.mark.parametrize("args,message", [
    (["no_such_model"], "Unknown model 'no_such_model'"),
    (["test_resnet", "--dtype", "fp16"], "--dtype fp16 needs a CUDA device"),
    (["test_resnet", "--batch-size", "0"], "--batch-size values must be >= 1"),
    (["test_resnet", "--img-size", "0"], "--img-size values must be >= 1"),
    (["missing_run/last.safetensors"], "not found"),
])
def test_bad_input_is_one_line(args, message, tmp_path, capsys):
    assert main(["bench", *args, "--device", "cpu", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fgir: error:") and message in err[0]
    assert not list(tmp_path.iterdir())


def test_csv_with_other_columns_is_refused(tmp_path, capsys):
    from fgir.benchmarks.bench import bench_csv_path, bench_environment

    path = bench_csv_path(tmp_path, bench_environment(torch.device("cpu"), "fp32", 1))
    path.write_text("model,img_size\nx,1\n")
    assert main(["bench", "test_resnet", "--out-dir", str(tmp_path), *FAST]) == 2
    assert "has other columns" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rows_use_the_allocator_peak():
    (row,) = fgir.bench("test_resnet", img_size=32, batch_size=4, device="cuda", dtype="fp16", train=True,
                        repeats=2, warmup=2, iters=3, min_seconds=0.0, out_dir=None)
    assert row["mem_method"] == "cuda_allocator" and row["dtype"] == "fp16" and row["device"].startswith("cuda")
    assert row["infer_peak_mem_mib"] >= row["infer_peak_mem_growth_mib"] > 0
    assert row["train_peak_mem_mib"] >= row["train_peak_mem_growth_mib"] > 0 and row["train_img_per_s"] > 0
