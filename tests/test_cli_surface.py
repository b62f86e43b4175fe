"""The CLI surface: light --help, option help, --explain with resolved values, list filters,
method add-ons that change only the method."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fgir.cli.main import build_parser, main
from fgir.config import undocumented_keys

ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_torch():
    code = ("import sys\nfrom fgir.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'timm', 'numpy', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_every_option_has_help():
    missing = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, f"{path} {name}")
            elif not a.help and not isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
                missing.append(f"{path} {a.dest}")

    walk(build_parser(), "fgir")
    assert not missing


def test_every_config_key_is_documented():
    assert undocumented_keys() == []


def test_explain_shows_resolved_values_and_sources(capsys):
    recipe = "configs/recipes/cub100_resnet18_64.yaml"
    assert main(["config", "-c", str(ROOT / recipe), "--explain", "optim.lr=0.01",
                 "model.plugins=[{name: cal, num_maps: 8}]", "task.name=cal"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "optim.lr = 0.01    # override, default 0.002" in lines
    assert "optim.epochs = 30    # " + str(ROOT / recipe) in lines
    assert "data.root = ''    # default" in lines
    assert "model.plugins.0.num_maps = 8    # override, default 32" in lines
    assert "model.plugins.0.center_beta = 0.05    # default" in lines
    assert "task.name = 'cal'    # override" in lines


def test_explain_piped_to_head_exits_cleanly():
    r = subprocess.run(f"{sys.executable} -m fgir.cli.main config --explain | head -n 1", shell=True,
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("model.name = ") and "Traceback" not in r.stderr


def test_list_datasets_filter(capsys):
    assert main(["list", "datasets", "--filter", "soy"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names and all("soy" in n for n in names) and "soyageing" in names


def test_list_filter_without_match_is_an_error(capsys):
    assert main(["list", "datasets", "--filter", "no-such-set"]) == 2
    assert "No dataset matches --filter 'no-such-set'" in capsys.readouterr().err


def test_list_pretrained_tags(capsys):
    assert main(["list", "models", "--pretrained", "--filter", "resnet101.*"]) == 0
    assert "resnet101.tv_in1k" in capsys.readouterr().out.split()


def test_cost_prints_a_header_with_its_settings(capsys):
    assert main(["cost", "lrnet14", "--img-size", "32", "--num-classes", "10"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("# fgir cost: 10-class head") and "MACs" in first


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs" / "methods").glob("*.yaml")))
def test_method_files_change_only_the_method(name):
    from fgir.config import read_yaml

    data = read_yaml(ROOT / "configs" / "methods" / name)
    assert set(data) <= {"task", "model"}, name
    assert set(data.get("model", {})) <= {"plugins", "trainable", "inference"}, name


def test_method_addon_keeps_the_recipe_settings():
    from fgir.config import load_config

    cpu = ROOT / "configs/recipes/cpu/cub100_student_lrnet14_64.yaml"
    base = load_config([str(cpu)])
    cfg = load_config([str(cpu), str(ROOT / "configs/methods/tgda.yaml")], ["task.teacher=x"])
    assert cfg.task.name == "tgda" and cfg.task.temperature == 0.7
    assert (cfg.data, cfg.optim, cfg.model.name) == (base.data, base.optim, base.model.name)


def test_recipe_bases_are_full_recipes():
    data = yaml.safe_load((ROOT / "configs/recipes/base/tgda_paper_448.yaml").read_text())
    assert data["optim"]["epochs"] == 800 and data["data"]["img_size"] == 448


def test_viz_lists_the_registered_kinds_with_help():
    from fgir.registry import VIZ

    parser = build_parser(["viz"])
    missing = []
    for a in parser._subparsers._group_actions[0].choices["viz"]._actions:
        if isinstance(a, argparse._SubParsersAction):
            assert set(a.choices) == set(VIZ.names()) and {"glsim", "rollout"} <= set(a.choices)
            for name, sub in a.choices.items():
                missing += [f"viz {name} {x.dest}" for x in sub._actions
                            if not x.help and not isinstance(x, argparse._HelpAction)]
    assert not missing


def test_viz_of_a_model_it_does_not_apply_to_is_one_line(capsys, tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    assert main(["viz", "glsim", str(tmp_path / "missing_run"), str(img)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fgir: error:")
