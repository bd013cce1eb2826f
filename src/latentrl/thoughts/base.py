"""The ThoughtOperator interface: how one latent step is formed, stored, rebuilt and scored.

Every latent-reasoning RL method is the same loop; methods differ only in how a latent input is formed from the
previous position's output and what its log-prob is. An operator therefore has three jobs:

* `step`     — at rollout time, from the previous position's logits and last hidden state, form the next input
               embedding, the token id to record, and a *payload*: exactly what is needed to rebuild that input.
* `rebuild`  — at training time, rebuild the inputs of many stored latent positions in one batched call, with
               the *current* parameters (so gradients reach e.g. the embedding matrix or HRPO's gate).
* `log_prob` — the per-position log-prob (or method surrogate) of a stored step under the current logits.

Deterministic operators (Coconut hidden states, soft mixtures) set `stochastic = False`: their positions carry no
log-prob (the replay gives them 0 without computing their logits) and are left out of the policy loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from latentrl.head_logprobs import RowLogprobFn, row_logprob
from latentrl.sampling import logsumexp_rows, tempered, token_logprobs

if TYPE_CHECKING:
    from latentrl.model import LatentModel

Payload = dict[str, torch.Tensor]


def mix_embeddings(model: "LatentModel", ids: torch.Tensor, weights: torch.Tensor,
                   detach_embeddings: bool = False) -> torch.Tensor:
    """(..., H) Σ_k weights[..., k] · E[ids[..., k]] for (..., K) ids and weights: the input of a stored mixture of
    token embeddings, through `model.embed` (so PEFT / scaled embeddings apply). One bmm over the K embeddings
    (an einsum adds ~10 view/permute dispatches, a measurable share of a CPU latent step)."""
    emb = model.embed(ids)  # (..., K, H)
    if detach_embeddings:
        emb = emb.detach()
    lead, (K, H) = emb.shape[:-2], emb.shape[-2:]
    w = weights.to(emb.dtype).reshape(-1, 1, K)
    return torch.bmm(w, emb.reshape(-1, K, H)).reshape(*lead, H)


@dataclass
class ThoughtStep:
    """One latent step for a batch of B rows."""

    embeds: torch.Tensor  # (B, H) input embedding of the new position
    token_ids: torch.Tensor  # (B,) id recorded at the position (for decoding, end-of-thinking checks)
    payload: Payload  # name -> (B, ...) tensors; rebuild(payload) must reproduce `embeds`
    logprob: torch.Tensor | None  # (B,) log-prob / surrogate under the sampling policy; None if deterministic


@dataclass(frozen=True)
class PayloadSpec:
    """Shape (after the batch and position dims) and dtype of one payload entry, for preallocation."""

    shape: tuple[int, ...]
    dtype: torch.dtype


class ThoughtOperator(nn.Module):
    """Base class. Subclasses are small: one file each under `latentrl/thoughts/`."""

    name: ClassVar[str] = "base"
    stochastic: ClassVar[bool] = False
    #: the ids recorded at latent positions are real sampled tokens (HRPO): they belong in the completion text and
    #: a stop token among them ends the row
    emits_tokens: ClassVar[bool] = False
    #: `step` and `log_prob` read the logits; False lets the engine skip the LM head while every row is thinking,
    #: and the replay at latent positions (both then pass None)
    needs_logits: ClassVar[bool] = True
    #: the engine calls `begin_rollout` with every prompt position's last-layer state after the prefill (DLR's
    #: assistant reads the whole prompt, not just its last state)
    needs_prompt_states: ClassVar[bool] = False

    def payload_spec(self, model: "LatentModel") -> dict[str, PayloadSpec]:
        raise NotImplementedError

    def step(
        self,
        model: "LatentModel",
        logits: torch.Tensor,
        hidden: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> ThoughtStep:
        raise NotImplementedError

    def step_from_hidden(
        self,
        model: "LatentModel",
        hidden: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> ThoughtStep:
        """`step` from the last hidden states alone, when every row of a rollout is thinking: the engine's fast path.
        By default the LM head's logits (only if `needs_logits`), then `step`; an operator may fuse the LM head into
        its own work instead (HRPO at large vocabularies on a CPU)."""
        logits = model.decode_logits(hidden).float() if self.needs_logits else None
        return self.step(model, logits, hidden, generator=generator)

    def begin_rollout(self, model: "LatentModel", prompt_hidden: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        """Called once per rollout, after the prefill, when `needs_prompt_states`: (B, P, H) last-layer states of
        the (left-padded) prompts and their (B, P) mask."""

    def rebuild(self, model: "LatentModel", token_ids: torch.Tensor, payload: Payload) -> torch.Tensor:
        """(N, H) input embeddings for N stored latent positions (flattened), differentiable in current params."""
        raise NotImplementedError

    def token_logprob_terms(self, token_ids: torch.Tensor, payload: Payload
                            ) -> tuple[float, torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None] | None:
        """(T, ids, reduce) when `log_prob` of N stored steps reads the logits only through log_softmax(logits / T) at
        `ids`, (N,) or (N, K): it equals reduce(those log-probs), an (N, K) -> (N,) function (None: the (N,)
        log-probs themselves). HRPO: its sampled ids; LEPO: its top-k ids and their weighted sum; Latent-GRPO's
        authors' surrogate: its chosen K and the Gumbel density. The replay then computes those log-probs as it scores
        tokens (`head_token_logprobs`: two reused chunk x V buffers, no autograd logits) and applies `reduce` to the
        small (N, K) result. None (the default): the replay hands the logits to `log_prob`."""
        return None

    def row_logprob_fn(self, token_ids: torch.Tensor, payload: Payload) -> tuple[float, RowLogprobFn] | None:
        """(T, fn) when `log_prob` of N stored steps reads a whole row of log_softmax(logits / T), not just a few
        entries (Latent-GRPO's exact likelihood: every competitor of the chosen K): fn(lp, coef, rows) gives the
        value of rows `rows` and its gradient in each entry (`latentrl.head_logprobs.RowLogprobFn`). The replay then
        runs fn chunk by chunk in the LM head's buffers (`head_row_logprobs`: no autograd logits), and `log_prob` on
        the whole log-softmax. Consulted only when `token_logprob_terms` is None; None (the default): no such form."""
        return None

    def log_prob(self, logits: torch.Tensor, token_ids: torch.Tensor, payload: Payload) -> torch.Tensor:
        """(N,) log-prob or surrogate of N stored latent steps given the logits that produced them. By default: 0 for
        a deterministic operator, else `reduce(log_softmax(logits / T)[ids])` from `token_logprob_terms`, or
        fn(log_softmax(logits / T)) from `row_logprob_fn` (the same formulas the replay's buffer paths compute);
        operators with neither override it."""
        if not self.stochastic:
            return torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        terms = self.token_logprob_terms(token_ids, payload)
        if terms is not None:
            temperature, ids, reduce = terms
            lp = token_logprobs(logits, ids, temperature)
            return lp if reduce is None else reduce(lp)
        row = self.row_logprob_fn(token_ids, payload)
        if row is None:
            raise NotImplementedError(f"{type(self).__name__} has neither token_logprob_terms nor row_logprob_fn: "
                                      "it must define log_prob")
        temperature, fn = row
        x = tempered(logits, temperature)
        return row_logprob(x - logsumexp_rows(x), fn)

    def attach(self, model: "LatentModel") -> None:
        """Create the side modules this operator reads (HRPO's gate) on `model`, loading saved weights if the
        checkpoint had them. Called once, before any rollout and before the optimizer is built (`Method.build`);
        an operator never creates modules mid-rollout."""

    def mixed_tokens(self, payload: Payload) -> tuple[torch.Tensor, torch.Tensor] | None:
        """((N, K) token ids, (N, K) weights) of the token set a stored step's input mixes, or None when the input
        is no mixture of token embeddings (`latentrl inspect` shows it). Default: the payload's `ids` / `weights`."""
        if "ids" in payload and "weights" in payload:
            return payload["ids"], payload["weights"].float()
        return None

    def gate_ratios(self, model: "LatentModel", token_ids: torch.Tensor) -> torch.Tensor | None:
        """(N, 2) weights of the token embedding and of the mixed-in state where the operator gates the two
        (HRPO), or None."""
        return None

    def set_eval_mode(self, deterministic: bool) -> None:
        """Stochastic operators switch their noise off for evaluation (e.g. Latent-GRPO's noise-free top-K)."""
        self.deterministic = deterministic
