"""LEPO: the Gumbel-softmax operator, the soft cross-entropy log-prob, the unified loss and the presets."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latentrl.config import GRPOConfig, LatentConfig, load_config
from latentrl.data import make_examples, task_vocabulary
from latentrl.methods import get_method
from latentrl.methods.lepo.operator import GumbelSoftmaxThought, soft_cross_entropy_logprob
from latentrl.replay import replay
from latentrl.rl.losses import mixed_policy_loss
from latentrl.rl.trainer import GRPOTrainer
from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout
from latentrl.sampling import filter_logits, token_logprobs
from latentrl.testing import tiny_latent_model, word_count_reward
from latentrl.thoughts import build_thought_operator
from tests.conftest import WORDS, gen, make_prompts

ROOT = Path(__file__).resolve().parents[1]


def op_for(**kw) -> GumbelSoftmaxThought:
    return build_thought_operator("gumbel_softmax", config=LatentConfig(**kw))


class EmbedOnly:
    def __init__(self, vocab: int, hidden: int = 6):
        self.E = torch.randn(vocab, hidden, generator=gen(3))
        self.vocab_size = vocab

    def embed(self, ids):
        return self.E[ids]


# ---------------------------------------------------------------------------------------------------- soft CE
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_soft_cross_entropy_equals_token_logprob_for_one_hot_and_torch_soft_ce(temperature):
    logits = torch.randn(5, 11, generator=gen(0)) * 2
    ids = torch.stack([torch.randperm(11, generator=gen(i))[:3] for i in range(5)])
    one_hot = torch.tensor([1.0, 0.0, 0.0]).expand(5, 3)
    torch.testing.assert_close(soft_cross_entropy_logprob(logits, ids, one_hot, temperature),
                               token_logprobs(logits, ids[:, 0], temperature))
    w = torch.rand(5, 3, generator=gen(1)).softmax(-1)
    dense = torch.zeros(5, 11).scatter(-1, ids, w)
    torch.testing.assert_close(soft_cross_entropy_logprob(logits, ids, w, temperature),
                               -F.cross_entropy(logits / temperature, dense, reduction="none"))
    op = op_for(latent_temperature=temperature)
    torch.testing.assert_close(op.log_prob(logits, ids[:, 0], {"ids": ids, "weights": w}),
                               -F.cross_entropy(logits / temperature, dense, reduction="none"))


# ---------------------------------------------------------------------------------------------------- operator
def test_exact_top_k_filter_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, -1.0]])
    f = filter_logits(logits, 2, None)
    assert torch.isfinite(f).sum() == 2
    f = filter_logits(torch.tensor([[5.0, 0.0, -1.0, -2.0]]), 3, 0.9)  # the nucleus is one token
    assert torch.isfinite(f).sum() == 1


def test_payload_holds_the_whole_mixture_and_rebuild_is_exact():
    model = EmbedOnly(40)
    op = op_for(top_k=6, top_p=0.9, gumbel_tau=0.5)
    logits = torch.randn(8, 40, generator=gen(4)) * 3
    z = op.mixture(logits, gen(9))
    assert ((z > 0).sum(-1) <= 6).all()
    torch.testing.assert_close(z.sum(-1), torch.ones(8))
    step = op.step(model, logits, None, generator=gen(9))
    torch.testing.assert_close(step.payload["weights"].sum(-1), torch.ones(8))  # nothing left out
    torch.testing.assert_close(step.embeds, z @ model.E)
    assert torch.equal(op.rebuild(model, step.token_ids, step.payload), step.embeds)
    assert torch.equal(step.token_ids, z.argmax(-1))
    allowed = torch.isfinite(filter_logits(logits, 6, 0.9))
    w, i = step.payload["weights"], step.payload["ids"]
    assert allowed.gather(-1, i)[w > 0].all()
    torch.testing.assert_close(step.logprob, soft_cross_entropy_logprob(logits, i, w))


def test_argmax_of_the_gumbel_softmax_sample_follows_the_filtered_distribution():
    """Gumbel-max: argmax z ~ softmax(filtered logits), whatever tau — an independent check of the noise."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0]).expand(6000, 6)
    op = op_for(top_k=4, top_p=1.0, gumbel_tau=0.3)
    z = op.mixture(logits, gen(0))
    freq = torch.bincount(z.argmax(-1), minlength=6).float() / 6000
    want = torch.cat([logits[0, :4].softmax(-1), torch.zeros(2)])
    assert (freq - want).abs().max() < 0.025, (freq, want)


def test_deterministic_mode_is_noise_free_and_reproducible():
    model = EmbedOnly(20)
    op = op_for(top_k=5, top_p=1.0, gumbel_tau=0.5)
    logits = torch.randn(4, 20, generator=gen(1))
    op.set_eval_mode(True)
    g = gen(1)
    a, b = op.step(model, logits, None, generator=g), op.step(model, logits, None, generator=gen(2))
    assert torch.equal(a.embeds, b.embeds) and torch.equal(g.get_state(), gen(1).get_state())
    torch.testing.assert_close(op.mixture(logits), (filter_logits(logits, 5, None) / 0.5).softmax(-1))
    op.set_eval_mode(False)
    assert not torch.equal(op.step(model, logits, None, generator=gen(1)).embeds,
                           op.step(model, logits, None, generator=gen(2)).embeds)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_replay_equals_rollout(arch):
    lm = tiny_latent_model(arch, WORDS, seed=0)
    ids, mask = make_prompts(lm)
    op = op_for(top_k=8, gumbel_tau=0.5)
    r = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=8, temperature=0.9), op,
                         ThinkingSchedule(num_latent_steps=3), gen(1))
    assert r.latent_mask[:, :3].all() and not r.latent_mask[:, 3:].any()
    out = replay(lm, op, r, temperature=0.9)
    m = r.completion_mask
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- method


def trainer_for(tmp_path, **kw):
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    latent = LatentConfig(operator="gumbel_softmax", num_latent_steps=3, top_k=8, gumbel_tau=0.5)
    base = dict(model_name_or_path="tiny", output_dir=str(tmp_path), method="lepo", max_steps=1,
                per_device_train_batch_size=8, num_generations=4, max_completion_length=8, learning_rate=1e-2,
                save_steps=0, report_to=["none"], latent=latent)
    base.update(kw)
    return GRPOTrainer(GRPOConfig(**base), lm, make_examples("chain_sum", 16, seed=0, length=3),
                       reward_funcs=[word_count_reward])


def test_unified_loss_soft_ce_at_latent_positions_clipped_surrogate_at_tokens(tmp_path):
    t = trainer_for(tmp_path)
    batch = t.generate_and_score(t._next_prompts(2))
    t._prepare_for_update(batch)
    mask = t.loss_mask(batch)
    kinds = t.method.policy_kind_masks(t.ctx, batch, mask)
    lat = batch.rollout.latent_mask
    assert torch.equal(kinds["no_ratio"], lat & mask) and torch.equal(kinds["clipped"], mask & ~lat)
    out = replay(t.model, t.operator, batch.rollout, temperature=t.loss_temperature)
    # a made-up old policy so the token ratios are not 1 (real old log-probs are what LEPO's config lacked)
    old = out.logprobs.detach() + 0.5 * torch.randn(out.logprobs.shape, generator=gen(0))
    adv = batch.token_advantages
    per_token, _ = mixed_policy_loss(out.logprobs, old, adv, kinds, epsilon_low=0.2)
    # latent: -A * sum_k z_k log pi(i_k), with the log-probs recomputed from the stored payload by hand
    ro = batch.rollout
    W, I = ro.payload["weights"], ro.payload["ids"]
    emb = t.model.embed(ro.completion_ids)
    emb = torch.where(lat[..., None], (W[..., None] * t.model.embed(I)).sum(-2), emb)
    full = torch.cat([t.model.embed(ro.prompt_ids), emb], 1)
    am = torch.cat([ro.prompt_mask, ro.completion_mask], 1).long()
    with torch.no_grad():
        logits, _, _ = t.model.forward_embeds(full, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp_min(0))
    P = ro.prompt_ids.shape[1]
    logp = logits[:, P - 1 : -1].float().log_softmax(-1)  # temperature 1 = latent_temperature
    soft = (W * logp.gather(-1, I)).sum(-1)
    sel = lat & mask
    torch.testing.assert_close(out.logprobs[sel].detach(), soft[sel], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(per_token[sel], -adv[sel] * out.logprobs[sel])
    tok = mask & ~lat
    ratio = torch.exp(out.logprobs - old)[tok]
    a = adv[tok]
    want = -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
    torch.testing.assert_close(per_token[tok], want)


def test_one_trainer_step_changes_parameters_and_two_iterations_use_real_old_logprobs(tmp_path):
    t = trainer_for(tmp_path, num_iterations=2)
    before = [p.detach().clone() for p in t.model.model.parameters()]
    batch = t.generate_and_score(t._next_prompts(2))
    t._prepare_for_update(batch)  # num_iterations > 1: old log-probs are replayed, not copied
    m = batch.rollout.completion_mask
    torch.testing.assert_close(batch.old_logprobs[m], batch.rollout.logprobs[m], atol=1e-5, rtol=1e-4)
    metrics = t.train_step()
    assert metrics["grad_norm"] > 0 and "latent/top1_weight_mean" in metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.model.parameters()))


def test_method_schedule_and_operator():
    lm = tiny_latent_model("qwen2", WORDS, seed=0)
    method = get_method("lepo")
    assert method.init == "cot_sft"
    op = method.build_operator(LatentConfig(top_k=30, gumbel_tau=0.3), lm)
    assert isinstance(op, GumbelSoftmaxThought) and op.top_k == 30 and op.tau == 0.3
    assert method.build_schedule(LatentConfig(operator="gumbel_softmax", num_latent_steps=5), lm).num_latent_steps == 5
    assert method.build_schedule(LatentConfig(), lm).num_latent_steps == 32
    with pytest.raises(ValueError, match="gumbel_softmax"):
        method.build_operator(LatentConfig(operator="gumbel_topk"), lm)


@pytest.mark.parametrize("path", ["configs/lepo_qwen2.5-3b.yaml", "configs/cpu/lepo.yaml"])
def test_presets_load(path):
    cfg = load_config(GRPOConfig, ROOT / path)
    assert cfg.method == "lepo" and cfg.latent.operator == "gumbel_softmax" and cfg.latent.num_latent_steps
    assert cfg.latent.top_k == 30 and cfg.latent.top_p == 0.95 and cfg.latent.gumbel_tau == 0.3
    if "cpu" in path:
        assert 30 <= cfg.max_steps <= 60 and 4 <= cfg.num_generations <= 8
    else:
        assert cfg.learning_rate == 1e-6 and cfg.latent.num_latent_steps == 64 and cfg.adam_beta2 == 0.99
        assert cfg.weight_decay == 0.1 and cfg.lr_scheduler_type == "cosine" and cfg.num_generations == 8


def test_method_defaults_are_valid_config_overrides():
    method = get_method("lepo")
    cfg = load_config(GRPOConfig, None, ["model_name_or_path=m", *(f"{k}={v}" for k, v in method.defaults.items())])
    assert cfg.latent.operator == "gumbel_softmax" and cfg.latent.num_latent_steps == 32 and cfg.latent.top_k == 30
