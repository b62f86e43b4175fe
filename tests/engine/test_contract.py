"""Task contract, trainable control in the loop, and the engine repairs of the plug-in-layer issue."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn
from conftest import TinyNet, tiny_cfg
from torch.testing import assert_close

from fgir.cli.main import main
from fgir.config import ConfigError, load_config
from fgir.engine import checkpoint as ckpt
from fgir.engine.build import build_model, build_task
from fgir.engine.classification import ClassificationTask
from fgir.engine.distill import TGDAConfig, TGDATask
from fgir.engine.task import IOSpec
from fgir.engine.train import build_optimizer, match_state_layout, seed_everything, train, use_channels_last
from fgir.models import create_model
from fgir.models.plugins.cal import CALConfig, apply_cal


# ----------------------------------------------------------------------------- contract
def test_classification_task_deploys_its_model_with_the_batch_format(tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root, tmp_path, "data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]")
    task = build_task(cfg, build_model(cfg, 3), 3)
    dep = task.deploy_spec()
    assert task.input_spec() == IOSpec(32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert dep.model is task.model and (dep.img_size, dep.mean, dep.std) == (32, (0.5,) * 3, (0.2,) * 3)


def test_tgda_task_deploys_the_student_at_its_size():
    teacher = apply_cal(TinyNet(), CALConfig(num_maps=2), num_classes=3)
    task = TGDATask(TinyNet(3), teacher, TGDAConfig(student_img_size=16), img_size=32,
                    teacher_mean=(0.5,) * 3, teacher_std=(0.5,) * 3, student_mean=(0.4,) * 3, student_std=(0.2,) * 3)
    dep = task.deploy_spec()
    assert task.input_spec() == IOSpec(32, (0.5,) * 3, (0.5,) * 3)
    assert dep.model is task.model and (dep.img_size, dep.mean, dep.std) == (16, (0.4,) * 3, (0.2,) * 3)


def test_predict_uses_the_given_model_copy():
    task = ClassificationTask(TinyNet(3)).eval()
    other = TinyNet(3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(task.predict(x, model=other), other(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- optimizer and freezing
class _TaskWithOwnParameter(ClassificationTask):
    def __init__(self, model):
        super().__init__(model)
        self.temperature = nn.Parameter(torch.ones(()))


def test_optimizer_holds_every_trainable_parameter_of_the_task():
    cfg = load_config()
    model = create_model("test_resnet", num_classes=3)
    model.fc.weight.requires_grad_(False)
    task = _TaskWithOwnParameter(model)
    opt = build_optimizer(cfg, task)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in task.parameters() if p.requires_grad}
    assert id(task.temperature) in in_opt and id(model.fc.weight) not in in_opt


def test_norms_and_biases_get_no_weight_decay():
    cfg = load_config(overrides=["optim.weight_decay=0.05"])
    task = ClassificationTask(create_model("test_resnet", num_classes=3))
    opt = build_optimizer(cfg, task)
    no_wd = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    for n, p in task.named_parameters():
        assert (id(p) in no_wd) == (p.ndim <= 1), n


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_fused_optimizer_is_used_where_torch_has_one(opt):
    cfg = load_config(overrides=[f"optim.opt={opt}"])
    optimizer = build_optimizer(cfg, ClassificationTask(create_model("test_resnet", num_classes=3)))
    assert all(g["fused"] for g in optimizer.param_groups)


def test_optimizer_without_a_fused_kernel_ignores_optim_fused():
    cfg = load_config(overrides=["optim.opt=lamb"])
    optimizer = build_optimizer(cfg, ClassificationTask(create_model("test_resnet", num_classes=3)))
    assert "fused" not in optimizer.defaults


@pytest.mark.parametrize("opt", ["adamw", "momentum"])
def test_fused_and_looped_optimizers_make_the_same_updates(opt):
    def trained(fused: bool) -> dict:
        torch.manual_seed(0)
        task = ClassificationTask(create_model("test_resnet", num_classes=3))
        cfg = load_config(overrides=[f"optim.opt={opt}", f"optim.fused={str(fused).lower()}"])
        optimizer = build_optimizer(cfg, task)
        x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0])
        for _ in range(3):
            torch.nn.functional.cross_entropy(task.model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        return task.model.state_dict()

    fused, looped = trained(True), trained(False)
    # Adam divides by sqrt(v): where a gradient is ~0, rounding-order differences move a weight by
    # a fraction of one step (lr 2e-3); 3e-5 is 0.5 % of the three steps' reach.
    for k in looped:
        assert_close(fused[k], looped[k], rtol=1e-4, atol=3e-5)


@pytest.mark.parametrize("name,plugins,mode,expected", [
    ("test_resnet", "[]", "auto", True),                       # a plain CNN
    ("test_resnet", "[{name: cal, num_maps: 2}]", "auto", False),  # a plug-in: left as it is
    ("test_vit", "[]", "auto", False),                         # mostly Linear weights
    ("test_resnet", "[]", "false", False),
    ("test_vit", "[]", "true", True),
])
def test_channels_last_auto_picks_plain_cnns(name, plugins, mode, expected):
    cfg = load_config(overrides=[f"model.name={name}", f"model.plugins={plugins}", f"run.channels_last={mode}"])
    task = ClassificationTask(build_model(cfg, 3))
    assert use_channels_last(cfg, task) is expected


def test_channels_last_accepts_yaml_booleans(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("run:\n  channels_last: true\n")
    assert load_config([str(f)]).run.channels_last == "true"


def test_channels_last_rejects_other_values(tmp_path):
    with pytest.raises(ConfigError, match="run.channels_last"):
        load_config(overrides=["run.channels_last=sometimes"])


def test_resumed_fused_adamw_on_channels_last_weights_makes_the_uninterrupted_update(tmp_path):
    g = torch.Generator().manual_seed(0)
    w0, grad = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)

    def param(w):
        p = nn.Parameter(w.clone().contiguous(memory_format=torch.channels_last))
        p.grad = grad.clone().contiguous(memory_format=torch.channels_last)
        return p

    p = param(w0)
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    opt.step()
    path = ckpt.save_training_state(tmp_path, 1, {"optimizer": opt.state_dict()})  # safetensors: contiguous
    q = param(p.detach())
    opt.step()  # the uninterrupted second step
    resumed = torch.optim.AdamW([q], lr=0.1, fused=True)
    resumed.load_state_dict(ckpt.load_training_state(path)["optimizer"])
    match_state_layout(resumed)
    resumed.step()
    assert_close(q.detach(), p.detach(), rtol=0, atol=0)


def test_frozen_parameters_are_bit_identical_after_training(tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root, tmp_path, "model.trainable=[head]", "data.test_split=", "optim.epochs=3")
    seed_everything(cfg.run.seed)
    before = build_model(cfg, 3).state_dict()
    train(cfg)
    after = ckpt.read_tensors(tmp_path / "t" / "last.safetensors")
    frozen = [n for n, p in build_model(cfg, 3).named_parameters() if not p.requires_grad]
    assert frozen and "fc.weight" not in frozen
    for n in frozen:
        assert torch.equal(after[n], before[n]), n
    assert not torch.equal(after["fc.weight"], before["fc.weight"])


def test_frozen_parameters_get_no_gradient_and_trainable_ones_do():
    cfg = load_config(overrides=["model.name=test_resnet", "model.trainable=[head, layer4.*]", "data.img_size=32"])
    model = build_model(cfg, 3)
    task = build_task(cfg, model, 3).train()
    y = torch.tensor([0, 1, 2, 0])
    task({"image": torch.rand(4, 3, 32, 32), "target": y, "label": y})["loss"].backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


def test_run_stores_the_parameter_census(tiny_root, tmp_path):
    res = train(tiny_cfg(tiny_root, tmp_path, "model.trainable=[head]", "data.test_split=", "optim.epochs=1"))
    census = json.loads((tmp_path / "t" / "census.json").read_text())
    assert census["model"]["trainable"] == res["params_trainable"] < res["params"] == census["model"]["total"]
    assert ckpt.read_meta(tmp_path / "t")["census"]["trainable"] == res["params_trainable"]


def test_nothing_to_train_is_refused(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="Nothing to train"):
        train(tiny_cfg(tiny_root, tmp_path, "model.trainable=[none]"))


# ----------------------------------------------------------------------------- repairs
def test_plain_kd_weighs_the_raw_view_one():
    """Reference plain KD: KL(batchmean) · T² (weight 1), not the views' T²/(2B)."""
    teacher = apply_cal(TinyNet(), CALConfig(num_maps=2), num_classes=3)
    task = TGDATask(TinyNet(3), teacher, TGDAConfig(views=[], temperature=2.0, w_ce=0.0)).train()
    y = torch.tensor([0, 1, 2, 0])
    x = torch.rand(4, 3, 32, 32)
    out = task({"image": x, "target": y, "label": y})
    with torch.no_grad():
        t = teacher(x)
    z = out["logits"]
    kl = nn.functional.kl_div(torch.log_softmax(z / 2, -1), torch.log_softmax(t / 2, -1), reduction="batchmean",
                              log_target=True)
    assert_close(out["loss_kd"], (4.0 * kl).detach(), rtol=1e-5, atol=1e-6)


def test_checkpoint_init_refuses_a_missing_backbone_tensor(tiny_root, tmp_path):
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    sd = ckpt.read_tensors(tmp_path / "t" / "last.safetensors")
    sd.pop("conv1.0.weight")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"1 missing, e.g. \[.conv1.0.weight.\]"):
        ckpt.init_from_checkpoint(create_model("test_resnet", num_classes=3), str(tmp_path / "partial.pth"), 3)


def test_checkpoint_init_non_strict_lists_what_it_skipped(tiny_root, tmp_path, capsys):
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    sd = ckpt.read_tensors(tmp_path / "t" / "last.safetensors")
    sd.pop("conv1.0.weight")
    torch.save(sd, tmp_path / "partial.pth")
    skipped = ckpt.init_from_checkpoint(create_model("test_resnet", num_classes=3), str(tmp_path / "partial.pth"),
                                        3, strict=False)
    assert skipped == ["conv1.0.weight"] and "conv1.0.weight" in capsys.readouterr().out


def test_metrics_csv_columns_are_stable_with_eval_every(tiny_root, tmp_path):
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=3", "run.eval_every=2", "data.test_split="))
    with (tmp_path / "t" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["val_top1"] != "" for r in rows] == [False, True, True]
    assert all(float(r["time_s"]) > 0 for r in rows)


def test_best_val_on_a_split_inside_the_training_split_is_refused():
    with pytest.raises(ConfigError, match="part of data.train_split='train_val'"):
        load_config(overrides=["data.train_split=train_val", "data.val_split=val", "run.selection=best_val"])


def test_best_val_on_overlapping_splits_is_refused(tiny_root, tmp_path):
    import shutil

    shutil.copy(tiny_root / "val.csv", tiny_root / "holdout_copy.csv")  # a split name no rule knows
    with pytest.raises(ValueError, match="also in data.train_split"):
        train(tiny_cfg(tiny_root, tmp_path, "data.train_split=train_val", "data.val_split=holdout_copy",
                       "run.selection=best_val"))


def test_loss_components_are_logged_per_epoch(tiny_root, tmp_path):
    train(tiny_cfg(tiny_root, tmp_path, "model.plugins=[{name: cal, num_maps: 2}]", "task.name=cal",
                   "optim.epochs=1", "data.test_split=", "model.name=lrnet14"))
    row = json.loads((tmp_path / "t" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_loss_raw", "train_loss_aug", "train_loss_eff", "train_loss_center"} <= set(row)


def test_timm_vit_is_built_at_the_data_size(tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root, tmp_path, "model.name=vit_tiny_patch16_224", "data.img_size=32")
    model = build_model(cfg, 3)
    assert model.patch_embed.img_size == (32, 32) and model(torch.rand(1, 3, 32, 32)).shape == (1, 3)


# ----------------------------------------------------------------------------- checkpoint schema
def _meta(**over):
    cfg = load_config()
    return {"schema": ckpt.SCHEMA, **ckpt.checkpoint_meta(cfg, 2, ["a", "b"], 1, 1, (0.5,) * 3, (0.5,) * 3), **over}


def test_newer_checkpoint_schema_is_refused():
    with pytest.raises(ckpt.CheckpointError, match="newer fgir"):
        ckpt.check_meta(_meta(schema=ckpt.SCHEMA + 1), "x.safetensors")


def test_checkpoint_meta_with_wrong_types_names_the_key():
    with pytest.raises(ckpt.CheckpointError, match="'num_classes' must be a int"):
        ckpt.check_meta(_meta(num_classes="2"), "x.safetensors")


def test_class_names_must_match_the_class_count():
    with pytest.raises(ckpt.CheckpointError, match="num_classes=2 but 3 class names"):
        ckpt.check_meta(_meta(class_names=["a", "b", "c"]), "x.safetensors")


def test_schema_one_config_is_migrated():
    meta = _meta(schema=1)
    meta["config"]["task"] = {"name": "cal", "cal": {"num_maps": 4, "logit_scale": 10.0, "tta_eval": False},
                              "tgda": {"temperature": 0.7}}
    cfg = ckpt.check_meta(meta, "x.safetensors")["config"]
    assert cfg["model"]["plugins"] == [{"name": "cal", "num_maps": 4, "logit_scale": 10.0}]
    assert cfg["task"] == {"name": "cal"}


# ----------------------------------------------------------------------------- CLI: devices, inference, import
def test_eval_on_absent_cuda_is_a_clear_error(tiny_root, tmp_path, capsys):
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["eval", str(tmp_path / "t"), "--split", "val", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_eval_with_unknown_inference_variant_lists_available(tiny_root, tmp_path, capsys):
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    assert main(["eval", str(tmp_path / "t"), "--split", "val", "--inference", "tta"]) == 2
    assert "available: ['default', 'flip']" in capsys.readouterr().err


def test_cost_with_plugins_and_trainable(capsys):
    assert main(["cost", "test_resnet", "--plugins", "cal", "--trainable", "plugins", "--img-size", "32",
                 "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "test_resnet+cal" in out


def test_import_tgda_writes_a_checkpoint_predict_accepts(tmp_path, capsys):
    from PIL import Image

    src = create_model("lrnet14", num_classes=3).eval()
    ref = {"model.encoder." + k: v.clone() for k, v in src.state_dict().items() if not k.startswith("fc.")}
    ref.update({"model.dfsm.1.weight": src.fc.weight.detach().clone(),
                "model.dfsm.1.bias": src.fc.bias.detach().clone()})
    torch.save({"model": ref, "epoch": 7}, tmp_path / "student.pth")
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    assert main(["import", "tgda", str(tmp_path / "student.pth"), "--out", str(tmp_path / "s.safetensors"),
                 "--model", "lrnet14", "--img-size", "32", "--class-names", str(tmp_path / "names.txt")]) == 0
    meta = ckpt.read_meta(tmp_path / "s.safetensors")
    assert meta["class_names"] == ["a", "b", "c"] and meta["img_size"] == 32 and len(meta["mean"]) == 3
    loaded = ckpt.load_model(tmp_path / "s.safetensors")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(loaded(x), src(x), rtol=0, atol=0)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "img.png")
    assert main(["predict", str(tmp_path / "s.safetensors"), str(tmp_path / "img.png"), "--device", "cpu"]) == 0


def test_eval_with_the_flip_variant_runs_and_says_so(tiny_root, tmp_path, capsys):
    train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    assert main(["eval", str(tmp_path / "t"), "--split", "val", "--inference", "flip", "--out",
                 str(tmp_path / "ev")]) == 0
    summary = json.loads(next((tmp_path / "ev").glob("*.json")).read_text())
    assert summary["inference"] == "flip"
