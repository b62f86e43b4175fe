"""Multi-seed runs: aggregation against hand values, resume/skip on a rerun, validation, sweeps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_cfg

from fgir.cli.main import main
from fgir.config import ConfigError
from fgir.engine import seeds as seeds_mod
from fgir.engine import train as train_mod

QUICK = ("optim.epochs=1", "data.val_split=", "run.name=ms")


class _Counting:
    """The real train, recording (seed, resume) of every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, resume="", **kw):
        self.calls.append((cfg.run.seed, bool(resume)))
        return train_mod.train(cfg, resume=resume, **kw)


@pytest.fixture(scope="module")
def three_seeds(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    agg = seeds_mod.train_seeds(tiny_cfg(tiny_root, out, *QUICK), [0, 1, 2])
    return out / "ms", agg


def _hand_mean_std(values):
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def test_seeds_json_holds_mean_and_sample_std_of_the_seeds(three_seeds):
    parent, _ = three_seeds
    finals = [json.loads((parent / f"seed{s}" / "final.json").read_text()) for s in (0, 1, 2)]
    saved = json.loads((parent / "seeds.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["unfinished"] == []
    for key in ("test_top1", "test_macro_f1", "test_ece", "test_mean_per_class_acc", "train_time_s"):
        mean, std = _hand_mean_std([f[key] for f in finals])
        m = saved["metrics"][key]
        torch.testing.assert_close(m["mean"], mean, rtol=0, atol=1e-9)
        torch.testing.assert_close(m["std"], std, rtol=0, atol=1e-9)
        assert m["n"] == 3 and m["values"] == {str(s): f[key] for s, f in zip((0, 1, 2), finals)}


def test_each_seed_trains_with_its_own_seed_in_its_own_folder(three_seeds):
    parent, _ = three_seeds
    for s in (0, 1, 2):
        cfg = (parent / f"seed{s}" / "config.yaml").read_text()
        assert f"seed: {s}\n" in cfg


def test_seeds_md_lists_top1_mean_std_and_every_seed(three_seeds):
    parent, agg = three_seeds
    md = (parent / "seeds.md").read_text()
    m = agg["metrics"]["test_top1"]
    vals = " | ".join(f"{m['values'][str(s)]:.2f}" for s in (0, 1, 2))
    assert f"| top-1 (%) | {m['mean']:.2f} ± {m['std']:.2f} | {vals} |" in md


def test_rerun_skips_finished_seeds_resumes_interrupted_and_starts_new(three_seeds, tiny_root, tmp_path):
    import shutil

    parent = tmp_path / "ms"
    shutil.copytree(three_seeds[0], parent)
    (parent / "seed1" / "final.json").unlink()  # seed 1 stopped before its final evaluation
    mtime0 = (parent / "seed0" / "final.json").stat().st_mtime_ns
    counting = _Counting()
    agg = seeds_mod.train_seeds(tiny_cfg(tiny_root, tmp_path, *QUICK), [0, 1, 3], train_fn=counting)
    assert counting.calls == [(1, True), (3, False)]
    assert (parent / "seed0" / "final.json").stat().st_mtime_ns == mtime0
    assert agg["seeds"] == [0, 1, 3] and (parent / "seed1" / "final.json").is_file()


def test_seed_trained_with_another_config_is_refused(three_seeds, tiny_root):
    out = three_seeds[0].parent
    with pytest.raises(ConfigError, match=r"seed0 was trained with another config \(optim.lr 0.01 -> 0.05"):
        seeds_mod.train_seeds(tiny_cfg(tiny_root, out, *QUICK, "optim.lr=0.05"), [0],
                              train_fn=lambda *a, **k: pytest.fail("must not train"))


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0", "1", "0"], "seed 0 is listed twice"),
    (["--seeds", "0", "--resume", "runs/x"], "--seeds resumes by itself"),
    (["--seeds", "0", "run.seed=3"], "run.seed=... and --seeds both set the seed"),
    (["--seeds", "-1"], "each seed must be an integer >= 0"),
    (["--seeds", "0", "one"], "--seeds expects integers, got '0 one'"),
], ids=["duplicate", "with-resume", "with-run-seed", "negative", "not-a-number"])
def test_bad_seeds_flags_are_one_line_errors(argv, message, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_sweep_trains_every_variant_with_the_file_seeds(tiny_root, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("seeds: [5, 6]\nvariants:\n  lr_a: [optim.lr=0.02]\n  lr_b: {optim.lr: 0.03}\n")
    seen = []

    def record(cfg, **kw):
        seen.append((cfg.run.output_dir, cfg.run.name, cfg.run.seed, cfg.optim.lr))
        return {}

    overrides = ["data.name=tiny", f"data.root={tiny_root}", "model.name=test_resnet", f"run.output_dir={tmp_path}"]
    seeds_mod.run_sweep(sweep, overrides=overrides, train_fn=record, log=lambda m: None)
    assert seen == [(str(tmp_path / "lr_a"), "seed5", 5, 0.02), (str(tmp_path / "lr_a"), "seed6", 6, 0.02),
                    (str(tmp_path / "lr_b"), "seed5", 5, 0.03), (str(tmp_path / "lr_b"), "seed6", 6, 0.03)]


def test_sweep_variant_setting_the_seed_is_refused(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("seeds: [0]\nvariants:\n  a: [run.seed=3]\n")
    with pytest.raises(ConfigError, match="variant 'a' sets run.seed or run.name"):
        seeds_mod.load_sweep(sweep)
