"""Every core config field has a rule checked at load time, and an invalid value of each is refused
with a one-line error naming the key."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from fgir.config import FIELD_RULES, Config, ConfigError, load_config

SECTIONS = ("model", "data", "optim", "run")


def _fields():
    hints = typing.get_type_hints(Config)
    for sec in SECTIONS:
        cls = hints[sec]
        sub = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield f"{sec}.{f.name}", sub[f.name]


def test_every_non_boolean_field_has_a_rule():
    missing = [k for k, tp in _fields() if tp is not bool and k not in FIELD_RULES]
    assert missing == []


def test_rules_name_existing_fields():
    known = {k for k, _ in _fields()}
    assert set(FIELD_RULES) <= known


def _invalid(key, rule):
    kind = rule[0]
    if kind == "range":
        lo, hi, lo_in, hi_in = rule[1:]
        return lo - 1 if lo_in else lo
    if kind == "choice":
        return "no-such-choice"
    if kind == "pattern":
        return "" if key in ("model.name", "run.output_dir") else "bad value with spaces/"
    return None


CASES = [(k, _invalid(k, r)) for k, r in FIELD_RULES.items() if _invalid(k, r) is not None]


@pytest.mark.parametrize("key,value", CASES, ids=[k for k, _ in CASES])
def test_invalid_value_is_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([], [f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"])


@pytest.mark.parametrize("override,key", [
    ("optim.warmup_lr=-0.5", "optim.warmup_lr"),
    ("optim.ema_decay=1.5", "optim.ema_decay"),
    ("data.random_erasing=1.2", "data.random_erasing"),
    ("data.mean=[0.5,0.5]", "data.mean"),
    ("data.std=[0.2,0,0.2]", "data.std"),
    ("data.auto_augment=rand-x9", "data.auto_augment"),
    ("data.resize_ratio=0.5", "data.resize_ratio"),
    ("optim.lr=nan", "optim.lr"),
    ("run.device=gpu", "run.device"),
])
def test_values_once_silently_accepted_are_refused(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([], [override, "data.mean=[0.5,0.5,0.5]"] if key == "data.std" else [override])


def test_mean_without_std_is_refused():
    with pytest.raises(ConfigError, match="data.mean and data.std go together"):
        load_config([], ["data.mean=[0.5,0.5,0.5]"])


def test_warmup_lr_above_lr_is_refused():
    with pytest.raises(ConfigError, match="must not exceed optim.lr"):
        load_config([], ["optim.lr=0.001", "optim.warmup_lr=0.01"])


def test_valid_rand_augment_strings_load():
    for v in ("rand-m9-n2", "rand-m7-n1-mstd0.5", "trivial", ""):
        assert load_config([], [f"data.auto_augment={v!r}"]).data.auto_augment == v
