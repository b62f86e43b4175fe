"""Fast fault-injection cases (the long ones are in benchmarks/reliability.py): an interrupt inside a
checkpoint write, SIGTERM on a real `fgir train` process, unreadable images counted in final.json,
plug-in list fields with non-integer entries."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
from conftest import tiny_cfg

from fgir.config import ConfigError, load_config
from fgir.engine import checkpoint as ckpt
from fgir.engine import train as train_mod
from fgir.engine.checkpoint import read_tensors
from fgir.registry import PLUGINS

EXTRA = ("optim.epochs=2", "data.test_split=")


def test_interrupt_between_temp_write_and_rename_then_resume_is_exact(tiny_root, tmp_path, monkeypatch):
    train_mod.train(tiny_cfg(tiny_root, tmp_path / "a", *EXTRA))
    ref = read_tensors(tmp_path / "a" / "t" / "last.safetensors")

    real_replace = os.replace
    renames = []

    def replace(src, dst, *a, **k):  # the epoch-2 weights: written to their .tmp file, not yet renamed
        if str(dst).endswith(".safetensors"):
            renames.append(dst)
            if len(renames) == 4:
                raise KeyboardInterrupt
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    cfg = tiny_cfg(tiny_root, tmp_path / "b", *EXTRA)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg)
    run = tmp_path / "b" / "t"
    assert list(run.glob("last.safetensors.tmp*"))  # the half-done write is still there
    (run / "state_e0002.safetensors.tmp999999").write_bytes(b"x")  # and one of a killed process (another pid)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    train_mod.train(cfg, resume=str(run))
    got = read_tensors(run / "last.safetensors")
    assert got.keys() == ref.keys() and all(bool((got[k] == ref[k]).all()) for k in ref)
    assert not list(run.glob("*.tmp*"))


def test_sigterm_on_a_training_process_exits_130_with_the_resume_command(tiny_root, tmp_path):
    fgir = str(Path(sys.executable).with_name("fgir"))
    data = tmp_path / "data"  # a class-folder copy of the tiny set: a subprocess cannot see the test registry
    for png in (tiny_root / "images").rglob("*.png"):
        (data / png.parent.name).mkdir(parents=True, exist_ok=True)
        (data / png.parent.name / png.name).write_bytes(png.read_bytes())
    run = tmp_path / "runs" / "term"
    args = [fgir, "train", "data.name=folder", f"data.root={data}", "model.name=test_resnet", "data.img_size=32",
            "data.resize_ratio=1.0", "optim.batch_size=2", "optim.epochs=200", "optim.warmup_epochs=0",
            f"run.output_dir={run.parent}", "run.name=term", "run.progress=false", "run.threads=1",
            f"data.cache_dir={tmp_path / 'cache'}"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "last.safetensors").is_file() and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1]
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130
    assert "Traceback" not in err
    assert f"fgir train --resume {run}" in out + err
    assert (run / "last.safetensors").is_file() and not list(run.glob("*.tmp*"))


def test_skipped_unreadable_images_are_counted_in_final_json(tiny_root, tmp_path):
    import shutil

    root = tmp_path / "tiny"
    shutil.copytree(tiny_root, root)
    files = sorted((root / "images").rglob("*.png"))
    files[0].write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    files[-1].write_bytes(files[-1].read_bytes()[:60])  # truncated
    res = train_mod.train(tiny_cfg(root, tmp_path / "out", "optim.epochs=1", "data.skip_bad=true"))
    assert sum(res["skipped_images"].values()) == 2
    assert json.loads((Path(res["run_dir"]) / "final.json").read_text())["skipped_images"] == res["skipped_images"]


def _int_list_fields():
    for name in PLUGINS.names():
        cls = PLUGINS.meta(name)["config"]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            typed = typing.get_args(hints[f.name]) == (int,) and typing.get_origin(hints[f.name]) is list
            if typed or (isinstance(default, list) and default and all(type(v) is int for v in default)):
                yield pytest.param(name, f.name, id=f"{name}.{f.name}")


@pytest.mark.parametrize("plugin,field", list(_int_list_fields()))
def test_plugin_index_lists_refuse_non_integer_entries(plugin, field):
    model = "test_vit" if "vit" in PLUGINS.meta(plugin)["families"] else "test_resnet"
    with pytest.raises(ConfigError, match=rf"model\.plugins\[0\]\.{field}\[0\] expects an integer, got 'abc'"):
        load_config(overrides=[f"model.name={model}", f"model.plugins=[{{name: {plugin}, {field}: abc}}]"])


def test_a_damaged_metrics_line_is_dropped_on_resume_with_a_warning(tiny_root, tmp_path, capsys):
    cfg = tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split=")
    run = Path(train_mod.train(cfg)["run_dir"])
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 1, "train_lo\n')  # a write cut short
    train_mod.train(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=2)), resume=str(run))
    assert f"{run / 'metrics.jsonl'}:2 is not a JSON row" in capsys.readouterr().err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_resume_of_a_finished_run_with_a_changed_key_is_refused(tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split=")
    run = Path(train_mod.train(cfg)["run_dir"])
    changed = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=0.5))
    with pytest.raises(ConfigError, match=r"the run is finished, so the changed key\(s\) \(optim\.lr 0\.01 -> 0\.5\)"):
        train_mod.train(changed, resume=str(run))
