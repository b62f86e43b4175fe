import json
import os
import socket

import pytest
import torch
from conftest import tiny_cfg

from fgir.engine import train as train_mod
from fgir.engine.build import build_model, build_task
from fgir.engine.checkpoint import load_model, read_tensors


def test_one_optimizer_step_lowers_loss(tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root, tmp_path)
    model = build_model(cfg, 3)
    task = build_task(cfg, model, 3).train()
    x = torch.randn(6, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    batch = {"image": x, "target": y, "label": y}
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.05)
    before = task(batch)["loss"]
    before.backward()
    opt.step()
    task.eval()  # compare on the same BN mode to isolate the parameter update
    with torch.no_grad():
        after = task(batch)["loss"]
        task.zero_grad()
    task.train()
    assert after.item() < before.item()


def test_train_writes_run_folder(tiny_root, tmp_path):
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path))
    run = tmp_path / "t"
    for name in ["config.yaml", "metrics.jsonl", "metrics.csv", "last.safetensors", "final.json",
                 "test_per_class.csv", "test_predictions.csv", "test_confusion_matrix.png", "test_metrics.json"]:
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "val_top1" in rows[-1]
    assert 0.0 <= res["test_top1"] <= 100.0
    assert res["protocol"] == {"trained_on": "train", "selected_on": "last_epoch", "reported_on": "test"}


def test_save_load_gives_identical_outputs(tiny_root, tmp_path):
    train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    ck = tmp_path / "t" / "last.safetensors"
    m1 = load_model(ck)
    m2 = build_model(tiny_cfg(tiny_root, tmp_path), 3).eval()
    m2.load_state_dict(read_tensors(ck))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m1(x), m2(x), rtol=0, atol=0)
    assert m1.fgir_meta["class_names"] == ["red_disc", "green_square", "blue_bar"]


def test_resume_after_interrupt_matches_uninterrupted(tiny_root, tmp_path, monkeypatch):
    extra = ("optim.epochs=3", "data.test_split=", "data.resize_ratio=1.25", "optim.ema=true")
    train_mod.train(tiny_cfg(tiny_root, tmp_path / "a", *extra))
    ref = read_tensors(tmp_path / "a" / "t" / "last.safetensors")

    cfg_b = tiny_cfg(tiny_root, tmp_path / "b", *extra)
    orig_iter = train_mod.ArrayLoader.__iter__

    def interrupted_iter(self):
        for i, batch in enumerate(orig_iter(self)):
            if self.shuffle and self.epoch == 3 and i == 1:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(train_mod.ArrayLoader, "__iter__", interrupted_iter)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg_b)
    run_b = tmp_path / "b" / "t"
    assert json.loads((run_b / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2
    monkeypatch.setattr(train_mod.ArrayLoader, "__iter__", orig_iter)
    train_mod.train(cfg_b, resume=str(run_b))
    got = read_tensors(run_b / "last.safetensors")
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


def test_best_val_selection_never_uses_test(tiny_root, tmp_path):
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, "run.selection=best_val"))
    assert (tmp_path / "t" / "best.safetensors").is_file()
    assert res["protocol"]["selected_on"] == "val"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, root, out, extra):
    import conftest

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    conftest._register_tiny()
    torch.set_num_threads(1)
    train_mod.train(conftest.tiny_cfg(root, out, *extra))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one_process(tiny_root, tmp_path):
    import torch.multiprocessing as mp

    extra = ("model.name=test_efficientnet_gn", "data.hflip=false", "optim.epochs=1", "data.test_split=",
             "data.val_split=", "optim.label_smoothing=0")
    train_mod.train(tiny_cfg(tiny_root, tmp_path / "one", *extra))
    mp.spawn(_ddp_worker, args=(2, _free_port(), tiny_root, tmp_path / "two", extra), nprocs=2, join=True)
    one = read_tensors(tmp_path / "one" / "t" / "last.safetensors")
    two = read_tensors(tmp_path / "two" / "t" / "last.safetensors")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


def test_bf16_autocast_and_accumulation_train(tiny_root, tmp_path):
    res = train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.amp=bf16", "optim.accum_steps=2",
                                   "optim.clip_grad=1.0", "optim.epochs=1"))
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor(rows[-1]["train_loss"]))
    assert res["epochs"] == 1


def test_fp16_on_cpu_is_refused(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="optim.amp=fp16 needs a CUDA device"):
        train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.amp=fp16", "run.device=cpu"))


def test_backbone_initialised_from_own_checkpoint(tiny_root, tmp_path):
    from fgir.engine.checkpoint import init_from_checkpoint

    train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    src = read_tensors(tmp_path / "t" / "last.safetensors")
    model = build_model(tiny_cfg(tiny_root, tmp_path), 5)  # another class count: the head is re-initialised
    init_from_checkpoint(model, str(tmp_path / "t"), 5)
    own = model.state_dict()
    torch.testing.assert_close(own["conv1.0.weight"], src["conv1.0.weight"], rtol=0, atol=0)
    assert own["fc.weight"].shape == (5, src["fc.weight"].shape[1])


def test_checkpoint_head_false_gives_a_fresh_classifier(tiny_root, tmp_path):
    train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    src = read_tensors(tmp_path / "t" / "last.safetensors")
    ck = f"model.checkpoint={tmp_path / 't'}"
    kept = build_model(tiny_cfg(tiny_root, tmp_path, ck), 3).state_dict()
    fresh = build_model(tiny_cfg(tiny_root, tmp_path, ck, "model.checkpoint_head=false"), 3).state_dict()
    torch.testing.assert_close(kept["fc.weight"], src["fc.weight"], rtol=0, atol=0)
    torch.testing.assert_close(fresh["conv1.0.weight"], src["conv1.0.weight"], rtol=0, atol=0)
    assert not torch.equal(fresh["fc.weight"], src["fc.weight"])


def test_checkpoint_of_other_architecture_is_refused(tiny_root, tmp_path):
    from fgir.engine.checkpoint import CheckpointError, init_from_checkpoint

    train_mod.train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))
    with pytest.raises(CheckpointError, match="does not fit"):
        init_from_checkpoint(build_model(tiny_cfg(tiny_root, tmp_path, "model.name=lrnet14"), 3),
                             str(tmp_path / "t"), 3)
