"""Coconut's continuous thought: the next input is the previous position's last-layer hidden state.

Hao et al. 2024 (arXiv 2412.06769). Deterministic: exploration in GRPO-on-Coconut comes from the answer tokens.
In stored-latent RL the hidden state is kept as a constant (Özeren & Aßenmacher detach generated latents); the
BPTT variant used for SFT lives in `latentrl/sft/coconut/forward.py`.
"""

from __future__ import annotations

import torch

from latentrl.thoughts import register_thought_operator
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep


@register_thought_operator
class HiddenStateThought(ThoughtOperator):
    name = "hidden_state"
    stochastic = False
    needs_logits = False

    def __init__(self, latent_token_id: int | None = None):
        super().__init__()
        self.latent_token_id = latent_token_id

    def payload_spec(self, model) -> dict[str, PayloadSpec]:
        return {"hidden": PayloadSpec((model.hidden_size,), model.embedding_matrix.dtype)}

    def step(self, model, logits, hidden, *, generator=None) -> ThoughtStep:
        rid = self.latent_token_id
        if rid is None:
            rid = model.latent_ids.latent if model.latent_ids is not None else model.tokenizer.pad_token_id
        ids = torch.full((hidden.shape[0],), rid, dtype=torch.long, device=hidden.device)
        h = hidden.detach()
        return ThoughtStep(embeds=h, token_ids=ids, payload={"hidden": h}, logprob=None)

    def rebuild(self, model, token_ids: torch.Tensor, payload: Payload) -> torch.Tensor:
        return payload["hidden"]
