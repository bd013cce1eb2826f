"""`latentrl.sampling`: the filters, token sampling and Gumbel noise every rollout and stochastic thought uses."""

from __future__ import annotations

import math

import pytest
import torch

from latentrl import sampling
from latentrl.methods.hrpo.operator import HRPOGateThought, ensure_gate, projected_state
from latentrl.methods.lepo.operator import GumbelSoftmaxThought
from latentrl.sampling import (
    GeneratorDeviceError,
    filter_logits,
    generator_for,
    generator_on,
    gumbel_noise,
    normal,
    sample_categorical,
    sample_tokens,
    token_logprobs,
)
from latentrl.thoughts import THOUGHT_OPERATORS, build_thought_operator
from latentrl.thoughts.gumbel_topk import GumbelTopKThought
from tests.conftest import gen


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


@pytest.mark.parametrize("V,k", [(8192, 1), (9000, 10), (151_936, 30), (50_257, 100), (8192, 200)])
def test_topk_rows_equals_torch_topk(V, k):
    """Exact: values and ids of torch.topk without ties (V = 50,257 has a tail past the blocks; k = 200 at 8192 is
    torch.topk itself); with many ties the values still agree."""
    x = torch.randn(6, V, generator=gen(50)) * 3
    x[0, -1] = 100.0  # the largest entry in the tail
    x[1, :k] = -50.0  # a row whose first block column is low
    got, want = sampling.topk_rows(x, k), torch.topk(x, k, dim=-1)
    assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)
    ties = x.round()
    got = sampling.topk_rows(ties, k)
    assert torch.equal(got[0], torch.topk(ties, k, dim=-1).values)
    assert torch.equal(ties.gather(-1, got[1]), got[0])
    strided = x.t().contiguous().t()  # non-contiguous rows
    assert torch.equal(sampling.topk_rows(strided, k)[1], want.indices)


def test_top_k_keeps_exactly_k_with_ties():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, -1.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=0.99)).sum() == 2
    assert torch.isfinite(filter_logits(logits, top_k=1, min_keep=3)).sum() == 3


# ---------------------------------------------------------------------------------------------------- equal in distribution
# Every fast sampler is checked against its plain reference by a chi-square test on many draws with fixed seeds
# (deterministic: the same draws every run). Bins expected to hold fewer than 5 draws are pooled. A p-value below
# 1e-3 fails; each test also shows the check has power by rejecting a slightly wrong distribution.

N_DRAWS = 20_000
P_MIN = 1e-3


def _pool(expected: torch.Tensor, *observed: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Bins with expected count >= 5 kept, the rest pooled into one bin (dropped if it is still < 5)."""
    big = expected >= 5
    out = []
    for t in (expected, *observed):
        rest = t[~big].sum()
        out.append(torch.cat([t[big], rest[None]]) if expected[~big].sum() >= 5 else t[big])
    return tuple(out)


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness-of-fit p-value of integer `counts` against probabilities `probs` (same length)."""
    n = counts.sum().double()
    expected, observed = _pool(probs.double() * n, counts.double())
    stat = ((observed - expected) ** 2 / expected).sum()
    df = torch.tensor(float(len(expected) - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))


def two_sample_p(a: torch.Tensor, b: torch.Tensor) -> float:
    """Chi-square test of homogeneity of two count vectors (same number of draws)."""
    a, b = a.double(), b.double()
    expected, pa, pb = _pool((a + b) / 2, a, b)
    stat = ((pa - expected) ** 2 / expected).sum() + ((pb - expected) ** 2 / expected).sum()
    df = torch.tensor(float(len(expected) - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))


def counts_of(ids: torch.Tensor, V: int) -> torch.Tensor:
    return torch.bincount(ids.reshape(-1), minlength=V)


@pytest.mark.parametrize("block", [None, 8])
def test_inverse_cdf_draw_equals_multinomial_in_distribution(block):
    """`sample_categorical` (one or two levels) vs the exact probabilities and vs torch.multinomial's draws."""
    V = 61  # two-level with block 8: 7 full blocks and a tail of 5
    w = torch.rand(V, generator=gen(0)) ** 3
    w[[0, 17, 60]] = 0.0  # zero weights, among them the first and the last entry
    rows = w.expand(N_DRAWS, V)
    ids = sample_categorical(rows, gen(1), block=block)
    c = counts_of(ids, V)
    assert c[[0, 17, 60]].sum() == 0
    probs = w / w.sum()
    assert chi_square_p(c, probs) > P_MIN
    ref = counts_of(torch.multinomial(rows, 1, generator=gen(2)), V)
    assert two_sample_p(c, ref) > P_MIN
    wrong = (w ** 1.2) / (w ** 1.2).sum()  # power: a slightly different distribution is rejected
    assert chi_square_p(c, wrong) < 1e-6


@pytest.mark.parametrize("block", [None, 8])
def test_the_draw_returns_the_row_totals_it_summed(block):
    """`sample_categorical_with_total`: the same draw as `sample_categorical` (same generator state) and each row's
    total weight (what HRPO and `sample_tokens` take their log-normaliser from, instead of another pass)."""
    w = torch.rand(5, 61, generator=gen(5)) ** 3
    w[1, 40:] = 0.0
    ids, total = sampling.sample_categorical_with_total(w, gen(6), block=block)
    assert torch.equal(ids, sample_categorical(w, gen(6), block=block))
    assert total.shape == (5, 1) and total.dtype == torch.float32
    torch.testing.assert_close(total, w.sum(-1, keepdim=True), rtol=1e-6, atol=0)


def test_the_exp_floor_leaves_no_denormals_and_keeps_values():
    """At large vocabularies `exp_weights_` (exp2 of the scaled exponent) and `logsumexp_rows` zero the exponents at or
    below `EXP_FLOOR` (denormal floats slow a CPU down several times): weights are exp(z / T) within the stated
    relative error |z / T| · 2^-23 + 2e-7 above the floor (float64 reference), exactly 0 at or below it (a -inf
    logit keeps weight 0), never denormal; the log-normaliser equals torch.logsumexp, an all -inf row's included,
    and a nan row stays nan. Short rows are `torch.exp` itself, bit for bit."""
    V = sampling.FLOOR_MIN_ENTRIES + 3
    z = torch.linspace(-120.0, 0.0, V).expand(3, V).clone()
    z[1, 5] = float("-inf")
    for T in (1.0, 0.7):
        w = sampling.exp_weights_(z.clone(), T)
        assert not ((w > 0) & (w < torch.finfo(torch.float32).tiny)).any()
        big = z / T > sampling.EXP_FLOOR + 1e-4
        exact = (z[big].double() / T).exp()
        bound = (z[big].double() / T).abs() * 2.0**-23 + 2e-7
        assert (((w[big].double() - exact) / exact).abs() <= bound).all()
        assert (w[z / T < sampling.EXP_FLOOR - 1e-4] == 0).all() and w[1, 5] == 0
    out = torch.empty_like(z)
    assert sampling.exp_weights_(z, 0.7, out=out) is out and torch.equal(out, sampling.exp_weights_(z.clone(), 0.7))
    short = torch.randn(2, 64, generator=gen(6)) * 5
    assert torch.equal(sampling.exp_weights_(short.clone()), short.exp())
    assert torch.equal(sampling.exp_weights_(short.clone(), 0.7), (short / 0.7).exp())
    x = torch.randn(4, V, generator=gen(7)) * 30
    x[1, ::3] = float("-inf")
    x[2] = float("-inf")
    x[3, 7] = float("nan")
    lse = sampling.logsumexp_rows(x)
    torch.testing.assert_close(lse[:2], torch.logsumexp(x[:2], -1, keepdim=True), rtol=0, atol=2e-6)
    assert lse[2, 0] == float("-inf") and lse[3].isnan().all()


def test_sample_tokens_at_a_large_vocabulary_with_a_peaked_row(monkeypatch):
    """The floored path (V >= FLOOR_MIN_ENTRIES) on a peaked row: the draws follow the softmax (chi-square), no entry
    below the floor or at -inf is ever drawn, and the log-probs are log_softmax's."""
    monkeypatch.setattr(sampling, "BLOCK", 256)  # the two-level draw at this V
    V = sampling.FLOOR_MIN_ENTRIES + 100
    logits = torch.full((1, V), -200.0)
    top = torch.tensor([3, 700, 2048, V - 1])
    logits[0, top] = torch.tensor([2.0, 1.0, 0.5, 0.0])
    logits[0, 0] = float("-inf")
    rows = logits.expand(N_DRAWS // 4, V)
    ids, logp = sample_tokens(rows, 1.0, generator=gen(8))
    assert torch.isin(ids, top).all()
    probs = logits[0, top].softmax(-1)
    counts = torch.stack([(ids == i).sum() for i in top])
    assert chi_square_p(counts, probs) > P_MIN
    torch.testing.assert_close(logp, logits.log_softmax(-1)[0, ids], rtol=0, atol=1e-6)


@pytest.mark.parametrize("top_k,top_p", [(None, None), (7, None), (None, 0.8), (12, 0.7)])
def test_sample_tokens_equals_multinomial_over_the_filtered_softmax(monkeypatch, top_k, top_p):
    monkeypatch.setattr(sampling, "BLOCK", 16)  # reach the two-level draw at V = 90
    V, T = 90, 0.7
    logits = torch.randn(1, V, generator=gen(3)) * 2
    rows = logits.expand(N_DRAWS, V)
    ids, logp = sample_tokens(rows, T, top_k, top_p, generator=gen(4))
    probs = filter_logits(logits / T, top_k, top_p).softmax(-1)[0]
    c = counts_of(ids, V)
    assert c[probs == 0].sum() == 0  # nothing outside the filter
    assert chi_square_p(c, probs) > P_MIN
    ref = counts_of(torch.multinomial(probs.expand(N_DRAWS, V), 1, generator=gen(5)), V)
    assert two_sample_p(c, ref) > P_MIN
    wrong = filter_logits(logits / (T * 1.5), top_k, top_p).softmax(-1)[0]
    assert chi_square_p(c, wrong) < 1e-6
    # the log-probs are exactly those of the unfiltered softmax at T
    torch.testing.assert_close(logp, (rows / T).log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1))


class _EmbedModel:
    """Operator stand-in: an embedding matrix (any device), `embed`, sizes and a pad id."""

    def __init__(self, vocab: int, hidden: int = 6, device: str = "cpu"):
        self.embedding_matrix = torch.randn(vocab, hidden, generator=gen(11)).to(device)
        self.vocab_size, self.hidden_size = vocab, hidden
        self.latent_ids = None
        self.tokenizer = type("Tok", (), {"pad_token_id": 0})()

    def embed(self, ids):
        return self.embedding_matrix[ids]


def test_lepo_sparse_noise_equals_the_full_vocabulary_gumbel_softmax():
    """Exact: the k-entry sample equals softmax((filter(logits / T) + G) / tau) over the whole vocabulary when G
    holds the same noise at the kept ids (anything elsewhere). In distribution: argmax z ~ filtered softmax."""
    op = GumbelSoftmaxThought(top_k=6, top_p=0.9, temperature=0.8, tau=0.5)
    V = 40
    logits = torch.randn(8, V, generator=gen(6)) * 3
    kept = torch.topk(logits, 6, dim=-1).indices  # the order the noise is drawn in
    noise = gumbel_noise((8, 6), gen(7), "cpu")
    G = torch.randn(8, V, generator=gen(8)).scatter(-1, kept, noise)
    want = ((filter_logits(logits / 0.8, 6, 0.9) + G) / 0.5).softmax(-1)
    torch.testing.assert_close(op.mixture(logits, gen(7)), want)

    row = logits[:1].expand(N_DRAWS, V)
    ids, w = op.sparse_mixture(row, gen(9))
    c = counts_of(ids[:, 0], V)
    probs = filter_logits(logits[:1] / 0.8, 6, 0.9).softmax(-1)[0]
    assert chi_square_p(c, probs) > P_MIN
    assert chi_square_p(c, filter_logits(logits[:1] / 0.9, 6, 0.9).softmax(-1)[0]) < 1e-6


def _latent_grpo_reference(op: GumbelTopKThought, logits: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The perturbed top-K ids from the module docstring, with noise on every vocabulary entry."""
    lp = (logits / op.temperature).log_softmax(-1)
    k = op.top_k
    masked = filter_logits(lp, None, op.top_p, min_keep=k)
    noise = gumbel_noise(lp.shape, g, "cpu").clamp(op.clamp_min, op.clamp_max)
    if op.one_sided:
        noise = noise - op.clamp_min
    return torch.topk(masked + noise * op.noise_scale, k, dim=-1).indices


@pytest.mark.parametrize("limits", [(10**9, 0), (0, 0), (0, 10**9)], ids=["sorted", "unsorted", "whole_row"])
@pytest.mark.parametrize("one_sided", [True, False])
def test_latent_grpo_candidate_noise_equals_full_vocabulary_noise_in_distribution(one_sided, limits):
    """Each of `step`'s paths below the pooled one: noise on the sorted candidates only, the sort-free path that
    tests nucleus membership of the 2K best perturbed entries only (sort_limit=0), and the small-vocabulary path
    that sorts whole rows (sort_all_limit above V)."""
    op = GumbelTopKThought(top_k=3, top_p=0.95, one_sided=one_sided, record="perturbed")
    op.sort_limit, op.sort_all_limit = limits
    V = 200
    logits = torch.randn(1, V, generator=gen(12)) * 2.5
    _, cand, keep = op.candidates(logits)
    assert cand.shape[-1] < V  # the pruning is active in this test
    row = logits.expand(N_DRAWS, V)
    step = op.step(_EmbedModel(V), row, None, generator=gen(13))
    fast = step.payload["ids"]
    ref = _latent_grpo_reference(op, row, gen(14))
    for j in range(3):  # the first, second and third perturbed picks
        assert two_sample_p(counts_of(fast[:, j], V), counts_of(ref[:, j], V)) > P_MIN
    # the recorded surrogate is the one the replay recomputes from the same logits
    torch.testing.assert_close(step.logprob, op.log_prob(row, step.token_ids, step.payload), atol=1e-5, rtol=1e-5)
    # power: the same test separates a reference at another noise scale
    op2 = GumbelTopKThought(top_k=3, top_p=0.95, one_sided=one_sided, noise_scale=0.7)
    other = _latent_grpo_reference(op2, row, gen(15))
    assert two_sample_p(counts_of(fast[:, 0], V), counts_of(other[:, 0], V)) < 1e-6


def _pooled_op(monkeypatch, one_sided: bool, pool_blocks: int, top_p: float = 0.95) -> tuple[GumbelTopKThought, dict]:
    """A Latent-GRPO operator whose `step` takes the pooled path at small V (blocks of 4, `pool_blocks` of them),
    and a count of the rows it sends to the full sort-free path (the pooled path's fallback)."""
    op = GumbelTopKThought(top_k=3, top_p=top_p, one_sided=one_sided, record="perturbed")
    op.pool_block, op.pool_blocks = 4, pool_blocks
    calls = {"fallback": 0}
    full = op._perturbed_topk_unsorted

    def spy(x, *a, **kw):
        calls["fallback"] += x.shape[0]  # rows sent to the full path
        return full(x, *a, **kw)
    monkeypatch.setattr(op, "_perturbed_topk_unsorted", spy)
    return op, calls


@pytest.mark.parametrize("one_sided", [True, False])
@pytest.mark.parametrize("shape", ["flat", "peaked", "fallback"])
def test_latent_grpo_pooled_noise_equals_full_vocabulary_noise_in_distribution(monkeypatch, one_sided, shape):
    """`step`'s pooled path (noise on the entries above a block-maximum threshold only, with the full-noise
    fallback that keeps the pool's draws) against noise on every entry: on a flat distribution (every entry a
    candidate, the nucleus far larger than the pool), a peaked one (the nucleus ends inside the pool) and with a
    pool too small to decide (the fallback runs in some draws, not all)."""
    V = 1002  # 250 blocks of 4 and a tail of 2
    scale, pool_blocks = {"flat": (0.3, 100), "peaked": (4.0, 64), "fallback": (4.0, 32)}[shape]
    op, calls = _pooled_op(monkeypatch, one_sided, pool_blocks)
    assert V > 2 * op.pool_blocks * op.pool_block  # `step` takes the pooled path
    logits = torch.randn(1, V, generator=gen(40)) * scale
    logits[0, -1] = logits.max() + 0.1  # the best entry in the tail
    row = logits.expand(N_DRAWS, V)
    step = op.step(_EmbedModel(V), row, None, generator=gen(41))
    fast = step.payload["ids"]
    if shape == "fallback":  # both paths decide many rows of this batch
        assert N_DRAWS // 50 < calls["fallback"] < N_DRAWS - N_DRAWS // 50
    else:
        assert calls["fallback"] < N_DRAWS // 20
    ref = _latent_grpo_reference(op, row, gen(42))
    for j in range(3):
        assert two_sample_p(counts_of(fast[:, j], V), counts_of(ref[:, j], V)) > P_MIN
    op2 = GumbelTopKThought(top_k=3, top_p=0.95, one_sided=one_sided, noise_scale=0.5)
    other = _latent_grpo_reference(op2, row, gen(43))
    assert two_sample_p(counts_of(fast[:, 0], V), counts_of(other[:, 0], V)) < 1e-6
    # the recorded surrogate is the one the replay recomputes from the same logits
    torch.testing.assert_close(step.logprob, op.log_prob(row, step.token_ids, step.payload))
    assert (step.payload["scores"][:, :-1] >= step.payload["scores"][:, 1:]).all()


@pytest.mark.parametrize("top_p", [0.3, 0.95, 1.0])
def test_latent_grpo_pooled_path_picks_nucleus_members_and_the_unperturbed_top1(monkeypatch, top_p):
    """Small batches, several draws: every pick lies in the nucleus (at least K kept), the scores are the picks'
    log-probs plus noise inside the noise's range, and the unperturbed top-1 is the argmax."""
    V = 1002
    for scale in (0.05, 3.0):
        op, _ = _pooled_op(monkeypatch, True, 32, top_p)
        logits = torch.randn(5, V, generator=gen(44)) * scale
        x = logits / op.temperature
        allowed = filter_logits(x, None, top_p, min_keep=3).isfinite() if top_p < 1 else torch.ones_like(x, dtype=torch.bool)
        for seed in range(4):
            payload, best = op.perturbed_topk_pooled(logits, gen(45 + seed))
            assert torch.equal(best, logits.argmax(-1))
            assert allowed.gather(-1, payload["ids"]).all()
            assert all(r.unique().numel() == 3 for r in payload["ids"])  # no entry picked twice
            eps = payload["scores"] - x.log_softmax(-1).gather(-1, payload["ids"])
            assert eps.min() >= -1e-5 and eps.max() <= op.noise_max("cpu").item() + 1e-5


def test_latent_grpo_pooled_path_with_masked_vocabulary_entries(monkeypatch):
    """-inf logits (a vocabulary mask) in some rows: the picks are distinct finite entries, in every row."""
    V = 1002
    op, _ = _pooled_op(monkeypatch, True, 32)
    logits = torch.randn(4, V, generator=gen(46))
    logits[0, 10:] = float("-inf")  # 10 finite entries: the threshold is -inf, the pool is the whole row
    logits[1, ::2] = float("-inf")
    payload, best = op.perturbed_topk_pooled(logits, gen(47))
    assert torch.isfinite(logits.gather(-1, payload["ids"])).all() and torch.isfinite(payload["scores"]).all()
    assert all(r.unique().numel() == 3 for r in payload["ids"])
    assert torch.equal(best, logits.argmax(-1))


@pytest.mark.parametrize("top_k,top_p", [(None, None), (5, None), (None, 0.7), (9, 0.8)])
def test_hrpo_draw_and_projection_equal_the_full_vocabulary_reference(monkeypatch, top_k, top_p):
    monkeypatch.setattr(sampling, "BLOCK", 16)
    V = 70
    model = _EmbedModel(V)
    op = HRPOGateThought(mode="interpolation", temperature=0.6, logprob_temperature=0.6, top_k=top_k, top_p=top_p)
    logits = torch.randn(6, V, generator=gen(16)) * 2
    step = op.step(model, logits, None, generator=gen(17))
    probs = op.sampling_probs(logits)
    torch.testing.assert_close(step.payload["hidden"], projected_state(model, probs))  # p @ E / ||p||, exactly
    torch.testing.assert_close(step.logprob, token_logprobs(logits, step.token_ids, 0.6))
    row = logits[:1].expand(N_DRAWS, V)
    ids = op.step(model, row, None, generator=gen(18)).token_ids
    c = counts_of(ids, V)
    assert c[probs[0] == 0].sum() == 0
    assert chi_square_p(c, probs[0]) > P_MIN
    assert chi_square_p(c, filter_logits(logits[:1] / 0.7, top_k, top_p).softmax(-1)[0]) < 1e-6


def _fused_setup(monkeypatch, bias: bool):
    """A 150-entry head (float32 nn.Linear) and embedding, walked in chunks of 32 rows with blocks of 8 (a partial
    last chunk and a partial last block), and logits whose row max lies in different chunks."""
    from latentrl.methods.hrpo import fused_step

    monkeypatch.setattr(sampling, "BLOCK", 8)
    monkeypatch.setattr(fused_step, "CHUNK_BYTES", 32 * 8 * 4)  # 32 rows
    V, H = 150, 8
    head = torch.nn.Linear(H, V, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=gen(30)))
        if bias:
            head.bias.copy_(torch.randn(V, generator=gen(31)))
    E = torch.randn(V, H, generator=gen(32))
    hidden = torch.randn(12, H, generator=gen(33)) * 1.5
    return fused_step, head, E, hidden


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.6])
def test_hrpo_fused_head_step_equals_the_reference_step(monkeypatch, bias, tau):
    """The chunked pass (online max, rescaled sums) against the plain forms on the head's own logits: the log-prob
    `token_logprobs` (at tau and at another scoring temperature), the state E^T p / ||p|| of p = softmax(logits /
    tau); draws equal in distribution to the softmax (and, with the same generator, the same ids as the unfused
    two-level draw); greedy = argmax."""
    fused_step, head, E, hidden = _fused_setup(monkeypatch, bias)
    with torch.no_grad():
        logits = head(hidden)
        assert len(set((logits.argmax(-1) // 32).tolist())) >= 3  # the running max moves between chunks
        ids, logp, state = fused_step.fused_head_step(head, E, hidden, tau, gen(34))
        torch.testing.assert_close(logp, token_logprobs(logits, ids, tau), atol=1e-5, rtol=1e-5)
        at_one = fused_step.fused_head_step(head, E, hidden, tau, gen(34), logprob_temperature=1.0)[1]
        torch.testing.assert_close(at_one, token_logprobs(logits, ids, 1.0), atol=1e-5, rtol=1e-5)
        p = (logits / tau).softmax(-1)
        torch.testing.assert_close(state, p @ E / p.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-5)
        plain_ids, _, _ = sampling.draw_unfiltered(logits, tau, gen(34))
        assert torch.equal(ids, plain_ids)
        greedy = fused_step.fused_head_step(head, E, hidden, tau, None, greedy=True)[0]
        assert torch.equal(greedy, logits.argmax(-1))

        row = hidden[:1].expand(N_DRAWS, -1)
        c = counts_of(fused_step.fused_head_step(head, E, row, tau, gen(35))[0], 150)
    assert chi_square_p(c, p[0]) > P_MIN
    assert chi_square_p(c, (logits[0] / (tau * 1.15)).softmax(-1)) < 1e-6  # power


def test_hrpo_uses_the_fused_step_only_where_it_applies(monkeypatch):
    """`step_from_hidden` fuses the head at large vocabularies on a CPU with a plain float32 head, and otherwise (a
    filter, the raw-hidden ablation, a small vocabulary) runs the LM head and `step`; both give the same step."""
    from latentrl.methods.hrpo import fused_step
    from latentrl.testing import tiny_latent_model

    lm = tiny_latent_model("qwen2", ["Tom", "is", "a", "cat"])
    ensure_gate(lm)
    hidden = torch.randn(5, lm.hidden_size, generator=gen(36))
    calls = []
    real = fused_step.fused_head_step
    monkeypatch.setattr(fused_step, "fused_head_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr("latentrl.methods.hrpo.operator.fused_head_step", fused_step.fused_head_step)
    op = HRPOGateThought(temperature=0.7, logprob_temperature=1.0)
    assert fused_step.fusable_head(lm, hidden.device) is None  # V below MIN_VOCAB: unfused
    with torch.no_grad():
        op.step_from_hidden(lm, hidden, generator=gen(37))
    assert not calls
    monkeypatch.setattr(fused_step, "MIN_VOCAB", 4)
    monkeypatch.setattr(fused_step, "CHUNK_BYTES", 8 * lm.hidden_size * 4)  # 8 rows
    monkeypatch.setattr(sampling, "BLOCK", 4)
    with torch.no_grad():
        fused = op.step_from_hidden(lm, hidden, generator=gen(37))
        assert calls
        plain = op.step(lm, lm.lm_head(hidden).float(), hidden, generator=gen(37))
    assert torch.equal(fused.token_ids, plain.token_ids)
    torch.testing.assert_close(fused.logprob, plain.logprob, atol=1e-5, rtol=1e-5)  # scored at 1.0, sampled at 0.7
    torch.testing.assert_close(fused.payload["hidden"], plain.payload["hidden"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.embeds, plain.embeds, atol=1e-5, rtol=1e-5)
    calls.clear()
    with torch.no_grad():
        for other in (HRPOGateThought(top_k=3), HRPOGateThought(mode="raw_hidden")):
            other.step_from_hidden(lm, hidden, generator=gen(38))
    assert not calls


# ---------------------------------------------------------------------------------------------------- devices
_RANDOM_FUNCS = [(torch, "rand"), (torch, "randn"), (torch, "randint"), (torch, "multinomial"), (torch, "randperm"),
                 (torch, "bernoulli"), (torch, "normal"), (torch.Tensor, "exponential_"), (torch.Tensor, "uniform_"),
                 (torch.Tensor, "normal_"), (torch.Tensor, "random_"), (torch.Tensor, "geometric_"),
                 (torch.Tensor, "cauchy_"), (torch.Tensor, "log_normal_"), (torch.Tensor, "bernoulli_")]


@pytest.fixture
def draws(monkeypatch):
    """Spy on torch's random functions: records (function, generator device, tensor device) of every draw."""
    seen: list[tuple[str, torch.device | None, torch.device]] = []

    def wrap(name, fn):
        def spy(*args, **kwargs):
            out = fn(*args, **kwargs)
            g = kwargs.get("generator")
            tensor = args[0] if name in ("multinomial", "bernoulli") or name.endswith("_") else out
            seen.append((name, None if g is None else g.device, tensor.device))
            return out
        return spy

    for owner, name in _RANDOM_FUNCS:
        monkeypatch.setattr(owner, name, wrap(name, getattr(owner, name)))
    return seen


def test_every_operator_refuses_a_generator_on_another_device(draws):
    """Logits on `meta` (a device no CPU generator belongs to) and a CPU generator — the situation of CUDA logits
    with a CPU generator. Stochastic operators must refuse before drawing; none may hand a generator to a draw
    on another device (the spy sees every torch draw). Deterministic operators run and draw nothing."""
    V, H = 40, 6
    model = _EmbedModel(V, H, device="meta")
    logits, hidden = torch.empty(4, V, device="meta"), torch.empty(4, H, device="meta")
    assert THOUGHT_OPERATORS, "no operator registered"
    for name in THOUGHT_OPERATORS:
        op = build_thought_operator(name)
        draws.clear()
        error = None
        try:
            op.step(model, logits, hidden, generator=gen(0))
        except Exception as exc:  # noqa: BLE001 - judged below, after the spy
            error = exc
        bad = [d for d in draws if d[1] is not None and d[1] != d[2]]
        assert not bad, f"{name} drew with a generator on another device than its tensor: {bad}"
        if op.stochastic:
            assert isinstance(error, GeneratorDeviceError), f"{name} did not refuse the CPU generator: {error!r}"
        else:
            assert error is None and not draws, (name, error, draws)
    for fn in (lambda g: sample_tokens(logits, 1.0, generator=g), lambda g: sample_tokens(logits, 1.0, 5, 0.9, g),
               lambda g: sample_categorical(logits.abs(), g), lambda g: gumbel_noise((3,), g, "meta"),
               lambda g: normal((3,), g, "meta")):
        with pytest.raises(GeneratorDeviceError):
            fn(gen(0))
    bad = [d for d in draws if d[1] is not None and d[1] != d[2]]
    assert not bad, f"draws with a generator on another device than their tensor: {bad}"


def test_dlr_assistant_noise_is_drawn_on_its_device():
    from latentrl.methods.dlr.assistant import LatentAssistant

    a = LatentAssistant(6, 6, num_steps=2, latent_dim=3, hidden_size=8).to("meta")
    with pytest.raises(GeneratorDeviceError):
        a.sample(torch.empty(2, 6, device="meta"), gen(0))


def test_rollouts_draw_only_with_the_callers_generator_on_the_logits_device(draws):
    """Every draw of a rollout, for every operator, uses the rollout's generator on the model's device (no global
    RNG: results are a function of the chunk seed only). A CPU generator for the CPU model is used as is."""
    from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout
    from latentrl.testing import tiny_latent_model
    from tests.conftest import WORDS, make_prompts

    lm = tiny_latent_model("qwen2", WORDS, seed=0)
    ids, mask = make_prompts(lm)
    for name in THOUGHT_OPERATORS:
        op = build_thought_operator(name)
        if isinstance(op, HRPOGateThought):
            ensure_gate(lm)  # the gate's random initialisation is not sampling: attach it before the spy looks
        draws.clear()
        g = gen(1)
        before = g.get_state()
        generate_rollout(lm, ids, mask, SamplingParams(max_new_positions=6, temperature=0.9, top_k=5), op,
                         ThinkingSchedule(num_latent_steps=3), g)
        assert draws, name
        assert all(gd == torch.device("cpu") and td == lm.device for _, gd, td in draws), (name, draws)
        assert not torch.equal(g.get_state(), before), f"{name}: the rollout's generator was not used"


def test_generator_for_depends_on_the_keys_only():
    a = torch.rand(4, generator=generator_for("cpu", 3, 1, 0, 2))
    assert torch.equal(a, torch.rand(4, generator=generator_for("cpu", 3, 1, 0, 2)))
    for keys in ((1, 0, 3), (2, 0, 2), (1, 1, 2)):
        assert not torch.equal(a, torch.rand(4, generator=generator_for("cpu", 3, *keys)))
    assert generator_for("cpu", 0).device == torch.device("cpu")
    from latentrl.rl.distributed import chunk_generator

    assert torch.equal(torch.rand(4, generator=chunk_generator(3, 1, 0, 2, "cpu")), a)


def test_generator_on_keeps_a_same_device_generator_and_derives_one_otherwise():
    g = gen(5)
    assert generator_on(g, "cpu") is g and generator_on(None, "cpu") is None
    # a foreign-device generator is replaced by one seeded from a single draw of it: deterministic in its state
    with pytest.raises(RuntimeError):  # no generator can live on meta: the derivation is attempted, not skipped
        generator_on(gen(5), "meta")


@pytest.mark.parametrize("top_p", [0.3, 0.9, 1.0])
def test_latent_grpo_sort_free_membership_equals_the_sorted_nucleus(top_p):
    """`in_nucleus` (bucketed mass above each entry) keeps exactly the entries `filter_logits` keeps, on a flat
    and a peaked distribution, and the sort-free step's unperturbed top-1 and scores are consistent."""
    op = GumbelTopKThought(top_k=4, top_p=top_p)
    for scale in (0.05, 3.0):
        logits = torch.randn(5, 300, generator=gen(30)) * scale
        x = logits / op.temperature
        lse = torch.logsumexp(x, -1, keepdim=True)
        kth = torch.topk(x, 4, -1).values[..., -1:]
        ids = torch.arange(300).expand(5, 300)
        ref = filter_logits(x, None, top_p, min_keep=4).isfinite() if top_p < 1 else torch.ones(5, 300, dtype=torch.bool)
        got = op.in_nucleus(x, lse, kth, ids) if top_p < 1 else ref
        assert torch.equal(got, ref)
        payload, best = op.perturbed_topk_unsorted(logits, gen(31))
        assert torch.equal(best, logits.argmax(-1))
        assert ref.gather(-1, payload["ids"]).all()  # every pick is a nucleus member
        assert (payload["scores"][:, :-1] >= payload["scores"][:, 1:]).all()


@pytest.mark.parametrize("one_sided", [True, False])
def test_latent_grpo_noise_without_log_guards_equals_the_guarded_gumbel(monkeypatch, one_sided):
    """`GumbelTopKThought.noise` skips `gumbel_noise`'s guards against log(0) when the clamp covers them: the same
    values for every uniform draw, the extremes (U = 0 and the largest float below 1) included."""
    import latentrl.sampling as sampling
    import latentrl.thoughts.gumbel_topk as gt

    u = torch.rand(8, 512, generator=gen(60))
    u[0, :3] = torch.tensor([0.0, 2.0 ** -24, torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()])
    for module in (gt, sampling):  # the operator's draw and gumbel_noise's read the same uniforms
        monkeypatch.setattr(module, "uniform", lambda shape, generator, device, dtype=torch.float32: u.clone())
    for scale in (1.0, 0.3):
        op = GumbelTopKThought(one_sided=one_sided, noise_scale=scale)
        ref = op._shape_noise(sampling.gumbel_noise(u.shape, None, "cpu"))
        assert torch.equal(op.noise(u.shape, None, "cpu"), ref)
