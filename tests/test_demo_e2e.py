"""`fgir demo` end to end with a tiny budget: real font set, real loop, real outputs."""

import json

from fgir.cli.main import main


def test_demo_end_to_end_tiny_budget(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "run.max_steps_per_epoch=2",
                 "optim.warmup_epochs=0"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "demo"
    for name in ["config.yaml", "metrics.jsonl", "last.safetensors", "test_per_class.csv",
                 "test_confusion_matrix.png", "demo_predictions.json", "final.json"]:
        assert (run / name).is_file(), name
    assert "Top-5 predictions for held-out test images" in out
    preds = json.loads((run / "demo_predictions.json").read_text())
    assert len(preds) == 4 and all(len(p["topk"]) == 5 for p in preds)
    final = json.loads((run / "final.json").read_text())
    assert final["protocol"]["reported_on"] == "test" and 0 <= final["test_top1"] <= 100
