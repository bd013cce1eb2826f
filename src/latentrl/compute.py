"""FLOP estimates of model passes, one formula for every trainer, so methods are compared at equal compute
(DLR vs GRPO, issue 19): a forward costs 2 x (weights multiplied per token) x positions."""

from __future__ import annotations

__all__ = ["forward_flops", "matmul_params"]


def matmul_params(lm) -> int:
    """Weights a forward multiplies per token: all parameters but the input-embedding lookup, plus the LM head
    when it is tied to the embeddings (counted once by `parameters()`)."""
    hf = lm.model
    total = sum(p.numel() for p in hf.parameters())
    emb_in = hf.get_input_embeddings().weight
    head = hf.get_output_embeddings()
    tied = head is not None and head.weight is emb_in
    return total - emb_in.numel() + (head.weight.numel() if tied else 0)


def forward_flops(params: int, tokens: int) -> float:
    """The usual estimate of a transformer forward: 2 x params x tokens (attention's T^2 term left out)."""
    return 2.0 * float(params) * float(tokens)
