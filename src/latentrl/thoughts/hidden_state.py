"""Coconut's continuous thought: the next input is the previous position's last-layer hidden state.

Hao et al. 2024 (arXiv 2412.06769). Deterministic: exploration in GRPO-on-Coconut comes from the answer tokens.
In stored-latent RL the hidden state is kept as a constant (Özeren & Aßenmacher detach generated latents); the
BPTT variant used for SFT lives in `latentrl/sft/coconut/forward.py`.

Optionally (CODI, Shen et al. 2025, arXiv 2502.21074) the hidden state passes through a learned projection before
it is fed back: `ThoughtProjection`, a side module named `thought_projection` that a Coconut run with
`thought_projection: true` trains and saves. The operator applies it whenever the model has it (the payload keeps
the raw hidden state, so a replay rebuilds the input with the current projection).
"""

from __future__ import annotations

import torch
from torch import nn

from latentrl.thoughts import register_thought_operator
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep

PROJECTION_NAME = "thought_projection"


class ThoughtProjection(nn.Module):
    """CODI's projection of a thought: Linear, GELU, Linear, LayerNorm (hidden size to hidden size).

    The LayerNorm's gain starts at `scale` (the caller passes the token embeddings' RMS), so a projected thought
    starts at the size of an input embedding rather than of a last-layer state."""

    def __init__(self, hidden_size: int, scale: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size),
                                 nn.LayerNorm(hidden_size))
        with torch.no_grad():
            self.net[-1].weight.fill_(scale)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.to(self.net[0].weight.dtype)).to(h.dtype)


def ensure_thought_projection(model) -> ThoughtProjection:
    """The model's thought projection, attached (loading saved weights, if any) when it has none yet."""
    if PROJECTION_NAME in model.side_modules:
        return model.side_modules[PROJECTION_NAME]
    with torch.no_grad():
        scale = float(model.embedding_matrix.float().pow(2).mean().sqrt())
    return model.attach_side_module(PROJECTION_NAME, ThoughtProjection(model.hidden_size, scale))


def project_thought(model, hidden: torch.Tensor) -> torch.Tensor:
    """The input a thought feeds back: the model's projection of `hidden`, or `hidden` itself without one."""
    side = getattr(model, "side_modules", None)  # (a bare test double may have none)
    return side[PROJECTION_NAME](hidden) if side is not None and PROJECTION_NAME in side else hidden


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
        return ThoughtStep(embeds=project_thought(model, h), token_ids=ids, payload={"hidden": h}, logprob=None)

    def rebuild(self, model, token_ids: torch.Tensor, payload: Payload) -> torch.Tensor:
        return project_thought(model, payload["hidden"])

    def attach(self, model) -> None:
        """The thought projection, when the checkpoint was trained with one."""
        if model.has_saved_side_module(PROJECTION_NAME):
            ensure_thought_projection(model)
