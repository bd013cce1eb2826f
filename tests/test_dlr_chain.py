"""DLR reading 2 (latentrl.methods.dlr.chain): an autoregressive assistant writes the thoughts of a frozen Coconut model."""

import hashlib

import pytest
import torch

from latentrl.assets import model_path
from latentrl.bench import suite_tasks
from latentrl.data.schema import as_rows
from latentrl.methods.dlr.assistant import gaussian_log_prob
from latentrl.methods.dlr.chain import (
    ChainAssistant,
    CoconutFrame,
    FixedChainOperator,
    distill_loss,
    dlr_chain_loss,
)
from latentrl.model import LatentModel
from latentrl.rl.advantages import group_advantages
from latentrl.rollout import decode_completions
from latentrl.thought_dependence import thought_dependence


@pytest.fixture(scope="module")
def main():
    torch.set_num_threads(1)
    lm = LatentModel.from_pretrained(str(model_path("chain_sum-coconut")))
    lm.model.requires_grad_(False)
    lm.eval()
    return lm


@pytest.fixture(scope="module")
def rows():
    return as_rows(suite_tasks()["chain_sum"].eval_examples(24))


def _hash(lm):
    h = hashlib.sha256()
    for k, v in sorted(lm.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_teacher_forced_means_equal_the_autoregressive_ones_and_log_prob_is_exact():
    torch.manual_seed(0)
    a = ChainAssistant(16, 4, width=16, layers=1, heads=2, ffn=32, max_prompt=6, init_std=0.3, thought_scale=2.0)
    a.eval()
    S, mask = torch.randn(3, 6, 16), torch.ones(3, 6, dtype=torch.bool)
    mask[0, :2] = False  # left padding
    z, mu_ar = a.sample(S, mask, torch.Generator().manual_seed(1))
    mu_tf, log_std = a(S, mask, z)
    assert torch.allclose(mu_ar, mu_tf, atol=1e-5)
    ref = torch.distributions.Normal(mu_tf, log_std.exp()).log_prob(z).sum((-1, -2))
    assert torch.allclose(a.log_prob(S, mask, z), ref, atol=1e-3)
    # causal: changing z_3 leaves mu_1..mu_3 as they were and moves mu_4
    z2 = z.clone()
    z2[:, 2] += 1.0
    mu2, _ = a(S, mask, z2)
    assert torch.allclose(mu2[:, :3], mu_tf[:, :3], atol=1e-5) and not torch.allclose(mu2[:, 3], mu_tf[:, 3])
    # sigma lives in thought units: exp(log_std) * scale
    assert torch.allclose(log_std.exp(), torch.full((4, 16), 0.6), atol=1e-5)
    # deterministic sampling writes the mean chain
    zd, mud = a.sample(S, mask, deterministic=True)
    assert torch.equal(zd, mud)


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    a, _ = group_advantages(r, 4, scale_rewards="none")  # the shared GRPO estimator (rl.advantages)
    assert torch.allclose(a, torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]))


def test_fixed_chain_with_the_main_models_own_thoughts_reproduces_its_rollout(main, rows):
    frame = CoconutFrame(main, num_thoughts=7, max_new_positions=12)
    ids, mask = frame.tokenize(rows)
    own, ro_own = frame.own_thoughts(ids, mask)
    assert own.shape == (len(rows), 7, main.hidden_size)
    ro = frame.decode(ids, mask, own)
    assert decode_completions(main, ro) == decode_completions(main, ro_own)
    _, ok = frame.score(rows, ro)
    assert ok.mean() > 0.7  # the shipped init is ~93 % on these problems
    # a chain that is not the model's own (zeros) changes its answers: the main model reads the chain
    _, ok0 = frame.score(rows, frame.decode(ids, mask, torch.zeros_like(own)))
    assert ok0.mean() < ok.mean() - 0.3
    # and the library's swap check, wrapped around the fixed chain, sees the dependence
    dep = thought_dependence(main, rows, operator=FixedChainOperator(own, frame.latent_id), schedule=frame.schedule(),
                             max_new_positions=12, batch_size=len(rows), prompt_text=frame.prompt_text)
    assert dep.pass_own == pytest.approx(float(ok.mean()))
    assert dep.drop_swap > 0.3


def test_answer_nll_matches_the_rollouts_greedy_tokens(main, rows):
    frame = CoconutFrame(main, num_thoughts=7, max_new_positions=12)
    ids, mask = frame.tokenize(rows[:6])
    own, ro = frame.own_thoughts(ids, mask)
    chain = own.clone().requires_grad_(True)
    nll = frame.answer_nll(ids, mask, chain, ro)
    assert nll.shape == (6,) and bool((nll >= 0).all())
    # greedy tokens are each position's argmax, so their NLL is at most log(vocab) and usually small
    assert float(nll.detach().mean()) < 1.0
    # the same NLL written on the HF model's own logits of [prompt, chain, <|end-latent|>, answer]
    L, P = chain.shape[1], ids.shape[1]
    ans, amask = ro.completion_ids[:, L + 1 :], ro.completion_mask[:, L + 1 :]
    emb_of = main.model.get_input_embeddings()
    end = torch.full((ids.shape[0], 1), frame.end_id, dtype=torch.long)
    full_mask = torch.cat([mask.long(), torch.ones(ids.shape[0], L + 1, dtype=torch.long), amask.long()], 1)
    logits = main.model(inputs_embeds=torch.cat([emb_of(ids), chain, emb_of(end), emb_of(ans)], 1),
                        attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp_min(0)).logits
    logp = logits[:, P + L : P + L + ans.shape[1]].log_softmax(-1).gather(-1, ans[..., None]).squeeze(-1)
    ref = -(logp * amask).sum(-1) / amask.sum(-1).clamp_min(1)
    torch.testing.assert_close(nll, ref, atol=1e-5, rtol=1e-5)
    (ref_grad,) = torch.autograd.grad(ref.sum(), chain)
    nll.sum().backward()
    assert chain.grad is not None and chain.grad.abs().sum() > 0
    torch.testing.assert_close(chain.grad, ref_grad, atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in main.model.parameters())


def test_distillation_and_dlr_update_train_the_assistant_only(main, rows):
    torch.manual_seed(0)
    frame = CoconutFrame(main, num_thoughts=7, max_new_positions=12)
    w0 = _hash(main)
    ids, mask = frame.tokenize(rows)
    own, _ = frame.own_thoughts(ids, mask)
    S = frame.prompt_states(ids, mask)
    scale = float(own.pow(2).mean().sqrt())
    a = ChainAssistant(main.hidden_size, 7, width=32, layers=1, heads=2, ffn=64, max_prompt=ids.shape[1],
                       init_std=0.1, thought_scale=scale)
    opt = torch.optim.Adam(a.parameters(), lr=3e-3)
    first = None
    for _ in range(80):  # the shipped init's thoughts: 1.33 -> 0.24 in 80 steps (0.69 at 40)
        loss = distill_loss(a, S, mask, own, noise=0.0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    # one DLR update on K = 4 sampled chains per prompt
    K, P = 4, 6
    r = torch.arange(P).repeat_interleave(K)
    rws = [rows[int(i)] for i in r]
    with torch.no_grad():
        z, _ = a.sample(S[r], mask[r], torch.Generator().manual_seed(0))
    ro = frame.decode(ids[r], mask[r], z)
    _, rewards = frame.score(rws, ro)
    rewards[::K] = 1.0  # make sure some groups have something to contrast
    rewards[1::K] = 0.0
    before = {k: v.clone() for k, v in a.state_dict().items()}
    loss, m = dlr_chain_loss(a, frame, ids[r], mask[r], S[r], z, rewards, ro, K, nll_coef=1.0, contrastive_coef=0.1)
    opt.zero_grad()
    loss.backward()
    assert a.log_std.grad is not None and a.head.weight.grad.abs().sum() > 0
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in a.state_dict().items())
    assert {"dlr/pg_loss", "dlr/contrastive_loss", "dlr/nll", "dlr/kept_frac"} <= set(m)
    assert _hash(main) == w0
    assert all(not p.requires_grad for p in main.model.parameters())


def test_gaussian_log_prob_shape_contract():
    z = torch.zeros(2, 3, 5)
    assert gaussian_log_prob(z, z, torch.zeros(3, 5)).shape == (2, 3)


def test_a_rows_means_do_not_depend_on_its_batchs_padding():
    torch.manual_seed(0)
    a = ChainAssistant(8, 3, width=16, layers=2, heads=2, ffn=32, max_prompt=8, thought_scale=1.0)
    a.eval()
    S = torch.randn(1, 4, 8)
    z = torch.randn(1, 3, 8)
    mu1, _ = a(S, torch.ones(1, 4, dtype=torch.bool), z)
    # the same row left-padded by 3 positions whose states are NaN (GPT-2 with SDPA returns NaN there)
    Sp = torch.cat([torch.full((1, 3, 8), float("nan")), S], 1)
    mask = torch.tensor([[False] * 3 + [True] * 4])
    mu2, _ = a(Sp, mask, z)
    assert torch.isfinite(mu2).all() and torch.allclose(mu1, mu2, atol=1e-5)


# ------------------------------------------------------------------ the registered method `dlr` (reading 2)
def _dlr_config(tmp_path, **kw):
    from latentrl.config import GRPOConfig, config_from_dict

    base = {"model_name_or_path": "chain_sum-coconut", "output_dir": str(tmp_path), "method": "dlr", "max_steps": 2,
            "per_device_train_batch_size": 16, "num_generations": 4, "max_completion_length": 12,
            "learning_rate": 1e-4, "report_to": ["jsonl"], "save_steps": 1, "log_to_console": False,
            "dlr": {"num_latent_steps": 7, "distill_steps": 3, "distill_examples": 24, "distill_batch_size": 8,
                    "assistant_hidden_size": 32, "assistant_ffn": 64}}
    for k, v in kw.items():
        if k == "dlr":
            base["dlr"].update(v)
        else:
            base[k] = v
    return config_from_dict(GRPOConfig, base)


def _fresh_main():
    lm = LatentModel.from_pretrained(str(model_path("chain_sum-coconut")))
    return lm


def test_rollout_chain_is_the_assistants_chain_on_the_hf_models_own_prompt_states(tmp_path, rows):
    """The engine hands the operator the prompt states of its prefill; they must be the HF model's own last-layer
    states, and the rollout's thoughts the assistant's chain on them (greedy: the mean; sampled: replayable)."""
    from latentrl.methods import get_method
    from latentrl.rollout import SamplingParams, generate_rollout
    from latentrl.sampling import generator_on

    lm = _fresh_main()
    cfg = _dlr_config(tmp_path)
    parts = get_method("dlr").build(lm, cfg)
    asst = lm.side_modules["dlr_chain_assistant"]
    asst.eval()
    frame = CoconutFrame(lm, 7, 12)
    sub = rows[:5]
    ids, mask = frame.tokenize(sub)
    with torch.no_grad():  # independent of our helpers: HF's forward with its own position handling
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        S = lm.model(input_ids=ids, attention_mask=mask.long(), position_ids=pos,
                     output_hidden_states=True).hidden_states[-1].float()
    parts.operator.set_eval_mode(True)
    ro = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=12, temperature=0.0), parts.operator,
                          parts.schedule)
    _, mu = asst.sample(S, mask, deterministic=True)
    assert torch.allclose(ro.payload["hidden"][:, :7].float(), mu, atol=1e-4)
    assert ro.completion_ids[0, 7] == lm.latent_ids.end  # <|end-latent|> forced after the L thoughts
    # sampled: the rollout's per-step log-densities sum to the exact log pi(z | S) recomputed teacher-forced
    parts.operator.set_eval_mode(False)
    ro = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=12, temperature=0.0), parts.operator,
                          parts.schedule, generator_on(torch.Generator().manual_seed(3), lm.device))
    z = ro.payload["hidden"][:, :7].float()
    assert not torch.allclose(z, mu, atol=1e-3)
    with torch.no_grad():
        lp = asst.log_prob(S, mask, z)
    assert torch.allclose(ro.logprobs[:, :7].sum(-1), lp, rtol=1e-4, atol=1e-2)


def test_dlr_method_trains_the_assistant_only_and_resumes_without_distilling_again(tmp_path, rows):
    from latentrl.logger import read_metrics
    from latentrl.methods import get_method
    from latentrl.methods.dlr.trainer import DLRTrainer
    from latentrl.rl.trainer import GRPOTrainer

    assert get_method("dlr").trainer_class is DLRTrainer
    lm = _fresh_main()
    w0 = _hash(lm)
    unrelated = torch.tensor([lm.tokenizer("1 2 3 4 ||", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits0 = lm.model(unrelated).logits.clone()
    cfg = _dlr_config(tmp_path)
    t = DLRTrainer(cfg, lm, rows)
    asst0 = {k: v.clone() for k, v in t.assistant.state_dict().items()}
    t.train()
    recs = read_metrics(tmp_path)
    assert "dlr/distill_mse_last" in recs[0] and "dlr/distill_mse_last" not in recs[1]
    assert all(k in recs[0] for k in ("dlr/kept_frac", "dlr/pg_loss", "compute/assistant_flops",
                                      "compute/total_flops"))
    assert float(t.assistant.distilled) == 1.0
    assert any(not torch.equal(asst0[k], v) for k, v in t.assistant.state_dict().items())
    # replay = rollout: the update's log pi(z | S) equals the rollout's per-thought log-densities
    batch = t.generate_and_score(t.rows[:4])
    ref = batch.rollout.logprobs[:, :7].sum(-1)
    assert torch.allclose(t.chain_logprobs(batch), ref, rtol=1e-5, atol=1e-2)
    assert _hash(lm) == w0 and all(not p.requires_grad for p in lm.model.parameters())
    with torch.no_grad():
        assert torch.equal(lm.model(unrelated).logits, logits0)
    # resume from checkpoint-2 for one more step: the saved assistant is loaded and not distilled again
    lm2 = LatentModel.from_pretrained(str(tmp_path / "checkpoint-2"))
    t2 = DLRTrainer(_dlr_config(tmp_path, max_steps=3, resume_from_checkpoint=str(tmp_path / "checkpoint-2")), lm2,
                    rows)
    assert float(t2.assistant.distilled) == 1.0
    assert torch.equal(t2.assistant.head.weight, t.assistant.head.weight)
    # scoring: a DLR checkpoint holds its assistant; a model without one is refused, not read through a random one
    get_method("dlr").check_scorable(LatentModel.from_pretrained(str(tmp_path / "checkpoint-2")), "checkpoint-2")
    from latentrl.config import ConfigError

    for method in ("dlr", "dlr_prefix"):
        with pytest.raises(ConfigError, match=f"method '{method}' forms its thoughts with its trained .* which "
                                              "plain does not hold"):
            get_method(method).check_scorable(_fresh_main(), "plain")
    # the plain trainer refuses the method
    with pytest.raises(Exception, match="DLRTrainer"):
        GRPOTrainer(_dlr_config(tmp_path / "g"), _fresh_main(), rows)


def test_dlr_method_config_errors(tmp_path, rows):
    from latentrl.config import ConfigError
    from latentrl.methods import get_method

    def m():  # a fresh method per run (a Method instance keeps the DLR options it was built with)
        return get_method("dlr")

    with pytest.raises(ConfigError, match="beta"):
        m().build(_fresh_main(), _dlr_config(tmp_path, beta=0.1))
    with pytest.raises(ConfigError, match="num_iterations"):
        m().build(_fresh_main(), _dlr_config(tmp_path, num_iterations=2))
    with pytest.raises(ConfigError, match="max_completion_length"):
        m().build(_fresh_main(), _dlr_config(tmp_path, max_completion_length=8))
    lm = _fresh_main()
    m().build(lm, _dlr_config(tmp_path))
    with pytest.raises(ConfigError, match="writes 7 thoughts"):
        m().build(lm, _dlr_config(tmp_path, dlr={"num_latent_steps": 4}))
    old = _fresh_main()  # a checkpoint of reading 1 (an MLP prefix assistant) is not silently re-initialised
    old._pending_side_state = {"dlr_assistant.proj.weight": torch.zeros(1)}
    with pytest.raises(ConfigError, match="dlr_prefix"):
        m().build(old, _dlr_config(tmp_path))
    from latentrl.data import task_vocabulary
    from latentrl.testing import tiny_latent_model

    with pytest.raises(ConfigError, match="Coconut"):  # a main model without latent tokens cannot read thoughts
        m().build(tiny_latent_model("qwen2", task_vocabulary("chain_sum"), add_latent_tokens=False), _dlr_config(tmp_path))


@pytest.mark.parametrize("steps", [1, 2, 20, 40])
def test_distillation_runs_at_any_length(main, rows, steps):
    """torch's OneCycleLR divides by zero at 20 steps (its warmup phase collapses): short distillations use a constant
    rate, from ONE_CYCLE_MIN_STEPS on the one-cycle schedule."""
    from latentrl.methods.dlr.chain import distill_assistant

    a = ChainAssistant(main.hidden_size, 7, width=16, layers=1, heads=2, ffn=32, max_prompt=32)
    hist = distill_assistant(a, CoconutFrame(main, 7, 12), rows[:8], steps=steps, batch_size=4, learning_rate=1e-3,
                             noise=0.05, seed=0)
    assert hist[-1]["step"] == steps and float(a.distilled) == 1.0 and float(a.scale) > 0
