"""The multi-task tagging extension (spec animesion.md §3.6, §6; checklist 17, 18, 20)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from fgir.config import Config as FgirConfig
from fgir.config import ConfigError, from_dict, load_config
from fgir.data.tags import (
    CLS,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    UNK,
    TagTokenizer,
    build_vocab,
    load_vocab,
    read_tags_csv,
    save_vocab,
    write_tags_json,
)
from fgir.engine.build import build_model
from fgir.engine.tagging import mask_tokens, tag_metrics, visible_probability

VOCAB = list(SPECIAL_TOKENS) + [f"tag{i}" for i in range(30)]


# ----------------------------------------------------------------------------- tokenizer (item 18)
def test_twenty_tags_give_cls_fourteen_tags_sep():
    ids = TagTokenizer(VOCAB, 16).encode([f"tag{i}" for i in range(20)])
    assert ids == [CLS] + list(range(5, 19)) + [SEP]


def test_three_tags_are_padded_and_unknown_tags_map_to_unk():
    ids = TagTokenizer(VOCAB, 16).encode(["tag0", "nope", "tag2"])
    assert ids == [CLS, 5, UNK, 7, SEP] + [PAD] * 11 and len(ids) == 16


def test_decode_drops_specials_and_duplicates():
    assert TagTokenizer(VOCAB).decode([CLS, 6, 5, 6, UNK, SEP, PAD]) == ["tag0", "tag1"]


def test_vocab_specials_first_then_frequent_tags(tmp_path):
    vocab = build_vocab([["b", "a", "c"], ["a", "b"], ["a"]], min_count=2)
    assert vocab == list(SPECIAL_TOKENS) + ["a", "b"]
    assert load_vocab(save_vocab(vocab, tmp_path / "v.json")) == vocab


def test_pickled_vocab_is_refused(tmp_path):
    (tmp_path / "vocab.pkl").write_bytes(pickle.dumps(VOCAB))
    with pytest.raises(ValueError, match="never loaded"):
        load_vocab(tmp_path / "vocab.pkl")


def test_dafre_tags_csv_list_literals(tmp_path):
    f = tmp_path / "test_tags.csv"
    f.write_text("class_id,dir,tags_cat0\n0,0933/194933.jpg,\"['long_hair', 'smile']\"\n1,0001/1.jpg,[]\n")
    assert read_tags_csv(f) == {"0933/194933.jpg": ["long_hair", "smile"], "0001/1.jpg": []}
    f.write_text("class_id,dir,tags_cat0\n0,a.jpg,\"__import__('os')\"\n")
    with pytest.raises(ValueError, match=r"test_tags.csv:2"):
        read_tags_csv(f)


# ----------------------------------------------------------------------------- mask schedule (item 17)
@pytest.mark.parametrize("step,p", [(50, 1.0), (300, 0.5), (600, 0.0)])
def test_sigmoid_schedule_checklist(step, p):
    assert visible_probability("sigmoid", step, 1000, 0.1, 0.5) == pytest.approx(p, abs=1e-12)


def test_bert_and_full_schedules():
    assert visible_probability("bert", 7, 100) == 0.85 and visible_probability("full", 0, 100) == 0.0


@pytest.mark.parametrize("replace", ["constant", "random"])
def test_masking_never_touches_specials_and_scores_only_masked(replace):
    tok = TagTokenizer(VOCAB, 16)
    ids = tok.encode_batch([["tag1", "tag2", "tag3"], [f"tag{i}" for i in range(20)]] * 50)
    inputs, labels = mask_tokens(ids, 0.5, len(VOCAB), replace, torch.Generator().manual_seed(0))
    special = (ids == PAD) | (ids == CLS) | (ids == SEP)
    assert torch.equal(inputs[special], ids[special]) and (labels[special] == -100).all()
    masked = labels != -100
    assert torch.equal(labels[masked], ids[masked]) and 0.3 < masked.sum() / (~special).sum() < 0.7
    if replace == "constant":
        assert (inputs[masked] == 1).all()
    else:
        assert inputs[masked].min() >= 0 and inputs[masked].max() < len(VOCAB) - 1
    assert torch.equal(inputs[~masked], ids[~masked])  # visible positions untouched


def test_full_masking_scores_every_tag_position():
    ids = TagTokenizer(VOCAB, 16).encode_batch([["tag1", "tag2"]])
    _, labels = mask_tokens(ids, 0.0, len(VOCAB))
    assert labels[0, :4].tolist() == [-100, 6, 7, -100] and (labels[0, 4:] == -100).all()


# ----------------------------------------------------------------------------- ViLT model (item 20)
@pytest.mark.parametrize("mlm,params", [(False, 98_592_959), (True, 99_198_591)])
def test_vilt_b16_param_counts(mlm, params):
    from fgir.benchmarks.flops import count_params

    cfg = from_dict(FgirConfig, {"model": {"name": "vit_base_patch16_224",
                                           "plugins": [{"name": "vilt", "vocab_size": 13504, "mlm": mlm}]},
                                 "data": {"img_size": 128}})
    with torch.device("meta"):
        m = build_model(cfg, 3263)
    assert count_params(m) == params
    if mlm:
        assert m.mlm_head.decoder.weight is m.text_embed.word.weight


def _tiny_vilt(**entry):
    cfg = from_dict(FgirConfig, {"model": {"name": "vit_tiny_patch16_224", "kwargs": {"depth": 2},
                                           "plugins": [{"name": "vilt", "vocab_size": 40, **entry}]},
                                 "data": {"img_size": 32}})
    return build_model(cfg, 3).eval()


def test_vilt_default_forward_uses_the_constant_query():
    m = _tiny_vilt()
    x = torch.rand(2, 3, 32, 32)
    query = torch.tensor([[CLS] + [1] * 14 + [SEP]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x, query), rtol=0, atol=0)
        cls_logits, tokens = m.forward_tagging(x, query)
    assert cls_logits.shape == (2, 3) and tokens.shape == (2, 16, 40)


def test_vilt_tags_change_the_class_logits():
    m = _tiny_vilt()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a, b = m(x, torch.tensor([[CLS, 7, SEP] + [PAD] * 13])), m(x, torch.tensor([[CLS, 9, SEP] + [PAD] * 13]))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("pad_mask", [True, False])
def test_pad_mask_hides_pad_tokens_from_attention(pad_mask):
    torch.manual_seed(0)
    m = _tiny_vilt(pad_mask=pad_mask, dropout=0.0)
    x, ids = torch.rand(1, 3, 32, 32), torch.tensor([[CLS, 7, SEP] + [PAD] * 13])
    with torch.no_grad():
        before = m(x, ids)
        m.text_embed.position.weight[3:].normal_()  # only the [PAD] positions change
        after = m(x, ids)
    assert torch.equal(before, after) == pad_mask


def test_task_follows_the_loop_progress():
    from fgir.engine.tagging import TaggingConfig, TaggingTask

    tok = TagTokenizer(VOCAB[:40], 16)
    task = TaggingTask(_tiny_vilt(), tok.encode_batch([["tag1", "tag2"], ["tag3"]]), None, tok, 10,
                       TaggingConfig(schedule="sigmoid")).train()
    batch = {"image": torch.rand(2, 3, 32, 32), "target": torch.tensor([0, 2]), "index": torch.tensor([0, 1])}
    task.set_progress(0, 1000)  # warm-up: every token visible, nothing scored
    assert task(batch)["loss_mlm"] == 0
    task.set_progress(900, 1000)  # cool-down: every tag masked and scored
    assert task(batch)["loss_mlm"] > 0


def test_tagging_task_needs_the_vilt_plugin():
    with pytest.raises(ConfigError, match="needs the vilt plug-in"):
        load_config([], ["task.name=tagging"])


# ----------------------------------------------------------------------------- metric
def test_tag_metrics_values():
    m = tag_metrics([{"a", "b"}, {"c"}, set()], [{"a"}, {"c", "d"}, set()])
    assert m["micro_precision"] == pytest.approx(2 / 3) and m["micro_recall"] == pytest.approx(2 / 3)
    assert m["sample_precision"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["sample_recall"] == pytest.approx((1 + 0.5 + 1) / 3)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tag_run(tiny_root, tmp_path_factory) -> dict:
    from conftest import tiny_cfg

    from fgir.data.datasets import ManifestDataset
    from fgir.engine.train import train

    tmp_path = tmp_path_factory.mktemp("tagrun")
    tags = {}
    for split in ("train", "val", "test"):
        for r in ManifestDataset("tiny", split, str(tiny_root)).rows:
            tags[r.dir] = [f"colour{r.class_id}", "shape"] + (["rare"] if split == "test" else [])
    write_tags_json(tags, tmp_path / "tags.json")
    vocab = save_vocab(build_vocab(tags.values()), tmp_path / "vocab.json")
    cfg = tiny_cfg(tiny_root, tmp_path, "model.name=vit_tiny_patch16_224", "model.kwargs={depth: 2}",
                   f"model.plugins=[{{name: vilt, vocab: '{vocab}'}}]", "task.name=tagging",
                   f"task.tags={tmp_path / 'tags.json'}", "task.schedule=full", "optim.epochs=2", "optim.lr=1e-3",
                   "optim.opt=adamw", "data.test_split=")
    return train(cfg)


def test_tagging_run_trains_and_reports_tag_metrics(tag_run):
    from fgir.engine.checkpoint import load_model
    from fgir.engine.tagging import evaluate_tags

    assert "loss_mlm" in (Path(tag_run["run_dir"]) / "metrics.csv").read_text()
    res = evaluate_tags(load_model(tag_run["run_dir"]), split="test")  # the run's config and task.tags
    assert res["images"] == 9 and 0.0 <= res["micro_f1"] <= 1.0
    assert res["micro_recall"] <= 2 / 3 + 1e-9  # "rare" is outside the vocabulary: never predicted


def test_cli_tags_evaluates_a_split(tag_run, tmp_path, capsys):
    import json

    from fgir.cli.main import main
    from fgir.engine.checkpoint import load_model
    from fgir.engine.tagging import evaluate_tags

    assert main(["tags", tag_run["run_dir"], "--split", "test", "--json", str(tmp_path / "m.json")]) == 0
    assert "tags on test (9 images): micro P" in capsys.readouterr().out
    got = json.loads((tmp_path / "m.json").read_text())
    assert got == pytest.approx(evaluate_tags(load_model(tag_run["run_dir"]), split="test"))


def test_cli_tags_tags_images(tag_run, tiny_root, tmp_path, capsys):
    import json

    from fgir.cli.main import main

    folder = next(p for p in Path(tiny_root).rglob("*.png")).parent
    assert main(["tags", tag_run["run_dir"], str(folder), "--json", str(tmp_path / "t.json")]) == 0
    preds = json.loads((tmp_path / "t.json").read_text())["predictions"]
    assert preds and all(set(p["tags"]) <= {"colour0", "colour1", "colour2", "shape"} for p in preds)
    assert capsys.readouterr().out.count("\t") == len(preds)


def test_cli_tags_refuses_a_model_without_vilt(tiny_root, tmp_path, capsys):
    from conftest import tiny_cfg

    from fgir.cli.main import main
    from fgir.engine.train import train

    run = train(tiny_cfg(tiny_root, tmp_path, "optim.epochs=1", "data.test_split="))["run_dir"]
    assert main(["tags", run]) == 2
    err = capsys.readouterr().err
    assert "needs a model with the vilt plug-in" in err and "Traceback" not in err
