"""`latentrl.sampling`: the filters, token sampling and Gumbel noise every rollout and stochastic thought uses."""

from __future__ import annotations

import math

import torch

from latentrl.sampling import filter_logits, gumbel_noise, sample_tokens, token_logprobs


def test_top_k_and_top_p_by_hand():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]])
    inf = float("-inf")
    assert torch.equal(filter_logits(logits, top_k=2).isinf(), torch.tensor([[False, False, True, True]]))
    # nucleus 0.75: 0.5 < 0.75 keeps the 2nd token, 0.8 >= 0.75 drops the 3rd and 4th
    assert torch.equal(filter_logits(logits, top_p=0.75) == inf, torch.tensor([[False, False, True, True]]))
    # 0.8 < 0.85 keeps the 3rd
    assert torch.equal(filter_logits(logits, top_p=0.85) == inf, torch.tensor([[False, False, False, True]]))
    # the most likely token survives any nucleus
    assert not filter_logits(logits, top_p=1e-6)[0, 0].isinf()


def test_sampled_logprobs_are_of_the_unfiltered_distribution():
    """Log-probs under log_softmax(logits / T) whatever the filters (TRL's convention; replay recomputes them)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g)
    ids, logp = sample_tokens(logits, 0.7, top_k=3, top_p=0.9, generator=g)
    top3 = logits.topk(3, dim=-1).indices
    assert bool((top3 == ids[:, None]).any(-1).all())  # drawn inside the filter
    torch.testing.assert_close(logp, token_logprobs(logits, ids, 0.7))
    torch.testing.assert_close(logp, (logits / 0.7).log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1))
    greedy, glogp = sample_tokens(logits, 0.0)
    assert torch.equal(greedy, logits.argmax(-1))
    torch.testing.assert_close(glogp, token_logprobs(logits, greedy, 0.0))


def test_gumbel_noise_is_finite_seeded_and_standard():
    g = torch.Generator().manual_seed(1)
    x = gumbel_noise((200_000,), g, "cpu")
    assert torch.isfinite(x).all()
    assert torch.equal(x, gumbel_noise((200_000,), torch.Generator().manual_seed(1), "cpu"))
    # Gumbel(0, 1): mean = Euler-Mascheroni constant, variance = pi^2 / 6
    assert abs(x.mean().item() - 0.5772) < 0.01
    assert abs(x.var().item() - math.pi ** 2 / 6) < 0.03


def _reference_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k by threshold, then the nucleus from a full sort of what is left (the textbook / HF order of work)."""
    kth = logits.topk(top_k, dim=-1).values[..., -1:]
    masked = logits.masked_fill(logits < kth, float("-inf"))
    srt, idx = masked.sort(dim=-1, descending=True)
    p = srt.softmax(-1)
    drop = (p.cumsum(-1) - p) >= top_p
    drop[..., 0] = False
    return masked.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))


def test_nucleus_among_the_top_k_equals_a_full_sort():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(256, 500, generator=g) * 2  # no ties
    for top_k, top_p in ((1, 0.5), (5, 0.9), (40, 0.7), (40, 0.999), (499, 0.95)):
        torch.testing.assert_close(filter_logits(logits, top_k, top_p), _reference_filter(logits, top_k, top_p))


def test_top_k_keeps_exactly_k_with_ties():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, -1.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=0.99)).sum() == 2
    assert torch.isfinite(filter_logits(logits, top_k=1, min_keep=3)).sum() == 3
