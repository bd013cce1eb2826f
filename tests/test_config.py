import dataclasses
import textwrap

import pytest

from latentrl.config import (
    LATENT_OPERATORS,
    BaseConfig,
    ConfigError,
    GRPOConfig,
    LatentConfig,
    cfg_field,
    config_from_dict,
    config_help,
    config_to_dict,
    load_config,
    save_config,
    validate_config,
)


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_defaults_and_required_model():
    cfg = GRPOConfig(model_name_or_path="tiny")
    assert cfg.num_generations == 8 and cfg.loss_type == "dapo" and cfg.latent.operator == "none"
    assert cfg.reward_funcs == ["correctness"] and cfg.report_to == ["jsonl", "tensorboard"]
    # mutable defaults are fresh copies per instance
    other = GRPOConfig(model_name_or_path="tiny")
    cfg.reward_funcs.append("format")
    cfg.latent.after_latent_tokens.append("<x>")
    assert other.reward_funcs == ["correctness"] and other.latent.after_latent_tokens == []
    with pytest.raises(ConfigError, match="model_name_or_path"):
        load_config(GRPOConfig)


def test_yaml_then_overrides_precedence(tmp_path):
    p = write(
        tmp_path,
        """
        model_name_or_path: tiny
        learning_rate: 3.0e-4
        num_generations: 4
        latent:
          operator: hrpo_gate
          top_k: 5
        """,
    )
    cfg = load_config(GRPOConfig, p, ["learning_rate=1e-4", "latent.top_k=7", "latent.answer_delimiter=####"])
    assert cfg.learning_rate == pytest.approx(1e-4)  # override beats YAML; "1e-4" (a YAML string) -> float
    assert isinstance(cfg.learning_rate, float)
    assert cfg.num_generations == 4  # YAML beats default
    assert cfg.latent.operator == "hrpo_gate"  # nested YAML kept when a sibling key is overridden
    assert cfg.latent.top_k == 7
    assert cfg.latent.answer_delimiter == "####"  # raw text for str options ('#' is not a YAML comment here)
    assert cfg.max_steps is None  # default untouched (null: 100 steps unless num_train_epochs is given)


def test_override_type_coercion():
    cfg = load_config(
        GRPOConfig,
        None,
        [
            "model_name_or_path=tiny",
            "mask_truncated_completions=true",
            "epsilon_high=0.28",
            "top_k=null",
            "dual_clip=3",
            "reward_funcs=[correctness, format]",
            "reward_weights=[1, 0.5]",
            "report_to=jsonl",
            "latent.num_latent_steps=6",
            "latent.operator=gumbel_topk",
            "latent.after_latent_tokens=<|end-latent|>,<eos>",
            "--max-steps=7",
        ],
    )
    assert cfg.mask_truncated_completions is True
    assert cfg.epsilon_high == pytest.approx(0.28)
    assert cfg.top_k is None
    assert cfg.dual_clip == 3.0 and isinstance(cfg.dual_clip, float)
    assert cfg.reward_funcs == ["correctness", "format"]
    assert cfg.reward_weights == [1.0, 0.5] and all(isinstance(w, float) for w in cfg.reward_weights)
    assert cfg.report_to == ["jsonl"]
    assert cfg.latent.num_latent_steps == 6
    assert cfg.latent.after_latent_tokens == ["<|end-latent|>", "<eos>"]
    assert cfg.max_steps == 7


def test_null_for_optional_in_yaml_and_override(tmp_path):
    p = write(tmp_path, "model_name_or_path: m\nepsilon_high: 0.3\nlatent:\n  num_latent_steps: null\n")
    cfg = load_config(GRPOConfig, p, ["epsilon_high=null"])
    assert cfg.epsilon_high is None and cfg.latent.num_latent_steps is None
    with pytest.raises(ConfigError, match="'learning_rate'.*cannot be null"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "learning_rate=null"])


def test_unknown_key_suggests_close_names(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, None, ["model_name_or_path=m", "num_generation=4"])
    msg = str(e.value)
    assert "'num_generation'" in msg and "did you mean 'num_generations'" in msg
    assert "Valid keys" in msg and "learning_rate" in msg
    # nested and YAML
    p = write(tmp_path, "model_name_or_path: m\nlatent:\n  num_latent_step: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, p)
    assert "'latent.num_latent_step'" in str(e.value) and "latent.num_latent_steps" in str(e.value)
    assert str(p) in str(e.value)
    # a nested key given at top level points to its section
    with pytest.raises(ConfigError, match="latent.gumbel_tau"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "gumbel_tau=0.5"])


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, None, ["model_name_or_path=m", "loss_type=ppo"])
    msg = str(e.value)
    assert "'loss_type'" in msg and "'ppo'" in msg
    for choice in ("grpo", "bnpo", "dr_grpo", "dapo"):
        assert choice in msg
    with pytest.raises(ConfigError) as e:
        LatentConfig(operator="coconut")
    assert all(op in str(e.value) for op in LATENT_OPERATORS)
    with pytest.raises(ConfigError, match="report_to\\[1\\]"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "report_to=jsonl,mlflow"])


def test_range_and_type_violations():
    with pytest.raises(ConfigError, match=r"'temperature'.*-1\.0.*> 0\.0"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "temperature=-1"])
    with pytest.raises(ConfigError, match=r"'latent.top_p'.*1\.5.*<= 1\.0"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "latent.top_p=1.5"])
    with pytest.raises(ConfigError, match=r"'max_steps'.*'ten'.*integer"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "max_steps=ten"])
    with pytest.raises(ConfigError, match=r"'max_steps'.*2\.5.*integer"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "max_steps=2.5"])
    with pytest.raises(ConfigError, match=r"'dynamic_sampling'.*boolean"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "dynamic_sampling=maybe"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "max_steps"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "seed.x=1"])
    # direct construction validates too
    with pytest.raises(ConfigError, match="num_generations"):
        GRPOConfig(model_name_or_path="m", num_generations=1)


def test_missing_file_and_yaml_syntax_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(GRPOConfig, missing)
    bad = write(tmp_path, "model_name_or_path: m\nlatent:\n  top_k: [1, 2\nseed: 3\n", name="bad.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, bad)
    assert "bad.yaml" in str(e.value) and "line" in str(e.value)
    not_mapping = write(tmp_path, "- a\n- b\n", name="list.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(GRPOConfig, not_mapping)


def test_cross_field_validation():
    with pytest.raises(ConfigError) as e:
        GRPOConfig(model_name_or_path="m", per_device_train_batch_size=6, num_generations=4)
    assert "per_device_train_batch_size" in str(e.value) and "num_generations" in str(e.value)
    # gradient accumulation makes the global batch divisible
    cfg = GRPOConfig(model_name_or_path="m", per_device_train_batch_size=6, gradient_accumulation_steps=2, num_generations=4)
    assert cfg.generation_batch_size == 12
    with pytest.raises(ConfigError, match="epsilon_high.*epsilon"):
        GRPOConfig(model_name_or_path="m", epsilon=0.2, epsilon_high=0.1)
    with pytest.raises(ConfigError, match="reward_weights.*reward_funcs"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "reward_funcs=a,b", "reward_weights=[1.0]"])
    with pytest.raises(ConfigError, match="latent.*noise_clamp_min.*noise_clamp_max"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "latent.noise_clamp_min=4"])
    with pytest.raises(ConfigError, match="num_latent_steps.*operator"):
        LatentConfig(num_latent_steps=4)
    with pytest.raises(ConfigError, match="num_latent_steps.*max_completion_length"):
        load_config(
            GRPOConfig,
            None,
            ["model_name_or_path=m", "max_completion_length=8", "latent.operator=hidden_state", "latent.num_latent_steps=10"],
        )
    # mutation after construction is caught by validate_config
    cfg = GRPOConfig(model_name_or_path="m")
    cfg.num_generations = 3
    with pytest.raises(ConfigError, match="divisible"):
        validate_config(cfg)


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        GRPOConfig,
        None,
        [
            "model_name_or_path=some/model",
            "epsilon_high=0.28",
            "reward_funcs=[correctness, format]",
            "reward_weights=[1.0, 0.25]",
            "latent.operator=hrpo_gate",
            "latent.answer_delimiter=####",
            "latent.after_latent_tokens=[null_token, '123']",
            "eval_dataset=null",
        ],
    )
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(GRPOConfig, path)
    assert again == cfg
    assert config_to_dict(again)["latent"]["answer_delimiter"] == "####"
    assert config_from_dict(GRPOConfig, config_to_dict(cfg)) == cfg


def test_every_field_has_help_and_appears_in_config_help():
    for cls in (GRPOConfig, LatentConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help"
    text = config_help(GRPOConfig)
    for f in dataclasses.fields(GRPOConfig):
        if f.name != "latent":
            assert f.name in text
    for f in dataclasses.fields(LatentConfig):
        assert f"latent.{f.name}" in text
    assert "(required)" in text and "dapo" in text  # defaults shown


def test_cfg_field_requires_help_and_custom_config():
    with pytest.raises(TypeError):
        cfg_field(1)

    @dataclasses.dataclass(kw_only=True)
    class Toy(BaseConfig):
        n: int = cfg_field(1, "a count", min=0)
        names: list[str] = cfg_field(["a"], "names", choices=("a", "b"))

        def validate(self):
            if self.n == 3:
                raise ConfigError("n must not be 3")

    assert load_config(Toy, None, ["n=2", "names=b,a"]) == Toy(n=2, names=["b", "a"])
    with pytest.raises(ConfigError, match="n must not be 3"):
        load_config(Toy, None, ["n=3"])


def test_method_presets_fill_only_the_keys_the_user_left_unset(tmp_path):
    from latentrl.config import GRPOConfig, config_from_dict, load_config
    from latentrl.methods import get_method

    hrpo = get_method("hrpo").defaults
    cfg = config_from_dict(GRPOConfig, {"model_name_or_path": "m", "method": "hrpo"})
    assert cfg.temperature == hrpo["temperature"] == 0.5 and cfg.beta == 0.005 and cfg.policy_loss == "reinforce"
    assert cfg.latent.operator == "hrpo_gate" and cfg.latent.latent_temperature == 0.5
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model_name_or_path: m\nmethod: hrpo\nbeta: 0.0\nhrpo:\n  gate_c: 4.0\n")
    cfg = load_config(GRPOConfig, yaml_file, ["temperature=0.9"])
    assert (cfg.beta, cfg.temperature, cfg.hrpo.gate_c) == (0.0, 0.9, 4.0)  # the user's values win
    assert cfg.latent.operator == "hrpo_gate" and cfg.loss_type == "grpo"  # the preset fills the rest
    assert GRPOConfig.for_method("hrpo", model_name_or_path="m", beta=0.1).beta == 0.1
    assert GRPOConfig(model_name_or_path="m", method="hrpo").temperature == 1.0  # plain construction: field defaults
    plain = config_from_dict(GRPOConfig, {"model_name_or_path": "m"})
    assert plain.temperature == 1.0 and plain.latent.operator == "none"  # grpo has no preset values


def test_advantage_epsilon_reaches_the_default_advantages():
    import torch

    from latentrl.config import GRPOConfig
    from latentrl.methods import get_method

    class Batch:
        rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])

    class Trainer:
        args = GRPOConfig(model_name_or_path="m", num_generations=4, per_device_train_batch_size=4)

    std = Batch.rewards.std().item()
    assert get_method("grpo").compute_advantages(Trainer, Batch)[0].item() == pytest.approx(0.75 / (std + 1e-4))
    Trainer.args = GRPOConfig(model_name_or_path="m", num_generations=4, per_device_train_batch_size=4,
                              advantage_epsilon=1.0)
    assert get_method("grpo").compute_advantages(Trainer, Batch)[0].item() == pytest.approx(0.75 / (std + 1.0))


def test_choices_are_the_registries():
    """latent.operator, policy_loss, loss_type and kl_estimator accept exactly what their registries hold."""
    from latentrl.rl.losses import KL_PENALTIES, LOSS_AGGREGATIONS, POLICY_LOSSES
    from latentrl.thoughts import THOUGHT_OPERATORS

    assert set(LATENT_OPERATORS) == {"none", *THOUGHT_OPERATORS}
    for key, registry in (("policy_loss", POLICY_LOSSES), ("loss_type", LOSS_AGGREGATIONS),
                          ("kl_estimator", KL_PENALTIES)):
        for name in registry:
            assert getattr(load_config(GRPOConfig, None, ["model_name_or_path=m", f"{key}={name}"]), key) == name
    with pytest.raises(ConfigError, match="'gaussian'"):  # a name no operator is registered under
        LatentConfig(operator="gaussian")
    with pytest.raises(ConfigError, match="num_iterations must be 1"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "policy_loss=no_ratio", "num_iterations=2"])


def test_a_registered_policy_loss_becomes_a_choice():
    from latentrl.rl.losses import POLICY_LOSSES, register_policy_loss

    @register_policy_loss("test_only_loss")
    def _loss(logprobs, old_logprobs, advantages, **kw):
        return -advantages * logprobs, {}

    try:
        cfg = load_config(GRPOConfig, None, ["model_name_or_path=m", "policy_loss=test_only_loss"])
        assert cfg.policy_loss == "test_only_loss"
    finally:
        POLICY_LOSSES.pop("test_only_loss")


def test_the_method_help_names_every_registered_method():
    """config.py cannot import the registry (a lower layer), so its help lists the names: kept in step here."""
    import dataclasses

    from latentrl.config import GRPOConfig
    from latentrl.methods import METHODS

    text = next(f for f in dataclasses.fields(GRPOConfig) if f.name == "method").metadata["help"]
    import re

    assert set(METHODS) <= set(re.findall(r"\w+", text)), text


def test_unknown_methods_and_whole_sections_are_refused_by_the_config():
    from latentrl.config import ConfigError, GRPOConfig, LatentConfig

    with pytest.raises(ConfigError, match=r"unknown method 'hrp0' \(did you mean 'hrpo'\?\)"):
        GRPOConfig.for_method("hrp0", model_name_or_path="m")
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        GRPOConfig(model_name_or_path="m", method="nope")
    with pytest.raises(ConfigError, match="pass latent as a dict"):
        GRPOConfig.for_method("lepo", model_name_or_path="m", latent=LatentConfig(operator="gumbel_softmax"))
    from latentrl.config import LoraConfig

    assert GRPOConfig.for_method("grpo", model_name_or_path="m", lora=LoraConfig(enabled=True)).lora.enabled  # no preset
    lepo = GRPOConfig.for_method("lepo", model_name_or_path="m", latent={"num_latent_steps": 3})
    assert lepo.latent.num_latent_steps == 3 and lepo.latent.operator == "gumbel_softmax"  # the preset kept
