"""The method contract: a method builds its parts without a trainer, every method updates through the trainer's one
loop (collect -> prepare -> update -> log), and a method registered from a test file alone trains and evaluates."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, ClassVar

import pytest
import torch

import latentrl.config as config_module
from latentrl.cli import main
from latentrl.config import (
    METHOD_PRESETS,
    BaseConfig,
    ConfigError,
    GRPOConfig,
    LatentConfig,
    cfg_field,
    config_help,
    load_config,
    mount_section,
    save_config,
)
from latentrl.data import make_examples
from latentrl.eval import evaluate
from latentrl.methods import METHODS, Method, MethodContext, get_method, register_method
from latentrl.methods.dlr import DLRConfig
from latentrl.methods.dlr.prefix_trainer import DLRPrefixTrainer
from latentrl.optimizer_steps import TrainingDivergedError
from latentrl.rl.trainer import GRPOTrainer
from latentrl.testing import char_sum_reward, tiny_chain_sum_model, word_count_reward


def examples(n: int = 8):
    return make_examples("chain_sum", n, seed=0, length=3)


def config(tmp_path, **kw) -> GRPOConfig:
    base = dict(model_name_or_path="tiny", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                num_generations=4, max_completion_length=8, learning_rate=1e-2, save_steps=0, report_to=["none"])
    base.update(kw)
    return GRPOConfig.for_method(base.pop("method", "grpo"), **base)


def test_method_parts_are_built_without_a_trainer_and_score_like_the_trainer(tmp_path):
    cfg = config(tmp_path, method="hrpo")
    model = tiny_chain_sum_model()
    reference = copy.deepcopy(model)
    parts = get_method("hrpo").build(model, cfg)
    assert "hrpo_gate" in model.side_modules  # the side module exists without any optimizer
    assert parts.operator.name == "hrpo_gate" and parts.has_latent
    rows = examples(6)
    alone = evaluate(model, rows, k=2, temperature=cfg.temperature, **parts.eval_kwargs(cfg))
    trainer = GRPOTrainer(cfg, reference, examples(), reward_funcs=[word_count_reward])
    via_trainer = trainer.evaluate(rows, k=2)
    drop = ("wall_s",)
    assert {k: v for k, v in alone.to_dict().items() if k not in drop} == \
           {k: v for k, v in via_trainer.to_dict().items() if k not in drop}


def test_a_plain_trainer_refuses_a_method_with_its_own_trainer(tmp_path):
    with pytest.raises(Exception, match="DLRPrefixTrainer"):
        GRPOTrainer(config(tmp_path, method="dlr_prefix"), tiny_chain_sum_model(), examples(), reward_funcs=[char_sum_reward])


def test_dlr_updates_through_the_shared_loop(tmp_path):
    # DLR defines what it prepares and which loss pieces it backpropagates; the loop (autocast, divergence check
    # on every process, clipping, optimizer and schedule) is GRPOTrainer's
    assert not {"train_step", "update"} & set(DLRPrefixTrainer.__dict__)
    t = DLRPrefixTrainer(config(tmp_path, method="dlr_prefix", reward_weights=None), tiny_chain_sum_model(), examples(),
                   reward_funcs=[char_sum_reward],
                   dlr=DLRConfig(num_latent_steps=3, latent_dim=4, assistant_hidden_size=16, nll_coef=0.5))
    m = t.train_step()
    assert t.global_step == 1 and {"loss", "grad_norm", "dlr/nll", "compute/main_flops"} <= set(m)
    dlr_loss = t.dlr_loss
    t.dlr_loss = lambda *a: (dlr_loss(*a)[0] * float("nan"), {})  # a diverged objective
    with pytest.raises(TrainingDivergedError, match="non-finite loss"):
        t.train_step()


def test_runtime_hooks_get_the_typed_context_never_the_trainer(tmp_path):
    seen: dict[str, type] = {}

    class Recording(Method):
        name = "recording"

        def __getattribute__(self, attr):
            value = object.__getattribute__(self, attr)
            if attr in HOOKS:
                def record(ctx, *a, **kw):
                    seen[attr] = type(ctx)
                    return value(ctx, *a, **kw)
                return record
            return value

    HOOKS = ("param_groups", "compute_advantages", "token_advantages", "reference_logprobs", "rollout_metrics",
             "policy_kind_masks", "extra_loss", "on_train_begin")
    t = GRPOTrainer(config(tmp_path, beta=0.1), tiny_chain_sum_model(), examples(), reward_funcs=[word_count_reward],
                    method=Recording())
    t.train_step()
    assert set(seen) == set(HOOKS) and set(seen.values()) == {MethodContext}


def test_compute_counter_counts_every_policy_pass(tmp_path):
    # rollout (padded prefill + one position per decode step but the last), the KL reference replay and the
    # update's forward (+ 2 forward-equivalents of backward), at 2 x matmul weights per position
    t = GRPOTrainer(config(tmp_path, beta=0.1), tiny_chain_sum_model(), examples(), reward_funcs=[word_count_reward])
    batch, _ = t.collect()
    t.update(t.prepare(batch))
    m = t.compute_metrics()
    n, p, c = batch.rollout.batch_size, batch.rollout.prompt_ids.shape[1], batch.rollout.completion_ids.shape[1]
    forward = n * (p + c - 1) + n * (p + c) + n * (p + c)  # rollout, reference replay, update forward
    weights = sum(q.numel() for q in t.model.model.parameters()) - t.model.model.get_input_embeddings().weight.numel()
    weights += t.model.model.get_output_embeddings().weight.numel() * (t.model.model.config.tie_word_embeddings)
    assert m["compute/main_tokens"] == forward
    assert m["compute/main_flops"] == 2.0 * weights * forward
    assert m["compute/main_backward_flops"] == 2.0 * weights * 2 * n * (p + c)
    assert m["compute/total_flops"] == m["compute/main_flops"] + m["compute/main_backward_flops"]


def test_zero_max_grad_norm_means_no_clipping(tmp_path):
    # the config says "0 disables clipping": the step equals one with a bound no gradient reaches
    params = []
    for i, bound in enumerate((0.0, 1e12)):
        t = GRPOTrainer(config(tmp_path / str(i), max_grad_norm=bound), tiny_chain_sum_model(), examples(),
                        reward_funcs=[word_count_reward])
        t.train_step()
        params.append(torch.cat([p.detach().flatten() for p in t.model.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)


@dataclasses.dataclass(kw_only=True)
class ToySection(BaseConfig):
    """The toy method's own options (`toy_length_penalty.*`), declared here and mounted on GRPOConfig by name."""

    coef: float = cfg_field(1e-3, "Weight of the penalty on the replayed hidden states' mean square.", min=0.0)


class ToyLengthPenalty(Method):
    """A toy method defined in this test file only: soft-mixture thoughts, plus a small penalty on the norm of the
    replayed last hidden states (an extra objective next to the GRPO surrogate), weighted by its own option."""

    name = "toy_length_penalty"
    description = "test-only method"
    needs_hidden = True
    defaults: ClassVar[dict[str, Any]] = {"latent.operator": "soft_mixture", "latent.num_latent_steps": 2,
                                          "latent.top_k": 4}

    def extra_loss(self, ctx, micro, out):
        penalty = out.hidden.float().pow(2).mean()
        return ctx.args.toy_length_penalty.coef * penalty, {"toy/hidden_sq": float(penalty),
                                                            "toy/coef": ctx.args.toy_length_penalty.coef}


@pytest.fixture
def toy_method(monkeypatch):
    # the registries are restored afterwards, so the toy section does not leak into other tests' configs
    monkeypatch.setattr(GRPOConfig, "MOUNTED_SECTIONS", dict(GRPOConfig.MOUNTED_SECTIONS))
    monkeypatch.setattr(GRPOConfig, "__dataclass_fields__", dict(GRPOConfig.__dataclass_fields__))
    monkeypatch.setattr(GRPOConfig, "__annotations__", dict(GRPOConfig.__annotations__))
    mount_section(GRPOConfig, "toy_length_penalty", ToySection, help="The toy method's options.")
    register_method(ToyLengthPenalty)
    try:
        yield ToyLengthPenalty.name
    finally:
        METHODS.pop(ToyLengthPenalty.name, None)
        METHOD_PRESETS.pop(ToyLengthPenalty.name, None)
        config_module._HINTS_CACHE.pop(GRPOConfig, None)


def test_a_mounted_section_is_an_ordinary_config_section(toy_method, tmp_path):
    cfg = load_config(GRPOConfig, None, ["model_name_or_path=m", f"method={toy_method}", "toy_length_penalty.coef=0.5"])
    assert cfg.toy_length_penalty == ToySection(coef=0.5) and cfg.to_dict()["toy_length_penalty"] == {"coef": 0.5}
    assert load_config(GRPOConfig, save_config(cfg, tmp_path / "c.yaml")) == cfg  # YAML round trip
    assert cfg != dataclasses.replace(cfg, toy_length_penalty=ToySection(coef=0.25))
    assert dataclasses.replace(cfg, seed=7).toy_length_penalty.coef == 0.5  # replace keeps mounted sections
    assert "toy_length_penalty.coef" in config_help(GRPOConfig)
    with pytest.raises(ConfigError, match=r"toy_length_penalty.coef.*must be >= 0"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "toy_length_penalty.coef=-1"])
    with pytest.raises(ConfigError, match="did you mean 'toy_length_penalty.coef'"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "toy_length_penalty.cof=1"])
    with pytest.raises(ValueError, match="already mounted"):
        mount_section(GRPOConfig, "toy_length_penalty", LatentConfig, help="another class under the same name")


def test_a_method_registered_from_a_test_file_trains_and_evaluates_through_the_cli(toy_method, tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_chain_sum_model().save_pretrained(model_dir)
    run = tmp_path / "run"
    rc = main(["train", f"method={toy_method}", f"model_name_or_path={model_dir}", "dataset=chain_sum",
               "num_train_examples=16", "max_steps=2", "per_device_train_batch_size=8", "num_generations=4",
               "max_completion_length=8", "save_steps=1", "report_to=[jsonl]", f"output_dir={run}",
               "reward_funcs=[correctness]", "toy_length_penalty.coef=0.002"])
    assert rc == 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "toy/hidden_sq" in r]
    assert len(steps) == 2 and all(r["completions/mean_latent"] == 2.0 and r["toy/coef"] == pytest.approx(0.002) for r in steps)
    capsys.readouterr()
    rc = main(["eval", "--model", str(run / "checkpoint-2"), "--data", "chain_sum", "--num", "4", "--k", "0",
               "--max-new", "8"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["method"] == toy_method and out["mean_latent_positions"] == 2.0  # read from the run's config
    assert out["thought_dependence"]["n"] == 4
