"""Does fusing HRPO's LM head, draw and projection into one walk over the vocabulary pay on this CPU? (No.)

Issue 18 asked for hrpo_gate >= 3x `generate` at V = 151,936; its step is the LM head (h W^T), the draw from
exp(logits) and h = E^T p / ||p||. The idea tried here (2026-12-06, not kept in the library): walk W and E in
blocks of 8,192 rows with a running row maximum (online softmax), so each block's logits, weights, sums and share of
E^T p are formed while the block is in cache, the draw reading back only the drawn 1,024-entry block. It equals the
plain step (same ids from the same generator, log-probs to ~4e-6, h to ~2e-5 relative), but the two matmuls are
~32 ms of a ~43 ms step either way and the element-wise passes are compute-bound (exp, max, sums), not
memory-bound, so the walk saves ~0-3 ms: in the rollout (`hrpo_gate` at --logit-scale 15) 46.2 ms a step fused
vs 45.0 unfused, one process. Run: OMP_NUM_THREADS=1 PYTHONPATH=src python docs/bench/speed/hrpo_fused_walk.py

Later (2026-12-07): this script's "plain" runs on synthetic h and W; on the benchmark's own model the library's plain
step costs more than its parts, and the fused step now in the library (`latentrl/methods/hrpo/fused_step.py`) is
1.2-1.4x faster (docs/benchmarks.md, "HRPO's LM head fused into its step").
"""
import math
import time

import torch
import torch.nn.functional as F

from latentrl.sampling import EXP_FLOOR, draw_unfiltered, token_logprobs

B, V, H, SCALE = 32, 151936, 128, 15.0
DRAW = 1024


def exp_floored(z):
    return F.threshold_(z.clamp_(min=EXP_FLOOR).exp_(), 2.0 * math.exp(EXP_FLOOR), 0.0)


def draw(cdf, g):
    x = torch.rand(cdf[:, -1:].shape, generator=g) * cdf[:, -1:]
    x = torch.minimum(x, torch.nextafter(cdf[:, -1:], torch.zeros_like(x)))
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_max_(cdf.shape[-1] - 1)


@torch.no_grad()
def fused(h, W, E, g, block=8 * DRAW):
    nb, per = -(-V // block), block // DRAW
    logits = torch.empty(nb, B, block)
    sums, bmax = torch.empty(B, nb * per), torch.empty(B, nb)
    m, acc, sq = torch.full((B, 1), -math.inf), torch.zeros(B, E.shape[1]), torch.zeros(B, 1)
    for j in range(nb):
        lo = j * block
        w = min(block, V - lo)
        x = logits[j, :, :w]
        if w == block:
            torch.mm(h, W[lo:lo + w].t(), out=x)
        else:
            x.copy_(h @ W[lo:lo + w].t())
        new_m = torch.maximum(m, x.amax(-1, keepdim=True))
        r = (m - new_m).exp_()
        e = exp_floored(x - new_m)
        full = w // DRAW
        sums[:, j * per: j * per + full] = e[:, : full * DRAW].reshape(B, full, DRAW).sum(-1)
        if w % DRAW:
            sums[:, j * per + full] = e[:, full * DRAW:].sum(-1)
        bmax[:, j] = new_m.squeeze(-1)
        sq.mul_(r.square()).add_(e.square().sum(-1, keepdim=True))
        acc.mul_(r).add_(e @ E[lo:lo + w])
        m = new_m
    n = -(-V // DRAW)
    sums = sums[:, :n].mul_(torch.exp(bmax - m).repeat_interleave(per, dim=-1)[:, :n])
    cdf = sums.cumsum(-1)
    idx = draw(cdf, g)[:, None] * DRAW + torch.arange(DRAW)
    inside = idx < V
    flat = lambda i: torch.div(i, block, rounding_mode="floor") * (B * block) + torch.arange(B)[:, None] * block + i % block  # noqa: E731
    wts = exp_floored(logits.take(flat(idx.clamp_max(V - 1))).sub_(m)).masked_fill_(~inside, 0.0)
    ids = idx.gather(-1, draw(wts.cumsum(-1), g)[:, None]).squeeze(-1)
    logp = (logits.take(flat(ids[:, None])) - m - cdf[:, -1:].log()).squeeze(-1)
    return ids, logp, acc / sq.sqrt()


def plain(h, W, E, g):
    logits = h @ W.T
    ids, logp, e = draw_unfiltered(logits, 1.0, g)
    return ids, logp, (e @ E) / e.norm(dim=-1, keepdim=True)


def ms(f, n=10):
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    W, E, h = torch.randn(V, H) * 0.02 * SCALE, torch.randn(V, H) * 0.02, torch.randn(B, H)
    a = plain(h, W, E, torch.Generator().manual_seed(1))
    b = fused(h, W, E, torch.Generator().manual_seed(1))
    print(f"same ids {bool((a[0] == b[0]).all())}; log-prob max diff "
          f"{(b[1] - token_logprobs(h @ W.T, b[0], 1.0)).abs().max():.1e}; h max rel diff "
          f"{((a[2] - b[2]).abs().max() / a[2].abs().max()):.1e}")
    g, p = torch.Generator().manual_seed(2), torch.rand(B, V)
    for _ in range(3):
        print(f"plain {ms(lambda: plain(h, W, E, g)):.1f} ms   fused walk {ms(lambda: fused(h, W, E, g)):.1f} ms   "
              f"(LM head alone {ms(lambda: h @ W.T):.1f}, E^T p alone {ms(lambda: p @ E):.1f})")
