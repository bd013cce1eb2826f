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


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_head_token_logprobs_equal_log_softmax_and_its_gradients(temperature):
    """The buffer-reusing LM-head scorer against the autograd reference written directly: log_softmax(h W^T / T)
    at the ids, its entropy, and the gradients in h and W, over several chunks with a ragged last one."""
    from latentrl.head_logprobs import head_token_logprobs

    g = torch.Generator().manual_seed(0)
    h = torch.randn(23, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = (3 * torch.randn(300, 16, generator=g, dtype=torch.float64)).requires_grad_()
    ids = torch.randint(0, 300, (23,), generator=g)
    weights = torch.rand(23, generator=g, dtype=torch.float64)  # a loss that weighs every row differently
    logp = (h @ w.t() / temperature).log_softmax(-1)
    ref_lp = logp.gather(-1, ids[:, None]).squeeze(-1)
    ref_ent = -(logp.exp() * logp).sum(-1)
    ref_gh, ref_gw = torch.autograd.grad((ref_lp * weights).sum(), (h, w))
    lp, ent = head_token_logprobs(h, w, ids, temperature, chunk=5, entropy=True)
    gh, gw = torch.autograd.grad((lp * weights).sum(), (h, w))
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(ent, ref_ent.detach())
    assert not ent.requires_grad
    torch.testing.assert_close(gh, ref_gh)
    torch.testing.assert_close(gw, ref_gw)
    with torch.no_grad():  # the reference replay's case: no autograd, same values
        torch.testing.assert_close(head_token_logprobs(h, w, ids, temperature, chunk=7)[0], ref_lp.detach())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_head_token_logprobs_at_k_ids_per_row_equal_log_softmax_and_its_gradients(temperature):
    """With (N, K) ids (LEPO's top-k, Latent-GRPO's chosen K): the (N, K) log_softmax(h W^T / T) at the ids, and
    the gradients in h and W of any function of them (here a weighted sum and a non-linear one), against the
    autograd reference; ids of another shape are refused."""
    from latentrl.head_logprobs import head_token_logprobs

    g = torch.Generator().manual_seed(1)
    h = torch.randn(19, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = (3 * torch.randn(300, 16, generator=g, dtype=torch.float64)).requires_grad_()
    ids = torch.stack([torch.randperm(300, generator=g)[:4] for _ in range(19)])
    tw = torch.rand(19, 4, generator=g, dtype=torch.float64)
    ref = (h @ w.t() / temperature).log_softmax(-1).gather(-1, ids)
    lp, ent = head_token_logprobs(h, w, ids, temperature, chunk=5)
    assert ent is None and lp.shape == (19, 4)
    torch.testing.assert_close(lp, ref)
    for f in (lambda x: (tw * x).sum(), lambda x: (x.exp() * tw).sum() + x.pow(2).sum()):
        ref_g = torch.autograd.grad(f(ref), (h, w), retain_graph=True)
        got_g = torch.autograd.grad(f(lp), (h, w), retain_graph=True)
        for a, b in zip(got_g, ref_g):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="ids must be"):
        head_token_logprobs(h, w, ids[None], temperature)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_head_row_logprobs_equal_a_function_of_log_softmax_and_its_gradients(temperature):
    """The buffer-reusing row scorer (`head_row_logprobs`) and `row_logprob` against autograd through the function
    written directly on log_softmax(h W^T / T): values, and gradients in h and W under a loss that weighs every
    row differently, over several chunks with a ragged last one."""
    from latentrl.head_logprobs import head_row_logprobs, row_logprob

    g = torch.Generator().manual_seed(2)
    h = torch.randn(23, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = (3 * torch.randn(300, 16, generator=g, dtype=torch.float64)).requires_grad_()
    a = torch.rand(23, 300, generator=g, dtype=torch.float64)  # f(lp) = sum_j a_j exp(lp_j / 2) - lp_0^2
    weights = torch.rand(23, generator=g, dtype=torch.float64)

    def f(lp, rows=slice(None)):
        return (a[rows] * (lp / 2).exp()).sum(-1) - lp[:, 0] ** 2

    def fn(lp, coef, rows):  # the same f, with its gradient in each entry written into coef
        torch.mul(a[rows], (lp / 2).exp() / 2, out=coef)
        coef[:, 0] -= 2 * lp[:, 0]
        return f(lp, rows)

    logp = (h @ w.t() / temperature).log_softmax(-1)
    ref = f(logp)
    ref_g = torch.autograd.grad((ref * weights).sum(), (h, w))
    got = head_row_logprobs(h, w, fn, temperature, chunk=5)
    torch.testing.assert_close(got, ref)
    for x, y in zip(torch.autograd.grad((got * weights).sum(), (h, w)), ref_g):
        torch.testing.assert_close(x, y)
    on_lp = row_logprob((h @ w.t() / temperature).log_softmax(-1), fn)
    torch.testing.assert_close(on_lp, ref)
    for x, y in zip(torch.autograd.grad((on_lp * weights).sum(), (h, w)), ref_g):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("name", [None, "soft_mixture", "gumbel_topk", "gumbel_topk-likelihood", "hrpo_gate",
                                  "gumbel_softmax"])
def test_replay_buffer_path_equals_the_autograd_path(tiny, prompts, name, monkeypatch):
    """replay() scores token positions with `head_token_logprobs` where the head allows it, and latent positions
    with `head_token_logprobs` / `head_row_logprobs` where the operator gives their form; forcing the autograd
    path instead gives the same log-probs, entropies and parameter gradients, latent positions included."""
    import latentrl.replay as replay_module

    ids, mask = prompts
    likelihood = name is not None and name.endswith("-likelihood")
    name = name.removesuffix("-likelihood") if name else None
    kwargs = {"logprob": "likelihood", "noise_scale": 0.3} if likelihood else OPERATOR_KWARGS.get(name, {})
    op = build_thought_operator(name, **kwargs) if name else None
    if op is not None:
        op.attach(tiny)
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=9, temperature=0.8), op,
                         schedule_for(name, tiny) if op else None, gen(2))
    params = [p for p in tiny.model.parameters() if p.requires_grad]
    assert replay_module.fused_head_weight(tiny.model.get_output_embeddings(), torch.zeros(1, 1)) is not None

    def run():
        out = replay(tiny, op, r, temperature=0.8, logits_chunk_size=7)
        grads = torch.autograd.grad((out.logprobs * r.completion_mask).sum(), params, allow_unused=True)
        return out, grads

    a, ga = run()
    monkeypatch.setattr(replay_module, "fused_head_weight", lambda head, h: None)
    monkeypatch.setattr("latentrl.head_logprobs.fused_head_weight", lambda head, h: None)
    b, gb = run()
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.entropy, b.entropy, atol=1e-5, rtol=1e-4)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("path", ["buffers", "autograd"])
def test_an_all_latent_rollout_replays_with_a_zero_token_entropy(tiny, prompts, path, monkeypatch):
    """Every completion position latent: no token position to score, and the entropy metric is still a (B, C)
    tensor (zeros) on both scoring paths, so the trainer's metrics need no special case."""
    import latentrl.replay as replay_module

    if path == "autograd":
        monkeypatch.setattr(replay_module, "fused_head_weight", lambda head, h: None)
        monkeypatch.setattr("latentrl.head_logprobs.fused_head_weight", lambda head, h: None)
    ids, mask = prompts
    op = build_thought_operator("soft_mixture", top_k=5)
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=4, stop_token_ids=[-1]), op,
                         ThinkingSchedule(num_latent_steps=4), gen())
    assert r.latent_mask[:, :-1].all()
    out = replay(tiny, op, r)
    m = r.completion_mask
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)
    assert out.entropy.shape == r.completion_ids.shape and not out.entropy[r.latent_mask].any()


@pytest.mark.parametrize("name", ["soft_mixture", "hidden_state", "gumbel_topk", "gumbel_topk-likelihood", "hrpo_gate",
                                  "gumbel_softmax"])
def test_replay_runs_the_head_at_latent_positions_only_for_stochastic_operators(tiny, prompts, name):
    """A deterministic operator's latent positions carry no log-prob: the replay gives them 0 and never computes
    their (rows x V) logits (at V = 151,936 that was an LM-head forward per latent position, and the heap growth of
    soft_mixture's update at batch 128). A stochastic operator scores them through the head module, unless its
    log-prob reads the logits only through token log-probs (HRPO, LEPO, Latent-GRPO's authors' surrogate:
    `token_logprob_terms`) or through a function of the row's log-probs (Latent-GRPO's likelihood: `row_logprob_fn`),
    which go through the head's buffers instead."""
    ids, mask = prompts
    likelihood = name.endswith("-likelihood")
    name = name.removesuffix("-likelihood")
    kwargs = {"logprob": "likelihood", "noise_scale": 0.1} if likelihood else OPERATOR_KWARGS.get(name, {})
    op = build_thought_operator(name, **kwargs)
    op.attach(tiny)
    r = generate_rollout(tiny, ids, mask, SamplingParams(max_new_positions=8, temperature=0.8), op,
                         schedule_for(name, tiny), gen(3))
    head_rows = []
    hook = tiny.model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: head_rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    try:
        out = replay(tiny, op, r, temperature=0.8)
    finally:
        hook.remove()
    m = r.completion_mask
    torch.testing.assert_close(out.logprobs[m], r.logprobs[m], atol=1e-5, rtol=1e-4)
    n_latent = int(r.latent_mask.sum())
    assert n_latent > 0
    # token positions go through the buffer path (`head_token_logprobs`, the weight itself), not the module; so do
    # Latent-GRPO's likelihood's latent positions (`head_row_logprobs`: a function of the whole row)
    assert sum(head_rows) == 0
    if not op.stochastic:
        assert not out.logprobs[r.latent_mask].any()
