"""DLR (our reading of arXiv 2601.17275): Gaussian chain log-density, InfoNCE, the high-value filter, a frozen main
model that never changes (weights and outputs), a trained assistant, latent-prefix decoding, presets."""

from pathlib import Path

import pytest
import torch

from latentrl.config import ConfigError, GRPOConfig, load_config
from latentrl.data import make_examples
from latentrl.data.schema import format_prompt
from latentrl.methods import get_method
from latentrl.methods.dlr import AssistantThoughtOperator, DLRConfig, LatentAssistant, gaussian_log_prob
from latentrl.methods.dlr.losses import anchor_info_nce, filter_high_value, group_info_nce, policy_gradient_loss
from latentrl.methods.dlr.prefix_trainer import DLRPrefixTrainer
from latentrl.rl.trainer import GRPOTrainer
from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout, left_pad
from latentrl.testing import char_sum_reward, tiny_chain_sum_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(num_latent_steps=3, latent_dim=4, assistant_hidden_size=16)




def examples(n=8):
    return make_examples("chain_sum", n, seed=0, length=3)


def config(tmp_path, **kw):
    base = dict(model_name_or_path="tiny", output_dir=str(tmp_path), method="dlr_prefix", max_steps=3,
                per_device_train_batch_size=8, num_generations=4, max_completion_length=8, learning_rate=1e-2,
                save_steps=0, report_to=["none"])
    base.update(kw)
    return GRPOConfig(**base)


def trainer(tmp_path, lm=None, dlr=None, **kw):
    return DLRPrefixTrainer(config(tmp_path, **kw), lm or tiny_chain_sum_model(), examples(), reward_funcs=[char_sum_reward],
                      dlr=dlr or DLRConfig(**SMALL))


# ---------------------------------------------------------------------------------------------- log-density
def test_chain_log_prob_equals_torch_normal():
    torch.manual_seed(0)
    a = LatentAssistant(12, 10, num_steps=3, latent_dim=5, hidden_size=8, init_std=0.7)
    with torch.no_grad():
        a.log_std.copy_(torch.randn(3, 5) * 0.3)
    h = torch.randn(4, 12)
    z, mu, log_std = a.sample(h, torch.Generator().manual_seed(1))
    ref = torch.distributions.Normal(mu, log_std.exp()).log_prob(z).sum(dim=(-1, -2))
    torch.testing.assert_close(a.log_prob(z, h), ref)
    # per-step densities the operator stores sum to the chain density
    op = AssistantThoughtOperator(a)
    steps = torch.arange(3).repeat(4)
    payload = {"z": z.reshape(12, 5), "prompt_hidden": h.repeat_interleave(3, 0), "step": steps}
    per_step = op.log_prob(None, None, payload)
    torch.testing.assert_close(per_step.view(4, 3).sum(-1), ref)
    torch.testing.assert_close(gaussian_log_prob(z, mu, log_std),
                               torch.distributions.Normal(mu, log_std.exp()).log_prob(z).sum(-1))


def test_min_std_clamps_the_density():
    a = LatentAssistant(4, 4, num_steps=1, latent_dim=2, init_std=1.0, min_std=0.1)
    with torch.no_grad():
        a.log_std.fill_(-10.0)
    assert torch.allclose(a.clamped_log_std().exp(), torch.full((1, 2), 0.1))


# ---------------------------------------------------------------------------------------------- InfoNCE
def test_info_nce_by_hand():
    anchor = torch.tensor([[0.0, 0.0]], requires_grad=True)
    samples = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]]])  # one group, K = 3
    pos = torch.tensor([[True, False, False]])
    tau = 0.5
    loss, n = group_info_nce(anchor, samples, pos, tau, "neg_sq_dist")
    # similarities: -mean squared distance -> -0.5, -2.0, -5.0 ; /tau -> -1, -4, -10
    s = torch.tensor([-1.0, -4.0, -10.0])
    expected = -(s[0] - torch.log(torch.exp(s).sum()))
    assert n == 1 and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()  # pulls the anchor toward the positive (1, 0): gradient descent moves +x
    assert anchor.grad[0, 0] < 0

    # two positives: each against the negatives only, averaged
    pos2 = torch.tensor([[True, True, False]])
    loss2, _ = group_info_nce(anchor.detach(), samples, pos2, tau, "neg_sq_dist")
    l_a = -(s[0] - torch.logsumexp(s[[0, 2]], 0))
    l_b = -(s[1] - torch.logsumexp(s[[1, 2]], 0))
    assert loss2.item() == pytest.approx(((l_a + l_b) / 2).item(), rel=1e-5)
    # a group with no negative (or no positive) contributes nothing
    loss3, n3 = group_info_nce(anchor.detach(), samples, torch.ones(1, 3, dtype=torch.bool), tau)
    assert n3 == 0 and loss3.item() == 0.0

    # cosine similarity
    a = torch.tensor([[1.0, 0.0]])
    lc, _ = group_info_nce(a, samples, pos, 1.0, "cosine")
    cos = torch.tensor([1.0, 0.0, 3.0 / 10 ** 0.5])
    assert lc.item() == pytest.approx((-(cos[0] - torch.logsumexp(cos, 0))).item(), rel=1e-5)


def test_anchor_direction_by_hand():
    anchors = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    samples = torch.tensor([[[0.0, 1.0], [5.0, 5.0]], [[2.0, 1.0], [0.0, 0.0]]])
    pos = torch.tensor([[True, False], [True, False]])
    loss, n = anchor_info_nce(anchors, samples, pos, 1.0)
    # positive (0,1) of group 0: sims to anchors -0.5, -2.5 ; positive (2,1) of group 1: -2.5, -0.5
    s0 = torch.tensor([-0.5, -2.5])
    l0 = -(s0[0] - torch.logsumexp(s0, 0))
    assert n == 2 and loss.item() == pytest.approx(l0.item(), rel=1e-5)  # symmetric: both terms equal
    single, n1 = anchor_info_nce(anchors[:1], samples[:1], pos[:1], 1.0)
    assert n1 == 0 and single.item() == 0.0


# ---------------------------------------------------------------------------------------------- filter, PG
def test_filter_on_hand_made_groups():
    r = torch.tensor([
        1.2, 0.0, 1.0, 0.2,        # top half = {1.2, 1.0}
        1.0, 1.0, 1.0, 0.0,        # ties at the boundary are all kept; the worst never
        1.0, 1.0, 1.0, 1.0,        # all equal: nothing to contrast, nothing kept
        0.2, float("nan"), 0.0, 0.0,  # NaN never kept; 0.2 > min
    ])
    keep = filter_high_value(r, 4, top_fraction=0.5)
    assert keep.tolist() == [True, False, True, False, True, True, True, False, False, False, False, False,
                             True, False, False, False]
    keep_thr = filter_high_value(r, 4, top_fraction=0.5, min_reward=1.1)
    assert keep_thr.nonzero().squeeze(-1).tolist() == [0]
    assert filter_high_value(r, 4, top_fraction=0.25)[:4].tolist() == [True, False, False, False]
    assert filter_high_value(r, 4, top_fraction=1.0)[:4].tolist() == [True, False, True, True]


def test_policy_gradient_surrogate():
    lp = torch.tensor([-3.0, -2.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    rf, _ = policy_gradient_loss(lp, lp.detach(), adv, "reinforce", 0.2, 0.2, num_dims=4)
    cl, clipped = policy_gradient_loss(lp, lp.detach(), adv, "clipped", 0.2, 0.2, num_dims=4)
    torch.testing.assert_close(rf, torch.tensor([0.75, -0.5]))
    g1 = torch.autograd.grad(rf.sum(), lp, retain_graph=True)[0]
    g2 = torch.autograd.grad(cl.sum(), lp)[0]
    torch.testing.assert_close(g1, g2)  # ratio 1: same gradient
    assert not clipped.any()


@pytest.mark.parametrize("terms", [dict(pg_coef=0.0), dict(contrastive_coef=0.0)])
def test_one_update_moves_the_assistant_toward_the_kept_chains(tmp_path, terms):
    from latentrl.methods.dlr.prefix_trainer import DLRChains
    from latentrl.rl.advantages import group_advantages

    t = trainer(tmp_path, dlr=DLRConfig(**SMALL, **terms))
    batch = t.generate_and_score(t._next_prompts(2))
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    batch.advantages, _ = group_advantages(batch.rewards, 4)
    chains = DLRChains(batch, 3)
    keep = filter_high_value(batch.rewards, 4, 0.5)
    assert keep.nonzero().squeeze(-1).tolist() == [0, 6]
    opt = torch.optim.SGD([p for p in t.assistant.parameters() if p.requires_grad], lr=1e-2)

    def state():
        with torch.no_grad():
            mu, _ = t.assistant(chains.h)
            return (mu - chains.z).pow(2).sum((-1, -2))[keep], t.assistant.log_prob(chains.z, chains.h)[keep]

    d0, lp0 = state()
    loss, _ = t.dlr_loss(batch, chains, keep)
    loss.backward()
    opt.step()
    d1, lp1 = state()
    assert (d1 < d0).all() and (lp1 > lp0).all()  # the mean chain moved toward the high-value samples


# ---------------------------------------------------------------------------------------------- frozen main model
def _main_state(lm):
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


@torch.no_grad()
def _unrelated_logits(lm):
    ids, mask = left_pad([lm.tokenizer(t)["input_ids"] for t in ("7 + 8 ||", "Tom is a cat", "<< 1 + 2 = 3 >>")],
                         lm.tokenizer.pad_token_id)
    return lm.model(input_ids=ids, attention_mask=mask.long()).logits


@pytest.mark.parametrize("nll_coef", [0.0, 1.0])
def test_training_changes_the_assistant_and_never_the_main_model(tmp_path, nll_coef):
    lm = tiny_chain_sum_model()
    before, logits_before = _main_state(lm), _unrelated_logits(lm)
    t = trainer(tmp_path, lm, dlr=DLRConfig(**SMALL, nll_coef=nll_coef))
    assert all(not p.requires_grad for p in lm.model.parameters())
    opt_params = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in lm.model.parameters()}
    asst_before = {k: v.clone() for k, v in t.assistant.state_dict().items()}
    history = t.train()
    assert len(history) == 3 and t.global_step == 3
    after = _main_state(lm)
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert torch.equal(_unrelated_logits(lm), logits_before)  # no forgetting: same outputs
    assert all(p.grad is None for p in lm.model.parameters())  # no gradient ever reached its parameters
    changed = [k for k, v in t.assistant.state_dict().items() if not torch.equal(v, asst_before[k])]
    assert {"mlp.0.weight", "mlp.4.weight", "log_std"} <= set(changed)
    # the projection W z + b learns only through the decoding-likelihood term (the only path through the main model)
    assert ("proj.weight" in changed) == (nll_coef > 0)
    m = history[-1]
    assert m["compute/main_flops"] > 0 and m["compute/assistant_flops"] > 0
    assert m["compute/assistant_flops"] < m["compute/main_flops"]
    assert 0.0 <= m["dlr/kept_frac"] <= 0.75  # ties at the boundary are kept; the worst of a group never
    if nll_coef:
        assert "dlr/nll" in m


def test_nll_gradient_flows_through_the_frozen_main_model(tmp_path):
    t = trainer(tmp_path, dlr=DLRConfig(**SMALL, nll_coef=1.0, contrastive_coef=0.0, pg_coef=0.0))
    batch = t.generate_and_score(t._next_prompts(2))
    from latentrl.methods.dlr.prefix_trainer import DLRChains

    keep = torch.ones(batch.rewards.shape, dtype=torch.bool)
    t.optimizer.zero_grad()
    for piece in t.nll_pieces(batch, keep, DLRChains(batch, 3), 1.0):
        loss, _ = piece()
        loss.backward()
    assert t.assistant.proj.weight.grad.abs().sum() > 0 and t.assistant.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in t.model.model.parameters())


def test_rollout_stores_the_sampled_chains(tmp_path):
    t = trainer(tmp_path)
    batch = t.generate_and_score(t._next_prompts(2))
    ro = batch.rollout
    assert ro.latent_mask[:, :3].all() and not ro.latent_mask[:, 3:].any()
    from latentrl.methods.dlr.prefix_trainer import DLRChains

    ch = DLRChains(batch, 3)
    with torch.no_grad():
        torch.testing.assert_close(t.assistant.log_prob(ch.z, ch.h), ch.old_logprob)
    # the K chains of a prompt differ (sampled); its prompt feature is shared
    assert not torch.allclose(ch.z[0], ch.z[1]) and torch.allclose(ch.h[0], ch.h[1])


# ---------------------------------------------------------------------------------------------- decoding
def test_latent_prefix_decoding_equals_a_manual_full_forward(tmp_path):
    t = trainer(tmp_path)
    lm, op = t.model, t.operator
    ids, mask = left_pad([lm.tokenizer(t_)["input_ids"] for t_ in ("1 2 3 ||", "5 ||")], lm.tokenizer.pad_token_id)
    z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3))
    op.begin(z)
    ro = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=6, temperature=0.0), op,
                          ThinkingSchedule(num_latent_steps=3))
    assert ro.latent_mask[:, :3].all()
    with torch.no_grad():
        lat = t.assistant.project(z)
        n_tok = ro.completion_ids.shape[1] - 3
        embeds = torch.cat([lm.embed(ids), lat, lm.embed(ro.completion_ids[:, 3:])], 1)
        full_mask = torch.cat([mask, ro.completion_mask], 1).long()
        pos = (full_mask.cumsum(-1) - 1).clamp_min(0)
        logits, _, _ = lm.forward_embeds(embeds, attention_mask=full_mask, position_ids=pos)
        P = ids.shape[1]
        pred = logits[:, P + 2 : P + 2 + n_tok].float()  # positions predicting completion tokens 3 ..
        tok = ro.completion_mask[:, 3:]
        assert torch.equal(pred.argmax(-1)[tok], ro.completion_ids[:, 3:][tok])  # greedy: same tokens
        lp = pred.log_softmax(-1).gather(-1, ro.completion_ids[:, 3:, None]).squeeze(-1)
        torch.testing.assert_close(lp[tok], ro.logprobs[:, 3:][tok], atol=1e-5, rtol=1e-5)
        # the stored payload rebuilds the latent inputs exactly
        torch.testing.assert_close(op.rebuild(lm, None, {"z": ro.payload["z"][:, :3]}), lat)


def test_generic_evaluate_decodes_the_mean_chain(tmp_path):
    from latentrl.eval import evaluate

    t = trainer(tmp_path)
    data = examples(3)
    res = t.evaluate(data, k=2)
    res2 = evaluate(t.model, data, operator=t.operator, schedule=t.schedule, max_new_positions=8,
                    prompt_text=t.method.prompt_text)
    assert res.n == 3 and res.mean_latent_positions == 3 and res.pass_at_k is not None
    assert [s["completion"] for s in res.samples] == [s["completion"] for s in res2.samples]
    # greedy Pass@1 = the mean chain: the same completions as decoding mu explicitly
    lm = t.model
    ids, mask = left_pad([lm.tokenizer(format_prompt(e), add_special_tokens=False)["input_ids"] for e in data],
                         lm.tokenizer.pad_token_id)
    with torch.no_grad():
        _, hidden, _ = lm.forward_embeds(lm.embed(ids), attention_mask=mask.long(),
                                         position_ids=(mask.long().cumsum(-1) - 1).clamp_min(0))
        mu, _ = t.assistant(hidden[:, -1])
    t.operator.begin(mu)
    ro = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=8, temperature=0.0), t.operator, t.schedule)
    from latentrl.rollout import decode_completions

    assert decode_completions(lm, ro) == [s["completion"] for s in res2.samples]


# ---------------------------------------------------------------------------------------------- wiring, presets
def test_plain_grpo_trainer_refuses_dlr_and_method_names_its_trainer(tmp_path):
    assert get_method("dlr_prefix").trainer_class is DLRPrefixTrainer
    with pytest.raises(ConfigError, match="DLRPrefixTrainer"):
        GRPOTrainer(config(tmp_path), tiny_chain_sum_model(), examples(), reward_funcs=[char_sum_reward])
    with pytest.raises(ConfigError, match="beta"):
        trainer(tmp_path, beta=0.1)
    with pytest.raises(ConfigError, match="max_completion_length"):
        trainer(tmp_path, max_completion_length=3)


def test_assistant_is_saved_and_reloaded(tmp_path):
    from latentrl.model import LatentModel

    t = trainer(tmp_path, max_steps=1)
    t.train()
    t.model.save_pretrained(tmp_path / "ckpt")
    lm2 = LatentModel.from_pretrained(tmp_path / "ckpt")
    t2 = DLRPrefixTrainer(config(tmp_path / "b"), lm2, examples(), reward_funcs=[char_sum_reward], dlr=DLRConfig(**SMALL))
    for (k, v), (_, w) in zip(t.assistant.state_dict().items(), t2.assistant.state_dict().items()):
        assert torch.equal(v, w), k


def test_resume_reproduces_the_run_with_dynamic_sampling(tmp_path):
    kw = dict(max_steps=2, save_steps=1, save_total_limit=None, dynamic_sampling=True, max_resample_rounds=1)
    a = trainer(tmp_path / "a", **kw)
    a.train()
    b = trainer(tmp_path / "a", **kw)  # same output_dir: resumes from checkpoint-1 and redoes step 2
    b.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))
    assert b.global_step == 2
    for (k, v), (_, w) in zip(a.assistant.state_dict().items(), b.assistant.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)


def test_dlr_config_from_args_or_dict(tmp_path):
    from latentrl.methods.dlr import resolve_dlr_config

    assert resolve_dlr_config(object()) == DLRConfig()
    assert resolve_dlr_config(object(), {"num_latent_steps": 2}).num_latent_steps == 2
    with pytest.raises(ConfigError, match="filter_top_fraction"):
        DLRConfig(filter_top_fraction=0.0)
    with pytest.raises(ConfigError):
        resolve_dlr_config(object(), {"no_such_option": 1})
    assert isinstance(GRPOConfig(model_name_or_path="m").dlr, DLRConfig)  # the `dlr:` section of GRPOConfig


@pytest.mark.parametrize("path", ["configs/cpu/dlr_prefix.yaml", "configs/dlr_prefix_qwen2.5-1.5b.yaml"])
def test_presets_load(path):
    cfg = load_config(GRPOConfig, ROOT / path)
    assert cfg.method == "dlr_prefix" and cfg.beta == 0.0
    assert cfg.reward_funcs[-1] == "format" and len(cfg.reward_weights) == 2
    assert cfg.latent.operator == "none"
    assert cfg.max_completion_length > DLRConfig().num_latent_steps


def test_replay_scores_the_chain_without_the_lm_head(tmp_path):
    """The assistant's thoughts are scored by their Gaussian density (`needs_logits = False`): the replay equals the
    rollout's log-probs and never runs the LM head at the latent positions."""
    from latentrl.replay import replay

    t = trainer(tmp_path)
    lm, op = t.model, t.operator
    ids, mask = left_pad([lm.tokenizer(t_)["input_ids"] for t_ in ("1 2 3 ||", "5 ||")], lm.tokenizer.pad_token_id)
    ro = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=6), op, ThinkingSchedule(num_latent_steps=3),
                          torch.Generator().manual_seed(0))
    assert ro.latent_mask[:, :3].all()
    rows = []
    hook = lm.model.get_output_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    try:
        out = replay(lm, op, ro)
    finally:
        hook.remove()
    m = ro.completion_mask
    torch.testing.assert_close(out.logprobs[m], ro.logprobs[m], atol=1e-5, rtol=1e-4)
    assert rows == []
