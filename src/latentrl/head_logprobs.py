"""Token log-probs of the LM head, chunk by chunk in two reused (chunk x V) buffers, with their gradient.

Why: at a real vocabulary (V = 151,936) the replay's logits are scored a few dozen positions at a time. Written with
autograd ops, every chunk allocates fresh (chunk x V) temporaries (logits, scaled logits, log-softmax, and again in
the checkpointed backward), and glibc's heap cannot give that memory back between chunks: the small tensors a chunk
leaves alive split each freed block, so the next chunk's temporaries take new memory and the process grows by about
one chunk's logits per chunk (docs/benchmarks.md, "Replay memory"). Here the forward and the backward write every
(chunk x V) intermediate into the same two buffers, allocated once per call, so memory stays flat whatever the
number of positions.

    lp_i = log_softmax(h_i W^T / T)[id_i],       d lp_i / d h_i = (onehot(id_i) - p_i) W / T,
    d lp_i / d W = (onehot(id_i) - p_i)^T h_i / T,  with p_i = softmax(h_i W^T / T) recomputed in the backward.

The entropy of each row's distribution is returned as a metric, outside autograd. Exponentials are
`sampling.exp_weights_`'s (at large vocabularies exp2, floored at `sampling.EXP_FLOOR`: no denormal floats).

`head_row_logprobs` does the same for a log-prob that reads a whole row of log-probs, not a few entries of it
(Latent-GRPO's exact likelihood sums over every competitor of the chosen K): a `RowLogprobFn` gives the row's value
and its gradient in each log-prob entry, and the chain rule through the log-softmax is applied here,
d f / d z = c - p * sum(c) with c = d f / d lp. `row_logprob` is the same function on given log-probs, under autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

from latentrl.sampling import exp_weights_

__all__ = ["CPU_CHUNK_BYTES", "HeadScores", "RowLogprobFn", "default_logits_chunk", "fused_head_weight",
           "head_row_logprobs", "head_token_logprobs", "in_chunks", "lm_head_token_logprobs", "row_logprob"]

RowLogprobFn = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]
"""fn(lp, coef, rows) -> (n,) values for rows `rows` of a batch, from lp (n, V) = log_softmax(logits / T) of those
rows (read only, no autograd). It writes d value / d lp into coef (n, V) (treating the entries of lp as independent:
the log-softmax's own Jacobian is applied by the caller) and must give the same result when called again."""


def fused_head_weight(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor | None:
    """The (V, H) weight when `head_token_logprobs` computes exactly what `head(hidden)` + log-softmax would: a plain
    bias-free float32 `nn.Linear` on the CPU, float32 inputs, no autocast. None otherwise (LoRA or quantised heads,
    bf16, CUDA, where the autograd path runs)."""
    if type(head) is not nn.Linear or head.bias is not None:
        return None
    w = head.weight
    if w.dtype != torch.float32 or hidden.dtype != torch.float32 or w.device.type != "cpu":
        return None
    if hidden.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return None
    return w


def _scores(z: torch.Tensor, h: torch.Tensor, wt: torch.Tensor, temperature: float) -> torch.Tensor:
    """h W^T / T written into the buffer z."""
    torch.mm(h, wt, out=z)
    return z if temperature == 1.0 else z.div_(temperature)


def _log_softmax_(z: torch.Tensor, h: torch.Tensor, wt: torch.Tensor, temperature: float, w: torch.Tensor,
                  lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log_softmax(h W^T / T) written into the buffer z, the exp weights exp(logits / T - max) into the buffer w and
    the logsumexp into lse (rows, 1). Returns (z, the rows' sums of w)."""
    _scores(z, h, wt, temperature)
    m = z.amax(-1, keepdim=True)
    z.sub_(m)
    total = exp_weights_(z, out=w).sum(-1, keepdim=True)
    log_total = total.log()
    z.sub_(log_total)
    lse.copy_(m + log_total)
    return z, total


def _backward_through_head(ctx, hidden: torch.Tensor, weight: torch.Tensor, lse: torch.Tensor, logit_grad
                           ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_h, grad_w) chunk by chunk, from `logit_grad(lp, s, e)`: the loss's gradient in the tempered logits of rows
    s:e given their log-softmax lp (a reused buffer it may overwrite and return)."""
    T, c, N = ctx.temperature, ctx.chunk, hidden.shape[0]
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros_like(weight) if need_w else None
    buf, wt = hidden.new_empty((c, weight.shape[0])), weight.t()
    for s in range(0, N, c):
        e = min(s + c, N)
        d = logit_grad(_scores(buf[: e - s], hidden[s:e], wt, T).sub_(lse[s:e]), s, e)
        if T != 1.0:
            d.div_(T)
        if need_h:
            torch.mm(d, weight, out=grad_h[s:e])
        if need_w:
            grad_w.addmm_(d.t(), hidden[s:e])
    return grad_h, grad_w


class _HeadTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ids, temperature, chunk, want_entropy, want_max=False):  # noqa: D102
        N = hidden.shape[0]
        c = max(1, min(chunk, N))
        buf, tmp = hidden.new_empty((c, weight.shape[0])), hidden.new_empty((c, weight.shape[0]))
        lp, lse = hidden.new_empty(ids.shape), hidden.new_empty((N, 1))
        ent = hidden.new_empty(N) if want_entropy else None
        top = hidden.new_empty(N) if want_max else None
        wt = weight.t()
        for s in range(0, N, c):
            e = min(s + c, N)
            w = tmp[: e - s]
            z, total = _log_softmax_(buf[: e - s], hidden[s:e], wt, temperature, w, lse[s:e])
            if ids.dim() == 1:
                lp[s:e] = z.gather(-1, ids[s:e, None]).squeeze(-1)
            else:  # (N, K): the log-prob of each of K ids
                lp[s:e] = z.gather(-1, ids[s:e])
            if want_max:  # the largest entry of z is (max - max) - log total: exactly -log total
                top[s:e] = total.log().neg_().squeeze(-1)
            if want_entropy:  # -sum p log p, p = w / total
                ent[s:e] = -(w.div_(total).mul_(z)).sum(-1)
        ctx.save_for_backward(hidden, weight, ids, lse)
        ctx.temperature, ctx.chunk = temperature, c
        ctx.mark_non_differentiable(*(t for t in (ent, top) if t is not None))
        return lp, ent, top

    @staticmethod
    def backward(ctx, grad_lp, _grad_ent, _grad_top):  # noqa: D102
        hidden, weight, ids, lse = ctx.saved_tensors

        def logit_grad(lp: torch.Tensor, s: int, e: int) -> torch.Tensor:
            g = grad_lp[s:e, None] if ids.dim() == 1 else grad_lp[s:e]  # (rows, 1) or (rows, K)
            idx = ids[s:e, None] if ids.dim() == 1 else ids[s:e]
            # sum_k g_k (onehot(id_k) - p): d lp / d (logits / T) times the upstream gradient
            return exp_weights_(lp).mul_(-g.sum(-1, keepdim=True)).scatter_add_(-1, idx, g)

        return (*_backward_through_head(ctx, hidden, weight, lse, logit_grad), None, None, None, None, None)


def head_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                        chunk: int = 1024, entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log_softmax(hidden @ weight.T / T) at `ids`, and (N,) entropies when `entropy` (no gradient), for hidden
    (N, H), weight (V, H) and ids (N,) -> (N,) or ids (N, K) -> (N, K) (K ids per row: LEPO's top-k, Latent-GRPO's
    chosen K); differentiable in hidden and weight. `chunk` rows per pass."""
    if ids.dim() not in (1, 2) or ids.shape[0] != hidden.shape[0]:
        raise ValueError(f"ids must be (N,) or (N, K) for hidden (N, H) = {tuple(hidden.shape)}, got {tuple(ids.shape)}")
    lp, ent, _ = _HeadTokenLogprobs.apply(hidden, weight, ids, temperature, chunk, entropy)
    return lp, ent


class HeadScores(NamedTuple):
    """What `lm_head_token_logprobs` returns for N rows."""

    logprobs: torch.Tensor
    """(N,) log_softmax(logits / T) at each row's id, differentiable."""
    entropy: torch.Tensor | None
    """(N,) entropy of each row's distribution (no gradient), when asked for."""
    max_logprob: torch.Tensor | None
    """(N,) the row's largest log-prob (no gradient), when asked for: the id is the argmax where logprobs equals it."""


def lm_head_token_logprobs(head: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                           chunk: int | None = None, entropy: bool = False, max_logprob: bool = False) -> HeadScores:
    """log_softmax(head(hidden) / T) at `ids` (N,) or (N, K) for hidden (N, H), never holding more than `chunk` rows
    of logits (default `default_logits_chunk`): the replay's token scores and the SFT losses at any vocabulary. A
    plain float32 CPU head runs in reused buffers (`head_token_logprobs`); any other head (LoRA, quantised, bf16,
    CUDA) runs through `head` itself under autograd, each chunk checkpointed."""
    if ids.dim() not in (1, 2) or ids.shape[0] != hidden.shape[0]:
        raise ValueError(f"ids must be (N,) or (N, K) for hidden (N, H) = {tuple(hidden.shape)}, got {tuple(ids.shape)}")
    vocab = getattr(head, "out_features", None) or getattr(getattr(head, "weight", None), "shape", (1,))[0]
    c = max(1, chunk or default_logits_chunk(vocab, hidden.device))
    weight = fused_head_weight(head, hidden)
    if weight is not None:
        return HeadScores(*_HeadTokenLogprobs.apply(hidden, weight, ids, temperature, c, entropy, max_logprob))

    def scores(h_chunk: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        logp = (head(h_chunk).float() / temperature).log_softmax(-1)
        stats = None
        if entropy or max_logprob:  # metrics: outside autograd, or a checkpointed chunk's recompute would keep its
            with torch.no_grad():  # (chunk x V) tensors until the whole backward ends (never unpacked)
                stats = torch.stack([-(logp.exp() * logp).sum(-1) if entropy else logp[:, 0],
                                     logp.amax(-1) if max_logprob else logp[:, 0]], -1)
        return (logp.gather(-1, ids[rows, None]).squeeze(-1) if ids.dim() == 1 else logp.gather(-1, ids[rows])), stats

    lp, stats = in_chunks(scores, hidden, c)
    if stats is None and (entropy or max_logprob):  # no row at all
        stats = lp.new_zeros(0, 2)
    return HeadScores(lp, stats[:, 0] if entropy else None, stats[:, 1] if max_logprob else None)


CPU_CHUNK_BYTES = 24 << 20
"""On the CPU, a float32 logits chunk is kept under glibc's 32 MB mmap ceiling: larger temporaries are mapped and
page-faulted afresh for every chunk. At V = 151,936, replay + backward of 1024 positions took 8.5 s with 1024- (and
256-) position chunks, about half of it system time, and 4.8 s with 48-position chunks, no system time
(benchmarks/replay_chunks.py, docs/bench/speed/replay_chunks_v151936.txt)."""


def default_logits_chunk(vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Positions per logits chunk: 1024; on the CPU fewer, so that a float32 chunk stays under CPU_CHUNK_BYTES."""
    if torch.device(device).type != "cpu":
        return 1024
    return max(1, min(1024, CPU_CHUNK_BYTES // (4 * max(1, vocab_size))))


def in_chunks(score, h: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`score(h[rows], rows)` -> (values, optional metric) over `chunk` rows at a time, concatenated. With gradients
    each chunk is checkpointed: autograd keeps only the chunk's hidden states and recomputes its logits in the
    backward pass, one chunk at a time, so no (rows x V) tensor is ever alive (tests/test_replay.py)."""
    checkpointed = torch.is_grad_enabled() and h.requires_grad
    parts, metrics = [], []
    for start in range(0, h.shape[0], chunk):
        rows = slice(start, start + chunk)
        if checkpointed:
            out, metric = torch.utils.checkpoint.checkpoint(score, h[rows], rows, use_reentrant=False)
        else:
            out, metric = score(h[rows], rows)
        parts.append(out)
        if metric is not None:
            metrics.append(metric)
    values = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    return values, (torch.cat(metrics) if metrics else None)


class _RowLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lp, fn):  # noqa: D102
        coef = torch.empty_like(lp)
        with torch.no_grad():
            value = fn(lp.detach(), coef, slice(0, lp.shape[0]))
        ctx.save_for_backward(coef)
        return value

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (coef,) = ctx.saved_tensors
        return coef * grad[:, None], None


def row_logprob(lp: torch.Tensor, fn: RowLogprobFn) -> torch.Tensor:
    """(N,) values of `fn` on log-probs lp (N, V), differentiable in lp through fn's own gradient."""
    return _RowLogprob.apply(lp, fn)


class _HeadRowLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, fn, temperature, chunk):  # noqa: D102
        N = hidden.shape[0]
        c = max(1, min(chunk, N))
        buf, tmp = hidden.new_empty((c, weight.shape[0])), hidden.new_empty((c, weight.shape[0]))
        value, lse = hidden.new_empty(N), hidden.new_empty((N, 1))
        wt = weight.t()
        for s in range(0, N, c):
            e = min(s + c, N)
            z, _ = _log_softmax_(buf[: e - s], hidden[s:e], wt, temperature, tmp[: e - s], lse[s:e])
            value[s:e] = fn(z, tmp[: e - s], slice(s, e))
        ctx.save_for_backward(hidden, weight, lse)
        ctx.fn, ctx.temperature, ctx.chunk = fn, temperature, c
        return value

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        hidden, weight, lse = ctx.saved_tensors
        coef = hidden.new_empty((ctx.chunk, weight.shape[0]))

        def logit_grad(lp: torch.Tensor, s: int, e: int) -> torch.Tensor:
            d = coef[: e - s]
            ctx.fn(lp, d, slice(s, e))  # d value / d lp
            d.mul_(grad[s:e, None])
            return d.sub_(exp_weights_(lp).mul_(d.sum(-1, keepdim=True)))  # c - p * sum(c): through the log-softmax

        return (*_backward_through_head(ctx, hidden, weight, lse, logit_grad), None, None, None)


def head_row_logprobs(hidden: torch.Tensor, weight: torch.Tensor, fn: RowLogprobFn, temperature: float = 1.0,
                      chunk: int = 1024) -> torch.Tensor:
    """(N,) values fn(log_softmax(hidden @ weight.T / T)) for hidden (N, H), weight (V, H), `chunk` rows per pass in
    reused (chunk x V) buffers (fn's own temporaries aside); differentiable in hidden and weight."""
    return _HeadRowLogprobs.apply(hidden, weight, fn, temperature, chunk)
