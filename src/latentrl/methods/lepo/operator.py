"""LEPO's thought: a Gumbel-softmax sample over the filtered next-token distribution, fed in as Σ_v z_v E[v].

Zhou et al. 2026, "LEPO" (arXiv 2604.17892); authors' code github.com/YuyanZhou/lepo
(`src/models/latent_qwen2.py::_sample`, `src/trainers/lepo_trainer.py::_compute_loss`,
`src/utils/functions.py::CE_loss_from_model`).

One latent step, from the logits of the previous position::

    f = filter(logits / T, top_k, top_p)        T = latent_temperature (1.0), top_k 30, top_p 0.95; -inf elsewhere
    z = softmax((f + G) / τ),  G ~ Gumbel(0, 1)  τ = gumbel_tau (0.3 for Qwen2.5-3B, 0.5 for 7B / LLaMA)
    e = z · E

z is non-zero on at most top_k tokens (the filter keeps exactly the top_k ids, then the nucleus), so the payload —
the top_k entries of z, (`ids`, `weights`) — rebuilds the input exactly. The recorded token is argmax z by default
(`record="argmax"`); the authors' default (`do_latent_sample=False`) records the *unperturbed* argmax of the
filtered logits (`record="unperturbed"`). Latent positions are skipped when decoding completions for rewards, so the
choice only matters for display.

Per-position log-prob: the negative soft cross-entropy against the stored weights,

    log p = Σ_k z_k log π_θ(i_k),   π_θ = softmax(logits_θ / T),

which for a one-hot z is the ordinary token log-prob. LEPO's loss at latent positions is -A · log p with no
importance ratio (`rl.losses.no_ratio_policy_loss`). The authors compute the CE at T = 1 whatever the sampling
temperature; we use the latent temperature (equal at their T = 1.0).

Deterministic mode (`set_eval_mode(True)` without `eval_noise`): z = softmax(f / τ), no noise.

Cost: z is computed on the top_k survivors only (`sparse_mixture`): Gumbel noise is drawn for those k entries, not
for all V (the noise on a -inf entry never matters, so the distribution is the same; `tests/test_sampling.py`
checks it against the full-vocabulary form, `mixture`, by equality given the noise and by a chi-square test).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from latentrl.sampling import check_generator, gumbel_noise, log_normalizer, top_k_nucleus
from latentrl.thoughts import register_thought_operator
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep, mix_embeddings
from latentrl.thoughts.gumbel_topk import _init_common, _init_record

if TYPE_CHECKING:
    from latentrl.config import LatentConfig

__all__ = ["GumbelSoftmaxThought", "soft_cross_entropy_logprob"]

RECORD_CHOICES = ("argmax", "unperturbed")


def soft_cross_entropy_logprob(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                               temperature: float = 1.0) -> torch.Tensor:
    """(N,) Σ_k w_k log softmax(logits / T)[ids_k] — minus the soft cross-entropy of the weights."""
    lp = logits.gather(-1, ids).float() / temperature - log_normalizer(logits, temperature)  # no (N, V) log-softmax
    return (weights.float() * lp).sum(-1)


@register_thought_operator
class GumbelSoftmaxThought(ThoughtOperator):
    """LEPO's stochastic embedding mixture (see the module docstring for the equations)."""

    name = "gumbel_softmax"
    stochastic = True

    def __init__(
        self,
        config: "LatentConfig | None" = None,
        *,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        tau: float | None = None,
        eval_noise: bool | None = None,
        record: str = "argmax",
        detach_embeddings: bool = False,
    ):
        """Values come from `config` (a `LatentConfig`: top_k, top_p, latent_temperature, gumbel_tau, eval_noise)
        unless given here."""
        super().__init__()
        _init_common(self, "gumbel_softmax", config, top_k=top_k, top_p=top_p, temperature=temperature, tau=tau,
                     eval_noise=eval_noise)
        _init_record(self, "gumbel_softmax", record, RECORD_CHOICES, detach_embeddings)

    def payload_spec(self, model) -> dict[str, PayloadSpec]:
        k = min(self.top_k, model.vocab_size)
        return {"ids": PayloadSpec((k,), torch.long), "weights": PayloadSpec((k,), torch.float32)}

    def set_eval_mode(self, deterministic: bool) -> None:
        """Noise off for evaluation unless `eval_noise`."""
        self.deterministic = bool(deterministic) and not self.eval_noise

    def sparse_mixture(self, logits: torch.Tensor, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, weights), each (B, k), sorted by weight: the non-zero part of the Gumbel-softmax sample z.

        The filter keeps exactly the top_k ids, then the nucleus among them (`filter_logits`' rule), so noise is
        drawn for those k entries only; entries outside the nucleus get weight 0."""
        f, ids = top_k_nucleus(logits, self.top_k, self.top_p, self.temperature)
        if not self.deterministic:
            f = f + gumbel_noise(f.shape, generator, f.device)
        w = (f / self.tau).softmax(-1)
        w, order = torch.sort(w, dim=-1, descending=True)
        return ids.gather(-1, order), w

    def mixture(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, V) the full Gumbel-softmax sample z (noise-free softmax(f / τ) in deterministic mode)."""
        ids, w = self.sparse_mixture(logits, generator)
        return torch.zeros(logits.shape, dtype=w.dtype, device=w.device).scatter(-1, ids, w)

    def step(self, model, logits, hidden, *, generator=None) -> ThoughtStep:
        check_generator(generator, logits.device)  # fail before any work, not inside a CUDA kernel
        ids, w = self.sparse_mixture(logits, generator)
        payload = {"ids": ids, "weights": w}
        token = ids[:, 0] if self.record == "argmax" else logits.argmax(-1)
        return ThoughtStep(
            embeds=self.rebuild(model, token, payload),
            token_ids=token,
            payload=payload,
            logprob=self.log_prob(logits, token, payload),
        )

    def rebuild(self, model, token_ids: torch.Tensor, payload: Payload) -> torch.Tensor:
        return mix_embeddings(model, payload["ids"], payload["weights"], self.detach_embeddings)

    def token_logprob_terms(self, token_ids: torch.Tensor, payload: Payload):
        """`log_prob` is `soft_cross_entropy_logprob`: sum_k w_k log pi(i_k) over the stored top-k."""
        weights = payload["weights"].float()
        return self.temperature, payload["ids"], lambda lp: (weights * lp).sum(-1)

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, top_p={self.top_p}, T={self.temperature}, tau={self.tau}, record={self.record}"
