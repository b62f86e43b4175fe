"""The Python API mirrors the CLI."""

import torch
from conftest import tiny_cfg

import fgir


def test_create_model_and_dataset(tiny_root):
    model = fgir.create_model("lrnet14", num_classes=3)
    ds = fgir.create_dataset("tiny", split="test", root=str(tiny_root))
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, ds.num_classes)
    assert len(ds) == 9 and ds.class_names[0] == "red_disc"


def test_train_then_load_and_predict(tiny_root, tmp_path):
    res = fgir.train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1"))
    pred = fgir.load(res["run_dir"])
    out = pred.predict([tiny_root / "images" / "blue_bar" / "test_000.png"], topk=3)
    probs = [t["prob"] for t in out[0]["topk"]]
    assert [t["class_name"] for t in out[0]["topk"]] != [] and len(probs) == 3
    torch.testing.assert_close(torch.tensor(sum(probs)), torch.tensor(1.0), rtol=0, atol=1e-4)
