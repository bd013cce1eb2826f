"""The replay scorer: one teacher-forced forward over prompt + stored completion inputs.

Latent inputs are rebuilt from their stored payloads by the thought operator with the *current* parameters, so
one parallel forward gives every position's log-prob (token log-prob for discrete positions, the operator's
density or surrogate for latent ones) with gradients. Under the rollout's parameters it must equal what the
rollout saw — `tests/test_replay.py` checks exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from latentrl.decoding import shared_prompt_rows
from latentrl.head_logprobs import (  # noqa: F401  (CPU_CHUNK_BYTES, default_logits_chunk: imported from here too)
    CPU_CHUNK_BYTES,
    default_logits_chunk,
    fused_head_weight,
    head_row_logprobs,
    head_token_logprobs,
    in_chunks,
    lm_head_token_logprobs,
)
from latentrl.model import LatentModel
from latentrl.rollout import Rollout
from latentrl.thoughts.base import ThoughtOperator


@dataclass
class ReplayOutput:
    logprobs: torch.Tensor  # (B, C) per completion position
    entropy: torch.Tensor | None  # (B, C) entropy of the token distribution at the loss temperature, 0 at latent rows
    hidden: torch.Tensor | None  # (B, C, H) last hidden state output at each completion position (value heads)


def completion_embeds(model: LatentModel, operator: ThoughtOperator | None, rollout: Rollout) -> torch.Tensor:
    """(B, C, H) input embeddings of the completion: token embeddings, latent positions rebuilt by the operator."""
    embeds = model.embed(rollout.completion_ids)
    if operator is not None and bool(rollout.latent_mask.any()):
        lat = rollout.latent_mask
        rebuilt = operator.rebuild(
            model, rollout.completion_ids[lat], {k: v[lat] for k, v in rollout.payload.items()}
        )
        embeds = embeds.masked_scatter(lat[..., None], rebuilt.to(embeds.dtype))
    return embeds


def replay(
    model: LatentModel,
    operator: ThoughtOperator | None,
    rollout: Rollout,
    *,
    temperature: float = 1.0,
    compute_entropy: bool = True,
    return_hidden: bool = False,
    logits_chunk_size: int | None = None,
    share_prompts: bool = True,
) -> ReplayOutput:
    """Per-position log-probs of a stored rollout under the model's current parameters.

    Logits are materialised for completion positions only, `logits_chunk_size` positions at a time (default:
    `default_logits_chunk`), and with
    gradients each chunk is recomputed in the backward pass instead of kept, so a 150k-token vocabulary never
    needs more than one chunk's (chunk × V) float32 logits at once, forward or backward.
    With `share_prompts` (default), rows with the same prompt (a GRPO group) run the prompt forward once and
    share its KV cache; the result equals the plain full-sequence forward up to float rounding.
    The last completion position scores nothing (its output would predict the position after the completion), so
    it is not run unless `return_hidden` asks for its hidden state.
    """
    B, P = rollout.prompt_ids.shape
    C = rollout.completion_ids.shape[1]
    keep = C if return_hidden or C <= 1 else C - 1  # completion inputs that go through the model
    comp = completion_embeds(model, operator, rollout)[:, :keep]
    mask = torch.cat([rollout.prompt_mask, rollout.completion_mask[:, :keep]], dim=1).long()
    position = (mask.cumsum(-1) - 1).clamp_min(0)
    no_cache = model.model.training and torch.is_grad_enabled() and model.is_gradient_checkpointing
    shared = (shared_prompt_rows(rollout.prompt_ids, rollout.prompt_mask)
              if share_prompts and C > 0 and P > 0 and not no_cache else None)
    if shared is None:
        embeds = torch.cat([model.embed(rollout.prompt_ids), comp], dim=1)
        _, hidden, _ = model.forward_embeds(embeds, attention_mask=mask, position_ids=position, compute_logits=False)
        # hidden at input index P-1+j produces the logits that score completion position j
        h = hidden[:, P - 1 : P - 1 + C]
        comp_hidden = hidden[:, P:]
    else:
        first, inverse = shared
        # each distinct prompt once, then its KV cache copied to every row of its group (gradients flow back
        # through the copy, summed over the group): the G completions of a GRPO group share one prompt forward
        _, prompt_hidden, cache = model.forward_embeds(
            model.embed(rollout.prompt_ids[first]), attention_mask=mask[first, :P], position_ids=position[first, :P],
            past_key_values=DynamicCache(), use_cache=True, compute_logits=False,
        )
        cache.reorder_cache(inverse)
        _, comp_hidden, _ = model.forward_embeds(
            comp, attention_mask=mask, position_ids=position[:, P:], past_key_values=cache, use_cache=True,
            compute_logits=False,
        )
        h = torch.cat([prompt_hidden[inverse, P - 1 :], comp_hidden[:, : C - 1]], dim=1)
    temp = temperature if temperature > 0 else 1.0
    flat_h = h.reshape(B * C, -1)
    ids = rollout.completion_ids.reshape(-1)
    lat = rollout.latent_mask.reshape(-1)
    chunk = max(1, logits_chunk_size or default_logits_chunk(model.vocab_size, flat_h.device))
    # token positions: log_softmax(logits / T) at the stored id; latent positions: the operator's log-prob
    tok = ~lat if operator is not None and bool(lat.any()) else None  # None: every position is a token
    h_tok, ids_tok = (flat_h, ids) if tok is None else (flat_h[tok], ids[tok])
    # reused (chunk x V) buffers for a plain head, checkpointed chunks otherwise: flat memory at any length
    lp, ent, _ = lm_head_token_logprobs(model.output_head, h_tok, ids_tok, temp, chunk,
                                        compute_entropy)
    if tok is not None and operator.stochastic:
        payload = {k: v.reshape(B * C, *v.shape[2:])[lat] for k, v in rollout.payload.items()}
        ids_lat = ids[lat]
        terms = operator.token_logprob_terms(ids_lat, payload)
        row = operator.row_logprob_fn(ids_lat, payload) if terms is None else None
        lat_weight = (fused_head_weight(model.output_head, flat_h)
                      if terms is not None or row is not None else None)
        if lat_weight is not None and terms is not None:  # token log-probs at latent positions (HRPO, LEPO, ...)
            t_lat, t_ids, reduce = terms
            op_lp, _ = head_token_logprobs(flat_h[lat], lat_weight, t_ids, t_lat, chunk, False)
            op_lp = op_lp if reduce is None else reduce(op_lp).float()
        elif lat_weight is not None:  # a function of the whole row of log-probs (Latent-GRPO's likelihood)
            t_lat, fn = row
            op_lp = head_row_logprobs(flat_h[lat], lat_weight, fn, t_lat, chunk)
        else:
            def latent_scores(h_chunk: torch.Tensor, rows: slice) -> tuple[torch.Tensor, None]:
                logits = model.lm_head(h_chunk).float() if operator.needs_logits else None
                return operator.log_prob(logits, ids_lat[rows], {k: v[rows] for k, v in payload.items()}).float(), None

            op_lp, _ = in_chunks(latent_scores, flat_h[lat], chunk)
    elif tok is not None:  # deterministic latents carry no log-prob (`ThoughtOperator.log_prob`): no LM head there
        op_lp = lp.new_zeros(int(lat.sum()))
    if tok is not None:
        lp = lp.new_zeros(B * C).masked_scatter(tok, lp).masked_scatter(lat, op_lp)
        ent = ent.new_zeros(B * C).masked_scatter(tok, ent) if ent is not None else None
    logprobs = lp.view(B, C)
    entropy = ent.view(B, C) if ent is not None else None
    return ReplayOutput(logprobs=logprobs, entropy=entropy, hidden=comp_hidden if return_hidden else None)
