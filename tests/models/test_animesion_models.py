"""Animesion models (spec animesion.md §3, checklist 9-14): ResNets, ViTs, the shallow CNN, the IFA head."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fgir import create_model
from fgir.benchmarks.flops import count_macs, count_params
from fgir.config import Config as FgirConfig
from fgir.config import ConfigError, from_dict, load_config
from fgir.engine.build import build_model
from fgir.models.plugins.clca.heads import IFAHead

K = 3263
RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "animesion"

# spec §3.7 [RC]: (timm name, img size, plug-ins, params)
COUNTS = [
    ("resnet18", 128, [], 12_850_431),
    ("resnet50", 128, [], 30_193_919),
    ("resnet152", 128, [], 64_829_695),
    ("vit_base_patch16_224", 128, [], 88_206_527),
    ("vit_base_patch16_224", 224, [], 88_307_903),
    ("vit_base_patch16_224", 128, ["ifa"], 88_206_540),
    ("vit_base_patch16_224", 224, ["ifa"], 88_307_916),
    ("vit_base_patch32_224", 128, [], 89_939_135),
    ("vit_base_patch32_224", 224, [], 89_964_479),
    ("vit_large_patch16_224", 128, [], 306_511_039),
    ("vit_large_patch16_224", 224, [], 306_646_207),
    ("vit_large_patch16_224", 128, ["ifa"], 306_511_064),
    ("vit_large_patch16_224", 224, ["ifa"], 306_646_232),
    ("vit_large_patch32_224", 128, [], 308_821_183),
    ("vit_large_patch32_224", 224, [], 308_854_975),
    ("animesion_shallow", 224, [], 47_711_231),
]


def _cfg(name: str, img: int, plugins=(), **model) -> FgirConfig:
    return from_dict(FgirConfig, {"model": {"name": name, "plugins": [{"name": p} for p in plugins], **model},
                                  "data": {"img_size": img}})


@pytest.mark.parametrize("name,img,plugins,params", COUNTS, ids=[f"{n}-{s}-{'+'.join(p) or 'plain'}"
                                                                  for n, s, p, _ in COUNTS])
def test_param_counts_match_reference(name, img, plugins, params):
    with torch.device("meta"):  # shapes only: no memory, no init time
        m = build_model(_cfg(name, img, plugins), K)
    assert count_params(m) == params


@pytest.mark.parametrize("name,layers", [("vit_base_patch16_224", 12), ("vit_large_patch16_224", 24)])
def test_ifa_adds_layers_plus_one_parameters(name, layers):
    with torch.device("meta"):
        plain = build_model(_cfg(name, 128), K)
        ifa = build_model(_cfg(name, 128, ["ifa"]), K)
    assert count_params(ifa) - count_params(plain) == layers + 1


@pytest.mark.slow
def test_vit_b16_128_macs():
    m = timm.create_model("vit_base_patch16_224", num_classes=K, img_size=128)
    assert abs(count_macs(m, 128) / 1e9 - 5.64) <= 0.02


@pytest.mark.slow
def test_vit_b16_128_ifa_macs():
    m = build_model(_cfg("vit_base_patch16_224", 128, ["ifa"]), K)
    assert abs(count_macs(m, 128) / 1e9 - 5.640) <= 0.02


def test_shallow_macs_at_224():
    m = create_model("animesion_shallow", num_classes=K)
    assert round(count_macs(m, 224) / 1e9, 3) == 0.251


# ----------------------------------------------------------------------------- shallow CNN
def test_shallow_refuses_other_sizes_with_a_clear_error():
    m = create_model("animesion_shallow", num_classes=5, img_size=48)
    with pytest.raises(ValueError, match=r"built for 48x48 inputs.*got 64x64.*adaptive=True"):
        m(torch.rand(1, 3, 64, 64))


def test_shallow_adaptive_accepts_any_size_with_reference_params():
    m = create_model("animesion_shallow", num_classes=K, adaptive=True).eval()
    assert count_params(m) == 47_711_231
    with torch.no_grad():
        assert m(torch.rand(2, 3, 100, 100)).shape == (2, K)


def test_shallow_built_for_the_data_size():
    m = build_model(_cfg("animesion_shallow", 64), 7).eval()
    assert m.img_size == 64 and m(torch.rand(2, 3, 64, 64)).shape == (2, 7)


# ----------------------------------------------------------------------------- IFA head
def test_ifa_head_shape():
    head = IFAHead(32, 6, 9, eps=1e-12)
    assert head(torch.randn(4, 32, 6)).shape == (4, 9)


def test_ifa_head_one_hot_last_layer_equals_linear_ln_relu_cls():
    head = IFAHead(32, 6, 9, eps=1e-12)
    with torch.no_grad():
        head.agg.weight.zero_()
        head.agg.weight[0, -1] = 1.0
        head.agg.bias.zero_()
        head.norm.weight.normal_()
        head.norm.bias.normal_()
    z = torch.randn(4, 32, 6)
    want = head.fc(F.layer_norm(F.relu(z[..., -1]), (32,), head.norm.weight, head.norm.bias, eps=1e-12))
    assert_close(head(z), want, rtol=1e-5, atol=1e-6)


def _tiny_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3, num_classes=5, **kw)


def test_ifa_plugin_reads_the_cls_of_every_block_output():
    plain = _tiny_vit().eval()
    m = build_model(_cfg("vit_tiny_patch16_224", 32, ["ifa"], kwargs={"depth": 3}), 5).eval()
    m.load_state_dict({k: v for k, v in plain.state_dict().items() if not k.startswith(("norm.", "head."))},
                      strict=False)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        blocks = plain.forward_intermediates(x, norm=False, output_fmt="NLC", intermediates_only=True,
                                             return_prefix_tokens=True)  # [(patch tokens, prefix tokens)]
        taps = torch.stack([prefix[:, 0] for _, prefix in blocks], dim=-1)
        assert_close(m(x), m.head(taps), rtol=1e-5, atol=1e-5)
    assert isinstance(m.norm, torch.nn.Identity) and m.head.norm.eps == 1e-12 and m.head.taps == 3


def test_ifa_plugin_on_vitfs():
    m = build_model(_cfg("vitfs_tiny", 32, ["ifa"]), 4).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert m.head.taps == len(m.blocks)


def test_ifa_reset_classifier_keeps_the_ifa_head():
    m = build_model(_cfg("vit_tiny_patch16_224", 32, ["ifa"], kwargs={"depth": 2}), 5)
    m.reset_classifier(8)
    assert isinstance(m.head, IFAHead) and m(torch.rand(1, 3, 32, 32)).shape == (1, 8)


def test_ifa_and_clca_head_together_are_refused():
    cfg = from_dict(FgirConfig, {"model": {"name": "vit_tiny_patch16_224", "kwargs": {"depth": 4},
                                           "plugins": [{"name": "clca", "head": "ifa"}, {"name": "ifa"}]},
                                 "data": {"img_size": 32}})
    with pytest.raises(ConfigError, match="use one of clca"):
        build_model(cfg, 5)


def test_ifa_bad_layers_are_config_errors():
    with pytest.raises(ConfigError, match=r"model\.plugins\[0\]\.layers"):
        load_config([], ["model.name=vit_tiny_patch16_224", "model.plugins=[{name: ifa, layers: [1, 1]}]"])


# ----------------------------------------------------------------------------- probe / finetune / scratch
@pytest.mark.parametrize("mode,trainable", [("probe", 512 * K + K), ("finetune", 12_850_431),
                                            ("scratch", 12_850_431)])
def test_resnet18_modes(mode, trainable):
    cfg = load_config([str(RECIPES / f"daf_resnet18_128_{mode}.yaml")], ["model.pretrained=false"])
    with torch.device("meta"):
        m = build_model(cfg, K)
    assert count_params(m, trainable_only=True) == trainable
    recorded = load_config([str(RECIPES / f"daf_resnet18_128_{mode}.yaml")]).model  # what the run config saves
    assert (recorded.pretrained, recorded.trainable) == (mode != "scratch", ["head"] if mode == "probe" else ["all"])


# ----------------------------------------------------------------------------- exclusion loss (spec §3.5)
def test_exclusion_term_is_the_sum_of_layer_kls():
    from fgir.models.plugins.ifa import exclusion_term

    taps = [torch.randn(4, 8) for _ in range(5)]
    want = 0.0
    for i in range(3):  # d = 2: pairs (0, 2), (1, 3), (2, 4)
        p, q = (taps[i + 2] / 2).softmax(-1), (taps[i] / 2).softmax(-1)
        want += (p * (p.log() - q.log())).sum(-1).mean()
    assert_close(exclusion_term(taps, temperature=2.0, distance=2), want, rtol=1e-5, atol=1e-6)


def test_exclusion_loss_lowers_the_training_loss_by_w_t2_e():
    from fgir.engine.classification import ClassificationTask
    from fgir.models.plugins.ifa import exclusion_term

    cfg = from_dict(FgirConfig, {"model": {"name": "vit_tiny_patch16_224", "kwargs": {"depth": 3},
                                           "plugins": [{"name": "ifa", "exclusion_weight": 0.01}]},
                                 "data": {"img_size": 32}})
    m = build_model(cfg, 5)
    task = ClassificationTask(m).train()
    batch = {"image": torch.rand(2, 3, 32, 32), "target": torch.tensor([0, 1])}
    out = task(batch)
    e = exclusion_term(m.token_path.last_taps, 1.0, 2)
    assert_close(out["loss_exclusion"], -0.01 * e, rtol=1e-5, atol=1e-7)
    assert_close(out["loss"], F.cross_entropy(out["logits"], batch["target"]) - 0.01 * e, rtol=1e-5, atol=1e-6)
