"""Run folders never clobber, a failed start leaves nothing, resume keeps time, the console."""

import json
import types
from pathlib import Path

import pytest
from conftest import tiny_cfg

from fgir.config import load_config
from fgir.engine import train as train_mod

QUICK = ("optim.epochs=1", "data.test_split=", "data.val_split=")
RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "recipes" / "cub100_resnet18_64.yaml")


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


class _Clock:
    """A stand-in for train.py's ``time`` module whose clock jumps 100 s per reading."""

    def __init__(self):
        self.t = 1e6

    def time(self) -> float:
        self.t += 100.0
        return self.t


# ----------------------------------------------------------------------------- folders
def test_same_name_gets_numbered_suffix(tiny_root, tmp_path, capsys):
    first = train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK))
    second = train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK))
    third = train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK))
    assert [Path(r["run_dir"]).name for r in (first, second, third)] == ["t", "t-2", "t-3"]
    assert len(_rows(tmp_path / "t")) == 1  # the first run's metrics are not mixed with the others'
    assert f"{tmp_path / 't'} holds another run; this one goes to {tmp_path / 't-2'} (--overwrite" in \
        capsys.readouterr().out


def test_folder_without_a_run_is_used_as_is(tiny_root, tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK))
    assert Path(res["run_dir"]) == tmp_path / "t"
    assert (tmp_path / "t" / "notes.txt").is_file()


def test_overwrite_replaces_the_old_run(tiny_root, tmp_path):
    train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK))
    (tmp_path / "t" / "old_marker.txt").write_text("old run")
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK), overwrite=True)
    assert Path(res["run_dir"]) == tmp_path / "t"
    assert not (tmp_path / "t" / "old_marker.txt").exists()
    assert not (tmp_path / "t-2").exists()
    assert len(_rows(tmp_path / "t")) == 1


def test_overwrite_keeps_the_old_run_when_the_start_fails(tiny_root, tmp_path):
    train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK))
    with pytest.raises(ValueError, match="Nothing to train"):
        train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK, "model.trainable=[none]"), overwrite=True)
    assert (tmp_path / "t" / "final.json").is_file()


@pytest.mark.parametrize("bad", [["data.root=/nonexistent/fgir-tiny"], ["model.name=no_such_model_xyz"],
                                 ["model.trainable=[none]"], ["data.test_split=no_such_split"]],
                         ids=["dataset-root", "model", "nothing-trainable", "test-split"])
def test_failed_start_leaves_no_folder(tiny_root, tmp_path, bad):
    out = tmp_path / "runs"
    with pytest.raises(Exception):  # noqa: B017 - each start fails its own way; only the folder matters
        train_mod.train(tiny_cfg(tiny_root, out, *bad))
    assert not out.exists() or not any(out.iterdir())


def test_resume_and_overwrite_exclude_each_other(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="exclude each other"):
        train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK), resume=str(tmp_path), overwrite=True)


def test_cli_overwrite_flag_replaces_the_folder(tiny_root, tmp_path, capsys):
    from fgir.cli.main import main

    args = ["data.name=tiny", f"data.root={tiny_root}", "data.img_size=32", "data.resize_ratio=1.0",
            "model.name=test_resnet", "optim.batch_size=6", "optim.warmup_epochs=0", f"run.output_dir={tmp_path}",
            "run.progress=false", "run.name=t", *QUICK]
    assert main(["train", *args]) == 0
    assert main(["train", "--overwrite", *args]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    assert main(["train", "--resume", str(tmp_path / "t"), "--overwrite"]) == 2


# ----------------------------------------------------------------------------- run name
def test_recipe_run_name_follows_an_overridden_model():
    cfg = load_config([RECIPE], ["model.name=lrnet14"])
    assert train_mod.run_name(cfg) == "cub100_lrnet14_s0"


def test_recipe_run_name_follows_an_overridden_dataset():
    cfg = load_config([RECIPE], ["data.name=fonts", "run.seed=3"])
    assert train_mod.run_name(cfg) == "fonts_resnet18_s3"


def test_recipe_run_name_kept_without_such_overrides():
    assert load_config([RECIPE], ["optim.lr=0.01", "model.name=resnet18"]).run.name == "cub100_resnet18_64"


def test_explicit_run_name_wins_over_the_derived_one():
    assert load_config([RECIPE], ["model.name=lrnet14", "run.name=mine"]).run.name == "mine"


# ----------------------------------------------------------------------------- resume and time
def test_resume_continues_time_s_and_totals_train_time(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "time", _Clock())
    train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK))
    monkeypatch.undo()
    run = tmp_path / "t"
    first = _rows(run)[0]["time_s"]
    assert first >= 100
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK, "optim.epochs=2"), resume=str(run))
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert first < rows[1]["time_s"] < first + 60  # continues from the first session, not from 0
    assert rows[1]["time_s"] <= res["train_time_s"] < first + 60
    assert json.loads((run / "final.json").read_text())["train_time_s"] == res["train_time_s"]


def test_resume_time_from_metrics_when_the_state_lacks_it(tiny_root, tmp_path, monkeypatch):
    save = train_mod.ckpt.save_training_state

    def without_time(run_dir, epoch, state):  # a training state as saved before it kept the time
        return save(run_dir, epoch, {k: v for k, v in state.items() if k != "time_s"})

    monkeypatch.setattr(train_mod.ckpt, "save_training_state", without_time)
    monkeypatch.setattr(train_mod, "time", _Clock())
    train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK))
    monkeypatch.undo()
    run = tmp_path / "t"
    first = _rows(run)[0]["time_s"]
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK, "optim.epochs=2"), resume=str(run))
    assert first < _rows(run)[1]["time_s"] <= res["train_time_s"]


def test_resume_of_a_finished_run_returns_its_final_json(tiny_root, tmp_path, capsys):
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1"))
    final = tmp_path / "t" / "final.json"
    before, mtime = final.read_bytes(), final.stat().st_mtime_ns
    capsys.readouterr()
    again = train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1"), resume=str(tmp_path / "t"))
    assert "is finished" in capsys.readouterr().out
    assert again == json.loads(before) and again["train_time_s"] == res["train_time_s"] > 0
    assert final.read_bytes() == before and final.stat().st_mtime_ns == mtime
    assert len(_rows(tmp_path / "t")) == 1


def test_resume_of_a_folder_without_checkpoint_starts_in_it(tiny_root, tmp_path):
    run = tmp_path / "t"
    run.mkdir()
    from fgir.config import save_config

    save_config(tiny_cfg(tiny_root, tmp_path, *QUICK), run / "config.yaml")  # killed before epoch 1 ended
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK), resume=str(run))
    assert Path(res["run_dir"]) == run and (run / "last.safetensors").is_file()
    assert [r["epoch"] for r in _rows(run)] == [1]


# ----------------------------------------------------------------------------- console
def test_start_header_names_folder_device_data_model_and_cost(tiny_root, tmp_path, capsys):
    train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1"))
    out = capsys.readouterr().out
    assert f"run      {tmp_path / 't'}  (new run)" in out
    assert "device   cpu" in out
    assert "data     tiny: 3 classes, 32 px; images train 18, val 6, test 9" in out
    assert "model    test_resnet (task classification): " in out and " GMACs at 32 px" in out
    assert "deployed model parameters: " in out  # the trainable census


def test_mac_counter_failure_prints_na_with_the_reason(tiny_root, tmp_path, capsys, monkeypatch):
    def broken(model, img_size):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(train_mod, "count_macs", broken)
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, *QUICK))
    assert "GMACs n/a (RuntimeError: cannot trace this) at 32 px" in capsys.readouterr().out
    assert res["epochs"] == 1


def test_epoch_lines_print_with_progress_off(tiny_root, tmp_path, capsys):
    train_mod.train(tiny_cfg(tiny_root, tmp_path, "run.progress=false", "data.test_split="))
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" | ")[0] for ln in lines if ln.startswith("epoch ")] == ["epoch 1", "epoch 2"]


def test_no_carriage_returns_when_not_a_terminal(tiny_root, tmp_path, capsys):
    train_mod.train(tiny_cfg(tiny_root, tmp_path, "run.progress=true"))
    cap = capsys.readouterr()
    assert "\r" not in cap.out and "\r" not in cap.err
    assert "epoch 2 |" in cap.out


def test_bars_follow_the_terminal(monkeypatch):
    cfg = load_config(overrides=["run.progress=true"])
    monkeypatch.setattr(train_mod.sys, "stderr", types.SimpleNamespace(isatty=lambda: True))
    assert train_mod._bars(cfg)
    monkeypatch.setattr(train_mod.sys, "stderr", types.SimpleNamespace(isatty=lambda: False))
    assert not train_mod._bars(cfg)


# ----------------------------------------------------------------------------- curves
def test_curves_png_redrawn_after_every_epoch(tiny_root, tmp_path, monkeypatch):
    import fgir.report.plots as plots

    calls = []
    real = plots.plot_training_curves

    def spy(jsonl, path, *a, **kw):
        calls.append(len(_rows(Path(jsonl).parent)))
        return real(jsonl, path, *a, **kw)

    monkeypatch.setattr(plots, "plot_training_curves", spy)
    train_mod.train(tiny_cfg(tiny_root, tmp_path, "data.test_split=", "optim.epochs=2"))
    assert calls == [1, 2]
    assert (tmp_path / "t" / "curves.png").stat().st_size > 0


def test_plot_failure_warns_once_and_training_goes_on(tiny_root, tmp_path, monkeypatch, capsys):
    import fgir.report.plots as plots

    def broken(*a, **kw):
        raise OSError("disk says no")

    monkeypatch.setattr(plots, "plot_training_curves", broken)
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, "data.test_split=", "optim.epochs=2"))
    out = capsys.readouterr().out
    assert out.count("curves.png not drawn (OSError: disk says no)") == 1
    assert res["epochs"] == 2 and (tmp_path / "t" / "last.safetensors").is_file()


class _OtherWriter:
    """Another process holding the run's lock (a concurrent `fgir train` of the same folder)."""

    def __init__(self, run: Path):
        import subprocess
        import sys

        code = ("import fcntl, sys, time\nf = open(sys.argv[1], 'a+')\n"
                "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n"
                "    print('busy', flush=True)\n    sys.exit(1)\n"
                "print('locked', flush=True)\ntime.sleep(60)\n")
        self.p = subprocess.Popen([sys.executable, "-c", code, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "locked"

    def stop(self):
        self.p.kill()
        self.p.wait()


def test_second_writer_of_a_run_fails_at_once(tmp_path):
    from fgir.engine.train import RunLock

    run = tmp_path / "r"
    run.mkdir()
    other = _OtherWriter(run)
    try:
        with pytest.raises(RuntimeError, match="being written by another fgir process"):
            RunLock(run)
    finally:
        other.stop()
    RunLock(run).release()  # free again once the other writer is gone


def test_resume_while_another_process_writes_the_run_is_refused(tiny_root, tmp_path):
    from fgir.engine.train import train

    res = train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1"))
    other = _OtherWriter(Path(res["run_dir"]))
    try:
        with pytest.raises(RuntimeError, match="being written by another fgir process"):
            train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=2"), resume=res["run_dir"])
    finally:
        other.stop()


def test_resume_with_a_changed_lr_is_refused_naming_the_key(tiny_root, tmp_path):
    from fgir.config import ConfigError
    from fgir.engine.train import train

    res = train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    with pytest.raises(ConfigError, match=r"optim\.lr 0\.01 -> 0\.05.*--resume-override"):
        train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=2", "optim.lr=0.05", "data.test_split="),
              resume=res["run_dir"])


def test_resume_override_records_what_changed(tiny_root, tmp_path):
    from fgir.engine.train import train

    res = train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=2", "optim.lr=0.05", "data.test_split="),
          resume=res["run_dir"], resume_override=True)
    hist = [json.loads(x) for x in (Path(res["run_dir"]) / "resume_history.jsonl").read_text().splitlines()]
    assert hist[0]["changed"]["optim.lr"] == [0.01, 0.05] and hist[0]["epoch"] == 1
    assert load_config([str(Path(res["run_dir"]) / "config.yaml")]).optim.lr == 0.05


def test_extending_epochs_replans_the_schedule(tiny_root, tmp_path):
    from fgir.engine.train import train

    res = train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=2", "data.test_split="))
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=4", "data.test_split="), resume=res["run_dir"])
    lrs = [json.loads(x)["lr"] for x in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 4 and lrs[2] > lrs[1]  # the 4-epoch cosine sits above the old one's end
