"""CAL and TGDA tasks (tgda.md §3.2, §4-5; checklist 21-23)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TinyNet
from torch.testing import assert_close

from fgir.config import Config, ConfigError, load_config
from fgir.engine.distill import (
    CALTask,
    TGDAConfig,
    TGDATask,
    build_cal_task,
    build_tgda_task,
    cal_loss,
    kd_loss,
)
from fgir.models.plugins.cal import CALConfig, CALModel, apply_cal
from fgir.registry import TASKS

K = 3


class LinearStudent(nn.Module):
    """BN-free student: its output for an input does not depend on the rest of the batch."""

    def __init__(self, num_classes: int = K):
        super().__init__()
        self.num_classes = num_classes
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


def teacher(num_classes: int = K) -> CALModel:
    return apply_cal(TinyNet(), CALConfig(num_maps=4), num_classes=num_classes)


def batch(b: int = 4, size: int = 32, num_classes: int = K) -> dict:
    y = torch.arange(b) % num_classes
    return {"image": torch.randn(b, 3, size, size), "target": y, "label": y}


def tgda(student=None, t=None, **cfg) -> TGDATask:
    return TGDATask(student or TinyNet(K), t or teacher(), TGDAConfig(**cfg))


# ----------------------------------------------------------------------------- KD loss
def test_kd_loss_hand_computed_at_t2():
    z = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    t = torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.0, 4.0]])
    T = 2.0
    total = 0.0
    for zi, ti in zip(z.tolist(), t.tolist()):
        q = [math.exp(v / T) for v in ti]
        q = [v / sum(q) for v in q]
        s = [math.exp(v / T) for v in zi]
        s = [v / sum(s) for v in s]
        total += sum(qk * (math.log(qk) - math.log(sk)) for qk, sk in zip(q, s))
    expected = T ** 2 * total / (2 * z.shape[0])
    assert_close(kd_loss([z], [t], T), torch.tensor(expected), atol=1e-6, rtol=0)


def test_kd_loss_default_weight_is_t2_over_2b_per_image_across_views():
    zs, ts = [torch.randn(4, 5) for _ in range(3)], [torch.randn(4, 5) for _ in range(3)]
    T = 0.7
    kl = sum(F.kl_div(F.log_softmax(z / T, 1), F.softmax(t / T, 1), reduction="sum") for z, t in zip(zs, ts))
    assert_close(kd_loss(zs, ts, T), T ** 2 * kl / (2 * 4), atol=1e-6, rtol=1e-6)


def test_kd_loss_per_view_weights():
    zs, ts = [torch.randn(2, 4) for _ in range(2)], [torch.randn(2, 4) for _ in range(2)]
    single = [kd_loss([z], [t], 1.5, [1.0]) for z, t in zip(zs, ts)]
    assert_close(kd_loss(zs, ts, 1.5, [2.0, 0.0]), 2.0 * single[0], atol=1e-6, rtol=1e-6)


def test_kd_loss_is_zero_when_student_equals_teacher():
    z = torch.randn(3, 4)
    assert_close(kd_loss(z, z.clone(), 2.0), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_kd_loss_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), 0.0)


# ----------------------------------------------------------------------------- TGDA loss and views
def test_tgda_loss_equals_ce_plus_t2_sum_kl_over_2b():
    """Checklist 21: L = CE(z_raw, y) + T²·Σ_{3B views} KL(q‖s)/(2B), CE only on the raw view."""
    task = tgda(LinearStudent(), temperature=2.0).train()
    b = batch()
    torch.manual_seed(5)
    out = task(b)
    torch.manual_seed(5)
    with torch.no_grad():
        t_raw, x_aug = task.teacher_views(b["image"])
        t_all = torch.cat([t_raw, task.teacher(x_aug)])
        z_all = task.model(torch.cat([b["image"], x_aug]))
    kl = F.kl_div(F.log_softmax(z_all / 2.0, 1), F.softmax(t_all / 2.0, 1), reduction="sum")
    ce = F.cross_entropy(z_all[:4], b["target"])
    assert x_aug.shape[0] == 8
    assert_close(out["loss"].detach(), ce + 4.0 * kl / (2 * 4), atol=1e-6, rtol=1e-6)


def test_ce_sees_only_the_raw_view():
    task = tgda(LinearStudent(), w_kd=0.0).train()
    b = batch()
    out = task(b)
    assert_close(out["loss"], F.cross_entropy(task.model(b["image"]), b["target"]), atol=1e-6, rtol=1e-6)
    assert_close(out["loss_ce"], out["loss"].detach(), atol=0, rtol=0)


def test_student_gets_s_s_tensors_for_all_3b_views():
    """Checklist 23: S_t=448, S_s=128 -> the student sees only 128 x 128 inputs, 3B in total."""
    shapes = []
    student = TinyNet(K)
    student.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
    task = tgda(student, teacher_img_size=448, student_img_size=128).train()
    out = task(batch(b=2, size=448))
    assert shapes == [(2, 3, 128, 128), (4, 3, 128, 128)]
    assert out["logits"].shape == (2, K)


def test_mix_view_adds_a_third_augmented_view():
    shapes = []
    student = TinyNet(K)
    student.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
    tgda(student, views=["crop", "mix", "drop"]).train()(batch(b=4))
    assert shapes == [(4, 3, 32, 32), (12, 3, 32, 32)]


def test_empty_views_is_plain_kd_from_any_classifier():
    shapes = []
    student = TinyNet(K)
    student.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
    out = tgda(student, TinyNet(K), views=[]).train()(batch())
    assert shapes == [(4, 3, 32, 32)] and torch.isfinite(out["loss"])


def test_student_downsampling_is_bicubic_without_antialias_by_default():
    task = tgda(student_img_size=16)
    x = torch.randn(2, 3, 32, 32)
    expected = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False, antialias=False)
    assert_close(task.to_student(x), expected, atol=0, rtol=0)


def test_student_renormalisation_when_stats_differ():
    task = TGDATask(TinyNet(K), teacher(), TGDAConfig(), teacher_mean=(0.5, 0.5, 0.5),
                    teacher_std=(0.5, 0.5, 0.5), student_mean=(0.0, 0.0, 0.0), student_std=(1.0, 1.0, 1.0))
    x = torch.randn(1, 3, 8, 8)
    assert_close(task.to_student(x), x * 0.5 + 0.5, atol=1e-6, rtol=0)
    assert task.input_spec().mean == (0.5, 0.5, 0.5)


def test_eval_forward_uses_the_student_alone():
    t = teacher()
    calls = []
    t.register_forward_pre_hook(lambda m, a: calls.append(1))
    task = tgda(t=t, student_img_size=16).eval()
    out = task(batch())
    assert not calls and out["loss_kd"] == 0 and out["logits"].shape == (4, K)


# ----------------------------------------------------------------------------- frozen teacher
def _step(task: TGDATask, b: dict) -> None:
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.1)
    opt.zero_grad()
    task(b)["loss"].backward()
    opt.step()


def test_teacher_gets_no_gradient_and_is_unchanged_after_step():
    """Checklist 22 with bn_mode=eval: params, BN running stats and centres unchanged."""
    task = tgda().train()
    before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    _step(task, batch())
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in task.teacher.state_dict().items())


def test_every_student_parameter_gets_a_gradient():
    task = tgda().train()
    task(batch())["loss"].backward()
    assert [n for n, p in task.model.named_parameters() if p.grad is None] == []
    assert {id(p) for p in task.trainable_parameters()} == {id(p) for p in task.model.parameters()}


def test_teacher_stays_in_eval_when_task_trains():
    task = tgda(bn_mode="eval")
    task.train()
    assert not task.teacher.training and task.model.training
    assert all(not p.requires_grad for p in task.teacher.parameters())


def test_bn_mode_train_puts_teacher_bn_in_train_mode():
    task = tgda(bn_mode="train").train()
    bn = task.teacher.head.attention[1]
    before = bn.running_mean.clone()
    _step(task, batch())
    assert task.teacher.training and not torch.equal(before, bn.running_mean)
    assert all(p.grad is None for p in task.teacher.parameters())


def test_one_tgda_step_lowers_the_loss():
    task = tgda(temperature=2.0).train()
    b = batch()
    opt = torch.optim.AdamW(task.trainable_parameters(), lr=1e-2)

    def loss_at_seed():
        torch.manual_seed(7)
        return task(b)["loss"]

    first = loss_at_seed()
    for _ in range(5):
        opt.zero_grad()
        loss_at_seed().backward()
        opt.step()
    assert loss_at_seed().item() < first.item()


# ----------------------------------------------------------------------------- errors
def test_temperature_must_be_positive_and_names_key():
    with pytest.raises(ConfigError, match="task.temperature"):
        tgda(temperature=0.0)


def test_negative_kd_weight_names_key():
    with pytest.raises(ConfigError, match="task.w_kd"):
        tgda(w_kd=-1.0)


def test_view_weights_length_names_key():
    with pytest.raises(ConfigError, match="task.view_weights"):
        tgda(view_weights=[1.0, 1.0])


def test_teacher_for_another_class_count_names_both_counts():
    with pytest.raises(ValueError, match="5 classes.*3"):
        TGDATask(TinyNet(3), teacher(5), TGDAConfig())


def test_incompatible_class_tables_raise():
    with pytest.raises(ValueError, match="class table"):
        TGDATask(TinyNet(3), teacher(3), TGDAConfig(),
                 teacher_classes=["a", "b", "c"], student_classes=["a", "x", "c"])


def test_views_need_a_cal_teacher():
    with pytest.raises(TypeError, match="views=\\[\\]"):
        tgda(t=TinyNet(K))


def test_batch_at_wrong_teacher_size_raises():
    with pytest.raises(ValueError, match="S_t=64"):
        tgda(teacher_img_size=64).train()(batch(size=32))


def test_missing_teacher_checkpoint_names_key(tmp_path):
    cfg = load_config(overrides=["task.name=tgda", f"task.teacher={tmp_path / 'nope.safetensors'}"])
    with pytest.raises(FileNotFoundError, match="task.teacher"):
        build_tgda_task(cfg, TinyNet(K), K)


def test_empty_teacher_path_names_key():
    with pytest.raises(ConfigError, match="task.teacher is empty"):
        build_tgda_task(load_config(overrides=["task.name=tgda"]), TinyNet(K), K)


def test_config_validation_of_cal_and_tgda_keys():
    with pytest.raises(ConfigError, match="task.crop_threshold"):
        load_config(overrides=["task.name=tgda", "task.crop_threshold=[0.6,0.4]"])
    with pytest.raises(ConfigError, match=r"model.plugins\[0\].num_maps must be >= 1"):
        load_config(overrides=["model.plugins=[{name: cal, num_maps: 0}]", "task.name=cal"])
    with pytest.raises(ConfigError, match="optim.batch_size must be even"):
        load_config(overrides=["task.name=tgda", "task.views=[crop,mix]", "optim.batch_size=7"])


# ----------------------------------------------------------------------------- builders and CAL task
def test_tasks_are_registered_with_their_configs():
    assert TASKS.get("cal") is build_cal_task and TASKS.get("tgda") is build_tgda_task
    assert TASKS.meta("tgda")["config"] is TGDAConfig
    cfg = load_config(overrides=["task.name=tgda"])
    assert isinstance(cfg.task, TGDAConfig) and cfg.task.temperature == 0.7


def test_cal_task_needs_the_cal_plugin():
    with pytest.raises(ConfigError, match=r"model.plugins=\[\{name: cal\}\]"):
        load_config(overrides=["task.name=cal"])
    with pytest.raises(ConfigError, match="no CAL head"):
        build_cal_task(Config(), TinyNet(), K)


def test_builders_wrap_models():
    cal_task = build_cal_task(Config(), teacher(), K)
    assert isinstance(cal_task.model, CALModel) and cal_task.model.num_classes == K
    cfg = Config()
    task = build_tgda_task(load_config(overrides=["task.name=tgda"]), TinyNet(K), K, teacher=teacher())
    assert not task.teacher.training and task.label_smoothing == cfg.optim.label_smoothing


def test_cal_loss_formula():
    b = 2
    raw, aug, eff = torch.randn(b, K), torch.randn(2 * b, K), torch.randn(3 * b, K)
    feats, cents = torch.randn(b, 6), torch.randn(b, 6)
    y = torch.tensor([0, 2])
    out = cal_loss(raw, aug, eff, feats, cents, y)
    expected = (F.cross_entropy(raw, y) / 3 + 2 / 3 * F.cross_entropy(aug, y.repeat(2))
                + F.cross_entropy(eff, y.repeat(3)) + ((feats - cents) ** 2).sum() / b)
    assert_close(out["loss"], expected, atol=1e-6, rtol=1e-6)


def test_cal_task_outputs_and_train_prediction():
    task = CALTask(teacher()).train()
    out = task(batch())
    assert out["logits"].shape == (4, K) and torch.isfinite(out["loss"])
    assert set(out) >= {"loss", "logits", "loss_raw", "loss_aug", "loss_eff", "loss_center"}
    assert task.model.head.centers.abs().sum() > 0


def test_cal_task_loss_decreases():
    task = CALTask(teacher(), label_smoothing=0.0).train()
    b = batch()
    opt = torch.optim.SGD(task.trainable_parameters(), lr=1e-3)

    def loss_at_seed():
        torch.manual_seed(3)
        return task(b)["loss"]

    first = loss_at_seed()
    for _ in range(6):
        opt.zero_grad()
        loss_at_seed().backward()
        opt.step()
    assert torch.isfinite(first) and loss_at_seed().item() < first.item()


def test_cal_task_eval_is_single_view_ce():
    task = CALTask(teacher()).eval()
    b = batch()
    out = task(b)
    assert_close(out["loss"], F.cross_entropy(task.model(b["image"]), b["target"]), atol=1e-6, rtol=1e-6)


def _save_cal_teacher(tmp_path, num_classes: int, class_names: list[str]):
    from fgir.engine.build import build_model
    from fgir.engine.checkpoint import checkpoint_meta, save_weights

    cfg = load_config(overrides=["task.name=cal", "model.name=resnet18", "model.plugins=[{name: cal, num_maps: 2}]",
                                 "data.img_size=32"])
    model = build_model(cfg, num_classes)
    meta = checkpoint_meta(cfg, num_classes, class_names, epoch=1, step=1, mean=(0.5,) * 3, std=(0.25,) * 3)
    return save_weights(model, tmp_path / "last.safetensors", meta), model


def test_teacher_loads_from_a_cal_checkpoint(tmp_path):
    path, saved = _save_cal_teacher(tmp_path, K, ["a", "b", "c"])
    cfg = load_config(overrides=["task.name=tgda", f"task.teacher={tmp_path}", "data.img_size=32"])
    task = build_tgda_task(cfg, TinyNet(K), K, class_names=["a", "b", "c"])
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(task.teacher, CALModel) and task.input_spec().mean == (0.5, 0.5, 0.5)
    assert_close(task.teacher(x), saved.eval()(x), atol=1e-5, rtol=1e-5)


def test_teacher_checkpoint_for_another_class_count_names_both_counts(tmp_path):
    _save_cal_teacher(tmp_path, 5, list("abcde"))
    cfg = load_config(overrides=["task.name=tgda", f"task.teacher={tmp_path}"])
    with pytest.raises(ValueError, match="5 classes.*has 3"):
        build_tgda_task(cfg, TinyNet(K), K)


def test_cached_teacher_logits_match_and_are_computed_once():
    task = tgda(views=[], cache_teacher=True).train()
    calls = []
    task.teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    b = batch()
    b["index"] = torch.arange(b["image"].shape[0])
    with torch.no_grad():
        expected = task.teacher(b["image"])
    calls.clear()
    cached, _ = task._cached_teacher(b["image"], b["index"])
    task._cached_teacher(b["image"], b["index"])
    torch.testing.assert_close(cached, expected, rtol=1e-6, atol=1e-6)
    assert calls == [b["image"].shape[0]]


def test_cache_teacher_refused_with_random_augmentation():
    with pytest.raises(ConfigError, match="cache_teacher=true needs identical teacher inputs.*data.hflip"):
        load_config(overrides=["task.name=tgda", "task.views=[]", "task.cache_teacher=true"])
