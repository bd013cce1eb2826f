"""The fast decode path (preallocated KV cache, lean layer step) against the generic `forward_embeds` path."""

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, Qwen3Config

from latentrl.decoding import (
    CachedForwardStepper,
    StaticCacheStepper,
    fast_path_unsupported,
    make_stepper,
    shared_prompt_rows,
)
from latentrl.model import LatentModel
from latentrl.replay import replay
from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout
from latentrl.thoughts import THOUGHT_OPERATORS, build_thought_operator
from latentrl.tokenizer import build_word_tokenizer
from tests.conftest import WORDS, gen, make_prompts

OPERATOR_KWARGS = {"soft_mixture": {"top_k": 5}}


def assert_same_rollout(a, b):
    for name in ("completion_ids", "completion_mask", "latent_mask", "forced_mask", "truncated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-6, rtol=1e-5)
    assert a.payload.keys() == b.payload.keys()
    for k in a.payload:
        torch.testing.assert_close(a.payload[k], b.payload[k], atol=1e-6, rtol=1e-5)


def both(lm, ids, mask, sampling, op=None, schedule=None, seed=1):
    return [generate_rollout(lm, ids, mask, sampling, op, schedule, gen(seed), decoder=d) for d in ("generic", "auto")]


def test_auto_picks_the_fast_path_for_llama_family_and_falls_back_for_gpt2(tiny, arch, prompts):
    stepper = make_stepper(tiny, prompts[1], 4)
    if arch == "gpt2":
        assert isinstance(stepper, CachedForwardStepper) and "gpt2" in fast_path_unsupported(tiny)
        with pytest.raises(ValueError, match="not available"):
            make_stepper(tiny, prompts[1], 4, decoder="fast")
    else:
        assert isinstance(stepper, StaticCacheStepper) and fast_path_unsupported(tiny) is None
    with pytest.raises(ValueError, match="decoder must be one of"):
        make_stepper(tiny, prompts[1], 4, decoder="turbo")


def test_fast_step_hidden_states_equal_the_generic_path(tiny, prompts):
    """Step by step over the same inputs, the fast stepper's hidden states are the generic stepper's."""
    ids, mask = prompts
    steppers = [make_stepper(tiny, mask, 6, decoder=d) for d in ("generic", "auto")]
    with torch.no_grad():
        hs = [s.prefill(tiny.embed(ids)) for s in steppers]
        torch.testing.assert_close(hs[1], hs[0], atol=0, rtol=0)
        g = gen(5)
        for _ in range(5):
            e = torch.randn(hs[0].shape, generator=g)
            hs = [s.step(e) for s in steppers]
            torch.testing.assert_close(hs[1], hs[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, None, None), (1.0, None, None), (0.7, 8, 0.9)])
def test_discrete_rollouts_are_identical(tiny, prompts, temperature, top_k, top_p):
    ids, mask = prompts
    r0 = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=12, temperature=0.0, stop_token_ids=[-1]))
    stop = int(r0.completion_ids[0, 3])  # a stop token that rows hit at different places
    a, b = both(tiny, ids, mask, SamplingParams(max_new_positions=12, temperature=temperature, top_k=top_k,
                                                top_p=top_p, stop_token_ids=[stop]))
    assert_same_rollout(a, b)


@pytest.mark.parametrize("name", sorted(THOUGHT_OPERATORS))
def test_latent_rollouts_are_identical_for_every_operator(tiny, prompts, name):
    ids, mask = prompts
    op = build_thought_operator(name, **OPERATOR_KWARGS.get(name, {}))
    op.attach(tiny)
    sampling = SamplingParams(max_new_positions=10, temperature=0.8)
    schedules = [
        ThinkingSchedule(num_latent_steps=torch.tensor([0, 3, 5]), after_latent_ids=[tiny.latent_ids.end]),
        ThinkingSchedule(max_latent_steps=10),  # every position latent: the engine's all-rows-think path
    ]
    for schedule in schedules:
        a, b = both(tiny, ids, mask, sampling, op, schedule)
        assert b.latent_mask.any()
        assert_same_rollout(a, b)
        # and the fast rollout still replays to its own log-probs
        out = replay(tiny, op, b, temperature=0.8)
        m = b.completion_mask
        torch.testing.assert_close(out.logprobs[m], b.logprobs[m], atol=1e-5, rtol=1e-4)


def _tiny_other(config_cls, **extra) -> LatentModel:
    tok = build_word_tokenizer(WORDS)
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=len(tok) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                     **extra)
    lm = LatentModel(AutoModelForCausalLM.from_config(cfg).eval(), tok)
    lm.add_latent_tokens(init_from="<<")
    return lm


@pytest.mark.parametrize("config_cls,extra", [(Qwen3Config, {"head_dim": 8}), (MistralConfig, {"sliding_window": None})],
                         ids=["qwen3", "mistral"])
def test_other_llama_family_models_are_identical(config_cls, extra):
    lm = _tiny_other(config_cls, **extra)
    assert fast_path_unsupported(lm) is None
    ids, mask = make_prompts(lm)
    a, b = both(lm, ids, mask, SamplingParams(max_new_positions=8, temperature=1.0))
    assert_same_rollout(a, b)
    op = build_thought_operator("hidden_state")
    a, b = both(lm, ids, mask, SamplingParams(max_new_positions=8), op,
                ThinkingSchedule(num_latent_steps=torch.tensor([1, 2, 4])))
    assert_same_rollout(a, b)


def test_unsupported_configurations_fall_back(tiny, arch, prompts):
    if arch == "gpt2":
        pytest.skip("already generic")
    tiny.model.config._attn_implementation = "eager"
    assert "eager" in fast_path_unsupported(tiny)
    assert isinstance(make_stepper(tiny, prompts[1], 4), CachedForwardStepper)


def test_sparse_stop_checks_trim_to_the_same_rollout(tiny, prompts, monkeypatch):
    """On accelerators the engine checks "all rows stopped" every few steps; the extra steps are trimmed away."""
    import latentrl.rollout as rollout_mod

    ids, mask = prompts
    r0 = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=12, temperature=0.0, stop_token_ids=[-1]))
    stops = [int(r0.completion_ids[row, 2 + row]) for row in range(3)]  # every row stops early
    sampling = SamplingParams(max_new_positions=12, temperature=0.0, stop_token_ids=stops)
    ref = generate_rollout(tiny, ids, mask, sampling)
    assert not ref.truncated.any() and ref.completion_ids.shape[1] < 12
    monkeypatch.setattr(rollout_mod, "_sync_interval", lambda device: 5)
    assert_same_rollout(generate_rollout(tiny, ids, mask, sampling), ref)


@pytest.mark.parametrize("decoder", ["generic", "auto"])
def test_shared_prefill_equals_one_prefill_per_row(tiny, decoder):
    """Rows with the same prompt (a GRPO group) prefill once; hidden states and every later step match per-row."""
    ids, mask = make_prompts(tiny, ("1 2 3 4 ||", "5 ||", "1 2 3 4 ||", "Tom is a cat ||", "5 ||", "1 2 3 4 ||"))
    shared = shared_prompt_rows(ids, mask)
    first, inverse = shared
    assert len(first) == 3
    assert torch.equal(ids[first][inverse], ids)  # every row maps to a row with its own prompt
    assert shared_prompt_rows(ids[first], mask[first]) is None  # distinct prompts: nothing to share
    steppers = [make_stepper(tiny, mask, 4, decoder=decoder) for _ in range(2)]
    with torch.no_grad():
        hs = [steppers[0].prefill(tiny.embed(ids)), steppers[1].prefill(tiny.embed(ids), shared)]
        torch.testing.assert_close(hs[1], hs[0], atol=1e-6, rtol=1e-5)
        g = gen(3)
        for _ in range(3):
            e = torch.randn(hs[0].shape, generator=g)
            hs = [s.step(e) for s in steppers]
            torch.testing.assert_close(hs[1], hs[0], atol=1e-6, rtol=1e-5)


def test_group_rollouts_share_the_prefill_and_sample_the_same(tiny, monkeypatch):
    """generate_rollout passes the groups to the stepper; the rollout equals the one without sharing."""
    import latentrl.rollout as rollout_mod

    texts = ("1 2 3 4 ||", "5 ||") * 3
    ids, mask = make_prompts(tiny, texts)
    sampling = SamplingParams(max_new_positions=8, temperature=1.0)
    shared = generate_rollout(tiny, ids, mask, sampling, generator=gen(4))
    monkeypatch.setattr(rollout_mod, "shared_prompt_rows", lambda *a: None)
    assert_same_rollout(shared, generate_rollout(tiny, ids, mask, sampling, generator=gen(4)))
