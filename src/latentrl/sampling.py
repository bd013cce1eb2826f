"""Token sampling shared by the rollout engine and the thought operators.

Log-probs are always of the *unfiltered* distribution at the sampling temperature (logits / T), as TRL scores
completions: top-k / top-p only decide which tokens can be drawn. This keeps rollout log-probs equal to what the
replay scorer recomputes from the same logits.
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None, min_keep: int = 1) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf. Always keeps at least `min_keep` tokens."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, max(top_k, min_keep), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # remove a token when the mass *before* it already reaches top_p
        remove = (cum - sorted_logits.softmax(-1)) >= top_p
        remove[..., :min_keep] = False
        remove = remove.scatter(-1, sorted_idx, remove)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. Returns (ids (B,), log-probs (B,) under log_softmax(logits / T)).

    temperature == 0 means greedy; its log-prob is then taken at T = 1.
    """
    logits = logits.float()
    if temperature <= 0:
        ids = logits.argmax(-1)
        logp = logits.log_softmax(-1)
    else:
        scaled = logits / temperature if temperature != 1.0 else logits  # x / 1 == x: skip the op
        logp = scaled.log_softmax(-1)
        probs = filter_logits(scaled, top_k, top_p).softmax(-1)
        if generator is not None and generator.device != probs.device:  # CPU generator, GPU logits: draw on CPU
            ids = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)
        else:
            ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return ids, logp.gather(-1, ids[:, None]).squeeze(-1)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) at `ids` (T <= 0 scores at T = 1, matching greedy sampling)."""
    scaled = logits.float() / temperature if temperature > 0 else logits.float()
    return scaled.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise -log(-log U), U drawn with `generator` on its own device, returned on `device`
    (clamped away from log 0 at both ends: finite for every U in [0, 1))."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
