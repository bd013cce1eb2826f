"""Özeren & Aßenmacher's RL on Coconut latents: `coconut_grpo` (GRPO, deterministic thoughts) and `latent_rl`
(value head). One trainer step each, what is (and is not) trained, value-head pre-training, detached latents,
value-head save/load, and the presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentrl.config import ConfigError, GRPOConfig, LatentConfig, load_config
from latentrl.data import make_examples, task_vocabulary
from latentrl.methods import get_method
from latentrl.methods.latent_rl import (
    VALUE_HEAD,
    LatentRL,
    ValueHead,
    attach_value_head,
    collect_value_data,
    pretrain_value_head,
)
from latentrl.model import LatentModel
from latentrl.rl.trainer import GRPOTrainer
from latentrl.testing import tiny_latent_model, word_count_reward

REPO = Path(__file__).resolve().parents[1]
N_THOUGHTS = 3




def half_right(prompts, completions, **kw):
    """A 0/1 'correctness' that is 1 for about half the completions (value-head labels of both classes)."""
    return [float(len(c.split()) % 2) for c in completions]


def examples(n=16):
    return make_examples("chain_sum", n, seed=0, length=3)


def model(seed=0):
    return tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=seed, hidden=32)


def config(tmp_path, method, **kw):
    base = dict(model_name_or_path="tiny", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                num_generations=4, max_completion_length=8, learning_rate=1e-2, save_steps=0, report_to=["none"],
                method=method, temperature=0.7, epsilon=0.1,
                latent=LatentConfig(operator="hidden_state", num_latent_steps=N_THOUGHTS))
    base.update(kw)
    return GRPOConfig(**base)


def lm_params(lm):
    return torch.cat([p.detach().flatten() for p in lm.model.parameters()])


def head_params(lm):
    return torch.cat([p.detach().flatten() for p in lm.side_modules[VALUE_HEAD].parameters()])


# ---------------------------------------------------------------------------------------------- coconut_grpo
def test_coconut_grpo_step_trains_on_answer_tokens_only(tmp_path):
    lm = model()
    t = GRPOTrainer(config(tmp_path, "coconut_grpo"), lm, examples(), reward_funcs=[word_count_reward])
    assert t.method.init == "coconut_sft" and t.method.name == "coconut_grpo"
    row = t.rows[0]
    assert t.method.prompt_text(row) == row["prompt"] + "<|start-latent|>"
    batch = t.generate_and_score(t.rows[:2])
    ro = batch.rollout
    assert ro.num_latent.tolist() == [N_THOUGHTS] * 8
    assert (ro.completion_ids[:, :N_THOUGHTS] == lm.latent_ids.latent).all()
    assert (ro.completion_ids[:, N_THOUGHTS] == lm.latent_ids.end).all() and ro.forced_mask[:, N_THOUGHTS].all()
    # prompts end with <|start-latent|>
    assert (ro.prompt_ids[:, -1] == lm.latent_ids.start).all()
    # deterministic thoughts: the G completions of a prompt share them; exploration is in the answer tokens
    h = ro.payload["hidden"][:, :N_THOUGHTS].view(2, 4, N_THOUGHTS, -1)
    torch.testing.assert_close(h, h[:, :1].expand_as(h))
    policy = ro.policy_mask(t.operator)
    assert not policy[:, : N_THOUGHTS + 1].any() and policy[:, N_THOUGHTS + 1].all()
    before = lm_params(lm)
    m = t.train_step()
    assert m["grad_norm"] > 0 and torch.isfinite(torch.tensor(m["loss"]))
    assert not torch.equal(lm_params(lm), before)
    assert m["completions/mean_latent"] == N_THOUGHTS and "latent/hidden_norm_max" in m


def test_coconut_methods_check_their_config(tmp_path):
    with pytest.raises(ConfigError, match="num_latent_steps"):
        GRPOTrainer(config(tmp_path, "coconut_grpo", latent=LatentConfig(operator="hidden_state")), model(),
                    examples(), reward_funcs=[word_count_reward])
    with pytest.raises(ConfigError, match="operator"):
        GRPOTrainer(config(tmp_path, "coconut_grpo", latent=LatentConfig(operator="soft_mixture", num_latent_steps=2)),
                    model(), examples(), reward_funcs=[word_count_reward])
    bare = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), add_latent_tokens=False)
    with pytest.raises(ValueError, match="latent tokens"):
        GRPOTrainer(config(tmp_path, "latent_rl"), bare, examples(), reward_funcs=[word_count_reward])


# ---------------------------------------------------------------------------------------------- latent_rl
def test_latent_rl_step_trains_backbone_and_value_head(tmp_path):
    lm = model()
    method = LatentRL(pretrain_prompts=4, pretrain_epochs=3)
    t = GRPOTrainer(config(tmp_path, "latent_rl"), lm, examples(), reward_funcs=[word_count_reward], method=method)
    assert t.method.needs_hidden and t.method.init == "coconut_sft"
    head = lm.side_modules[VALUE_HEAD]
    assert isinstance(head, ValueHead)
    dims = [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert dims == [128, 32, 8, 1] and head.mlp[0].in_features == lm.hidden_size
    batch = t.generate_and_score(t.rows[:2])
    assert t.method.policy_kind_masks(t.ctx, batch, batch.rollout.policy_mask(t.operator)) == {}
    before_lm, before_head = lm_params(lm), head_params(lm)
    m = t.train_step()
    # pre-trained at the first step (the checkpoint had no head), then trained jointly
    assert m["value/pretrain_bce_after"] < m["value/pretrain_bce_before"]
    assert {"value/sigmoid_mean", "value/bce", "value/accuracy", "latent_rl/objective"} <= set(m)
    assert 0.0 < m["value/sigmoid_mean"] < 1.0
    assert not torch.equal(lm_params(lm), before_lm) and not torch.equal(head_params(lm), before_head)
    assert "clip_ratio/low_mean" not in m  # no policy-gradient term
    # a second step does not pre-train again
    m2 = t.train_step()
    assert "value/pretrain_bce_before" not in m2


def _loss_grads(t, micro, lm):
    lm.zero_grad(set_to_none=True)
    loss, _ = t.compute_loss(micro, num_sequences=micro.rewards.numel(), num_tokens=1.0, num_micro=1)
    loss.backward()
    lm_g = {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}
    head_g = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
              for n, p in lm.side_modules[VALUE_HEAD].named_parameters()}
    return loss, lm_g, head_g


def test_latent_rl_objective_split_and_detached_latents(tmp_path):
    """The policy term reaches the backbone only, the BCE term the head only; stored thoughts get no gradient."""
    lm = model()
    t = GRPOTrainer(config(tmp_path, "latent_rl"), lm, examples(), reward_funcs=[half_right],
                    method=LatentRL(pretrain_prompts=0, label_func=half_right))
    batch = t.generate_and_score(t.rows[:2])
    t._prepare_for_update(batch)
    payload = batch.rollout.payload["hidden"]
    payload.requires_grad_(True)
    # policy only: no gradient to the head
    t.method.value_loss_coef = 0.0
    loss, lm_g, head_g = _loss_grads(t, batch, lm)
    assert payload.grad is None  # the generated latents are detached constants
    assert all(float(g.abs().max()) == 0.0 for g in head_g.values())
    assert max(float(g.abs().max()) for g in lm_g.values()) > 0
    # hand computation of the policy objective: -mean_rows mean_latent sigmoid(V(h))
    from latentrl.replay import replay

    out = replay(lm, t.operator, batch.rollout, return_hidden=True)
    lat = batch.rollout.latent_mask & batch.rollout.completion_mask
    v = torch.sigmoid(lm.side_modules[VALUE_HEAD](out.hidden))
    expect = -((v * lat).sum(-1) / lat.sum(-1)).mean()
    torch.testing.assert_close(loss.detach(), expect.detach(), atol=1e-6, rtol=1e-5)
    # with the BCE term: the backbone gradient is unchanged, the head's equals the hand-computed BCE gradient
    t.method.value_loss_coef = 1.0
    _, lm_g_full, head_g_full = _loss_grads(t, batch, lm)
    for n in lm_g:  # the BCE term adds nothing to the backbone
        torch.testing.assert_close(lm_g_full[n], lm_g[n], atol=1e-7, rtol=1e-6)
    head = lm.side_modules[VALUE_HEAD]
    head.zero_grad(set_to_none=True)
    labels = torch.tensor(half_right(None, batch.completions))
    logits = head(out.hidden.detach())
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels[:, None].expand_as(logits), reduction="none", pos_weight=torch.tensor(20.0))
    ((bce * lat).sum(-1) / lat.sum(-1)).mean().backward()
    for n, p in head.named_parameters():
        torch.testing.assert_close(head_g_full[n], p.grad, atol=1e-6, rtol=1e-5)
    assert payload.grad is None


def test_value_head_pretraining_lowers_bce_on_a_fixed_set():
    lm = model(seed=1)
    X, y, n_rollouts = collect_value_data(lm, examples(6), num_latent_steps=N_THOUGHTS, samples_per_prompt=2,
                                          temperature=1.0, max_new_positions=8, reward_func=half_right)
    assert n_rollouts == 12 and X.shape == (12 * N_THOUGHTS, lm.hidden_size) and y.shape == (12 * N_THOUGHTS,)
    assert 0 < float(y.mean()) < 1
    res = pretrain_value_head(lm, features=(X, y), epochs=30, learning_rate=3e-3, batch_size=8)
    bce = [h["bce"] for h in res.history]
    assert bce[-1] < bce[0] * 0.9
    assert res.num_features == 12 * N_THOUGHTS
    assert lm.side_modules[VALUE_HEAD].pretrained
    # from rollouts directly (the model path), same result shape
    lm2 = model(seed=1)
    res2 = pretrain_value_head(lm2, examples(6), num_latent_steps=N_THOUGHTS, samples_per_prompt=2, temperature=1.0,
                               max_new_positions=8, reward_func=half_right, epochs=30, learning_rate=3e-3,
                               batch_size=8)
    assert res2.num_rollouts == 12 and res2.history[-1]["bce"] < res2.history[0]["bce"]


def test_value_head_is_saved_and_loaded_with_the_model(tmp_path):
    lm = model()
    pretrain_value_head(lm, features=(torch.randn(20, lm.hidden_size), (torch.arange(20) % 2).float()), epochs=2)
    want = head_params(lm)
    lm.save_pretrained(tmp_path / "ckpt")
    loaded = LatentModel.from_pretrained(tmp_path / "ckpt")
    t = GRPOTrainer(config(tmp_path / "run", "latent_rl"), loaded, examples(), reward_funcs=[word_count_reward])
    torch.testing.assert_close(head_params(loaded), want)
    assert loaded.side_modules[VALUE_HEAD].pretrained  # a saved head is not pre-trained again
    m = t.train_step()
    assert "value/pretrain_bce_before" not in m
    # and a trainer checkpoint round-trips the trained head
    path = t.save()
    again = LatentModel.from_pretrained(path)
    attach_value_head(again)
    torch.testing.assert_close(head_params(again), head_params(loaded))


def test_prompt_hook_and_registry():
    for name in ("coconut_grpo", "latent_rl"):
        m = get_method(name)
        assert m.init == "coconut_sft"
        assert m.prompt_text({"prompt": "1 2 ||"}) == "1 2 ||<|start-latent|>"
    assert get_method("latent_rl").needs_hidden and not get_method("coconut_grpo").needs_hidden


# ---------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("path", ["configs/coconut_grpo_qwen2.5-1.5b.yaml", "configs/latent_rl_qwen2.5-1.5b.yaml",
                                  "configs/cpu/coconut_grpo.yaml", "configs/cpu/latent_rl.yaml"])
def test_presets_load(path):
    cfg = load_config(GRPOConfig, REPO / path, ["seed=1"])
    assert cfg.method in ("coconut_grpo", "latent_rl") and cfg.seed == 1
    assert cfg.latent.operator == "hidden_state" and cfg.latent.num_latent_steps
    assert cfg.beta == 0.0
    if cfg.method == "coconut_grpo":
        assert (cfg.num_generations, cfg.temperature, cfg.epsilon) == (8, 0.7, 0.1)
    if "qwen" in path:
        assert cfg.latent.num_latent_steps == 6 and cfg.learning_rate == 5e-6
        assert cfg.generation_batch_size == 64


def test_cpu_presets_run_one_step(tmp_path):
    for name in ("coconut_grpo", "latent_rl"):
        cfg = load_config(GRPOConfig, REPO / "configs" / "cpu" / f"{name}.yaml",
                          [f"output_dir={tmp_path / name}", "max_steps=1", "per_device_train_batch_size=8",
                           "max_completion_length=10", "report_to=[none]"])
        method = LatentRL(pretrain_prompts=4, pretrain_epochs=1) if name == "latent_rl" else None
        t = GRPOTrainer(cfg, model(), examples(), method=method)
        m = t.train_step()
        assert m["completions/mean_latent"] == cfg.latent.num_latent_steps


def test_latent_rl_options_come_from_the_config_section_unless_given(tmp_path):
    """`latent_rl.*` (YAML / overrides) configures the registered method; a constructor value wins; the
    registry's shared instance does not carry one run's options into the next."""
    opts = {"latent_rl": {"pos_weight": 5.0, "value_head_dims": [16, 4], "pretrain_prompts": 0,
                          "value_loss_coef": 0.5}}
    lm = model()
    t = GRPOTrainer(config(tmp_path / "a", "latent_rl", **opts), lm, examples(), reward_funcs=[word_count_reward])
    assert (t.method.pos_weight, t.method.hidden_dims, t.method.pretrain_prompts, t.method.value_loss_coef) == (
        5.0, (16, 4), 0, 0.5)
    dims = [m.out_features for m in lm.side_modules[VALUE_HEAD].mlp if isinstance(m, torch.nn.Linear)]
    assert dims == [16, 4, 1]
    t2 = GRPOTrainer(config(tmp_path / "b", "latent_rl"), model(), examples(), reward_funcs=[word_count_reward])
    assert (t2.method.pos_weight, t2.method.hidden_dims, t2.method.value_loss_coef) == (20.0, (128, 32, 8), 1.0)
    given = LatentRL(pos_weight=3.0)
    t3 = GRPOTrainer(config(tmp_path / "c", "latent_rl", **opts), model(), examples(),
                     reward_funcs=[word_count_reward], method=given)
    assert t3.method.pos_weight == 3.0 and t3.method.value_loss_coef == 0.5
    with pytest.raises(ConfigError, match="value_head_dims"):
        config(tmp_path / "d", "latent_rl", latent_rl={"value_head_dims": []})
    with pytest.raises(ConfigError, match="pos_weight"):
        config(tmp_path / "e", "latent_rl", latent_rl={"pos_weight": 0})
