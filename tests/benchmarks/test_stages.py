"""Benchmark stages and their committed record: reuse, survival of a lost stage folder, retraining a
stage whose checkpoint a later stage needs (training is replaced by a stub; bookkeeping only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fgir.engine.train as train_mod
from fgir.benchmarks import stages

CFG = ["configs/recipes/cpu/cub100_student_lrnet14_64.yaml"]


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(cfg, resume=""):
        calls.append(cfg.run.name)
        run = Path(cfg.run.output_dir) / cfg.run.name
        run.mkdir(parents=True, exist_ok=True)
        res = {"run_dir": str(run), "epochs": cfg.optim.epochs, "train_time_s": 1.0, "test_top1": 50.0 + cfg.run.seed}
        (run / "final.json").write_text(json.dumps(res))
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_top1": 40.0}) + "\n")
        return res

    monkeypatch.setattr(train_mod, "train", train)
    return calls


def test_a_finished_stage_is_written_to_the_record_without_its_folder_path(tmp_path, fake_train):
    rec = tmp_path / "rec.json"
    res = stages.run_stage("a", CFG, ["optim.epochs=1", "run.seed=1"], tmp_path / "out", record=rec)
    entry = json.loads(rec.read_text())["a"]
    assert res == entry["result"] and "run_dir" not in res
    assert entry["result"]["test_top1"] == 51.0 and entry["result"]["val_top1_last"] == 40.0


def test_a_recorded_stage_is_not_trained_again_when_its_folder_is_lost(tmp_path, fake_train):
    rec = tmp_path / "rec.json"
    stages.run_stage("a", CFG, ["optim.epochs=1"], tmp_path / "out1", record=rec)
    res = stages.run_stage("a", CFG, ["optim.epochs=1"], tmp_path / "out2", record=rec)
    assert fake_train == ["a"] and res["test_top1"] == 50.0


def test_a_recorded_stage_with_other_arguments_is_trained(tmp_path, fake_train):
    rec = tmp_path / "rec.json"
    stages.run_stage("a", CFG, ["optim.epochs=1"], tmp_path / "out1", record=rec)
    stages.run_stage("a", CFG, ["optim.epochs=2"], tmp_path / "out2", record=rec)
    assert fake_train == ["a", "a"]
    assert json.loads(rec.read_text())["a"]["result"]["epochs"] == 2


def test_the_stage_folder_location_is_not_part_of_the_arguments(tmp_path, fake_train):
    rec = tmp_path / "rec.json"
    for out in (tmp_path / "out1", tmp_path / "out2"):
        over = ["optim.epochs=1", f"model.checkpoint={out / 'a.safetensors'}", f"data.root={out}"]
        stages.run_stage("b", CFG, over, out, record=rec)
    assert fake_train == ["b"]


def test_a_needed_checkpoint_is_retrained_and_compared_with_the_record(tmp_path, fake_train, capsys):
    rec = tmp_path / "rec.json"
    stages.run_stage("a", CFG, ["optim.epochs=1"], tmp_path / "out1", record=rec)
    stages.run_stage("a", CFG, ["optim.epochs=1"], tmp_path / "out2", record=rec, need_checkpoint=True)
    assert fake_train == ["a", "a"] and (tmp_path / "out2" / "a" / "final.json").is_file()
    assert "recorded result reproduced" in capsys.readouterr().out


def test_recorded_reads_the_folder_first_then_the_record(tmp_path, fake_train):
    rec = tmp_path / "rec.json"
    assert stages.recorded("a", CFG, ["optim.epochs=1"], tmp_path / "out", rec) is None
    stages.run_stage("a", CFG, ["optim.epochs=1"], tmp_path / "out", record=rec)
    assert stages.recorded("a", CFG, ["optim.epochs=1"], tmp_path / "other", rec)["test_top1"] == 50.0
    assert stages.recorded("a", CFG, ["optim.epochs=3"], tmp_path / "other", rec) is None


def test_a_record_that_is_not_json_is_a_one_line_error(tmp_path):
    rec = tmp_path / "rec.json"
    rec.write_text("{not json")
    with pytest.raises(SystemExit, match="rec.json: not a stage record"):
        stages.read_record(rec)
