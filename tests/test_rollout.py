"""The rollout engine against references: HF generate, a full recompute without cache, the schedule rules."""

import pytest
import torch

from latentrl.replay import replay
from latentrl.rollout import Rollout, SamplingParams, ThinkingSchedule, generate_rollout
from latentrl.thoughts import build_thought_operator
from tests.conftest import gen


def test_greedy_discrete_rollout_equals_hf_generate(tiny, prompts):
    ids, mask = prompts
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=10, temperature=0.0, stop_token_ids=[-1]))
    ref = tiny.model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=10, do_sample=False,
                              eos_token_id=None, pad_token_id=tiny.tokenizer.pad_token_id)
    assert torch.equal(r.completion_ids, ref[:, ids.shape[1]:])
    assert r.truncated.all() and r.completion_mask.all()


def test_per_row_stop_masks_everything_after_the_stop_token(tiny, prompts):
    ids, mask = prompts
    # make a frequent token the stop token so that rows stop at different places
    r0 = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=12, temperature=0.0, stop_token_ids=[-1]))
    stop = int(r0.completion_ids[0, 3])
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=12, temperature=0.0, stop_token_ids=[stop]))
    for row in range(ids.shape[0]):
        hits = (r0.completion_ids[row] == stop).nonzero()
        if len(hits):
            end = int(hits[0]) + 1
            assert r.completion_mask[row, :end].all() and not r.completion_mask[row, end:].any()
            assert not r.truncated[row]
        else:
            assert r.truncated[row]
    assert r.lengths[0] <= 4


def test_fixed_latent_counts_per_row_and_forced_closing_token(tiny, prompts):
    ids, mask = prompts
    op = build_thought_operator("hidden_state")
    n = torch.tensor([0, 2, 5])
    end = tiny.latent_ids.end
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=9, stop_token_ids=[-1]), op,
                         ThinkingSchedule(num_latent_steps=n, after_latent_ids=[end]), gen())
    assert r.num_latent.tolist() == [0, 2, 5]
    for row, k in enumerate(n.tolist()):
        assert r.latent_mask[row, :k].all() and not r.latent_mask[row, k:].any()
        assert r.forced_mask[row, k] and r.completion_ids[row, k] == end and r.forced_mask[row].sum() == 1
        assert (r.completion_ids[row, :k] == tiny.latent_ids.latent).all()
    pm = r.policy_mask(op)
    assert not (pm & (r.latent_mask | r.forced_mask)).any()


def test_delimiter_ends_latent_span(tiny, prompts):
    ids, mask = prompts
    op = build_thought_operator("soft_mixture", top_k=4)
    free = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=8, stop_token_ids=[-1]), op,
                            ThinkingSchedule(max_latent_steps=8), gen())
    delim = free.completion_ids[0, 1:3].tolist()  # the row-0 ids at positions 1-2 become the delimiter
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=8, stop_token_ids=[-1]), op,
                         ThinkingSchedule(delimiter_ids=delim, max_latent_steps=8), gen())
    assert r.latent_mask[0, :3].all() and not r.latent_mask[0, 3:].any()


def test_end_token_rule_emits_end_token_discretely(tiny, prompts):
    ids, mask = prompts
    op = build_thought_operator("soft_mixture", top_k=4)
    free = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=6, stop_token_ids=[-1]), op,
                            ThinkingSchedule(max_latent_steps=6), gen())
    end = int(free.completion_ids[1, 2])  # soft-mixture records the unperturbed top-1
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=6, stop_token_ids=[-1]), op,
                         ThinkingSchedule(end_token_id=end, max_latent_steps=6), gen())
    first = int((free.completion_ids[1] == end).nonzero()[0])
    assert r.latent_mask[1, :first].all() and not r.latent_mask[1, first:].any()
    assert r.completion_ids[1, first] == end and not r.forced_mask[1, first]


def test_kv_cached_latent_rollout_equals_full_recompute(tiny, prompts):
    """Each stored thought (a hidden state computed over the KV cache) equals the hidden state that one
    uncached forward over the whole sequence computes at the position before it."""
    ids, mask = prompts
    op = build_thought_operator("hidden_state")
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=7, stop_token_ids=[-1]), op,
                         ThinkingSchedule(num_latent_steps=torch.tensor([3, 4, 5])), gen())
    out = replay(tiny, op, r, return_hidden=True)
    # out.hidden[:, j] is the output at completion position j; thought j+1 was formed from it
    lat_next = r.latent_mask[:, 1:]
    assert lat_next.sum() == 3 + 4 + 5 - 3
    torch.testing.assert_close(out.hidden[:, :-1][lat_next], r.payload["hidden"][:, 1:][lat_next], atol=2e-5, rtol=1e-4)


def test_seeded_rollouts_are_reproducible(tiny, prompts):
    ids, mask = prompts
    a = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=8), generator=gen(3))
    b = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=8), generator=gen(3))
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_a_rollout_decoded_in_inference_mode_trains_like_ordinary_tensors(tiny, prompts):
    """The decode runs under inference_mode; what it returns must be ordinary tensors, because the update saves
    some of them (a hidden-state thought's payload is an input of the replay) for backward."""
    ids, mask = prompts
    op = build_thought_operator("hidden_state")
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=6, stop_token_ids=[-1]), op,
                         ThinkingSchedule(num_latent_steps=2), gen())
    tensors = [r.prompt_ids, r.completion_ids, r.completion_mask, r.latent_mask, r.forced_mask, r.logprobs,
               r.truncated, *r.payload.values()]
    assert not any(t.is_inference() for t in tensors)
    out = replay(tiny, op, r, return_hidden=True)
    (out.logprobs.sum() + (out.hidden * r.payload["hidden"].sum(-1, keepdim=True)).sum()).backward()
    assert any(p.grad is not None for p in tiny.parameters())
    tiny.zero_grad(set_to_none=True)


def test_concat_and_select_round_trip(tiny, prompts):
    ids, mask = prompts
    op = build_thought_operator("soft_mixture", top_k=3)
    s = ThinkingSchedule(num_latent_steps=2)
    a = generate_rollout(tiny, ids[:2], mask[:2], SamplingParams(max_new_positions=5), op, s, gen())
    b = generate_rollout(tiny, ids[2:], mask[2:], SamplingParams(max_new_positions=8), op, s, gen())
    both = Rollout.concat([a, b], tiny.tokenizer.pad_token_id)
    assert both.batch_size == 3 and both.completion_ids.shape[1] == max(a.completion_ids.shape[1], b.completion_ids.shape[1])
    back = both.select(torch.tensor([2]))
    k = b.completion_ids.shape[1]
    assert torch.equal(back.completion_ids[:, :k], b.completion_ids)
    assert torch.equal(back.payload["ids"][:, :k], b.payload["ids"])
    # replay of the concatenation equals replay of the parts (padding is invisible)
    full = replay(tiny, op, both).logprobs
    part = replay(tiny, op, b).logprobs
    torch.testing.assert_close(full[2, :k][b.completion_mask[0]], part[0][b.completion_mask[0]], atol=1e-5, rtol=1e-4)


def test_any_of_several_delimiter_spellings_ends_the_span(tiny, prompts):
    """Alternative id sequences (a BPE tokenizer's `"####"` and `" ####"`): each row's span ends at the first one it
    produces; a spelling no row produces changes nothing."""
    ids, mask = prompts
    op = build_thought_operator("soft_mixture", top_k=4)
    params = SamplingParams(max_new_positions=8, stop_token_ids=[-1])
    free = generate_rollout(tiny, ids, mask, params, op, ThinkingSchedule(max_latent_steps=8), gen())
    first = free.completion_ids[0, 1:3].tolist()   # produced by row 0 at positions 1-2
    second = free.completion_ids[1, 3:4].tolist()  # produced by row 1 at position 3 (a one-id spelling)
    r = generate_rollout(tiny, ids, mask, params, op,
                         ThinkingSchedule(delimiter_ids=[first, second, [10**6]], max_latent_steps=8), gen())
    for row in range(ids.shape[0]):
        ends = [t + len(d) for d in (first, second) for t in range(8 - len(d) + 1)
                if free.completion_ids[row, t : t + len(d)].tolist() == d]
        k = min(ends, default=8)  # positions up to and including the first delimiter stay latent
        assert r.latent_mask[row, :k].all() and not r.latent_mask[row, k:].any(), (row, k)
    single = generate_rollout(tiny, ids, mask, params, op, ThinkingSchedule(delimiter_ids=first, max_latent_steps=8),
                              gen())
    also = generate_rollout(tiny, ids, mask, params, op,
                            ThinkingSchedule(delimiter_ids=[first, [10**6]], max_latent_steps=8), gen())
    assert torch.equal(single.latent_mask, also.latent_mask) and torch.equal(single.completion_ids, also.completion_ids)


def test_delimiter_spellings_of_a_bpe_tokenizer():
    """GPT-2-style BPE writes `####` after a space with other ids: both spellings are returned, deduplicated."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from latentrl.data import task_vocabulary
    from latentrl.tokenizer import build_word_tokenizer, delimiter_spellings

    vocab = {"#": 0, "##": 1, "####": 2, "\u0120####": 3, "\u0120": 4, "\u010a": 5, "a": 6}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[("#", "#"), ("##", "##"), ("\u0120", "####")]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    assert delimiter_spellings(tok, "####") == [[2], [3]]
    word = build_word_tokenizer(task_vocabulary("chain_sum"))
    assert delimiter_spellings(word, "####") == [word("####", add_special_tokens=False)["input_ids"]]


@pytest.mark.parametrize("name", ["hidden_state", "gumbel_topk", "hrpo_gate"])
@pytest.mark.parametrize("n, cap, C", [(3, None, 9), (4, 2, 9), (None, 3, 9), (6, None, 4)])
def test_a_span_of_one_length_for_every_row_equals_the_per_row_counters(tiny, prompts, name, n, cap, C):
    """An int `num_latent_steps` (or only `max_latent_steps`) lets the engine count the all-thinking steps on the
    host; the same schedule given per row as a tensor (or, for the cap alone, with a delimiter that never occurs)
    takes the per-row counters: the same rollout, bit for bit."""
    ids, mask = prompts
    op = build_thought_operator(name)
    op.attach(tiny)

    def roll(**schedule) -> Rollout:
        return generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=C, temperature=0.9, stop_token_ids=[-1]),
                                op, ThinkingSchedule(max_latent_steps=cap, after_latent_ids=[tiny.latent_ids.end], **schedule),
                                gen(7))
    got = roll(num_latent_steps=n)
    want = roll(num_latent_steps=torch.full((ids.shape[0],), n)) if n is not None else roll(delimiter_ids=[-5])
    assert (got.latent_mask.sum(-1) == min(b for b in (n, cap, C) if b is not None)).all()
    for field in ("completion_ids", "completion_mask", "latent_mask", "forced_mask", "logprobs", "truncated"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    for key in got.payload:
        assert torch.equal(got.payload[key], want.payload[key]), key
