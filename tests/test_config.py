"""Stage configs: presets per profile, overrides, errors that list the valid fields, frozen."""

import ast
import dataclasses
import inspect
import json

import pytest

from rlhf_course import config
from rlhf_course.config import BaseConfig
from rlhf_course.hardware import PROFILES

# Every stage config in the module, so configs added by later stages are checked too.
CONFIGS = [
    cls
    for _, cls in inspect.getmembers(config, inspect.isclass)
    if dataclasses.is_dataclass(cls) and cls.__module__ == config.__name__ and cls is not config.EvalSettings
]
"""The stage configs (EvalSettings is a part of four of them, with no preset of its own)."""


def test_there_is_a_base_config():
    assert BaseConfig in CONFIGS


def test_preset_applies_profile_then_overrides():
    cfg = BaseConfig.preset("t4", max_new_tokens=7, seed=3)
    assert cfg.profile == "t4"
    assert cfg.dtype == "float16"  # from the t4 preset
    assert cfg.max_new_tokens == 7  # the override wins over the preset
    assert cfg.seed == 3
    assert cfg.n_layers == BaseConfig().n_layers  # untouched default


def test_cpu_preset_is_the_defaults():
    assert BaseConfig.preset("cpu") == BaseConfig()


def test_a100_uses_bf16():
    assert BaseConfig.preset("a100").dtype == "bfloat16"


def test_unknown_field_error_lists_fields():
    with pytest.raises(TypeError) as info:
        BaseConfig.preset("cpu", stepz=10)
    message = str(info.value)
    assert "stepz" in message
    assert "steps" in message and "seed" in message


def test_unknown_profile_is_an_error():
    with pytest.raises(ValueError, match="valid profiles"):
        BaseConfig.preset("h100")


def test_configs_are_frozen():
    cfg = BaseConfig.preset("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 1


def test_to_dict_round_trips():
    cfg = BaseConfig.preset("t4", seed=5)
    assert BaseConfig(**cfg.to_dict()) == cfg


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_preset_builds(cls, profile):
    # Catches a preset that names a field that does not exist (or was renamed).
    assert cls.preset(profile).profile == profile


@pytest.mark.parametrize("cls", [*CONFIGS, config.EvalSettings], ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls):
    # CONVENTIONS: one frozen dataclass per stage, a docstring on each field.
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    documented = set()
    for node, after in zip(body, body[1:], strict=False):
        is_doc = (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        )
        if isinstance(node, ast.AnnAssign) and is_doc:
            documented.add(node.target.id)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in documented]
    assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_eval_settings_are_one_nested_dataclass_read_and_set_by_their_flat_names():
    cfg = config.PPOConfig.preset("t4", eval_prompts=200, temperature=0.5)
    assert cfg.eval == config.EvalSettings(prompts=200, max_new_tokens=128, temperature=0.5, batch_size=64)
    assert (cfg.eval_prompts, cfg.max_new_tokens, cfg.temperature, cfg.eval_batch_size) == (200, 128, 0.5, 64)
    assert config.SFTConfig.preset("cpu").eval == config.EvalConfig.preset("cpu").eval  # one protocol
    back = json.loads(json.dumps(cfg.to_dict()))  # as a child process or config.json reads it
    assert config.PPOConfig(**back) == cfg
    assert config.parse_field(config.PPOConfig, "eval_prompts", "300") == 300
    with pytest.raises(TypeError, match="no field"):
        config.RewardConfig.preset("cpu", eval_batch_size=8)  # the reward model has no `eval`
    with pytest.raises(AttributeError, match="no attribute 'eval_batch_size'"):
        _ = config.RewardConfig.preset("cpu").eval_batch_size
