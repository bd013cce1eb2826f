"""Replayed log-probs equal the rollout's, for discrete decoding and for every thought operator."""

import pytest
import torch

from latentrl.replay import replay
from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout
from latentrl.thoughts import THOUGHT_OPERATORS, build_thought_operator
from tests.conftest import gen

OPERATOR_KWARGS = {"soft_mixture": {"top_k": 5}}


def schedule_for(name, lm):
    return ThinkingSchedule(num_latent_steps=torch.tensor([1, 3, 4]), after_latent_ids=[lm.latent_ids.end])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_discrete_replay_equals_rollout(tiny, prompts, temperature):
    ids, mask = prompts
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=10, temperature=temperature, top_k=8), generator=gen())
    out = replay(tiny, None, r, temperature=temperature)
    m = r.completion_mask
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(THOUGHT_OPERATORS))
def test_operator_replay_equals_rollout(tiny, prompts, name):
    ids, mask = prompts
    op = build_thought_operator(name, **OPERATOR_KWARGS.get(name, {}))
    op.attach(tiny)  # side modules (HRPO's gate) exist before any rollout
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=10, temperature=0.8), op,
                         schedule_for(name, tiny), gen(1))
    assert r.latent_mask.any()
    out = replay(tiny, op, r, temperature=0.8)
    m = r.completion_mask
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)


def test_chunked_logits_do_not_change_the_result(tiny, prompts):
    ids, mask = prompts
    op = build_thought_operator("soft_mixture", top_k=5)
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=9), op, schedule_for("soft_mixture", tiny), gen())
    a = replay(tiny, op, r, logits_chunk_size=4)
    b = replay(tiny, op, r, logits_chunk_size=10_000)
    torch.testing.assert_close(a.logprobs, b.logprobs)
    torch.testing.assert_close(a.entropy, b.entropy)


def test_replay_gradients_reach_the_embedding_through_rebuilt_latents(tiny, prompts):
    ids, mask = prompts
    op = build_thought_operator("soft_mixture", top_k=5)
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=6), op, schedule_for("soft_mixture", tiny), gen())
    E = tiny.embedding_matrix
    E.grad = None
    out = replay(tiny, op, r)
    (out.logprobs * r.completion_mask).sum().backward()
    mixed_ids = r.payload["ids"][r.latent_mask].unique()
    assert E.grad is not None and E.grad[mixed_ids].abs().sum() > 0


@pytest.mark.parametrize("name", [None, "soft_mixture"])
def test_shared_prompt_replay_equals_full_forward(tiny, prompts, name):
    """GRPO groups (rows with one prompt) share the prompt forward: same log-probs, entropy, hidden and grads."""
    ids, mask = prompts
    order = torch.tensor([0, 0, 1, 2, 1, 2, 0])  # three groups, not contiguous, different left padding
    ids, mask = ids[order], mask[order]
    op = build_thought_operator(name, top_k=5) if name else None
    sched = ThinkingSchedule(num_latent_steps=2) if name else None
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=7, temperature=0.9), op, sched, gen(3))
    results = []
    for share in (True, False):
        tiny.model.zero_grad(set_to_none=True)
        out = replay(tiny, op, r, temperature=0.9, return_hidden=True, share_prompts=share)
        (out.logprobs * r.completion_mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in tiny.model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (a, ga), (b, gb) = results
    m = r.completion_mask
    torch.testing.assert_close(a.logprobs[m], b.logprobs[m], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)  # and the rollout's own
    torch.testing.assert_close(a.entropy[m], b.entropy[m], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.hidden[m], b.hidden[m], atol=1e-5, rtol=1e-4)
    assert ga.keys() == gb.keys() and ga
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4, msg=n)


def test_default_logits_chunk_stays_under_the_cpu_mmap_ceiling():
    from latentrl.replay import CPU_CHUNK_BYTES, default_logits_chunk

    assert default_logits_chunk(64) == 1024 and default_logits_chunk(151936) == 41
    assert default_logits_chunk(151936) * 151936 * 4 <= CPU_CHUNK_BYTES < 32 << 20
    assert default_logits_chunk(151936, "cuda") == 1024  # the CUDA caching allocator reuses blocks of any size
    assert default_logits_chunk(10**9) == 1
