"""HRPO: gate math and init, hybrid rollouts that replay exactly, the delimiter span, gradients, the trainer step,
checkpoints of the gate, the ablation methods and the presets."""

import math
from pathlib import Path

import pytest
import torch

from latentrl.config import ConfigError, GRPOConfig, LatentConfig, config_from_dict, load_config
from latentrl.data import make_examples, task_vocabulary
from latentrl.methods import get_method
from latentrl.methods.hrpo.operator import GATE_NAME, HRPOGate, ensure_gate, projected_state
from latentrl.model import LatentModel
from latentrl.replay import completion_embeds, replay
from latentrl.rl.trainer import GRPOTrainer
from latentrl.rollout import SamplingParams, ThinkingSchedule, decode_completions, generate_rollout
from latentrl.testing import tiny_latent_model, word_count_reward
from latentrl.thoughts import build_thought_operator
from tests.conftest import WORDS, gen, make_prompts

ROOT = Path(__file__).resolve().parents[1]
NEVER = [10**6]  # a delimiter no rollout can produce


def tiny(arch="qwen2", seed=0):
    return tiny_latent_model(arch, WORDS, seed=seed)


def sampling(n=10, temperature=1.0):
    # stop ids that never occur keep every row alive for all n positions (rows differ only by the delimiter)
    return SamplingParams(max_new_positions=n, temperature=temperature, stop_token_ids=[-1])


def delimiter_rollout(lm, op, n=10, temperature=1.0, seed=3):
    """A hybrid rollout whose delimiter is two ids row 0 really produces (positions 2-3 of a delimiter-free run)."""
    ids, mask = make_prompts(lm)
    free = generate_rollout(lm, ids, mask, sampling(n, temperature), op, ThinkingSchedule(delimiter_ids=NEVER),
                            gen(seed))
    assert free.latent_mask.all(), "without a delimiter every position of every row is hybrid"
    delim = free.completion_ids[0, 2:4].tolist()
    r = generate_rollout(lm, ids, mask, sampling(n, temperature), op, ThinkingSchedule(delimiter_ids=delim), gen(seed))
    return r, delim


def first_end(ids: list[int], delim: list[int]) -> int | None:
    """Index just after the first occurrence of `delim` in `ids`."""
    for j in range(len(ids) - len(delim) + 1):
        if ids[j : j + len(delim)] == delim:
            return j + len(delim)
    return None


# ---------------------------------------------------------------------------------------------- the gate
def test_gate_math_matches_a_hand_computation():
    gate = HRPOGate(2, c=8.0)
    with torch.no_grad():
        gate.gate_r.weight.copy_(torch.tensor([[0.5, -1.0], [0.0, 2.0]]))
        gate.gate_r.bias.copy_(torch.tensor([0.1, -0.2]))
        gate.gate_i.weight.copy_(torch.tensor([[1.0, 0.0], [-0.5, 0.5]]))
        gate.gate_i.bias.copy_(torch.tensor([0.0, 0.3]))
        gate.Lambda.copy_(torch.tensor([-3.0, 0.5]))
    e, h = [0.4, -0.6], [1.5, -2.0]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    r = [sig(0.5 * e[0] - 1.0 * e[1] + 0.1), sig(0.0 * e[0] + 2.0 * e[1] - 0.2)]
    i = [sig(1.0 * e[0] + 0.0 * e[1] + 0.0), sig(-0.5 * e[0] + 0.5 * e[1] + 0.3)]
    a = [math.exp(-8.0 * softplus(lam) * rk) for lam, rk in zip([-3.0, 0.5], r)]
    want = [a[k] * e[k] + math.sqrt(1 - a[k] ** 2 + 1e-8) * i[k] * h[k] for k in range(2)]
    out, got_a = gate(torch.tensor([e]), torch.tensor([h]))
    torch.testing.assert_close(got_a[0], torch.tensor(a), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out[0], torch.tensor(want), rtol=1e-6, atol=1e-7)


def test_the_kept_decay_rate_follows_every_change_of_lambda_and_c():
    """Outside autograd `decay_rate` is kept between calls: it must follow an optimizer step, a load, an in-place
    change of c and a dtype move, and with autograd on it is recomputed so the gradient reaches Lambda."""
    gate = HRPOGate(3, c=8.0)
    e = torch.randn(2, 3)

    def fresh(x: torch.Tensor) -> torch.Tensor:  # the gate's formula written out
        return torch.exp(-gate.c * torch.nn.functional.softplus(gate.Lambda) * torch.sigmoid(gate.gate_r(x)))
    with torch.no_grad():
        first = gate.decay(e)
        assert torch.equal(first, fresh(e)) and gate.decay_rate() is gate.decay_rate()
    gate.Lambda.grad = torch.ones(3)
    torch.optim.SGD([gate.Lambda], lr=0.5).step()  # in place
    with torch.no_grad():
        assert not torch.equal(gate.decay(e), first) and torch.equal(gate.decay(e), fresh(e))
        gate.load_state_dict({**gate.state_dict(), "c": torch.tensor(2.0)})
        assert torch.equal(gate.decay(e), fresh(e))
        gate.c.fill_(5.0)
        assert torch.equal(gate.decay(e), fresh(e))
        gate.double()
        assert gate.decay_rate().dtype == torch.float64
        assert torch.equal(gate.decay(e.double()), fresh(e.double()))
    gate.Lambda.grad = None
    gate.decay(e.double()).sum().backward()
    assert gate.Lambda.grad is not None and gate.Lambda.grad.abs().sum() > 0


def test_projected_state_is_normalised_probability_mix_of_embeddings():
    lm = tiny()
    logits = torch.randn(3, lm.vocab_size)
    p = logits.softmax(-1)
    E = lm.embedding_matrix
    want = torch.stack([sum(p[b, v] * E[v] for v in range(lm.vocab_size)) / p[b].norm() for b in range(3)])
    torch.testing.assert_close(projected_state(lm, p), want, rtol=1e-5, atol=1e-6)
    onehot = torch.zeros(1, lm.vocab_size)
    onehot[0, 7] = 1.0
    torch.testing.assert_close(projected_state(lm, onehot)[0], lm.embedding_matrix[7])


def test_init_gives_a_equal_u_to_the_r_with_u_in_the_configured_range():
    r_min, r_max = 0.95, 0.999
    gate = HRPOGate(64, c=8.0, r_min=r_min, r_max=r_max, generator=torch.Generator().manual_seed(0))
    u = torch.exp(-gate.c * torch.nn.functional.softplus(gate.Lambda))  # a at r = 1
    assert (u >= r_min - 1e-6).all() and (u <= r_max + 1e-6).all()
    assert u.max() - u.min() > 0.01  # drawn per dimension, not one value
    for r in (0.0, 0.3, 0.5, 1.0):
        a = torch.exp(-gate.c * torch.nn.functional.softplus(gate.Lambda) * r)
        torch.testing.assert_close(a, u.pow(r), rtol=1e-5, atol=1e-6)
    # with the small init the gates are r ~ i ~ 0.5: a ~ sqrt(u), nearly pure token embeddings
    a = gate.decay(torch.randn(16, 64) * 0.02)
    assert ((a > math.sqrt(r_min) - 1e-3) & (a < 1.0)).all()
    assert torch.allclose(torch.sigmoid(gate.gate_i(torch.zeros(1, 64))), torch.full((1, 64), 0.5))
    with pytest.raises(ValueError, match="r_min"):
        HRPOGate(4, r_min=0.999, r_max=0.99)


# ---------------------------------------------------------------------------------------------- rollouts
@pytest.mark.parametrize("arch", ["qwen2", "gpt2", "llama"])
def test_replayed_logprobs_equal_rollout_logprobs_with_delimiter_schedule(arch):
    lm = tiny(arch)
    op = build_thought_operator("hrpo_gate", temperature=0.7)
    ensure_gate(lm)
    r, _ = delimiter_rollout(lm, op, temperature=0.7)
    assert r.latent_mask.any() and (r.completion_mask & ~r.latent_mask).any()  # hybrid and answer positions
    out = replay(lm, op, r, temperature=0.7)
    m = r.completion_mask
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_rollouts_with_the_fused_head_step_replay_to_their_logprobs(monkeypatch, arch):
    """The fast path's fused step (`fused_step`, on here at this small vocabulary): the rollout's log-probs and
    inputs are what the replay recomputes on the model's full logits, and the same seed gives the same rollout as
    the unfused step. The tiny Qwen2 ties its LM head to the embedding, the tiny Llama does not."""
    from latentrl import sampling as sampling_module
    from latentrl.methods.hrpo import fused_step

    lm = tiny(arch)
    op = build_thought_operator("hrpo_gate", temperature=0.7)
    ensure_gate(lm)
    ids, mask = make_prompts(lm)
    schedule = ThinkingSchedule(delimiter_ids=NEVER)
    monkeypatch.setattr(sampling_module, "BLOCK", 4)  # the two-level draw in both, so both take the same uniforms
    plain = generate_rollout(lm, ids, mask, sampling(8, 0.7), op, schedule, gen(4))
    monkeypatch.setattr(fused_step, "MIN_VOCAB", 4)
    monkeypatch.setattr(fused_step, "CHUNK_BYTES", 8 * lm.hidden_size * 4)  # 8 rows
    assert fused_step.fusable_head(lm, ids.device) is not None
    r = generate_rollout(lm, ids, mask, sampling(8, 0.7), op, schedule, gen(4))
    assert r.latent_mask.all()
    assert torch.equal(r.completion_ids, plain.completion_ids)
    m = r.completion_mask
    torch.testing.assert_close(r.logprobs[m], plain.logprobs[m], atol=1e-5, rtol=1e-5)
    out = replay(lm, op, r, temperature=0.7)
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_thinking_span_ends_exactly_after_the_delimiter_ids_per_row(arch):
    lm = tiny(arch)
    op = build_thought_operator("hrpo_gate")
    ensure_gate(lm)
    r, delim = delimiter_rollout(lm, op)
    hits = 0
    for b in range(r.batch_size):
        ids = r.completion_ids[b][r.completion_mask[b]].tolist()
        end = first_end(ids, delim)
        want = torch.zeros(len(ids), dtype=torch.bool)
        want[: end if end is not None else len(ids)] = True
        assert torch.equal(r.latent_mask[b][r.completion_mask[b]], want), (b, ids, delim)
        hits += end is not None
    assert hits >= 1  # row 0 produces the delimiter at the latest by position 3
    assert first_end(r.completion_ids[0].tolist(), delim) <= 4


def test_rebuilt_inputs_equal_the_rollout_inputs_and_answer_positions_are_plain_embeddings():
    lm = tiny()
    op = build_thought_operator("hrpo_gate")
    ensure_gate(lm)
    ensure_gate(lm)
    with torch.no_grad():  # a gate that really mixes, so a wrong rebuild could not pass by accident
        lm.side_modules[GATE_NAME].Lambda.fill_(0.0)
    seen = []
    step = op.step
    op.step = lambda *a, **k: seen.append(step(*a, **k)) or seen[-1]
    r, _ = delimiter_rollout(lm, op)
    rebuilt = completion_embeds(lm, op, r)
    # the delimiter run's steps are the last ones recorded: `step` ran at t = 0 .. T-1, while any row was hybrid
    T = int(r.latent_mask.any(0).nonzero().max()) + 1
    second = seen[-T:]
    lat = r.latent_mask
    for t in range(T):
        rows = lat[:, t]
        torch.testing.assert_close(rebuilt[rows, t], second[t].embeds[rows].to(rebuilt.dtype), rtol=0, atol=0)
        mixed = second[t].embeds[rows]
        assert not torch.allclose(mixed, lm.embed(second[t].token_ids[rows]), atol=1e-3)  # really a hybrid
    plain = r.completion_mask & ~lat
    assert plain.any()
    torch.testing.assert_close(rebuilt[plain], lm.embed(r.completion_ids)[plain], rtol=0, atol=0)


def test_gradients_reach_the_gate_and_the_embedding():
    lm = tiny()
    op = build_thought_operator("hrpo_gate")
    ensure_gate(lm)
    r, _ = delimiter_rollout(lm, op)
    lm.zero_grad(set_to_none=True)
    out = replay(lm, op, r)
    (out.logprobs * r.completion_mask).sum().backward()
    gate = lm.side_modules[GATE_NAME]
    for name, p in gate.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    E = lm.embedding_matrix
    hybrid_ids = r.completion_ids[r.latent_mask].unique()
    assert E.grad is not None and E.grad[hybrid_ids].abs().sum(-1).gt(0).all()


def test_logprob_temperature_is_explicit_and_separate_from_the_sampling_temperature():
    lm = tiny()
    op = build_thought_operator("hrpo_gate", temperature=0.5, logprob_temperature=1.0)
    ensure_gate(lm)
    logits = torch.randn(4, lm.vocab_size)
    torch.testing.assert_close(op.sampling_probs(logits), (logits / 0.5).softmax(-1))
    ids = torch.tensor([1, 2, 3, 4])
    at_t1 = logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    torch.testing.assert_close(op.log_prob(logits, ids, {}), at_t1)
    r, _ = delimiter_rollout(lm, op, temperature=0.5)
    lat = r.latent_mask & r.completion_mask
    at_one = replay(lm, op, r, temperature=1.0).logprobs  # hybrid positions scored at 1.0 whatever replay says
    at_half = replay(lm, op, r, temperature=0.5).logprobs
    torch.testing.assert_close(at_one[lat], r.logprobs[lat], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(at_half[lat], r.logprobs[lat], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(at_half[r.completion_mask & ~lat], at_one[r.completion_mask & ~lat])


def test_eval_mode_takes_the_argmax_token():
    lm = tiny()
    op = build_thought_operator("hrpo_gate")
    ensure_gate(lm)
    op.set_eval_mode(True)
    logits = torch.randn(5, lm.vocab_size)
    step = op.step(lm, logits, torch.zeros(5, lm.hidden_size), generator=gen())
    assert torch.equal(step.token_ids, logits.argmax(-1))


def test_the_floored_path_scores_and_projects_like_the_reference(monkeypatch):
    """HRPO's unfiltered step with the exponent floor on (`sampling.EXP_FLOOR`, lowered here to this vocabulary) on
    rows so peaked that most weights fall under it: its log-prob is the replay's (`log_prob`), its projected state
    the full-vocabulary reference `projected_state(softmax(logits / tau))`."""
    from latentrl import sampling as sampling_module

    monkeypatch.setattr(sampling_module, "FLOOR_MIN_ENTRIES", 8)
    lm = tiny()
    op = build_thought_operator("hrpo_gate", temperature=0.5)
    ensure_gate(lm)
    logits = torch.randn(16, lm.vocab_size, generator=gen(2)) * 40
    logits[:, 0] = float("-inf")
    assert ((logits - logits.amax(-1, keepdim=True)) / 0.5 < sampling_module.EXP_FLOOR).float().mean() > 0.3
    step = op.step(lm, logits, torch.zeros(16, lm.hidden_size), generator=gen(3))
    assert not (step.token_ids == 0).any()
    torch.testing.assert_close(step.logprob, op.log_prob(logits, step.token_ids, {}), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step.payload["hidden"].float(), projected_state(lm, op.sampling_probs(logits)),
                               atol=1e-6, rtol=1e-5)


def test_top_k_filters_what_is_sampled_and_projected():
    lm = tiny()
    op = build_thought_operator("hrpo_gate", top_k=2)
    ensure_gate(lm)
    logits = torch.randn(64, lm.vocab_size)
    top2 = logits.topk(2, dim=-1).indices
    step = op.step(lm, logits, torch.zeros(64, lm.hidden_size), generator=gen())
    assert (step.token_ids[:, None] == top2).any(-1).all()
    p = op.sampling_probs(logits)
    assert ((p > 0).sum(-1) == 2).all()
    torch.testing.assert_close(step.payload["hidden"].float(), projected_state(lm, p))


@pytest.mark.parametrize("mode", ["raw_hidden", "interpolation"])
def test_ablation_modes_feed_the_raw_hidden_state_or_the_projection(mode):
    lm = tiny()
    op = build_thought_operator("hrpo_gate", mode=mode)  # no gate needed, none attached
    logits, hidden = torch.randn(3, lm.vocab_size), torch.randn(3, lm.hidden_size)
    step = op.step(lm, logits, hidden, generator=gen())
    want = hidden if mode == "raw_hidden" else projected_state(lm, op.sampling_probs(logits))
    torch.testing.assert_close(step.embeds.float(), want)
    r, _ = delimiter_rollout(lm, op)
    out = replay(lm, op, r)
    torch.testing.assert_close(out.logprobs[r.completion_mask], r.logprobs[r.completion_mask], atol=1e-5, rtol=1e-4)
    assert GATE_NAME not in lm.side_modules


# ---------------------------------------------------------------------------------------------- trainer
def examples(n=16):
    return make_examples("chain_sum", n, seed=0, length=3)


def trainer_model(seed=0):
    return tiny_latent_model("qwen2", task_vocabulary("chain_sum"), seed=seed, hidden=32)




def config(tmp_path, **kw):
    base = dict(model_name_or_path="tiny", output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                num_generations=4, max_completion_length=8, learning_rate=1e-2, save_steps=0, report_to=["none"],
                method="hrpo", temperature=1.0, beta=0.005, policy_loss="reinforce", loss_type="grpo",
                latent=LatentConfig(operator="hrpo_gate", answer_delimiter="####", latent_temperature=1.0))
    base.update(kw)
    return GRPOConfig(**base)


def gate_state(lm):
    return {k: v.detach().clone() for k, v in lm.side_modules[GATE_NAME].state_dict().items()}


def test_one_trainer_step_trains_the_gate_with_its_own_learning_rates(tmp_path):
    lm = trainer_model()
    t = GRPOTrainer(config(tmp_path), lm, examples(), reward_funcs=[word_count_reward])
    assert isinstance(t.operator, type(build_thought_operator("hrpo_gate"))) and t.operator.mode == "gate"
    assert t.schedule.delimiters() == [lm.tokenizer("####", add_special_tokens=False)["input_ids"]]
    gate = lm.side_modules[GATE_NAME]
    lrs = {id(p): g["lr"] for g in t.optimizer.param_groups for p in g["params"]}
    assert lrs[id(gate.gate_r.weight)] == pytest.approx(1e-4) and lrs[id(gate.gate_i.bias)] == pytest.approx(1e-4)
    assert lrs[id(gate.Lambda)] == pytest.approx(1e-3) and lrs[id(lm.embedding_matrix)] == pytest.approx(1e-2)
    assert len(lrs) == len({id(p) for p in lm.parameters()})  # every parameter exactly once
    before = gate_state(lm)
    m = t.train_step()
    after = gate_state(lm)
    for k in ("gate_r.weight", "gate_r.bias", "gate_i.weight", "gate_i.bias", "Lambda"):
        assert not torch.equal(before[k], after[k]), k
    assert torch.equal(before["c"], after["c"])
    assert 0.9 < m["embeds_ratio"] < 1.0 and 0.0 < m["hidden_ratio"] < 0.5
    assert m["hrpo/thinking_ratio"] > 0 and m["grad_norm"] > 0 and "kl" in m


def test_rewards_see_the_hybrid_tokens(tmp_path):
    seen = []

    def length_reward(prompts, completions, **kw):
        seen.append(list(completions))
        return [float(len(c.split())) for c in completions]

    t = GRPOTrainer(config(tmp_path), trainer_model(), examples(), reward_funcs=[length_reward])
    batch = t.generate_and_score(t._next_prompts(2))
    full = decode_completions(t.model, batch.rollout, skip_latent=False)
    assert batch.rollout.latent_mask.any()
    assert batch.completions == full
    assert batch.rewards.tolist() == [float(len(c.split())) for c in full]


def test_reference_logprobs_replay_the_base_model_on_plain_token_ids(tmp_path):
    lm = trainer_model()
    t = GRPOTrainer(config(tmp_path), lm, examples(), reward_funcs=[word_count_reward])
    with torch.no_grad():  # make the gate matter, so replaying with and without it differs
        lm.side_modules[GATE_NAME].Lambda.fill_(0.0)
        t.ref_model.side_modules[GATE_NAME].Lambda.fill_(0.0)
    batch = t.generate_and_score(t._next_prompts(2))
    ref = t.method.reference_logprobs(t.ctx, batch)
    m = batch.rollout.completion_mask
    plain = replay(t.ref_model, None, batch.rollout, temperature=t.loss_temperature).logprobs
    hybrid = replay(t.ref_model, t.operator, batch.rollout, temperature=t.loss_temperature).logprobs
    torch.testing.assert_close(ref[m], plain[m])
    assert not torch.allclose(ref[m], hybrid[m], atol=1e-4)


@pytest.mark.parametrize("method", ["hrpo_raw_hidden", "hrpo_no_gate"])
def test_ablation_methods_run_one_step(tmp_path, method):
    lm = trainer_model()
    t = GRPOTrainer(config(tmp_path, method=method, policy_loss="clipped", loss_type="dapo"), lm, examples(),
                    reward_funcs=[word_count_reward])
    assert t.operator.mode == {"hrpo_raw_hidden": "raw_hidden", "hrpo_no_gate": "interpolation"}[method]
    m = t.train_step()
    assert GATE_NAME not in lm.side_modules and "embeds_ratio" not in m
    assert math.isfinite(m["loss"]) and m["grad_norm"] > 0


def test_hrpo_rejects_a_conflicting_latent_schedule(tmp_path):
    bad = LatentConfig(operator="hrpo_gate", num_latent_steps=2)
    with pytest.raises(ValueError, match="answer_delimiter"):
        GRPOTrainer(config(tmp_path, latent=bad), trainer_model(), examples(), reward_funcs=[word_count_reward])
    with pytest.raises(ValueError, match="hrpo_gate"):
        GRPOTrainer(config(tmp_path, latent=LatentConfig(operator="soft_mixture")), trainer_model(), examples(),
                    reward_funcs=[word_count_reward])


# ---------------------------------------------------------------------------------------------- checkpoints
def test_gate_is_saved_and_reloaded_with_the_model(tmp_path):
    lm = tiny()
    gate = ensure_gate(lm, c=6.0)
    with torch.no_grad():
        for p in gate.parameters():
            p.add_(torch.randn_like(p))
    lm.save_pretrained(tmp_path / "ckpt")
    back = LatentModel.from_pretrained(tmp_path / "ckpt")
    assert GATE_NAME not in back.side_modules  # attached by the method, which then loads the saved weights
    loaded = ensure_gate(back, c=8.0)
    for k, v in gate.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert float(loaded.c) == 6.0  # the constant travels with the checkpoint
    # and through the trainer's resume path (load_weights into an already built model)
    other = tiny(seed=1)
    ensure_gate(other)
    other.load_weights(tmp_path / "ckpt")
    for k, v in gate.state_dict().items():
        assert torch.equal(other.side_modules[GATE_NAME].state_dict()[k], v), k


# ---------------------------------------------------------------------------------------------- presets
def test_paper_preset_loads_with_the_paper_values():
    cfg = load_config(GRPOConfig, ROOT / "configs" / "hrpo_qwen2.5-1.5b_gsm8k.yaml")
    assert cfg.method == "hrpo" and cfg.latent.operator == "hrpo_gate" and cfg.latent.answer_delimiter == "####"
    assert (cfg.learning_rate, cfg.weight_decay, cfg.max_grad_norm) == (5e-6, 0.1, 0.1)
    assert (cfg.num_generations, cfg.temperature, cfg.latent.latent_temperature, cfg.beta) == (4, 0.5, 0.5, 0.005)
    assert (cfg.lr_scheduler_type, cfg.warmup_ratio) == ("cosine", 0.1)
    assert (cfg.policy_loss, cfg.loss_type) == ("reinforce", "grpo")
    assert cfg.num_iterations == 1 and cfg.kl_estimator == "k3" and cfg.loss_temperature == 1.0
    assert (cfg.hrpo.gate_c, cfg.hrpo.gate_r_min, cfg.hrpo.gate_r_max) == (8.0, 0.99, 0.999)
    assert cfg.latent.max_latent_steps >= cfg.max_completion_length
    assert (cfg.hrpo.gate_learning_rate, cfg.hrpo.lambda_learning_rate) == (1e-4, 1e-3)


def test_a_run_config_of_the_old_layout_still_loads():
    # run_config.json of a run written before the hrpo: / latent_grpo: sections (latentrl eval / inspect read it)
    from latentrl.config import config_to_dict, upgrade_saved_config

    old = config_to_dict(GRPOConfig.for_method("hrpo", model_name_or_path="m"))
    hrpo, lg = old.pop("hrpo"), old.pop("latent_grpo")
    old.update(gate_learning_rate=3e-4, lambda_learning_rate=hrpo["lambda_learning_rate"], **lg)
    old["latent"].update(gate_c=6.0, gate_r_min=0.95, gate_r_max=hrpo["gate_r_max"])
    cfg = config_from_dict(GRPOConfig, upgrade_saved_config(old))
    assert (cfg.hrpo.gate_learning_rate, cfg.hrpo.gate_c, cfg.hrpo.gate_r_min) == (3e-4, 6.0, 0.95)


def test_hrpo_options_moved_to_their_section_get_a_pointer():
    # the gate's options were top-level / latent.* keys before they got the `hrpo:` section
    with pytest.raises(ConfigError, match="hrpo.gate_learning_rate"):
        config_from_dict(GRPOConfig, {"model_name_or_path": "m", "method": "hrpo", "gate_learning_rate": 1e-4})
    with pytest.raises(ConfigError, match="hrpo.gate_c"):
        config_from_dict(GRPOConfig, {"model_name_or_path": "m", "method": "hrpo", "latent": {"gate_c": 8.0}})


@pytest.mark.parametrize("name", ["hrpo", "hrpo_raw_hidden", "hrpo_no_gate"])
def test_cpu_presets_load_and_name_their_method(name):
    cfg = load_config(GRPOConfig, ROOT / "configs" / "cpu" / f"{name}.yaml")
    assert cfg.method == name and get_method(name).name == name
    assert cfg.latent.operator == "hrpo_gate" and cfg.latent.answer_delimiter == "####"
    assert cfg.latent.max_latent_steps >= cfg.max_completion_length and cfg.max_steps <= 60


def test_the_operator_never_attaches_a_gate_mid_rollout():
    # a gate created by the operator would be untrained and outside the optimizer: the method attaches it first
    lm = tiny()
    op = build_thought_operator("hrpo_gate")
    with pytest.raises(RuntimeError, match="no HRPO gate"):
        delimiter_rollout(lm, op)
    assert GATE_NAME not in lm.side_modules
    op.attach(lm)
    assert GATE_NAME in lm.side_modules
    delimiter_rollout(lm, op)


def test_a_stop_token_sampled_while_thinking_ends_the_row():
    lm = tiny()
    op = build_thought_operator("hrpo_gate")
    ensure_gate(lm)
    ids, mask = make_prompts(lm)
    free = generate_rollout(lm, ids, mask, sampling(8), op, ThinkingSchedule(delimiter_ids=NEVER), gen(5))
    stop = int(free.completion_ids[0, 1])
    r = generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=8, stop_token_ids=[stop]), op,
                         ThinkingSchedule(delimiter_ids=NEVER), gen(5))
    assert not r.truncated[0] and int(r.lengths[0]) <= 2
