"""The training settings are declared once (``studies.training.config``): a study's ``Settings`` and the loop's
``TrainConfig`` share each field's declaration, default and check. Bad values are derived from the declaration."""
from __future__ import annotations

import dataclasses
import math

import pytest

from studies.errors import UserError
from studies.settings import TRAINING, Settings
from studies.training.config import COMPILE_MODES, TrainConfig

CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
SETTINGS_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
# where and with which seed one run trains: the trial decides them, a study does not
RUN_ONLY = {"device", "seed", "threads", "workers"}
EXPECTED_TRAINING = {
    "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup_epochs",
    "label_smoothing", "augment", "amp", "channels_last", "eval_batch_size", "nonfinite", "compile",
}


def bad_values(f: dataclasses.Field) -> list:
    """Values the declared setting ``f`` must refuse: off its choices, of another type, just past its bounds."""
    meta = f.metadata
    if meta["choices"]:
        return ["no-such-" + f.name, 1]
    kind, low, high = meta["kind"], meta["low"], meta["high"]
    if kind is bool:
        return ["yes", 1, None]
    if kind is str:
        return [3]
    bad = ["3", True] + ([] if f.default is None else [None])
    if kind is int:
        bad += [2.5, (0 if low is None else low) - 1] + ([] if high is None else [high + 1])
    if kind is float:
        bad += [math.nan]
        bad += [] if low is None else [low if meta["low_open"] else low - 1]
        bad += [] if high is None else [high if meta["high_open"] else high + 1]
    return bad


CASES = [(name, value) for name, f in CONFIG_FIELDS.items() for value in bad_values(f)]


def refusal(cls: type, **values) -> str:
    """The message ``cls(**values)`` is refused with."""
    with pytest.raises(UserError) as err:
        cls(**values)
    return str(err.value)


def test_the_training_fields_are_the_expected_ones_and_settings_has_all_but_the_run_only_ones():
    assert set(TRAINING) == EXPECTED_TRAINING
    assert set(CONFIG_FIELDS) == EXPECTED_TRAINING | RUN_ONLY
    assert set(CONFIG_FIELDS) - set(SETTINGS_FIELDS) == RUN_ONLY


@pytest.mark.parametrize("name", sorted(CONFIG_FIELDS))
def test_each_training_field_has_exactly_one_declaration(name):
    classes = dict.fromkeys(TrainConfig.__mro__ + Settings.__mro__)  # each class once, in order
    declared_in = [c.__name__ for c in classes if name in vars(c).get("__annotations__", {})]
    assert len(declared_in) == 1, declared_in
    if name in SETTINGS_FIELDS:
        assert SETTINGS_FIELDS[name] is CONFIG_FIELDS[name]  # the same Field object: one default, one metadata


@pytest.mark.parametrize("name", sorted(EXPECTED_TRAINING))
def test_settings_default_equals_train_config_default(name):
    assert getattr(Settings(), name) == getattr(TrainConfig(), name)


def test_a_train_config_from_default_settings_is_the_default_train_config():
    settings = Settings()
    assert TrainConfig(**{k: settings[k] for k in TRAINING}) == TrainConfig()
    assert (TrainConfig().batch_size, TrainConfig().compile) == (64, "off")


@pytest.mark.parametrize("name,value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_a_bad_value_is_refused_by_both_with_the_same_message(name, value):
    message = refusal(TrainConfig, **{name: value})
    assert name in message
    if name in SETTINGS_FIELDS:
        assert refusal(Settings, **{name: value}) == message


@pytest.mark.parametrize("values,match", [
    ({"epochs": 3, "warmup_epochs": 3.0}, r"warmup_epochs must be in [0.0, 3.0), got 3.0"),
    ({"momentum": 0.0}, "nesterov=True needs momentum > 0"),
])
def test_a_cross_check_is_made_by_both_with_the_same_message(values, match):
    message = refusal(TrainConfig, **values)
    assert match in message and refusal(Settings, **values) == message


@pytest.mark.parametrize("given,kept", [(True, "on"), (False, "off"), ("reduce-overhead", "reduce-overhead")])
def test_compile_has_one_type_a_mode_name_and_booleans_are_converted_once(given, kept):
    assert TrainConfig(compile=given).compile == kept == Settings(compile=given).compile
    assert kept in COMPILE_MODES
