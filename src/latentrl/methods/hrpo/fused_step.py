"""HRPO's unfiltered hybrid step with the LM head fused in: one pass over the vocabulary in chunks (CPU, large V).

An HRPO step needs, from the last hidden state h of each row, the logits W h, the distribution p = softmax(W h / tau),
a draw x ~ p with its log-prob, and the projection E^T p / ||p||. Done one after the other, the two
vocabulary-sized matmuls (the LM head and p @ E) each stream their V x H matrix from memory, and every element-wise
pass (max, exp, sums, norm) streams the (B, V) logits again. At V = 151,936 on a CPU core these dominate the step.

Here the vocabulary is walked in chunks of rows (`CHUNK_BYTES` of W each). For each chunk: its logits,
the running row max, the weights exp((l - max) / tau) (as exp2 of logits pre-scaled by log2(e) / tau, with
`sampling`'s exponent floor) into a chunk-sized buffer that stays in cache, and their contributions to the mixture
E^T e, to sum(e^2) and to the `sampling.BLOCK`-entry block sums of the two-level draw. Whenever the running max
rises, what was accumulated is rescaled by exp((old - new) / tau) (the online softmax of FlashAttention). The chunk's
rows of W and E are read once and used while still in cache (once in all when the head is tied to the embedding).
The full (B, V) logits are never assembled: the draw reads the chosen block's logits from its chunk.

The result is the unfused step's up to float rounding: the same log-prob (to ~1e-6), the same projected state (to
~1e-6 relative), the same draw in distribution (it takes the same two uniforms per row as `draw_unfiltered`, so with
the same generator it nearly always picks the same ids). The exponent floor (`sampling.EXP_FLOOR`) applies against
the running max, so a few weights below e^-80 of the final max may count where the unfused pass zeroes them
(a change of < V * 2e-35 in total probability). `tests/test_sampling.py` and `tests/test_hrpo.py` check all of it.

Each chunk's logits come from the model's prepacked head (`latentrl.packed_head`, whose chunks these are) where
that applies (~1.7x `torch.mm` on the plain weight, the same values up to rounding); else from the weight.

On a GPU the unfused step is used: there the full matmuls are cheap and a Python loop over chunks is not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import latentrl.sampling as sampling
from latentrl.packed_head import PackedHead
from latentrl.sampling import EXP_FLOOR, LOG2E, block_sums, draw_in_blocks, token_logprobs

CHUNK_BYTES = 2 * 1024 * 1024
"""Bytes of W per chunk (and as many of E): the chunk's rows of both stay in a CPU core's cache between the two
matmuls. 2 MiB is 4,096 rows at H = 128, the fastest of 2,048-16,384 rows on this project's CPU
(`docs/bench/speed/hrpo_fused_chunks.py`), and 1,024 at H = 896. Chunks are whole `sampling.BLOCK`s, at least one."""
MIN_VOCAB = 32768
"""Vocabularies smaller than this take the unfused step (nothing to gain from chunking a few chunks)."""


def chunk_rows(hidden_size: int, element_size: int = 4) -> int:
    """Rows per chunk for a head of this width: `CHUNK_BYTES` of weight, rounded down to whole `sampling.BLOCK`s."""
    block = sampling.BLOCK
    return max(1, CHUNK_BYTES // (hidden_size * element_size * block)) * block


def fusable_head(model, logits_device: torch.device) -> nn.Linear | None:
    """The model's LM head when the fused step can replace it: a plain float32 `nn.Linear` on the CPU over at least
    MIN_VOCAB entries, with a float32 input embedding of the same shape; else None (peft wrappers, other dtypes,
    GPUs, small vocabularies take the unfused step)."""
    head = model.output_head
    if type(head) is not nn.Linear or logits_device.type != "cpu" or head.weight.shape[0] < MIN_VOCAB:
        return None  # (checked before the input embedding is looked up: a small vocabulary asks at every step)
    W, E = head.weight, model.embedding_matrix
    if W.shape != E.shape or W.dtype != torch.float32 or E.dtype != torch.float32:
        return None
    return head


@torch.no_grad()
def fused_head_step(head: nn.Linear, E: torch.Tensor, hidden: torch.Tensor, temperature: float,
                    generator: torch.Generator | None, greedy: bool = False, logprob_temperature: float | None = None,
                    packed: PackedHead | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids (B,), log-probs (B,) under log_softmax(logits / logprob_temperature) (default: tau), projected state
    E^T p / ||p|| (B, H) float32) from the last hidden states (B, H), for p = softmax(logits / tau). `greedy`: the
    argmax instead of a draw (of the scaled logits: a tie made by rounding goes to the lower id). `packed`: the
    head's weight prepacked (`latentrl.packed_head`; its chunks are this walk's). Constants, like the rollout's other
    records (gradients come from replaying them)."""
    W, bias = head.weight, head.bias
    B, V, T = hidden.shape[0], W.shape[0], float(temperature)
    block = sampling.BLOCK
    chunk = chunk_rows(W.shape[1], W.element_size())
    chunks = packed.chunks(head, chunk, B) if packed is not None else None
    # logits in base-2 units of the tempered softmax, y = (W h + b) log2(e) / tau, from the scaled h: p = 2^(y - max)
    # needs no scaling pass (the exp2 trick of `sampling.exp_weights_`)
    c = LOG2E / T
    h = hidden.to(W.dtype) * c
    b = None if bias is None else bias * c
    floor = EXP_FLOOR * LOG2E
    work = torch.empty(B, min(chunk, V), dtype=torch.float32, device=h.device)
    mix = torch.zeros(B, E.shape[1], dtype=torch.float32, device=h.device)
    sq = torch.zeros(B, 1, dtype=torch.float32, device=h.device)
    m = None  # running row max of y (B, 1)
    ys, chunk_sums, maxes = [], [], []  # per chunk: its y (B, n), its block sums, the max they were taken against
    for s in range(0, V, chunk):
        n = min(chunk, V - s)
        # a fresh contiguous (B, n) output: faster than writing into a strided slice of a (B, V) tensor
        if chunks is not None:
            y = packed.chunk_logits(chunks[s // chunk], h, None if b is None else b[s:s + n])
        else:
            y = torch.matmul(h, W[s:s + n].T) if b is None else torch.addmm(b[s:s + n], h, W[s:s + n].T)
        chunk_max = y.amax(-1, keepdim=True)
        if m is None:
            m = chunk_max
        else:
            new = torch.maximum(m, chunk_max)
            scale = torch.exp2(m - new)
            mix.mul_(scale)
            sq.mul_(scale * scale)
            m = new
        e = F.threshold_(torch.sub(y, m, out=work[:, :n]), floor, float("-inf")).exp2_()
        mix.addmm_(e, E[s:s + n])
        sq.add_(e.norm(dim=-1, keepdim=True).square_())  # norm: one pass, no (B, n) product
        ys.append(y)
        chunk_sums.append(block_sums(e, block))
        maxes.append(m)
    cdf = torch.cat([bs * torch.exp2(mk - m) for bs, mk in zip(chunk_sums, maxes)], dim=-1).cumsum_(-1)

    def y_at(idx: torch.Tensor) -> torch.Tensor:
        """(B, K) y at entry indices idx that lie, per row, inside one chunk (a block, or one id)."""
        first = idx[:, 0]
        offsets = idx - first[:, None]
        return torch.stack([ys[k][r, o + offsets[r]]
                            for r, (k, o) in enumerate(zip((first // chunk).tolist(), (first % chunk).tolist()))])

    if greedy:
        best = torch.stack([y.amax(-1) for y in ys], -1).argmax(-1, keepdim=True)  # the first chunk holding the max
        ids = torch.stack([y.argmax(-1) for y in ys], -1).gather(-1, best).squeeze(-1) + best.squeeze(-1) * chunk
    else:
        ids = draw_in_blocks(cdf, lambda idx: y_at(idx).sub_(m).exp2_(), V, generator, block)
    if logprob_temperature is not None and logprob_temperature != temperature:
        # log_softmax(logits / t) = log_softmax(y / (t c))
        logp = token_logprobs(torch.cat(ys, -1), ids, logprob_temperature * c)
    else:
        logp = (y_at(ids[:, None]).squeeze(-1) - m.squeeze(-1) - cdf[:, -1].log2()) / LOG2E
    return ids, logp, mix / sq.sqrt().clamp_min(1e-30)
