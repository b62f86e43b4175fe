import pytest

from fgir.config import Config, ConfigError, field_docs, load_config, parse_overrides, save_config


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.optim.opt == "adamw"


def test_override_sets_nested_value():
    cfg = load_config(overrides=["optim.lr=0.05", "data.name=cub100", "task.name=tgda", "task.views=crop"])
    assert cfg.optim.lr == 0.05
    assert cfg.data.name == "cub100"
    assert cfg.task.views == ["crop"]


def test_unknown_key_suggests_close_name():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*Did you mean: lr"):
        load_config(overrides=["optim.lrr=0.1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"optim\.epochs expects an integer"):
        load_config(overrides=["optim.epochs=ten"])


def test_yaml_composition_and_precedence(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.1\n  epochs: 5\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  epochs: 7\n")
    cfg = load_config([str(tmp_path / "child.yaml")], ["optim.epochs=9"])
    assert (cfg.optim.lr, cfg.optim.epochs) == (0.1, 9)


def test_yaml_unknown_key_rejected(tmp_path):
    (tmp_path / "bad.yaml").write_text("data:\n  rand_aug: true\n")
    with pytest.raises(ConfigError, match="data.rand_aug"):
        load_config([str(tmp_path / "bad.yaml")])


def test_val_split_may_not_be_test():
    with pytest.raises(ConfigError, match="never see the test split"):
        load_config(overrides=["data.val_split=test"])


def test_invalid_choice_lists_allowed():
    with pytest.raises(ConfigError, match=r"run.selection='best'.*best_val"):
        load_config(overrides=["run.selection=best"])


def test_kd_temperature_must_be_positive():
    with pytest.raises(ConfigError, match="task.temperature"):
        load_config(overrides=["task.name=tgda", "task.temperature=0"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["optim.lr=0.3"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config([str(tmp_path / "c.yaml")]) == cfg


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["optim.lr"])


def test_field_docs_feed_help():
    from fgir.config import DataConfig

    assert "catalog" in field_docs(DataConfig)["name"]


def test_aug_group_defaults_to_per_image_and_must_be_positive():
    assert load_config().data.aug_group == 1
    assert load_config(overrides=["data.aug_group=4"]).data.aug_group == 4
    with pytest.raises(ConfigError, match=r"data\.aug_group must be >= 1"):
        load_config(overrides=["data.aug_group=0"])


@pytest.mark.parametrize("name", ["..", ".", "a/b", " x"])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match="run.name=.*plain folder name"):
        load_config([], [f"run.name={name!r}" if name.startswith(" ") else f"run.name={name}"])


def test_override_indexes_into_a_list_set_by_an_earlier_override():
    cfg = load_config([], ["model.name=vit_tiny_patch16_224",
                           "model.plugins=[{name: token_reduction, method: evit}]", "model.plugins.0.keep_rate=0.3"])
    assert cfg.model.plugins[0].keep_rate == 0.3


@pytest.mark.parametrize("items, message", [
    (["model.plugins=[{name: cal}]", "model.plugins.1.num_maps=4"], "'1' is not the index"),
    (["model.plugins=[{name: cal}]", "model.plugins.x=4"], "'x' is not an index of the 1-entry list"),
    (["optim.lr=1", "optim.lr.x=2"], "optim.lr was set to 1 earlier in the overrides, which has no key 'x'"),
])
def test_override_into_an_earlier_non_dict_value_is_a_config_error(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(items)


@pytest.mark.parametrize("override, key", [("optim.epochs=0", "optim.epochs"),
                                           ("optim.batch_size=0", "optim.batch_size"),
                                           ("data.img_size=-5", "data.img_size")])
def test_non_positive_sizes_name_their_own_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')} must be > 0"):
        load_config(overrides=[override]).validate()
