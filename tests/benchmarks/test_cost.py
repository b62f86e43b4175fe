from pathlib import Path

from fgir.benchmarks.cost import model_cost
from fgir.benchmarks.flops import count_macs, count_params
from fgir.config import load_config
from fgir.engine.build import build_model

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"


def test_tgda_student_cost_counts_the_student_alone():
    """Checklist 25: the deployable TGDA model is the student, counted at its own 128 px."""
    cfg = load_config([str(RECIPES / "tgda_cub_lrnet14_128.yaml")])
    student = build_model(cfg, 200)
    assert count_params(student) == 5_135_720
    assert abs(count_macs(student, cfg.task.student_img_size) / 1e9 - 0.5713) <= 0.0005


def test_model_cost_wraps_cal_head():
    row = model_cost("resnet18", 64, num_classes=10, plugins=["cal"])
    trunk = 11_176_512  # resnet18 without its classifier
    assert row["params"] == trunk + 512 * 32 + 2 * 32 + 32 * 512 * 10
    assert row["gmacs"] > 0
