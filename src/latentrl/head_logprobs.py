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
"""

from __future__ import annotations

import torch
from torch import nn

from latentrl.sampling import exp_weights_

__all__ = ["fused_head_weight", "head_token_logprobs"]


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


class _HeadTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ids, token_weights, temperature, chunk, want_entropy):  # noqa: D102
        N = hidden.shape[0]
        c = max(1, min(chunk, N))
        buf, tmp = hidden.new_empty((c, weight.shape[0])), hidden.new_empty((c, weight.shape[0]))
        lp, lse = hidden.new_empty(N), hidden.new_empty((N, 1))
        ent = hidden.new_empty(N) if want_entropy else None
        wt = weight.t()
        for s in range(0, N, c):
            e = min(s + c, N)
            z, w = _scores(buf[: e - s], hidden[s:e], wt, temperature), tmp[: e - s]
            m = z.amax(-1, keepdim=True)
            z.sub_(m)
            total = exp_weights_(z, out=w).sum(-1, keepdim=True)
            log_total = total.log()
            z.sub_(log_total)  # z = log-softmax
            lse[s:e] = m + log_total
            if token_weights is None:
                lp[s:e] = z.gather(-1, ids[s:e, None]).squeeze(-1)
            else:  # sum_k w_k log p(ids_k)
                lp[s:e] = (z.gather(-1, ids[s:e]) * token_weights[s:e]).sum(-1)
            if want_entropy:  # -sum p log p, p = w / total
                ent[s:e] = -(w.div_(total).mul_(z)).sum(-1)
        ctx.save_for_backward(hidden, weight, ids, token_weights, lse)
        ctx.temperature, ctx.chunk = temperature, c
        if ent is not None:
            ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, grad_lp, _grad_ent):  # noqa: D102
        hidden, weight, ids, token_weights, lse = ctx.saved_tensors
        T, c, N = ctx.temperature, ctx.chunk, hidden.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        buf, wt = hidden.new_empty((c, weight.shape[0])), weight.t()
        for s in range(0, N, c):
            e = min(s + c, N)
            g = grad_lp[s:e, None]
            z = _scores(buf[: e - s], hidden[s:e], wt, T)
            p = exp_weights_(z.sub_(lse[s:e]))
            if token_weights is None:
                d = p.mul_(-g).scatter_add_(-1, ids[s:e, None], g)  # g (onehot - p), d lp / d (logits / T)
            else:  # g (sum_k w_k onehot_k - (sum_k w_k) p)
                tw = token_weights[s:e]
                d = p.mul_(-g * tw.sum(-1, keepdim=True)).scatter_add_(-1, ids[s:e], g * tw)
            if T != 1.0:
                d.div_(T)
            if need_h:
                torch.mm(d, weight, out=grad_h[s:e])
            if need_w:
                grad_w.addmm_(d.t(), hidden[s:e])
        return grad_h, grad_w, None, None, None, None, None


def head_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                        chunk: int = 1024, entropy: bool = False, token_weights: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N,) log_softmax(hidden @ weight.T / T) at `ids`, and (N,) entropies when `entropy` (no gradient), for
    hidden (N, H), weight (V, H), ids (N,); differentiable in hidden and weight. `chunk` rows per pass.

    With `token_weights` (N, K) and ids (N, K): the weighted sum sum_k w_k log_softmax(...)[ids_k] per row (LEPO's
    soft cross-entropy); the weights are constants (no gradient)."""
    if token_weights is not None:
        if token_weights.requires_grad:
            raise ValueError("head_token_logprobs: token_weights get no gradient here; pass them detached")
        if ids.dim() != 2 or token_weights.shape != ids.shape:
            raise ValueError(f"token_weights {tuple(token_weights.shape)} must match ids (N, K), got {tuple(ids.shape)}")
        token_weights = token_weights.to(hidden.dtype)
    return _HeadTokenLogprobs.apply(hidden, weight, ids, token_weights, temperature, chunk, entropy)
