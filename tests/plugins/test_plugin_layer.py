"""The plug-in layer: plug-ins and tasks from config, application order, trainable control, census."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from fgir.config import ConfigError, PluginConfig, load_config
from fgir.engine.build import build_model
from fgir.models import create_model
from fgir.models.plugins import apply_plugins, get_inference, inference_names
from fgir.models.trainable import apply_trainable, parameter_census
from fgir.registry import PLUGINS

CNNS = ["test_resnet", "lrnet14"]  # tiny CNN backbones; every plug-in x backbone of its families below
BACKBONES = {  # family -> (model name, overrides): tiny members of each family the plug-ins declare
    "cnn": [("test_resnet", ["data.img_size=32"]), ("lrnet14", ["data.img_size=32"])],
    "vit": [("vit_tiny_patch16_224", ["data.img_size=128"]),
            ("vitfs_nano", ["data.img_size=128"])],
}


def _pairs():
    return [pytest.param(plugin, name, over, id=f"{plugin}-{name}")
            for plugin in PLUGINS.names() for fam in PLUGINS.meta(plugin)["families"]
            for name, over in BACKBONES[fam]]


def _first_backbone(plugin):
    name, over = BACKBONES[PLUGINS.meta(plugin)["families"][0]][0]
    cfg = load_config(overrides=[f"model.name={name}", *over])
    return build_model(cfg, 3)


def _cfg(*over):
    return load_config(overrides=["data.img_size=32", *over])


# ----------------------------------------------------------------------------- config
def test_plugin_entry_becomes_its_config_dataclass():
    cfg = _cfg("model.plugins=[{name: cal, num_maps: 8}]")
    (entry,) = cfg.model.plugins
    assert isinstance(entry, PluginConfig) and type(entry) is PLUGINS.meta("cal")["config"]
    assert (entry.name, entry.num_maps, entry.logit_scale) == ("cal", 8, 100.0)


def test_unknown_plugin_name_suggests_close_match():
    with pytest.raises(ConfigError, match=r"model.plugins\[0\].name='cla'.*Did you mean: [^?]*\bcal\b"):
        _cfg("model.plugins=[{name: cla}]")


def test_unknown_key_inside_entry_suggests_close_match():
    with pytest.raises(ConfigError, match=r"model.plugins\[0\].num_map'.*Did you mean: num_maps"):
        _cfg("model.plugins=[{name: cal, num_map: 8}]")


def test_entry_without_name_is_refused():
    with pytest.raises(ConfigError, match=r"model.plugins\[0\] must be a mapping with a 'name'"):
        _cfg("model.plugins=[{num_maps: 8}]")


def test_override_edits_one_entry_by_index(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  plugins:\n    - {name: cal, num_maps: 8}\n")
    cfg = load_config([str(tmp_path / "c.yaml")], ["model.plugins.0.logit_scale=10"])
    assert (cfg.model.plugins[0].num_maps, cfg.model.plugins[0].logit_scale) == (8, 10.0)


def test_override_of_missing_entry_names_index():
    with pytest.raises(ConfigError, match=r"plugins.2: there is no entry 2"):
        _cfg("model.plugins.2.num_maps=3")


def test_task_fields_are_the_registered_task_config():
    cfg = _cfg("task.name=tgda", "task.temperature=2")
    assert type(cfg.task).__name__ == "TGDAConfig" and cfg.task.temperature == 2.0


def test_unknown_task_suggests_close_match():
    with pytest.raises(ConfigError, match=r"task.name='tgdaa'.*Did you mean: tgda"):
        _cfg("task.name=tgdaa")


def test_field_of_another_task_is_refused_with_the_task_named():
    with pytest.raises(ConfigError, match=r"task.temperature' \(fields of task 'classification'"):
        _cfg("task.temperature=2")


def test_legacy_task_sections_migrate():
    cfg = load_config(overrides=["task.name=cal", "task.cal.num_maps=4", "task.cal.tta_eval=true",
                                 "task.cal.crop_threshold=[0.3,0.5]"])
    assert [p.name for p in cfg.model.plugins] == ["cal"] and cfg.model.plugins[0].num_maps == 4
    assert cfg.task.crop_threshold == [0.3, 0.5] and cfg.model.inference == "tta"


def test_saved_config_with_plugins_round_trips(tmp_path):
    from fgir.config import save_config

    cfg = _cfg("model.plugins=[{name: cal, num_maps: 8}]", "task.name=cal")
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config([str(tmp_path / "c.yaml")]) == cfg


# ----------------------------------------------------------------------------- application
@pytest.mark.parametrize("backbone", CNNS)
def test_empty_plugin_list_is_the_plain_model(backbone):
    torch.manual_seed(0)
    plain = create_model(backbone, num_classes=3).eval()
    torch.manual_seed(0)
    built = build_model(_cfg(f"model.name={backbone}"), 3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(built(x), plain(x), rtol=0, atol=0)
    assert type(built) is type(plain)


@pytest.mark.parametrize("plugin,backbone,over", _pairs())
def test_plugin_applies_and_runs(plugin, backbone, over):
    cfg = load_config(overrides=[f"model.name={backbone}", *over, f"model.plugins=[{{name: {plugin}}}]"])
    model = build_model(cfg, 3).eval()
    assert model.fgir_plugins == [plugin]
    s = cfg.data.img_size
    with torch.no_grad():
        out = model(torch.rand(2, 3, s, s))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_every_plugin_declares_its_families():
    for plugin in PLUGINS.names():
        assert set(PLUGINS.meta(plugin)["families"]) <= set(BACKBONES), plugin


@pytest.mark.parametrize("plugin", PLUGINS.names())
def test_plugin_applied_twice_raises(plugin):
    if PLUGINS.meta(plugin)["repeatable"]:
        pytest.skip(f"{plugin} is repeatable by design")
    entry = PLUGINS.meta(plugin)["config"](name=plugin)
    model = apply_plugins(_first_backbone(plugin), [entry])
    with pytest.raises(ValueError, match="already applied"):
        apply_plugins(model, [entry])


@pytest.mark.parametrize("plugin", PLUGINS.names())
def test_plugin_parameters_are_recorded(plugin):
    entry = PLUGINS.meta(plugin)["config"](name=plugin)
    model = apply_plugins(_first_backbone(plugin), [entry])
    recorded = model.fgir_plugin_params[plugin]  # may be empty: EViT, Top-K, ToMe add no parameters
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in recorded)


def test_cal_on_a_token_model_is_refused():
    with pytest.raises(ConfigError, match="CAL needs a CNN"):
        build_model(_cfg("model.name=vitfs_nano", "model.plugins=[cal]"), 3)


def test_cal_adds_the_tta_inference_variant():
    model = build_model(_cfg("model.plugins=[cal]", "model.name=test_resnet"), 3)
    assert inference_names(model) == ["default", "flip", "tta"]
    assert get_inference(model, "tta") == model.predict_tta


def test_unknown_inference_variant_lists_available():
    with pytest.raises(ConfigError, match=r"model.inference='tta'.*available: \['default', 'flip'\]"):
        build_model(_cfg("model.name=test_resnet", "model.inference=tta"), 3)


# ----------------------------------------------------------------------------- the model-agnostic flip variant
@pytest.mark.parametrize("name,over", [("test_resnet", []), ("vitfs_nano", ["data.img_size=64"])])
def test_flip_is_the_mean_of_image_and_mirror_logits(name, over):
    torch.manual_seed(0)
    model = build_model(_cfg(f"model.name={name}", *over), 3).eval()
    size = 64 if over else 32
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        got = get_inference(model, "flip")(x)
        ref = (model(x) + model(torch.flip(x, dims=[3]))) / 2
    assert_close(got, ref, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, model(x))  # the mirror changes the logits: the variant is not the default


def test_flip_composes_with_a_plugin_variant():
    torch.manual_seed(0)
    model = build_model(_cfg("model.plugins=[{name: cal, num_maps: 4}]", "model.name=test_resnet"), 3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        got = get_inference(model, "tta+flip")(x)
        ref = (model.predict_tta(x) + model.predict_tta(x.flip(-1))) / 2
    assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_flip_of_an_unknown_variant_lists_available():
    with pytest.raises(ConfigError, match=r"model.inference='tta\+flip'.*available"):
        build_model(_cfg("model.name=test_resnet", "model.inference=tta+flip"), 3)


# ----------------------------------------------------------------------------- trainable
def test_trainable_head_freezes_the_rest():
    model = build_model(_cfg("model.name=test_resnet", "model.trainable=[head]"), 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}


def test_trainable_plugins_preset_selects_plugin_parameters():
    model = build_model(_cfg("model.name=test_resnet", "model.plugins=[cal]", "model.trainable=[plugins]"), 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_trainable_patterns_and_exclusion():
    model = create_model("test_resnet", num_classes=3)
    apply_trainable(model, ["all", "!*bn*", "!conv1.*"])
    for n, p in model.named_parameters():
        assert p.requires_grad == (".bn" not in n and not n.startswith("bn") and not n.startswith("conv1."))


def test_trainable_pattern_matching_nothing_is_an_error():
    with pytest.raises(ConfigError, match=r"'blocks\.\*' selects nothing"):
        apply_trainable(create_model("test_resnet", num_classes=3), ["blocks.*"])


def test_mark_only_cal_trainable():
    from fgir.models.plugins.cal import apply_cal, mark_only_cal_trainable

    model = mark_only_cal_trainable(apply_cal(create_model("test_resnet", num_classes=3)))
    assert all(p.requires_grad == n.startswith("head.") for n, p in model.named_parameters())


def test_census_counts_per_top_level_module():
    model = build_model(_cfg("model.name=test_resnet", "model.trainable=[head]"), 3)
    c = parameter_census(model)
    assert c["total"] == sum(p.numel() for p in model.parameters())
    assert c["trainable"] == model.fc.weight.numel() + model.fc.bias.numel() == c["modules"]["fc"]["trainable"]
    assert sum(r["total"] for r in c["modules"].values()) == c["total"]


def test_flip_twice_is_refused():
    with pytest.raises(ConfigError, match="flip twice"):
        build_model(_cfg("model.name=test_resnet", "model.inference=flip+flip"), 3)


# ----------------------------------------------------------------------------- model.norm_eps
def test_norm_eps_sets_every_backbone_layernorm_but_not_the_plugins():
    model = build_model(_cfg("model.name=vit_tiny_patch16_224", "model.norm_eps=1e-12",
                             "model.plugins=[{name: glsim, top_o: 2, aggregator_norm_eps: 1e-5}]"), 3)
    eps = {n: m.eps for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert all(v == 1e-12 for n, v in eps.items() if n.startswith("backbone."))
    assert eps["aggregator_norm"] == 1e-5 and eps["aggregator.0.norm1"] == 1e-5  # the plug-in keeps its own


def test_norm_eps_changes_the_logits_of_a_vit():
    torch.manual_seed(0)
    a = build_model(_cfg("model.name=vit_tiny_patch16_224"), 3).eval()
    b = build_model(_cfg("model.name=vit_tiny_patch16_224", "model.norm_eps=0.05"), 3).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x), atol=1e-4)


def test_norm_eps_on_a_model_without_layernorm_is_refused():
    with pytest.raises(ConfigError, match="has no LayerNorm"):
        build_model(_cfg("model.name=test_resnet", "model.norm_eps=1e-12"), 3)


# ----------------------------------------------------------------------------- model.grad_checkpointing
def _grads(*over):
    torch.manual_seed(0)
    model = build_model(_cfg("model.name=vit_tiny_patch16_224", "model.kwargs={depth: 2}", *over), 3).train()
    torch.manual_seed(1)
    model(torch.rand(2, 3, 32, 32)).logsumexp(1).sum().backward()
    return model, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("plugins", ["[]", "[{name: glsim, top_o: 2, head_init: default}]"])
def test_grad_checkpointing_gives_the_same_gradients(plugins):
    ref_model, ref = _grads(f"model.plugins={plugins}")
    model, got = _grads(f"model.plugins={plugins}", "model.grad_checkpointing=true")
    backbone = getattr(model, "backbone", model)
    assert backbone.grad_checkpointing and not getattr(ref_model, "backbone", ref_model).grad_checkpointing
    assert set(got) == set(ref)
    for n in ref:
        assert_close(got[n], ref[n], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("over, match", [
    (["model.name=vitfs_nano", "data.img_size=64"], "BatchNorm"),
    (["model.name=vit_tiny_patch16_224", "model.plugins=[token_reduction]"], "gradient checkpointing"),
    (["model.name=vit_tiny_patch16_224", "data.img_size=64", "model.plugins=[{name: ila, ds_locs: [3]}]"],
     "BatchNorm"),
])
def test_grad_checkpointing_is_refused_where_it_would_be_wrong(over, match):
    with pytest.raises(ConfigError, match=match):
        build_model(_cfg(*over, "model.grad_checkpointing=true"), 3)
