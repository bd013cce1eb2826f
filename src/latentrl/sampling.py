"""Token sampling and noise shared by the rollout engine and every thought operator.

Log-probs are always of the *unfiltered* distribution at the sampling temperature (logits / T), as TRL scores
completions: top-k / top-p only decide which tokens can be drawn. This keeps rollout log-probs equal to what the
replay scorer recomputes from the same logits.

Devices: every random draw here runs on the device of the tensor it is for, with a generator on that same device
(`generator_for` makes one; `check_generator` refuses any other), so a decode step never copies a (B, V) tensor to
the host and CUDA sampling never meets a CPU generator. A rollout chunk's generator is a function of
(seed, step, round, chunk) only (`generator_for(device, seed, step, round, chunk)`), so the draws do not depend on
how many processes share the work.

Cost at real vocabularies (V = 151,936): `torch.multinomial` draws one exponential per vocabulary entry and the
textbook Gumbel-softmax one Gumbel (two logs) per entry. Here a token is drawn by a two-level inverse CDF over
exp(logits / T), which the log-normaliser needs anyway (`sample_categorical`: block sums, then one block's
cumulative sum; a few uniforms per row), and Gumbel noise is drawn only for the entries that can matter (the
survivors of a top-k filter; Latent-GRPO's candidates for its perturbed top-K). Both are equal in distribution to the reference
(multinomial over the filtered softmax; Gumbel noise on every entry): `tests/test_sampling.py` checks this with
chi-square tests on many seeded draws. Two helpers avoid torch's slower full-vocabulary kernels on a CPU: `topk_rows`
(exact top-k from strided block maxima: ~2 ms instead of ~6-10 ms for 32 x 152k) and `logsumexp_rows` (one exp pass,
exp2 at large vocabularies: `exp_weights_`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "EXP_FLOOR", "FLOOR_MIN_ENTRIES", "GeneratorDeviceError", "block_sums", "check_generator", "draw_in_blocks",
    "draw_unfiltered", "exp_weights_", "filter_logits", "generator_for", "generator_on", "gumbel_noise",
    "log_normalizer", "logsumexp_rows", "normal", "sample_categorical", "sample_categorical_with_total",
    "sample_tokens", "tempered", "token_logprobs", "top_k_nucleus", "topk_rows", "uniform",
]


class GeneratorDeviceError(ValueError):
    """A generator on another device than the tensor it draws for (CUDA kernels refuse CPU generators)."""


def generator_for(device: torch.device | str, seed: int, *keys: int) -> torch.Generator:
    """A generator on `device` seeded from (seed, *keys) only — e.g. (seed, step, round, chunk) for a rollout chunk,
    never from the number of processes. `numpy.random.SeedSequence` mixes the integers into a well-spread 63-bit
    seed, so neighbouring keys give unrelated streams."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)]).generate_state(2, np.uint32)
    return torch.Generator(device=torch.device(device)).manual_seed(int(state[0]) << 31 ^ int(state[1]))


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Devices equal, treating "cuda" and "cuda:<current>" as the same device."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        if a.type == "cuda":
            current = torch.cuda.current_device()
            return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
        return True
    return a.index == b.index


def check_generator(generator: torch.Generator | None, device: torch.device | str) -> None:
    """Raise `GeneratorDeviceError` unless `generator` is None or lives on `device`."""
    if generator is not None and not _same_device(generator.device, torch.device(device)):
        raise GeneratorDeviceError(
            f"generator on {generator.device} for tensors on {torch.device(device)}: make it with "
            f"latentrl.sampling.generator_for({str(torch.device(device))!r}, seed, ...) or generator_on(gen, device)")


def generator_on(generator: torch.Generator | None, device: torch.device | str) -> torch.Generator | None:
    """`generator` itself if it is on `device` (or None); otherwise a new generator on `device` seeded by one
    draw from `generator` — for callers (e.g. a user's `torch.Generator()`) that hand a CPU generator to a CUDA
    rollout. One host-side draw per call, deterministic in the given generator's state."""
    if generator is None or _same_device(generator.device, torch.device(device)):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def uniform(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device | str,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U[0, 1) drawn on `device` with a generator on that device."""
    check_generator(generator, device)
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def normal(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device | str,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 1) drawn on `device` with a generator on that device (DLR's assistant)."""
    check_generator(generator, device)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device,
                 dtype=torch.float32) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise -log(-log U), drawn on `device` (clamped away from log 0 at both ends: finite for
    every U in [0, 1))."""
    u = uniform(shape, generator, device, dtype)
    return u.clamp_min_(1e-20).log_().neg_().clamp_min_(1e-20).log_().neg_()


def _outside_nucleus(sorted_logits: torch.Tensor, top_p: float, min_keep: int) -> torch.Tensor:
    """True where a token of these descending-sorted logits lies outside the top-p nucleus: the probability mass
    *before* it already reaches `top_p`. The first `min_keep` tokens always stay."""
    probs = sorted_logits.softmax(-1)
    drop = (probs.cumsum(-1) - probs) >= top_p
    drop[..., :min_keep] = False
    return drop


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None, min_keep: int = 1) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf. Always keeps at least `min_keep` tokens.

    top-k keeps exactly k tokens (ties at the k-th value broken by `torch.topk`; HF's warper keeps every tied token,
    which differs only for exactly equal logits). With a top-k the nucleus is found among the k survivors, which
    `topk` returns sorted, so no full-vocabulary sort runs (152k-token vocabulary, 32 rows, one CPU core: 163 ms
    with the sort, 14 ms without). Top-p alone sorts the vocabulary, as HF does.

    This is the reference form (a full (B, V) tensor); the samplers below work on the kept entries only.
    """
    use_p = top_p is not None and top_p < 1.0
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        values, ids = torch.topk(logits, max(top_k, min_keep), dim=-1)
        kept = ~_outside_nucleus(values, top_p, min_keep) if use_p else torch.ones_like(values, dtype=torch.bool)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, ids, kept)
        return logits.masked_fill(~keep, float("-inf"))
    if use_p:
        sorted_logits, sorted_ids = torch.sort(logits, descending=True, dim=-1)
        drop = _outside_nucleus(sorted_logits, top_p, min_keep)
        return logits.masked_fill(drop.scatter(-1, sorted_ids, drop), float("-inf"))
    return logits


TOPK_BLOCK = 16
"""Entries per strided block in `topk_rows`."""


def topk_rows(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, ids) of `torch.topk(x, k, dim=-1)` (sorted descending) for a (B, V) tensor, cheaper at large V.

    `torch.topk` over a 152k-entry row costs ~6-10 ms for 32 rows on a CPU core, whatever k. Here: the maxima of
    the strided blocks {j, j + n, j + 2n, ...} (n = V // TOPK_BLOCK; an element-wise max of TOPK_BLOCK contiguous
    slices, one fast pass), the k blocks with the largest maxima, and `torch.topk` over their entries and the tail
    past TOPK_BLOCK * n. Exact: the k chosen maxima are k entries >= the k-th chosen maximum theta, so every
    top-k entry is >= theta, and an entry >= theta outside the chosen blocks can only tie theta (its block's max
    is <= theta). The values always equal torch.topk's; among exactly tied entries the ids picked may differ (as
    between torch.topk's CPU and CUDA kernels). Small V, large k or other shapes: `torch.topk` itself."""
    if x.dim() != 2 or x.shape[-1] < 8192 or k * TOPK_BLOCK * 4 > x.shape[-1]:
        return torch.topk(x, k, dim=-1)
    B, V = x.shape
    n = V // TOPK_BLOCK
    if x.stride(-1) != 1:
        x = x.contiguous()
    x3 = x.as_strided((B, TOPK_BLOCK, n), (x.stride(0), n, 1))  # x3[b, r, j] = x[b, j + r * n]
    blocks = torch.topk(x3.amax(1), k, dim=-1).indices  # (B, k)
    cols = (blocks[:, None, :] + n * torch.arange(TOPK_BLOCK, device=x.device)[:, None]).flatten(1)
    if V > n * TOPK_BLOCK:
        cols = torch.cat([cols, torch.arange(n * TOPK_BLOCK, V, device=x.device).expand(B, -1)], dim=-1)
    top = torch.topk(x.gather(-1, cols), k, dim=-1)
    return top.values, cols.gather(-1, top.indices)


def top_k_nucleus(logits: torch.Tensor, top_k: int, top_p: float | None, temperature: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, ids), each (B, k): logits / T of the top_k entries in descending order, -inf where they fall outside
    the top-p nucleus found among them (`filter_logits`' rule, on the k survivors only), and their ids. What a
    top-k sampler or mixture needs, with no (B, V) output."""
    values, ids = topk_rows(logits, min(top_k, logits.shape[-1]))  # sorted descending
    f = tempered(values, temperature)
    if top_p is not None and top_p < 1.0:
        f = f.masked_fill(_outside_nucleus(f, top_p, 1), float("-inf"))
    return f, ids


def logsumexp_rows(x: torch.Tensor, row_max: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1) logsumexp over the last dim of float `x`: the row max (or the given (B, 1) `row_max`, when a caller
    has it already), then one exp pass into one temporary.

    Outside autograd this is `torch.logsumexp`'s value (to float32 rounding; `exp_weights_`) at about two thirds of
    its cost on a CPU core (V = 151,936, 32 rows: ~8 vs ~12 ms); with gradients it is `torch.logsumexp` itself."""
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.logsumexp(x, dim=-1, keepdim=True)
    m = x.amax(-1, keepdim=True) if row_max is None else row_max
    safe = m.nan_to_num(0.0, 0.0, 0.0)  # all -inf (or a +inf / nan) row: no inf - inf; one op, not three
    # no denormals at large vocabularies (`exp_weights_`); an all -inf row sums to 0 and keeps its -inf
    return safe + exp_weights_(torch.sub(x, safe)).sum(-1, keepdim=True).log_()


def tempered(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits / T in float32; no copy when the logits are float32 already and T == 1."""
    return logits.float() if temperature == 1.0 else logits.float() / temperature


def log_normalizer(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, 1) logsumexp(logits / T) in float32, without a (B, V) log-softmax output. Operators that already hold
    `tempered(logits, T)` call `logsumexp_rows` on it and get the same bits."""
    return logsumexp_rows(tempered(logits, temperature))


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) at `ids` (T <= 0 scores at T = 1, matching greedy sampling). `ids` is (B,) or
    (B, K); the result has its shape."""
    t = temperature if temperature > 0 else 1.0
    squeeze = ids.dim() == logits.dim() - 1
    idx = ids.unsqueeze(-1) if squeeze else ids
    picked = logits.gather(-1, idx).float() / t
    out = picked - log_normalizer(logits, t)
    return out.squeeze(-1) if squeeze else out


def _searchsorted_draw(cdf: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B,) index i with probability (cdf[i] - cdf[i-1]) / cdf[-1], for a non-decreasing (B, N) cumulative sum of
    non-negative weights: one uniform per row and a binary search. Entries of weight 0 are never drawn."""
    total = cdf[..., -1:]
    x = uniform(total.shape, generator, cdf.device, cdf.dtype) * total
    # u * total may round up to total itself; the largest float below it keeps the draw inside the last bin
    x = torch.minimum(x, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_max_(cdf.shape[-1] - 1)


EXP_FLOOR = -80.0
"""Exponent floor of the full-vocabulary exp passes (`exp_weights_`) at large vocabularies. exp(z) for z below ~-87
is a denormal float (or underflows), and a CPU's exp, sums and matmuls run several times slower on those: on a
peaked 151,936-entry row, a trained model's, they were 56 of the 69 ms of a 32-row `sample_tokens`. Weights of
exponents at or below the floor are exactly 0 (relative probability under e^-80 ~ 2e-35), so the distribution moves
by under V · 2e-35 in total variation and log-normalisers do not change in float32."""
FLOOR_MIN_ENTRIES = 4096
"""Rows shorter than this take `torch.exp` as is (no floor, no exp2: denormals cost nothing measurable there, and
small-vocabulary runs keep their bits)."""
LOG2E = 1.0 / math.log(2.0)


def exp_weights_(z: torch.Tensor, temperature: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """exp(z / T) into `out` (default: in place over z) for z = logits - row max: a row's unnormalised softmax
    weights.

    Rows of at least `FLOOR_MIN_ENTRIES` entries: computed as exp2(z · log2(e) / T), the temperature folded into the
    one scaling pass, with exponents at or below `EXP_FLOOR` giving exactly 0 (no denormal floats; a -inf logit
    keeps weight 0; a nan stays nan). On a CPU core exp2 costs about a third of exp (V = 151,936, 32 rows: 1.5 vs
    4.2 ms), the trick FlashAttention uses for its softmax. The roundings of log2(e) / T and of the product give a
    relative error of at most |z / T| · 2^-23 + ~1e-7 (under 1.5e-6 for weights within e^-10 of the row's largest,
    1e-5 at the floor) against exp's ~6e-8 (`tests/test_sampling.py`)."""
    out = z if out is None else out
    if z.shape[-1] < FLOOR_MIN_ENTRIES:
        return torch.exp(z if temperature == 1.0 else torch.div(z, temperature, out=out), out=out)
    torch.mul(z, LOG2E / temperature, out=out)
    return F.threshold_(out, EXP_FLOOR * LOG2E, float("-inf")).exp2_()


BLOCK = 1024
"""Entries per block of the two-level draw in `sample_categorical` (rows of at most 2 * BLOCK use one cumsum)."""


def sample_categorical(weights: torch.Tensor, generator: torch.Generator | None = None, block: int | None = None
                       ) -> torch.Tensor:
    """(B,) one draw per row from the unnormalised non-negative float `weights` (B, N): the distribution of
    `torch.multinomial(weights, 1)`, which draws one exponential per entry, at the cost of one summing pass.

    Two-level inverse CDF: a block of BLOCK entries is drawn from the block sums, then an entry inside it from
    its cumulative weights (P(i) = W_b / W * w_i / W_b = w_i / W); two uniforms per row, no (B, N) output.
    `block` is the block size (default BLOCK; tests use small ones to reach the two-level path at small N)."""
    return sample_categorical_with_total(weights, generator, block)[0]


def sample_categorical_with_total(weights: torch.Tensor, generator: torch.Generator | None = None,
                                  block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_categorical`'s draw and the (B, 1) float32 row totals of `weights` it summed on the way (a
    log-normaliser without another pass over a 152k-entry row)."""
    N = weights.shape[-1]
    check_generator(generator, weights.device)
    block = block or BLOCK
    if N <= 2 * block:
        cdf = weights.float().cumsum(-1)
        return _searchsorted_draw(cdf, generator), cdf[:, -1:]
    cdf = block_sums(weights, block).cumsum(-1)
    return draw_in_blocks(cdf, lambda idx: weights.gather(-1, idx), N, generator, block), cdf[:, -1:]


def block_sums(weights: torch.Tensor, block: int) -> torch.Tensor:
    """(B, ceil(N / block)) float32 sums of consecutive `block`-entry slices of each row of `weights` (B, N), the
    last one partial when block does not divide N: the first level of the two-level draw."""
    B, N = weights.shape
    full = N - N % block
    sums = weights[:, :full].reshape(B, full // block, block).sum(-1, dtype=torch.float32)
    if full < N:
        sums = torch.cat([sums, weights[:, full:].sum(-1, keepdim=True, dtype=torch.float32)], dim=-1)
    return sums


def draw_in_blocks(block_cdf: torch.Tensor, weights_at: Callable[[torch.Tensor], torch.Tensor], n: int,
                   generator: torch.Generator | None, block: int) -> torch.Tensor:
    """(B,) the second level of the two-level draw: a block from the cumulative block sums `block_cdf` (B, nb), then
    an entry inside it from its weights, `weights_at(idx)` for the (B, block) entry indices idx (clamped to n - 1;
    indices past n get weight 0). Uniforms: one for the block, then one inside it."""
    chosen = _searchsorted_draw(block_cdf, generator)  # (B,)
    idx = chosen[:, None] * block + torch.arange(block, device=block_cdf.device)
    inside = idx < n
    w = weights_at(idx.clamp_max(n - 1)).float().masked_fill_(~inside, 0.0)
    return idx.gather(-1, _searchsorted_draw(w.cumsum(-1), generator)[:, None]).squeeze(-1)


def _nucleus_size(sorted_cdf: torch.Tensor, top_p: float, min_keep: int = 1) -> torch.Tensor:
    """(B, 1) number of leading entries of a descending-sorted distribution (given as its cumulative sum of
    unnormalised weights) that the top-p nucleus keeps: those whose mass *before* them is below top_p."""
    total = sorted_cdf[..., -1:]
    before = torch.cat([torch.zeros_like(total), sorted_cdf[..., :-1]], dim=-1)
    return (before < top_p * total).sum(-1, keepdim=True).clamp_(min=min_keep)


def _sample_sorted(values: torch.Tensor, top_p: float | None, generator: torch.Generator | None) -> torch.Tensor:
    """(B,) position drawn from softmax(values) restricted to its top-p nucleus; `values` (B, N) sorted descending
    (-inf allowed at the end). The draw is the inverse CDF over the nucleus's cumulative weights."""
    cdf = (values - values[..., :1]).exp_().cumsum_(-1)
    if top_p is not None and top_p < 1.0:
        n = _nucleus_size(cdf, top_p)
        cdf = torch.where(torch.arange(cdf.shape[-1], device=cdf.device) < n, cdf, cdf.gather(-1, n - 1))
    return _searchsorted_draw(cdf, generator)


def draw_unfiltered(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None,
                    greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, log-probs under log_softmax(logits / T), weights) of one draw per row from the unfiltered softmax
    (`greedy`: its argmax). The weights e = exp((x - max) / T) are p times a per-row constant, the one (B, V) float32
    buffer; the draw's cumulative sums give the log-normaliser, so no second pass over e. HRPO projects e too."""
    x = logits.float()
    m = x.amax(-1, keepdim=True)
    e = exp_weights_(torch.sub(x, m), temperature)  # no denormals (`EXP_FLOOR`)
    if greedy:
        ids, total = e.argmax(-1), e.sum(-1, keepdim=True)
    else:
        ids, total = sample_categorical_with_total(e, generator)
    logp = (x.gather(-1, ids[:, None]) - m).squeeze(-1) / temperature - total.log().squeeze(-1)
    return ids, logp, e


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. Returns (ids (B,), log-probs (B,) under log_softmax(logits / T)).

    temperature == 0 means greedy; its log-prob is then taken at T = 1. Same distribution as the reference
    `torch.multinomial(filter_logits(logits / T, top_k, top_p).softmax(-1), 1)`, cheaper: without filters one pass
    of exp and a cumulative sum serve both the draw and the log-normaliser; with top-k only the k survivors are
    looked at; top-p alone sorts the vocabulary (as HF does) and draws inside the sorted nucleus.
    """
    check_generator(generator, logits.device)
    if temperature <= 0:
        ids = logits.argmax(-1)
        return ids, token_logprobs(logits, ids, 0.0)
    V = logits.shape[-1]
    use_k = top_k is not None and 0 < top_k < V
    use_p = top_p is not None and top_p < 1.0
    if not use_k and not use_p:
        ids, logp, _ = draw_unfiltered(logits, temperature, generator)
        return ids, logp
    if use_k:
        values, cand = topk_rows(logits, top_k)  # sorted descending
    else:
        values, cand = torch.sort(logits, dim=-1, descending=True)
    pos = _sample_sorted(values.float() / temperature, top_p if use_p else None, generator)
    ids = cand.gather(-1, pos[:, None]).squeeze(-1)
    return ids, token_logprobs(logits, ids, temperature)
