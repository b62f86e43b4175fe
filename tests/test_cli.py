
import sys

import pytest
from conftest import tiny_cfg

from fgir.cli.main import build_parser, main
from fgir.engine.train import train


@pytest.mark.parametrize("cmd", [[], ["train"], ["eval"], ["predict"], ["cost"], ["data", "prepare"], ["list"],
                                 ["demo"]])
def test_help_exits_zero(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(cmd + ["--help"])
    assert e.value.code == 0
    assert "usage: fgir" in capsys.readouterr().out


def test_unknown_config_key_is_a_clear_error(capsys):
    assert main(["train", "optim.lrr=0.1"]) == 2
    assert "Unknown config key 'optim.lrr'. Did you mean: lr?" in capsys.readouterr().err


def test_unknown_model_lists_matches(capsys):
    assert main(["cost", "resnet81"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_missing_dataset_root_is_explained(capsys, monkeypatch):
    monkeypatch.delenv("FGIR_DATA", raising=False)
    assert main(["train", "data.name=cub"]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and "FGIR_DATA" in err


def test_cost_prints_params_and_macs(capsys):
    assert main(["cost", "resnet18", "--img-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "11,279,112" in out and "0.5931 GMACs" in out


def test_list_datasets_includes_catalog(capsys):
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "cub100" in out and "fonts" in out


def test_eval_and_predict_on_own_checkpoint(tiny_root, tmp_path, capsys):
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    run = tmp_path / "t"
    assert main(["eval", str(run), "--split", "test"]) == 0
    assert (run / "eval_test" / "test_metrics.json").is_file()
    out_csv = tmp_path / "p.csv"
    assert main(["predict", str(run / "last.safetensors"), str(tiny_root / "images" / "blue_bar"), "--topk", "2",
                 "--out", str(out_csv)]) == 0
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("image,class_name1,class_id1,prob1,class_name2")
    assert len(lines) == 1 + 11  # every image of the class folder


def test_eval_rejects_checkpoint_of_other_class_count(tiny_root, tmp_path, capsys):
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    from fgir.engine.checkpoint import CheckpointError, load_weights_into, read_tensors
    from fgir.models import create_model

    m = create_model("test_resnet", num_classes=5)
    with pytest.raises(CheckpointError, match=r"checkpoint \(3,.*model \(5,"):
        load_weights_into(m, read_tensors(tmp_path / "t" / "last.safetensors"), "last.safetensors")


def test_predict_missing_image_is_named(tiny_root, tmp_path, capsys):
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split=", "data.val_split="))
    assert main(["predict", str(tmp_path / "t"), str(tmp_path / "nope.jpg")]) == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_config_explain_lists_documented_keys(capsys):
    assert main(["config", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr = 0.002" in out and "task.temperature = 0.7" in out
    assert "model.plugins[i].num_maps = 32" in out and "Number M of part-attention maps" in out


def test_fgir_warnings_print_as_one_line_without_the_source_line():
    import subprocess

    r = subprocess.run([sys.executable, "-m", "fgir.cli.main", "cost", "vitfs_nano", "--plugins", "glsim",
                        "--img-size", "64", "--num-classes", "5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "no class token" in ln]
    assert len(warn) == 1 and warn[0].startswith("fgir: warning: glsim on ViTFS")
    assert "warnings.warn" not in r.stderr and ".py:" not in r.stderr
