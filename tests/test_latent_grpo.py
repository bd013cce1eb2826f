"""Latent-GRPO: the one-sided Gumbel top-K operator, its surrogate density, the advantage hooks, the trainer,
superposition SFT and the presets."""

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from latentrl.config import ConfigError, GRPOConfig, LatentConfig, load_config
from latentrl.data import make_examples, task_vocabulary
from latentrl.data.tasks import icot_mult_example
from latentrl.methods import get_method
from latentrl.replay import replay
from latentrl.rl.batch import StepBatch
from latentrl.rl.trainer import GRPOTrainer
from latentrl.rollout import Rollout, SamplingParams, ThinkingSchedule, generate_rollout
from latentrl.sft.superposition import (
    SuperpositionSFTConfig,
    build_superposition_batch,
    chunk_bounds,
    chunk_superpositions,
    encode_superposition_examples,
    superposition_loss,
    train_superposition_sft,
)
from latentrl.testing import tiny_latent_model, word_count_reward
from latentrl.thoughts import build_thought_operator
from latentrl.thoughts.gumbel_topk import GumbelTopKThought
from tests.conftest import WORDS, gen, make_prompts

ROOT = Path(__file__).resolve().parents[1]


def op_for(**kw) -> GumbelTopKThought:
    return build_thought_operator("gumbel_topk", config=LatentConfig(**kw))


def nucleus_or_topk(logits: torch.Tensor, top_p: float, k: int) -> torch.Tensor:
    """Independent top-p mask (keep a token while the mass before it is < top_p) united with the top-k tokens."""
    p = logits.softmax(-1)
    order = p.argsort(-1, descending=True)
    sp = p.gather(-1, order)
    keep_sorted = (sp.cumsum(-1) - sp) < top_p
    keep_sorted[:, :k] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


# ---------------------------------------------------------------------------------------------------- operator
class EmbedOnly:
    """A stand-in model: embeddings = a fixed random matrix (for operator unit tests without a network)."""

    def __init__(self, vocab: int, hidden: int = 6):
        self.E = torch.randn(vocab, hidden, generator=gen(3))
        self.vocab_size = vocab

    def embed(self, ids):
        return self.E[ids]


def test_surrogate_is_the_mean_gumbel_log_density_of_the_implied_noise():
    torch.manual_seed(0)
    op = op_for(top_k=4)
    logits = torch.randn(5, 20) * 2
    ids = torch.stack([torch.randperm(20)[:4] for _ in range(5)])
    lp = logits.log_softmax(-1).gather(-1, ids)
    scores = lp + torch.randn(5, 4)  # any scores, negative implied noise included
    got = op.log_prob(logits, ids[:, 0], {"ids": ids, "scores": scores})
    want = torch.distributions.Gumbel(0.0, 1.0).log_prob(scores - lp).mean(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("one_sided, scale", [(True, 0.5), (False, 1.0)])
def test_likelihood_integrates_to_the_gumbel_max_and_plackett_luce_probabilities(one_sided, scale):
    """`gumbel_logprob=likelihood` is a density of the stored (ids, scores): integrated over the scores it gives the
    probability of the chosen ids, which for Gumbel noise on lp / s is softmax(lp / s) for K = 1 (Gumbel-max) and
    p_i p_j / (1 - p_i) for an ordered top-2 (Plackett-Luce). Clamps far out (no mass there), no nucleus cut."""
    logits = torch.tensor([[1.0, 0.2, -0.5, 0.6]])
    p = (logits.log_softmax(-1) / scale).softmax(-1)[0]
    kw = dict(top_p=1.0, one_sided_noise=one_sided, noise_clamp_min=-6.0, noise_clamp_max=40.0, noise_scale=scale,
              gumbel_logprob="likelihood")
    lp = logits.log_softmax(-1)[0]
    shift = -6.0 if one_sided else 0.0
    x = torch.linspace(-5.5, 25.0, 3001)  # the Gumbel draw behind the first chosen score
    dx = float(x[1] - x[0])
    op1 = op_for(top_k=1, **kw)
    for i in range(4):
        scores = lp[i] + scale * (x - shift)
        dens = op1.log_prob(logits.expand(len(x), 4), None,
                            {"ids": torch.full((len(x), 1), i), "scores": scores[:, None]}).exp()
        torch.testing.assert_close(float(torch.trapezoid(dens, dx=scale * dx)), float(p[i]), atol=2e-4, rtol=0)
    op2 = op_for(top_k=2, **kw)
    xs = torch.linspace(-5.5, 20.0, 701)
    d = float(xs[1] - xs[0])
    for i, j in [(0, 3), (2, 1)]:
        g1 = (lp[i] + scale * (xs - shift))[:, None].expand(-1, len(xs))
        g2 = (lp[j] + scale * (xs - shift))[None, :].expand(len(xs), -1)
        ok = g2 < g1  # an ordered pair: the second score below the first
        scores = torch.stack([g1[ok], g2[ok]], -1)
        dens = op2.log_prob(logits.expand(len(scores), 4), None,
                            {"ids": torch.tensor([i, j]).expand(len(scores), 2), "scores": scores}).exp()
        want = float(p[i] * p[j] / (1 - p[i]))
        torch.testing.assert_close(float(dens.sum()) * (scale * d) ** 2, want, atol=3e-3, rtol=0)


@pytest.mark.parametrize("one_sided", [True, False])
def test_likelihood_equals_a_full_vocabulary_reference_on_sampled_steps(one_sided):
    """The operator restricts the competitors to a sorted candidate prefix; the reference sums over every entry of
    the nucleus-or-top-K mask (written here independently), on steps the operator itself sampled."""
    torch.manual_seed(0)
    s, a, b, k = 0.5, -1.5, 3.0, 4
    op = op_for(top_k=k, top_p=0.9, noise_scale=s, one_sided_noise=one_sided, gumbel_logprob="likelihood")
    logits = torch.randn(64, 50) * 1.5
    step = op.step(EmbedOnly(50), logits, None, generator=gen(2))
    ids, scores = step.payload["ids"], step.payload["scores"]
    lp = logits.log_softmax(-1)
    shift = a if one_sided else 0.0
    want = torch.zeros(64)
    mask = nucleus_or_topk(logits, 0.9, k)
    for r in range(64):
        for i, g in zip(ids[r].tolist(), scores[r].tolist()):
            x = (g - float(lp[r, i])) / s + shift
            if a + 1e-4 < x < b - 1e-4:
                want[r] += -x - math.exp(-x) - math.log(s)
        for j in range(50):
            xj = (float(scores[r].min()) - float(lp[r, j])) / s + shift
            if mask[r, j] and j not in ids[r].tolist() and xj < b:
                want[r] += -math.exp(-xj)
    torch.testing.assert_close(step.logprob, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(op.log_prob(logits, None, step.payload), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("one_sided, top_p, spread", [(True, 0.9, 1.5), (False, 0.9, 1.5), (True, 1.0, 1.5),
                                                      (True, 0.9, 6.0)])
@pytest.mark.parametrize("path", ["sorted", "whole rows"])
def test_likelihood_gradient_equals_autograd_of_a_full_vocabulary_reference(one_sided, top_p, spread, path):
    """`log_prob` in likelihood mode (its gradient from `row_logprob_fn`) against autograd through the likelihood
    written here with differentiable ops over every entry of the nucleus-or-top-K mask, on steps the operator
    sampled: values and the gradient in the logits, under a loss that weighs rows differently. Both ways of finding
    the competitors: their sorted prefix, and passes over whole rows (`competitor_sort_limit` 0; spread 6.0: peaked
    rows, where the nucleus ends among the competitors and `_nucleus_members` sorts those rows)."""
    torch.manual_seed(3)
    s, a, b, k = 0.5, -1.5, 3.0, 4
    op = op_for(top_k=k, top_p=top_p, noise_scale=s, one_sided_noise=one_sided, gumbel_logprob="likelihood")
    if path == "whole rows":
        op.competitor_sort_limit = 0
    logits = torch.randn(64, 50) * spread
    step = op.step(EmbedOnly(50), logits, None, generator=gen(4))
    ids, scores = step.payload["ids"], step.payload["scores"]
    x = logits.clone().requires_grad_()
    lp = x.log_softmax(-1)
    shift = a if one_sided else 0.0
    draw = (scores - lp.gather(-1, ids)) / s + shift
    free = (draw > a + 4.5e-4) & (draw < b - 4.5e-4)
    chosen = torch.where(free, -draw - torch.exp(-draw) - math.log(s), torch.zeros(())).sum(-1)
    xj = (scores.min(-1, keepdim=True).values - lp) / s + shift
    rest = nucleus_or_topk(logits, top_p, k) & (xj < b).detach()
    rest.scatter_(-1, ids, False)
    want = chosen + torch.where(rest, -torch.exp(-xj.clamp_min(a)), torch.zeros(())).sum(-1)
    weights = torch.rand(64)
    (want_g,) = torch.autograd.grad((want * weights).sum(), x)
    y = logits.clone().requires_grad_()
    got = op.log_prob(y, None, step.payload)
    (got_g,) = torch.autograd.grad((got * weights).sum(), y)
    torch.testing.assert_close(got, want.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_g, want_g, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step.logprob, want.detach(), atol=1e-4, rtol=1e-4)


def test_likelihood_mode_replays_to_its_rollout_and_is_refused_when_unknown():
    lm = tiny_latent_model("qwen2", WORDS, seed=0)
    ids, mask = make_prompts(lm)
    op = op_for(top_k=5, noise_scale=0.3, gumbel_logprob="likelihood")
    assert op.logprob == "likelihood"
    end = lm.tokenizer("####", add_special_tokens=False)["input_ids"][0]
    r = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=9, temperature=0.8), op,
                         ThinkingSchedule(end_token_id=end, max_latent_steps=5), gen(1))
    assert r.latent_mask.any()
    out = replay(lm, op, r, temperature=0.8)
    m = r.completion_mask
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-4, rtol=1e-4)
    authors = replay(lm, op_for(top_k=5, noise_scale=0.3), r, temperature=0.8)
    assert not torch.allclose(authors.logprobs[r.latent_mask], out.logprobs[r.latent_mask])
    with pytest.raises(Exception, match="gumbel_logprob"):
        load_config(GRPOConfig, None, ["model_name_or_path=m", "latent.gumbel_logprob=exact"])


@pytest.mark.parametrize("one_sided", [True, False])
def test_rollout_selection_is_topk_of_perturbed_nucleus_and_noise_is_one_sided(one_sided):
    op = op_for(top_k=3, top_p=0.5, one_sided_noise=one_sided)
    torch.manual_seed(1)
    logits = torch.randn(64, 12) * 2
    step = op.step(EmbedOnly(12), logits, None, generator=gen(7))
    lp = logits.log_softmax(-1)
    # the step draws noise for its candidates only (in descending-lp order); the same draw, independently, scattered
    # over the vocabulary. Every other entry gets the LARGEST value the noise can take: they still must not win.
    _, cand, _ = op.candidates(logits)
    drawn = op.noise(cand.shape, gen(7), lp.device)
    high = (op.clamp_max - op.clamp_min) if one_sided else op.clamp_max
    noise = torch.full_like(lp, high * op.noise_scale).scatter(-1, cand, drawn)
    masked = torch.where(nucleus_or_topk(logits, 0.5, 3), lp, torch.full_like(lp, float("-inf")))
    top = torch.topk(masked + noise, 3)
    assert torch.equal(step.payload["ids"], top.indices)
    torch.testing.assert_close(step.payload["scores"], top.values)
    eps = step.payload["scores"] - lp.gather(-1, step.payload["ids"])  # the implied noise = the drawn noise
    torch.testing.assert_close(eps, noise.gather(-1, top.indices), atol=1e-5, rtol=0)
    if one_sided:
        assert eps.min() >= -1e-5 and eps.max() <= 4.5 + 1e-5
        assert (drawn >= 0).all()
    else:
        assert eps.min() < 0 and eps.min() >= -1.5 - 1e-5 and eps.max() <= 3.0 + 1e-5
    # the surrogate at rollout is the density of the drawn noise
    torch.testing.assert_close(step.logprob, torch.distributions.Gumbel(0.0, 1.0).log_prob(eps).mean(-1),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(step.token_ids, logits.argmax(-1))  # recorded id: the unperturbed top-1


def test_input_is_the_softmax_weighted_topk_mixture_and_rebuild_is_exact():
    model = EmbedOnly(15)
    op = op_for(top_k=4, gumbel_tau=0.7)
    logits = torch.randn(6, 15, generator=gen(2))
    step = op.step(model, logits, None, generator=gen(5))
    w = (step.payload["scores"] / 0.7).softmax(-1)
    want = (w[..., None] * model.E[step.payload["ids"]]).sum(1)
    torch.testing.assert_close(step.embeds, want)
    assert torch.equal(op.rebuild(model, step.token_ids, step.payload), step.embeds)


def test_deterministic_mode_is_noise_free_and_reproducible():
    model = EmbedOnly(15)
    op = op_for(top_k=4)
    logits = torch.randn(6, 15, generator=gen(2))
    op.set_eval_mode(True)
    g1, g2 = gen(1), gen(2)
    a = op.step(model, logits, None, generator=g1)
    b = op.step(model, logits, None, generator=g2)
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.payload["ids"], b.payload["ids"])
    assert torch.equal(g1.get_state(), gen(1).get_state()), "deterministic mode must not consume randomness"
    top = torch.topk(logits, 4)
    assert torch.equal(a.payload["ids"], top.indices)
    torch.testing.assert_close((a.payload["scores"]).softmax(-1), top.values.softmax(-1))
    torch.testing.assert_close(a.logprob, torch.full((6,), -1.0))  # zero implied noise
    op.set_eval_mode(False)
    c = op.step(model, logits, None, generator=gen(1))
    d = op.step(model, logits, None, generator=gen(2))
    assert not torch.equal(c.payload["scores"], d.payload["scores"])
    noisy = op_for(top_k=4, eval_noise=True)  # eval_noise keeps the noise at evaluation (Pass@k)
    noisy.set_eval_mode(True)
    assert not torch.equal(noisy.step(model, logits, None, generator=gen(1)).payload["scores"],
                           noisy.step(model, logits, None, generator=gen(2)).payload["scores"])


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_replay_equals_rollout_and_gradients_reach_logits_and_embeddings(arch):
    lm = tiny_latent_model(arch, WORDS, seed=0)
    ids, mask = make_prompts(lm)
    op = op_for(top_k=5)
    end = lm.tokenizer("####", add_special_tokens=False)["input_ids"][0]
    r = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=9, temperature=0.8), op,
                         ThinkingSchedule(end_token_id=end, max_latent_steps=5), gen(1))
    assert r.latent_mask.any() and set(r.payload) == {"ids", "scores"}
    out = replay(lm, op, r, temperature=0.8)
    m = r.completion_mask
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)
    lm.model.zero_grad()
    out.logprobs[r.latent_mask].sum().backward()
    assert lm.embedding_matrix.grad is not None and lm.embedding_matrix.grad.abs().sum() > 0


def test_latent_span_ends_when_the_unperturbed_top1_is_the_end_token():
    lm = tiny_latent_model("qwen2", WORDS, seed=0)
    ids, mask = make_prompts(lm)
    op = op_for(top_k=5)
    with torch.no_grad():  # the first unperturbed top-1 of row 0 becomes "the end token"
        logits, _, _ = lm.forward_embeds(lm.embed(ids), attention_mask=mask.long(),
                                         position_ids=(mask.long().cumsum(-1) - 1).clamp_min(0))
    end = int(logits[0, -1].argmax())
    r = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=6), op,
                         ThinkingSchedule(end_token_id=end, max_latent_steps=4), gen(0))
    assert not r.latent_mask[0, 0] and r.completion_ids[0, 0] == end and not r.forced_mask[0, 0]
    assert r.logprobs[0, 0] == pytest.approx(float(logits[0, -1].float().log_softmax(-1)[end]), abs=1e-5)
    assert r.latent_mask[1:, 0].all() or (r.completion_ids[1:, 0] == end).any()


# ---------------------------------------------------------------------------------------------------- hooks
def fake_batch(rewards, truncated, latent_first, old_mean, C=4):
    """A hand-made StepBatch: row i has latents on positions [latent_first[i], C) (-1 = none) and constant old
    log-probs old_mean[i] on every position."""
    n = len(rewards)
    lat = torch.zeros(n, C, dtype=torch.bool)
    for i, f in enumerate(latent_first):
        if f >= 0:
            lat[i, f:] = True
    ro = Rollout(prompt_ids=torch.zeros(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.bool),
                 completion_ids=torch.ones(n, C, dtype=torch.long), completion_mask=torch.ones(n, C, dtype=torch.bool),
                 latent_mask=lat, forced_mask=torch.zeros(n, C, dtype=torch.bool),
                 logprobs=torch.tensor(old_mean, dtype=torch.float32)[:, None].expand(n, C).clone(),
                 truncated=torch.tensor(truncated))
    return StepBatch(ro, [{}] * n, [""] * n, torch.tensor(rewards, dtype=torch.float32), torch.zeros(n))


def fake_context(**options):
    args = GRPOConfig(model_name_or_path="x", num_generations=4, per_device_train_batch_size=8)
    for k, v in options.items():
        setattr(args.latent_grpo if hasattr(args.latent_grpo, k) else args, k, v)
    return SimpleNamespace(args=args, loss_mask=lambda b: b.rollout.completion_mask & ~b.rollout.forced_mask)


def test_invalid_sample_masking():
    method = get_method("latent_grpo")
    rewards = [1, 0, 1, 0, 1, 1, 0, 0]
    truncated = [True, False, False, False, False, False, False, True]
    batch = fake_batch(rewards, truncated, [0] * 8, [0.0] * 8)
    s3 = 1 / 3 ** 0.5  # unbiased std of [1,0,1,0] and of [0,1,0]
    a = method.compute_advantages(fake_context(), batch)  # stats include the invalid rows (authors' GSM8k)
    torch.testing.assert_close(a, torch.tensor([0.0, -0.5, 0.5, -0.5, 0.5, 0.5, -0.5, 0.0]) / (s3 + 1e-6))
    a = method.compute_advantages(fake_context(exclude_invalid_from_stats=True), batch)
    torch.testing.assert_close(a[:4], torch.tensor([0.0, -1 / 3, 2 / 3, -1 / 3]) / (s3 + 1e-6))
    # group 2 without its invalid row: [1, 1, 0] -> mean 2/3, std 1/sqrt(3)
    torch.testing.assert_close(a[4:], torch.tensor([1 / 3, 1 / 3, -2 / 3, 0.0]) / (s3 + 1e-6))
    a = method.compute_advantages(fake_context(invalid_sample_masking=False), batch)
    assert a[0] > 0 and a[7] < 0


def test_first_token_selection_keeps_one_positive_path_at_the_first_latent_position():
    method = get_method("latent_grpo")
    rewards = [1, 1, 0, 0, 0, 0, 0, 0]
    # group 1: rows 0,1 positive (row 1 more likely), row 3 has no latent; group 2: no positive row
    batch = fake_batch(rewards, [False] * 8, [0, 1, 0, -1, 0, 0, 0, 0], [-2.0, -1.0, -0.5, -0.1] + [-1.0] * 4)
    ctx = fake_context()
    batch.advantages = method.compute_advantages(ctx, batch)
    A = batch.advantages
    tok = method.token_advantages(ctx, batch)
    assert tok[0, 0] == 0 and tok[1, 1] == A[1] and tok[2, 0] == 0  # loser, winner, negative row (authors)
    assert torch.equal(tok[3], A[3].expand(4))  # no latent position: unchanged
    off_first = torch.ones(8, 4, dtype=torch.bool)
    off_first[[0, 1, 2], [0, 1, 0]] = False
    assert torch.equal(tok[off_first], A[:, None].expand(8, 4)[off_first])
    assert torch.equal(tok[4:], A[4:, None].expand(4, 4))  # no positive row in group 2
    tok = method.token_advantages(fake_context(first_token_zero_non_positive=False), batch)
    assert tok[0, 0] == 0 and tok[2, 0] == A[2] < 0
    tok = method.token_advantages(fake_context(first_token_selection=False), batch)
    assert torch.equal(tok, A[:, None].expand(8, 4))


# ---------------------------------------------------------------------------------------------------- trainer


def trainer_for(tmp_path, **kw):
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    latent = LatentConfig(operator="gumbel_topk", end_of_thinking_token="####", max_latent_steps=4, top_k=5)
    base = dict(model_name_or_path="tiny", output_dir=str(tmp_path), method="latent_grpo", max_steps=1,
                per_device_train_batch_size=8, num_generations=4, max_completion_length=8, learning_rate=1e-2,
                save_steps=0, report_to=["none"], dual_clip=3.0, latent=latent)
    base.update(kw)
    return GRPOTrainer(GRPOConfig(**base), lm, make_examples("chain_sum", 16, seed=0, length=3),
                       reward_funcs=[word_count_reward])


def test_one_trainer_step_changes_parameters_but_not_the_frozen_embeddings(tmp_path):
    # seed 1: with seed 0 every completion of the first batch is truncated, so invalid-sample masking zeroes all
    # advantages and there is no gradient to check
    t = trainer_for(tmp_path, seed=1)
    before = {n: p.detach().clone() for n, p in t.model.model.named_parameters()}
    m = t.train_step()
    assert m["grad_norm"] > 0 and "latent/norm_mean" in m and "latent_grpo/invalid_frac" in m
    changed = {n for n, p in t.model.model.named_parameters() if not torch.equal(p, before[n])}
    emb = [n for n, p in t.model.model.named_parameters() if p is t.model.embedding_matrix]
    assert changed and not set(emb) & changed


def test_dynamic_sampling_with_latent_grpo(tmp_path):
    def first_group_constant(prompts, completions, **kw):
        return [1.0 if p == prompts[0] else float(len(c.split()) % 2) for p, c in zip(prompts, completions)]

    t = trainer_for(tmp_path, dynamic_sampling=True, max_resample_rounds=2)
    t.reward_funcs = [first_group_constant]
    batch, stats = t._collect_step_batch()
    assert (batch.rewards.view(-1, 4).std(dim=1) > 0).all()
    assert stats["frac_reward_zero_std"] >= 0.5


def test_method_builds_its_operator_and_needs_an_end_token():
    lm = tiny_latent_model("qwen2", WORDS, seed=0)
    method = get_method("latent_grpo")
    op = method.build_operator(LatentConfig(), lm)
    assert isinstance(op, GumbelTopKThought) and op.top_k == 10 and op.one_sided
    with pytest.raises(ValueError, match="end_of_thinking_token"):
        method.build_schedule(LatentConfig(), lm)
    sched = method.build_schedule(LatentConfig(end_of_thinking_token="####", max_latent_steps=7), lm)
    assert sched.end_token_id == lm.tokenizer.convert_tokens_to_ids("####") and sched.max_latent_steps == 7
    with pytest.raises(ValueError, match="gumbel_topk"):
        method.build_operator(LatentConfig(operator="soft_mixture"), lm)


# ---------------------------------------------------------------------------------------------------- SFT init
def test_chunk_superpositions():
    ids, w = chunk_superpositions([5, 6, 5, 7, 8], tokens_per_latent=3, top_k=4, pad_id=0)
    assert ids.tolist() == [[5, 6, 0, 0], [7, 8, 0, 0]]
    torch.testing.assert_close(w, torch.tensor([[2 / 3, 1 / 3, 0, 0], [0.5, 0.5, 0, 0]]))
    ids, w = chunk_superpositions([1, 2, 3], tokens_per_latent=3, top_k=2)
    assert ids.tolist() == [[1, 2]] and w.tolist() == [[0.5, 0.5]]


def test_positional_chunk_weights_keep_the_order():
    """Place i of a c-token chunk weighs 2^(c-1-i) / (2^c - 1), summed over repeats; a shorter last chunk uses its
    own length. Every ordered chunk over a small alphabet gets its own (ids, weights): the order can be read back."""
    ids, w = chunk_superpositions([5, 6, 5, 7, 8, 9], tokens_per_latent=4, top_k=4, pad_id=0, weighting="positional")
    assert ids.tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    torch.testing.assert_close(w, torch.tensor([[10 / 15, 4 / 15, 1 / 15, 0], [2 / 3, 1 / 3, 0, 0]]))
    seen = {}
    for chunk in itertools.product(range(3), repeat=4):
        i, v = chunk_superpositions(list(chunk), 4, 4, pad_id=0, weighting="positional")
        key = tuple(sorted((int(a), round(float(b) * 15)) for a, b in zip(i[0], v[0]) if b > 0))
        assert key not in seen, (chunk, seen.get(key))
        seen[key] = chunk
    counted = {tuple(sorted(chunk)) for chunk in itertools.product(range(3), repeat=4)}
    assert len(seen) == 81 and len(counted) < 81  # counts (the default) cannot tell these chunks apart
    with pytest.raises(ValueError, match="weighting"):
        chunk_superpositions([1], 1, 1, weighting="rank")


def test_chunk_sizes_set_the_first_chunks_then_tokens_per_latent():
    """`chunk_sizes` cuts the chain's first chunks to the given lengths (cut short at its end), the rest in chunks of
    tokens_per_latent; positional weights use each chunk's own length. The icot 4x4 layout that keeps two column
    sums per latent: 14 latents for the 46-token columns_tens_first chain, each sum's digits in one latent."""
    assert chunk_bounds(7, 2, [3, 1]) == [(0, 3), (3, 4), (4, 6), (6, 7)]
    assert chunk_bounds(2, 2, [3, 1]) == [(0, 2)]
    ids, w = chunk_superpositions([5, 6, 7, 8, 9, 4], tokens_per_latent=2, top_k=4, pad_id=0, weighting="positional",
                                  chunk_sizes=[1, 3])
    assert ids.tolist() == [[5, 0, 0, 0], [6, 7, 8, 0], [9, 4, 0, 0]]
    torch.testing.assert_close(w, torch.tensor([[1.0, 0, 0, 0], [4 / 7, 2 / 7, 1 / 7, 0], [2 / 3, 1 / 3, 0, 0]]))
    layout = [3] * 10 + [4] * 4
    bounds = chunk_bounds(46, 3, layout)
    assert len(bounds) == 14 and bounds[-4:] == [(30, 34), (34, 38), (38, 42), (42, 46)]
    steps = icot_mult_example(2365, 4347, chain="columns_tens_first").steps
    cot = " ".join(steps).split()
    assert len(cot) == 46 and cot[29] == "="  # the column sums S_0..S_7 are tokens 30-45, two digits each
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    ex = make_examples("chain_sum", 2, seed=1, length=3)
    cfg = SuperpositionSFTConfig(tokens_per_latent=3, top_k=5, chunk_sizes=[2, 5], chunk_weights="positional")
    for e, x in zip(encode_superposition_examples(lm.tokenizer, ex, cfg), ex, strict=True):
        cot = lm.tokenizer(" " + " ".join(x.steps), add_special_tokens=False)["input_ids"]
        ids, w = chunk_superpositions(cot, 3, 5, lm.tokenizer.pad_token_id, "positional", chunk_sizes=[2, 5])
        assert e.latent_ids.shape[0] == 2 + (len(cot) - 7 + 2) // 3 and torch.equal(e.latent_ids, ids)
        assert torch.equal(e.latent_weights, w)
    with pytest.raises(ConfigError, match="chunk_sizes"):
        SuperpositionSFTConfig(chunk_sizes=[3, 0])
    with pytest.raises(ConfigError, match="chunk_sizes"):
        SuperpositionSFTConfig(chunk_sizes=[11], top_k=10)


def test_superposition_encoding_in_blocks_equals_one_example_at_a_time(monkeypatch):
    """The batched tokenizer calls (blocks of `ENCODE_BLOCK` examples, here 3 over 8) give every example exactly
    what tokenizing it alone gives; a tensor chain chunks as its list does."""
    import latentrl.sft.superposition as sp

    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    ex = make_examples("chain_sum", 8, seed=1, length=3)
    cfg = SuperpositionSFTConfig(tokens_per_latent=3, top_k=5, chunk_weights="positional", disable_tqdm=True)
    monkeypatch.setattr(sp, "ENCODE_BLOCK", 3)
    enc = encode_superposition_examples(lm.tokenizer, ex, cfg)
    tok = lm.tokenizer
    for e, x in zip(enc, ex, strict=True):
        cot = tok(" " + " ".join(x.steps), add_special_tokens=False)["input_ids"]
        ids, w = chunk_superpositions(torch.tensor(cot), 3, 5, tok.pad_token_id, weighting="positional")
        assert e.prompt == tok(sp.format_prompt(x), add_special_tokens=False)["input_ids"]
        assert e.answer == tok(sp._answer_text(x, cfg.end_of_thinking), add_special_tokens=False)["input_ids"] + [
            tok.eos_token_id]
        assert torch.equal(e.latent_ids, ids) and torch.equal(e.latent_weights, w)


def test_superposition_sft_batch_layout_and_learning(tmp_path):
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    ex = make_examples("chain_sum", 8, seed=0, length=2)
    cfg = SuperpositionSFTConfig(max_steps=25, per_device_train_batch_size=8, learning_rate=1e-2, warmup_steps=0,
                                 logging_steps=25, top_k=5, disable_tqdm=True)
    enc = encode_superposition_examples(lm.tokenizer, ex, cfg)
    b = build_superposition_batch(enc, lm.tokenizer.pad_token_id)
    P, m = len(enc[0].prompt), enc[0].latent_ids.shape[0]
    cot = lm.tokenizer(" " + " ".join(ex[0].steps), add_special_tokens=False)["input_ids"]
    assert m == (len(cot) + 1) // 2 and b["latent_mask"][0].nonzero().squeeze(-1).tolist() == list(range(P, P + m))
    assert lm.tokenizer.decode(b["labels"][0][b["labels"][0] >= 0].tolist()).startswith("#### ")
    torch.testing.assert_close(b["latent_weights"][0, P:P + m].sum(-1), torch.ones(m))
    loss0, _ = superposition_loss(lm, {k: v for k, v in b.items()}, cfg)
    hist = train_superposition_sft(cfg, lm, ex)
    loss1, stats = superposition_loss(lm, b, cfg)
    assert loss1 < 0.7 * loss0 and stats["kl"] >= 0 and hist.steps == 25


@pytest.mark.parametrize("path", ["buffers", "autograd"])
def test_superposition_loss_equals_a_reference_on_the_hf_models_own_logits(path, monkeypatch):
    """The superposition SFT loss scores the LM head a chunk of positions at a time (no (B, T, V) logits); it equals
    CE + KL written on the HF model's own full logits, in value, stats and every parameter's gradient."""
    import torch.nn.functional as F

    from latentrl.thoughts.base import mix_embeddings

    if path == "autograd":
        monkeypatch.setattr("latentrl.head_logprobs.fused_head_weight", lambda head, h: None)
    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    ex = make_examples("chain_sum", 6, seed=1, length=3)
    cfg = SuperpositionSFTConfig(top_k=5, kl_weight=0.7, disable_tqdm=True)
    b = build_superposition_batch(encode_superposition_examples(lm.tokenizer, ex, cfg), lm.tokenizer.pad_token_id)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    loss, stats = superposition_loss(lm, b, cfg)
    grads = torch.autograd.grad(loss, params)

    lat, mask = b["latent_mask"], b["attention_mask"]
    emb = torch.where(lat[..., None], mix_embeddings(lm, b["latent_ids"], b["latent_weights"]),
                      lm.model.get_input_embeddings()(b["input_ids"]))
    logits = lm.model(inputs_embeds=emb, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
    labels = b["labels"][:, 1:]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    logp = logits[:, :-1][lat[:, 1:]].log_softmax(-1)
    q, qi = b["latent_weights"][:, 1:][lat[:, 1:]], b["latent_ids"][:, 1:][lat[:, 1:]]
    kl = (q * (q.clamp_min(1e-12).log() - logp.gather(-1, qi))).sum(-1).mean()
    ref = cfg.ce_weight * ce + cfg.kl_weight * kl
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert stats["ce"] == pytest.approx(ce.item(), rel=1e-5) and stats["kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert stats["latent_top1_accuracy"] == pytest.approx(float((logp.argmax(-1) == qi[:, 0]).float().mean()))
    mass = logp.exp().gather(-1, qi).masked_fill(q == 0, 0.0).sum(-1).mean()
    assert stats["latent_target_mass"] == pytest.approx(mass.item(), rel=1e-5)
    for a, r in zip(grads, torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("threshold, reason, steps", [(0.0, "converged", 4), (1.5, "max_steps", 12)])
def test_superposition_sft_converged_mode_stops_at_the_gate(threshold, reason, steps):
    """Threshold 0 passes every gate evaluation (patience 2, every 2 steps -> stop at step 4); 1.5 never does."""
    from latentrl.sft.superposition import superposition_gate_metrics

    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    ex = make_examples("chain_sum", 8, seed=0, length=2)
    cfg = SuperpositionSFTConfig(max_steps=12, per_device_train_batch_size=8, learning_rate=1e-2, warmup_steps=0,
                                 top_k=5, disable_tqdm=True, stage_advance="converged", gate_threshold=threshold,
                                 gate_patience=2, gate_eval_steps=2)
    hist = train_superposition_sft(cfg, lm, ex, gate_examples=ex[:4])
    assert hist.steps == steps and len(hist.gate) == steps // 2
    assert hist.stage_log == [{"step": steps, "stage/steps": steps, "stage/reason": reason,
                               "stage/gate_metric": "answer_accuracy",
                               "stage/gate_value": hist.gate[-1]["gate/answer_accuracy"]}]
    # the gate metric is the batch's teacher-forced exact-answer rate
    enc = encode_superposition_examples(lm.tokenizer, ex[:4], cfg)
    _, stats = superposition_loss(lm, build_superposition_batch(enc, lm.tokenizer.pad_token_id), cfg)
    gm = superposition_gate_metrics(lm, enc, cfg, lm.tokenizer.pad_token_id)
    assert gm["answer_accuracy"] == pytest.approx(stats["answer_accuracy"])
    with pytest.raises(ValueError, match="gate examples"):
        train_superposition_sft(cfg, lm, ex)


@pytest.mark.parametrize("self_feed", [0.0, 0.5])
def test_superposition_sft_resumes_exactly_and_writes_its_metrics(tmp_path, killed_in_step, self_feed):
    """Gated (patience 3, a gate evaluation every 2 steps -> stops at step 6), 6 examples in batches of 4, a linear
    schedule: killed during step 5, resumed from checkpoint-4 (gate streak 2, a pass over the data half done) into a
    model built from another seed; weights, losses, gate decisions and metrics.jsonl equal the uninterrupted run's
    (with self_feed, its draws too)."""
    import latentrl.optimizer_steps as step_loop  # the engine whose optimizer step is killed
    from latentrl.logger import read_metrics

    ex = make_examples("chain_sum", 6, seed=0, length=2)
    opts = dict(max_steps=12, per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=2, top_k=5,
                disable_tqdm=True, lr_scheduler_type="linear", logging_steps=3, stage_advance="converged",
                gate_threshold=0.0, gate_patience=3, gate_eval_steps=2, self_feed=self_feed)
    whole = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    hist_a = train_superposition_sft(SuperpositionSFTConfig(output_dir=str(tmp_path / "a"), **opts), whole, ex,
                                     gate_examples=ex[:4])
    assert hist_a.steps == 6
    b = str(tmp_path / "b")
    with killed_in_step(step_loop, 5):
        train_superposition_sft(SuperpositionSFTConfig(output_dir=b, save_steps=2, **opts),
                                tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32), ex,
                                gate_examples=ex[:4])
    resumed = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=1, hidden=32)
    hist_b = train_superposition_sft(SuperpositionSFTConfig(output_dir=b, save_steps=2, resume_from_checkpoint="latest",
                                                            **opts), resumed, ex, gate_examples=ex[:4])
    assert all(torch.equal(x, y) for x, y in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()))
    assert hist_b.steps == 6 and hist_b.stage_log == hist_a.stage_log
    assert [(r["step"], r["loss"]) for r in hist_b.train] == [(r["step"], r["loss"]) for r in hist_a.train]
    assert [r["gate/streak"] for r in hist_b.gate] == [r["gate/streak"] for r in hist_a.gate] == [1, 2, 3]
    strip = [{k: v for k, v in r.items() if "wall" not in k} for r in read_metrics(tmp_path / "a")]
    assert [{k: v for k, v in r.items() if "wall" not in k} for r in read_metrics(b)] == strip


def test_self_feed_reads_the_superpositions_the_model_writes():
    """self_feed: the latent inputs it substitutes equal, computed here on the HF model's own logits, the
    renormalised top-K softmax of the previous position's prediction times the embedding matrix (what gumbel_topk
    feeds back in generation); self_feed=1 trains on exactly those inputs, 0 or no generator is teacher forcing."""
    from latentrl.sft.superposition import self_fed_latents

    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    ex = make_examples("chain_sum", 4, seed=0, length=2)
    cfg = SuperpositionSFTConfig(top_k=5, self_feed=1.0)
    b = build_superposition_batch(encode_superposition_examples(lm.tokenizer, ex, cfg), lm.tokenizer.pad_token_id)
    E = lm.model.get_input_embeddings().weight
    gold = E[b["input_ids"]].clone()
    gold[b["latent_mask"]] = torch.einsum("nk,nkh->nh", b["latent_weights"][b["latent_mask"]],
                                          E[b["latent_ids"][b["latent_mask"]]])
    mask = b["attention_mask"]
    with torch.no_grad():
        logits = lm.model(inputs_embeds=gold, attention_mask=mask,
                          position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
    top = logits.float().log_softmax(-1).topk(5, dim=-1)
    ref = torch.einsum("btk,btkh->bth", top.values.softmax(-1), E[top.indices])  # position t's prediction
    want = gold.clone()
    want[:, 1:][b["latent_mask"][:, 1:]] = ref[:, :-1][b["latent_mask"][:, 1:]]
    own = self_fed_latents(lm, gold, b, 5)
    lat = b["latent_mask"]
    torch.testing.assert_close(own[lat], want[lat], rtol=1e-5, atol=1e-6)
    assert own[~lat].abs().max() == 0
    fed, _ = superposition_loss(lm, b, cfg, generator=torch.Generator().manual_seed(0))
    lm_logits = lm.model(inputs_embeds=want, attention_mask=mask,
                         position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
    ref_cfg = SuperpositionSFTConfig(top_k=5)
    teacher, _ = superposition_loss(lm, b, ref_cfg)
    assert torch.equal(superposition_loss(lm, b, cfg)[0], teacher)  # no generator (gate / eval): teacher forcing
    assert not torch.allclose(fed, teacher)
    # the self-fed loss is the same CE + KL on the logits of the run that reads `want`
    ce = torch.nn.functional.cross_entropy(lm_logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten())
    t = lat[:, 1:]
    lp = lm_logits[:, :-1][t].log_softmax(-1)
    q, qi = b["latent_weights"][:, 1:][t], b["latent_ids"][:, 1:][t]
    kl = (q * (q.clamp_min(1e-12).log() - lp.gather(-1, qi))).sum(-1).mean()
    torch.testing.assert_close(fed, ce + kl, rtol=1e-5, atol=1e-6)


def test_superposition_gate_on_generated_accuracy_scores_the_models_own_latents():
    """gate_metric generated_accuracy: the gate value is the greedy Pass@1 of evaluate_superposition on the gate
    problems (the model writes its own latents), recorded beside the teacher-forced metrics."""
    from latentrl.sft.superposition import evaluate_superposition, superposition_gate_metrics

    lm = tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=0, hidden=32)
    ex = make_examples("chain_sum", 8, seed=0, length=2)
    cfg = SuperpositionSFTConfig(max_steps=4, per_device_train_batch_size=8, learning_rate=1e-2, warmup_steps=0,
                                 top_k=5, disable_tqdm=True, stage_advance="converged", gate_metric="generated_accuracy",
                                 gate_threshold=0.0, gate_patience=1, gate_eval_steps=2, max_latent_steps=4)
    hist = train_superposition_sft(cfg, lm, ex, gate_examples=ex[:4])
    assert hist.steps == 2 and hist.stage_log[0]["stage/reason"] == "converged"
    assert {"gate/generated_accuracy", "gate/answer_accuracy", "gate/loss"} <= set(hist.gate[0])
    enc = encode_superposition_examples(lm.tokenizer, ex[:4], cfg)
    gm = superposition_gate_metrics(lm, enc, cfg, lm.tokenizer.pad_token_id, ex[:4])
    assert gm["generated_accuracy"] == evaluate_superposition(lm, ex[:4], cfg)["pass_at_1"]
    with pytest.raises(ValueError, match="generated_accuracy needs"):
        superposition_gate_metrics(lm, enc, cfg, lm.tokenizer.pad_token_id)


# ---------------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("path", ["configs/latent_grpo_llama3.2-1b_gsm8k.yaml", "configs/cpu/latent_grpo.yaml"])
def test_presets_load(path):
    cfg = load_config(GRPOConfig, ROOT / path)
    assert cfg.method == "latent_grpo" and cfg.latent.operator == "gumbel_topk" and cfg.dual_clip == 3.0
    assert cfg.latent.one_sided_noise and cfg.latent.top_k == 10 and cfg.epsilon == 0.2 and cfg.loss_type == "dapo"
    assert cfg.dynamic_sampling and cfg.latent.end_of_thinking_token
    if "cpu" in path:
        assert 30 <= cfg.max_steps <= 60 and 4 <= cfg.num_generations <= 8
    else:
        assert cfg.learning_rate == 1e-6 and cfg.temperature == 0.6 and cfg.max_completion_length == 128
        assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == 16 * 8


def test_likelihood_preset_trains_from_the_shipped_chain_sum_init(tmp_path):
    """configs/cpu/latent_grpo_likelihood_chain_sum.yaml (the setting under which Latent-GRPO improves its init,
    docs/bench/rl_prompts) runs as written from the shipped init: the exact likelihood at noise 0.1 replaces the
    paper's surrogate, and two steps train with finite losses."""
    from latentrl.cli import main
    from latentrl.logger import read_metrics

    out = tmp_path / "run"
    assert main(["train", "--config", "configs/cpu/latent_grpo_likelihood_chain_sum.yaml", "max_steps=2",
                 f"output_dir={out}"]) == 0
    cfg = load_config(GRPOConfig, out / "run_config.json")
    assert cfg.method == "latent_grpo" and cfg.dataset == "chain_sum"
    assert cfg.latent.gumbel_logprob == "likelihood" and cfg.latent.noise_scale == 0.1
    assert Path(cfg.model_name_or_path).name == "chain_sum-superposition"
    steps = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) for r in steps)


def test_method_defaults_are_valid_config_overrides():
    method = get_method("latent_grpo")
    cfg = load_config(GRPOConfig, None, ["model_name_or_path=m", *(f"{k}={v}" for k, v in method.defaults.items())])
    assert cfg.latent.operator == "gumbel_topk" and cfg.dual_clip == 3.0 and cfg.dynamic_sampling


def test_prefix_nucleus_equals_the_reference_nucleus_size():
    """`GumbelTopKThought._prefix_nucleus` (one cumsum and one comparison) gives exactly the mask of the reference
    rule `sampling._nucleus_size` on the candidate prefix's cumulative mass (the whole distribution's mass, 1,
    appended), on random rows of many shapes and sharpnesses, for k = 1 and 10."""
    from latentrl.sampling import _nucleus_size

    op = GumbelTopKThought(top_k=10, top_p=0.95)
    for seed in range(60):
        g = gen(seed)
        V = int(torch.randint(12, 600, (1,), generator=g))
        x = torch.randn(6, V, generator=g) * float(torch.rand(1, generator=g) * 8)
        lp = torch.sort(x.log_softmax(-1), descending=True).values
        lp = lp[:, : int(torch.randint(11, V + 1, (1,), generator=g))]  # a candidate prefix
        for k in (1, 10):
            cdf = lp.exp().cumsum(-1)
            cdf = torch.cat([cdf, cdf.new_ones(cdf.shape[0], 1)], dim=-1)
            ref = torch.arange(lp.shape[-1]) < _nucleus_size(cdf, op.top_p, k)
            assert torch.equal(op._prefix_nucleus(lp, k), ref)
