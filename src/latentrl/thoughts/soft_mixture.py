"""Soft thinking: the next input is the probability-weighted mixture of token embeddings, Σ_k p_k E[k].

Only the top-k of p (renormalised) enter the mixture, so the payload (ids, weights) rebuilds the input exactly
without storing a V-sized vector per position. Deterministic; gradients at replay reach the embedding matrix.
"""

from __future__ import annotations

import torch

from latentrl.sampling import topk_rows
from latentrl.thoughts import register_thought_operator
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep, mix_embeddings


@register_thought_operator
class SoftMixtureThought(ThoughtOperator):
    name = "soft_mixture"
    stochastic = False

    def __init__(self, top_k: int = 10, temperature: float = 1.0):
        super().__init__()
        if top_k < 1:
            raise ValueError(f"soft_mixture top_k must be >= 1, got {top_k}")
        if temperature <= 0:
            raise ValueError(f"soft_mixture temperature must be > 0, got {temperature}")
        self.top_k, self.temperature = top_k, temperature

    def payload_spec(self, model) -> dict[str, PayloadSpec]:
        k = min(self.top_k, model.vocab_size)
        return {"ids": PayloadSpec((k,), torch.long), "weights": PayloadSpec((k,), torch.float32)}

    def step(self, model, logits, hidden, *, generator=None) -> ThoughtStep:
        k = min(self.top_k, logits.shape[-1])
        values, ids = topk_rows(logits, k)  # dividing by T keeps the order: no float copy of the (B, V) logits
        values = values.float()
        weights = (values if self.temperature == 1.0 else values / self.temperature).softmax(-1)
        payload = {"ids": ids, "weights": weights}
        return ThoughtStep(self.rebuild(model, ids[:, 0], payload), ids[:, 0], payload, None)

    def rebuild(self, model, token_ids: torch.Tensor, payload: Payload) -> torch.Tensor:
        return mix_embeddings(model, payload["ids"], payload["weights"])
