"""The SFT trainers' shared training fields are declared once (`latentrl.sft.config`); the loops share mechanics."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latentrl.config import ConfigError, config_from_dict
from latentrl.sft.coconut import CoconutConfig
from latentrl.sft.config import MetricsOutputConfig, SFTTrainingConfig, StageGateConfig, StepScheduleConfig
from latentrl.sft.cot import CoTSFTConfig
from latentrl.sft.loop import make_adamw
from latentrl.sft.superposition import SuperpositionSFTConfig

SHARED = (SFTTrainingConfig, StepScheduleConfig, MetricsOutputConfig, StageGateConfig)
TRAINERS = (CoTSFTConfig, CoconutConfig, SuperpositionSFTConfig)

# The only shared fields a trainer redeclares, each because its default really differs (the reason is a comment
# at the redeclaration).
OVERRIDES = {
    CoTSFTConfig: {"per_device_train_batch_size", "learning_rate", "eval_batch_size"},
    CoconutConfig: {"weight_decay", "max_grad_norm"},
    SuperpositionSFTConfig: {"max_steps", "warmup_steps", "learning_rate", "gate_eval_steps"},
}
# A trainer's own option that has a shared field's name but is another option: Coconut counts epochs, so its
# max_steps is an optional time box (null: every epoch), not StepScheduleConfig's schedule length.
SAME_NAME_OTHER_OPTION = {CoconutConfig: {"max_steps"}}


def own_fields(cls: type) -> set[str]:
    """The fields `cls` itself declares (annotated in its class body), not the inherited ones."""
    return set(cls.__dict__.get("__annotations__", {}))


def shared_fields() -> dict[str, type]:
    out: dict[str, type] = {}
    for cls in SHARED:
        for name in own_fields(cls):
            assert name not in out, f"{name} is declared in both {out[name].__name__} and {cls.__name__}"
            out[name] = cls
    return out


def test_each_shared_training_field_is_declared_once():
    shared = shared_fields()
    for cls in TRAINERS:
        redeclared = {n for n in own_fields(cls) if n in shared and issubclass(cls, shared[n])}
        other = {n for n in own_fields(cls) if n in shared and not issubclass(cls, shared[n])}
        assert other == SAME_NAME_OTHER_OPTION.get(cls, set()), f"{cls.__name__}: {sorted(other)}"
        assert redeclared == OVERRIDES[cls], (
            f"{cls.__name__} redeclares {sorted(redeclared - OVERRIDES[cls])} (inherit them from latentrl.sft.config) "
            f"or no longer overrides {sorted(OVERRIDES[cls] - redeclared)} (drop it from OVERRIDES)")
        mine = set(cls.__dataclass_fields__)
        for name, home in shared.items():
            if issubclass(cls, home):
                assert name in mine


@pytest.mark.parametrize("cls", TRAINERS)
def test_an_override_changes_only_the_default(cls):
    """A redeclared shared field keeps the type and rules of its one declaration, and really has another default."""
    shared = shared_fields()
    for name in OVERRIDES[cls]:
        base = shared[name].__dataclass_fields__[name]
        mine = cls.__dataclass_fields__[name]
        assert mine.type == base.type, name
        assert {k: v for k, v in mine.metadata.items() if k != "help"} == {
            k: v for k, v in base.metadata.items() if k != "help"}, name
        assert mine.default != base.default, f"{cls.__name__}.{name} repeats the shared default {base.default!r}"


def test_trainer_defaults_are_unchanged():
    """The defaults saved run configs and presets were written against (a field moving must not change them)."""
    cot, coco, sup = CoTSFTConfig(), CoconutConfig(), SuperpositionSFTConfig()
    assert (cot.per_device_train_batch_size, cot.learning_rate, cot.weight_decay, cot.max_grad_norm, cot.max_steps,
            cot.warmup_steps, cot.eval_batch_size, cot.lr_scheduler_type) == (
        128, 1e-3, 0.0, 1.0, 600, 50, 128, "constant_with_warmup")
    assert (coco.per_device_train_batch_size, coco.learning_rate, coco.weight_decay, coco.max_grad_norm,
            coco.max_steps, coco.eval_batch_size, coco.gradient_accumulation_steps) == (32, 1e-4, 0.01, 0.0, None, 64, 1)
    assert (sup.per_device_train_batch_size, sup.learning_rate, sup.weight_decay, sup.max_grad_norm, sup.max_steps,
            sup.warmup_steps, sup.eval_batch_size) == (32, 3e-4, 0.0, 1.0, 300, 20, 64)
    assert (coco.gate_eval_steps, sup.gate_eval_steps, coco.gate_num_examples, sup.gate_threshold) == (16, 20, 256, 0.9)
    # superposition SFT's AdamW used torch's defaults before it had these fields
    assert (sup.adam_beta1, sup.adam_beta2, sup.adam_epsilon) == (0.9, 0.999, 1e-8)


@pytest.mark.parametrize("cls", TRAINERS)
def test_shared_fields_load_with_their_rules_and_did_you_mean(cls):
    assert config_from_dict(cls, {"learning_rate": 0.5, "seed": 3}).learning_rate == 0.5
    with pytest.raises(ConfigError, match="learning_rate"):
        config_from_dict(cls, {"learning_rate": 0.0})
    with pytest.raises(ConfigError, match="learning_rate"):
        config_from_dict(cls, {"learning_rat": 1e-3})


@pytest.mark.parametrize("cls", (CoTSFTConfig, CoconutConfig))
def test_report_to_none_is_refused_with_other_sinks(cls):
    with pytest.raises(ConfigError, match="none"):
        cls(report_to=["jsonl", "none"])


# ------------------------------------------------------------------------------------------------ loop mechanics
def test_make_adamw_groups():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    cfg = CoTSFTConfig(weight_decay=0.1, adam_beta1=0.8, adam_epsilon=1e-6)
    split = make_adamw(model.parameters(), cfg, exempt_1d_from_decay=True)
    assert [len(g["params"]) for g in split.param_groups] == [1, 3]
    assert [g["weight_decay"] for g in split.param_groups] == [0.1, 0.0]
    one = make_adamw(model.parameters(), cfg)
    assert len(one.param_groups) == 1 and one.param_groups[0]["weight_decay"] == 0.1
    assert one.param_groups[0]["betas"] == (0.8, 0.999) and one.param_groups[0]["eps"] == 1e-6


def test_field_order_starts_with_the_shared_fields():
    """`--help-config` lists the shared training fields first, then each trainer's own."""
    names = [f.name for f in dataclasses.fields(CoconutConfig)]
    assert names[: len(dataclasses.fields(SFTTrainingConfig))] == [f.name for f in dataclasses.fields(SFTTrainingConfig)]
