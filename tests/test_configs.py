"""Every YAML in configs/ resolves and validates; the TGDA recipes match the paper's settings."""

from pathlib import Path

import pytest

from fgir.config import load_config
from fgir.data.catalog import get_spec
from fgir.data.transforms import stored_size
from fgir.models.factory import model_names

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_resolves(path):
    cfg = load_config([str(path)])
    assert cfg.data.name == "fonts" or get_spec(cfg.data.name).num_classes > 0
    base = cfg.model.name.split(".")[0]
    assert base in model_names(), cfg.model.name


def test_tgda_student_recipe_matches_paper():
    cfg = load_config([str(Path(CONFIGS[0]).parents[1] / "recipes" / "tgda_cub_lrnet14_128.yaml")])
    o = cfg.optim
    assert (o.opt, o.lr, o.weight_decay, o.batch_size, o.epochs) == ("adamw", 5e-4, 0.05, 8, 800)
    assert (o.sched, o.warmup_steps, o.warmup_lr, o.min_lr) == ("cosine", 500, 1e-6, 1e-5)
    assert stored_size(cfg.data.img_size, cfg.data.resize_ratio) == 600
    assert stored_size(cfg.task.student_img_size, cfg.data.resize_ratio) == 171
    assert stored_size(224, cfg.data.resize_ratio) == 300
    assert (cfg.task.temperature, cfg.task.w_ce, cfg.task.w_kd) == (0.7, 1.0, 1.0)
    assert cfg.data.train_split == "train_val" and cfg.data.test_split == "test"
