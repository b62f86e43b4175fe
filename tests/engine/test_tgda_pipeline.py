"""TGDA through the real loop: train a CAL teacher, distil a student at a lower resolution,
then evaluate and predict with the student checkpoint alone."""

import json

import pytest
import torch
from conftest import tiny_cfg

from fgir.cli.main import main
from fgir.engine.checkpoint import load_model
from fgir.engine.train import train


@pytest.fixture(scope="module")
def teacher_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(tiny_cfg(tiny_root, out, "task.name=cal", "model.plugins=[{name: cal, num_maps: 4}]",
                   "optim.label_smoothing=0",
                   "run.name=teacher", "data.test_split="))
    return out / "teacher"


def test_student_checkpoint_is_the_student_at_its_size(tiny_root, tmp_path, teacher_run):
    res = train(tiny_cfg(tiny_root, tmp_path, "task.name=tgda", f"task.teacher={teacher_run}",
                         "task.student_img_size=16", "model.name=lrnet14"))
    student = load_model(tmp_path / "t" / "last.safetensors")
    meta = student.fgir_meta
    assert type(student).__name__ == "LRNet"
    assert (meta["img_size"], meta["model_img_size"]) == (32, 16)
    assert student(torch.rand(1, 3, 16, 16)).shape == (1, 3)
    assert 0 <= res["test_top1"] <= 100


def test_student_eval_and_predict_resize_inputs(tiny_root, tmp_path, teacher_run, capsys):
    train(tiny_cfg(tiny_root, tmp_path, "task.name=tgda", f"task.teacher={teacher_run}",
                   "task.student_img_size=16", "model.name=lrnet14", "data.test_split="))
    assert main(["eval", str(tmp_path / "t"), "--split", "test"]) == 0
    summary = json.loads((tmp_path / "t" / "eval_test" / "test_metrics.json").read_text())
    assert summary["num_images"] == 9
    assert main(["predict", str(tmp_path / "t"), str(tiny_root / "images" / "red_disc" / "test_000.png")]) == 0


def test_teacher_tta_eval(tiny_root, teacher_run):
    assert main(["eval", str(teacher_run), "--split", "val", "--tta"]) == 0
    assert (teacher_run / "eval_val_tta" / "val_metrics.json").is_file()


def test_teacher_of_other_dataset_class_count_is_refused(tiny_root, tmp_path, teacher_run):
    import shutil

    from fgir.data.manifest import write_class_table
    root = tmp_path / "four"
    shutil.copytree(tiny_root, root)
    write_class_table(root / "classid_classname.csv", ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="4.*3|3.*4"):
        train(tiny_cfg(root, tmp_path, "task.name=tgda", f"task.teacher={teacher_run}"))


def test_plain_kd_with_cached_teacher_trains(tiny_root, tmp_path, teacher_run):
    res = train(tiny_cfg(tiny_root, tmp_path, "task.name=tgda", f"task.teacher={teacher_run}",
                         "task.views=[]", "task.cache_teacher=true", "data.hflip=false"))
    assert 0 <= res["test_top1"] <= 100
