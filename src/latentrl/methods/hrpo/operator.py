"""HRPO's hybrid step: a sampled token's embedding gated with the projected hidden state (Yue et al. 2025).

Hybrid Reasoning Policy Optimization, arXiv 2505.18454. While the model is "thinking" (before the answer delimiter),
each position is an ordinary sampled token x whose *input* is enriched with a continuous summary of the
distribution it was sampled from:

    p     = softmax(filter(logits / tau))                      the sampling distribution (tau = latent_temperature)
    x     ~ p                                                  the recorded token (argmax in eval mode)
    h     = E^T p / ||p||_2                                    projected hidden state, in the embedding space
    e^    = E[x]
    r     = sigmoid(W_a e^ + b_a),  i = sigmoid(W_x e^ + b_x)
    a     = exp(-c * softplus(Lambda) * r)                     per dimension, in (0, 1)
    input = a * e^ + sqrt(1 - a^2 + 1e-8) * (i * h)

The gate (`HRPOGate`: W_a, b_a, W_x, b_x, Lambda, and the constant c) is a side module of the `LatentModel`
(`model.side_modules["hrpo_gate"]`), so it is trained with the LM and saved/loaded with its checkpoints.

Payload: h only (H numbers per position; V-independent, p is never stored). `rebuild` recomputes the gate from the
recorded id and the stored h with the *current* gate and embedding parameters, so gradients reach both; h itself
is a constant (the authors store it the same way).

Log-prob: the ordinary token log-prob of x, `log_softmax(logits / T_lp)[x]`. `log_prob` receives raw logits, so the
operator carries its scoring temperature `logprob_temperature` explicitly. The HRPO method sets it to the trainer's
loss temperature, so hybrid and answer positions are scored alike; the authors' code samples at 0.5 but scores at
1.0 (see docs/methods/hrpo.md).

Ablation modes of the same operator (the paper's Sec. 3.1 comparison, registered as methods `hrpo_raw_hidden` and
`hrpo_no_gate`): `raw_hidden` feeds the raw last hidden state of the previous position, `interpolation` feeds h
itself (the projection without the gate and without the sampled token). The token is sampled and scored the same
way in every mode, so the policy gradient is unchanged; only the next input differs.

Cost (`step`): x is drawn by `sampling.sample_categorical` (inverse CDF) from exp(logits / tau), the same pass that
gives p and, when the scoring temperature equals tau, the log-prob; with a top-k filter p has at most k non-zero
entries and h = Σ_k p_k E[i_k] / ||p|| over those rows of E only (exact). Without filters p is dense and E^T p is
the full matmul. `sampling_probs` + `projected_state` are the full-vocabulary reference forms. When every row of a
rollout is thinking, the engine calls `step_from_hidden`, which on a CPU at large vocabularies fuses the LM head, the
draw and E^T p into one pass over the vocabulary (`fused_step.py`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from latentrl.methods.hrpo.fused_step import fusable_head, fused_head_step
from latentrl.sampling import (
    check_generator,
    draw_unfiltered,
    filter_logits,
    sample_categorical,
    token_logprobs,
    top_k_nucleus,
)
from latentrl.thoughts import register_thought_operator
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep

if TYPE_CHECKING:
    from latentrl.config import LatentConfig
    from latentrl.model import LatentModel

GATE_NAME = "hrpo_gate"
MODES = ("gate", "interpolation", "raw_hidden")
EPS = 1e-8


class HRPOGate(nn.Module):
    """The RG-LRU-like gate of HRPO, for any hidden size. Parameters in float32 whatever the LM's dtype.

    Initialisation (the authors' effective one): W_a, W_x ~ N(0, init_std^2), biases 0 (what Hugging Face's
    `_init_weights` gives the new linears of their vendored model), and Lambda such that a = u^r with
    u ~ U[r_min, r_max] per dimension, i.e. c * softplus(Lambda) = -log(u). With r ~ 0.5 at start, a ~ sqrt(u):
    the input is almost the pure token embedding. (The authors write a = exp(-c softplus(-Lambda) r); our Lambda is
    theirs negated, as in the method spec.) `c` is a buffer, so a checkpoint carries the constant it was trained with.
    """

    def __init__(self, hidden_size: int, c: float = 8.0, r_min: float = 0.99, r_max: float = 0.999,
                 init_std: float = 0.02, generator: torch.Generator | None = None):
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        if c <= 0:
            raise ValueError(f"gate constant c must be > 0, got {c}")
        self.gate_r = nn.Linear(hidden_size, hidden_size)  # W_a, b_a -> r
        self.gate_i = nn.Linear(hidden_size, hidden_size)  # W_x, b_x -> i
        self.Lambda = nn.Parameter(torch.empty(hidden_size))
        self.register_buffer("c", torch.tensor(float(c)))
        self.reset_parameters(r_min, r_max, init_std, generator)

    @torch.no_grad()
    def reset_parameters(self, r_min: float = 0.99, r_max: float = 0.999, init_std: float = 0.02,
                         generator: torch.Generator | None = None) -> None:
        if not 0.0 < r_min <= r_max < 1.0:
            raise ValueError(f"gate init needs 0 < r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
        for lin in (self.gate_r, self.gate_i):
            lin.weight.normal_(0.0, init_std, generator=generator)
            lin.bias.zero_()
        u = torch.empty_like(self.Lambda).uniform_(r_min, r_max, generator=generator)
        target = -torch.log(u) / self.c  # softplus(Lambda) = -log(u) / c  (> 0)
        self.Lambda.copy_(torch.log(torch.expm1(target)))  # inverse softplus

    def decay(self, token_embeds: torch.Tensor) -> torch.Tensor:
        """a = exp(-c softplus(Lambda) r(e^)), same shape as `token_embeds`, in the gate's dtype."""
        r = torch.sigmoid(self.gate_r(token_embeds.to(self.Lambda.dtype)))
        return torch.exp(self.decay_rate() * r)

    def decay_rate(self) -> torch.Tensor:
        """-c softplus(Lambda) (H,). Outside autograd it is kept until Lambda or c change (a rollout reads it at every
        hybrid step; an optimizer step or a load bumps the parameters' version counters)."""
        if torch.is_grad_enabled():
            return -self.c * nn.functional.softplus(self.Lambda)
        key = (self.Lambda._version, self.c._version, self.Lambda.data_ptr(), self.c.data_ptr())
        if getattr(self, "_rate_key", None) != key:
            self._rate = -self.c * nn.functional.softplus(self.Lambda)
            self._rate_key = key
        return self._rate

    def forward(self, token_embeds: torch.Tensor, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hybrid input, a) in the gate's dtype (float32 unless cast): a * e^ + sqrt(1 - a^2 + 1e-8) * (i * h)."""
        e = token_embeds.to(self.Lambda.dtype)
        a = self.decay(e)
        i = torch.sigmoid(self.gate_i(e))
        return a * e + torch.sqrt(1.0 - a.pow(2) + EPS) * (i * projected.to(e.dtype)), a


def gate_init_std(model: "LatentModel") -> float:
    return float(getattr(model.model.config, "initializer_range", 0.02) or 0.02)


def ensure_gate(model: "LatentModel", c: float = 8.0, r_min: float = 0.99, r_max: float = 0.999) -> HRPOGate:
    """The model's HRPO gate, attached (as side module `hrpo_gate`) if it has none yet.

    `attach_side_module` loads the gate's weights when the model was loaded from a checkpoint that had them.
    """
    if GATE_NAME in model.side_modules:
        return model.side_modules[GATE_NAME]
    gate = HRPOGate(model.hidden_size, c=c, r_min=r_min, r_max=r_max, init_std=gate_init_std(model))
    return model.attach_side_module(GATE_NAME, gate)


def projected_state(model: "LatentModel", probs: torch.Tensor) -> torch.Tensor:
    """h = E^T p / ||p||_2 (B, H) in float32; the matmul runs in the embedding dtype (no float32 copy of E).
    `probs` may be p times any positive per-row constant (unnormalised weights): h does not change."""
    E = model.embedding_matrix
    mix = torch.matmul(probs.to(E.dtype), E).float()
    return mix / probs.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)


@register_thought_operator
class HRPOGateThought(ThoughtOperator):
    """HRPO hybrid step (see the module docstring). Stochastic: the sampled token carries the log-prob."""

    name = "hrpo_gate"
    stochastic = True
    #: recorded ids at hybrid positions are real sampled words: they belong in the completion text
    emits_tokens: ClassVar[bool] = True

    def __init__(
        self,
        config: "LatentConfig | None" = None,
        *,
        mode: str = "gate",
        temperature: float | None = None,
        logprob_temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        gate_c: float | None = None,
        gate_r_min: float | None = None,
        gate_r_max: float | None = None,
    ):
        """`temperature`: tau of the sampling distribution p (default `config.latent_temperature`, else 1.0).
        `logprob_temperature`: temperature of the recorded and replayed log-probs (default: `temperature`).
        `top_k`/`top_p`: filters applied to p before sampling and projecting (default: none).
        `gate_*`: the gate's initialisation when `attach` creates it (default: HRPO's; the method passes the run's
        `hrpo.*` options)."""
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"hrpo_gate mode must be one of {MODES}, got {mode!r}")
        tau = temperature if temperature is not None else (config.latent_temperature if config is not None else 1.0)
        lp_t = logprob_temperature if logprob_temperature is not None else tau
        for label, value in (("temperature", tau), ("logprob_temperature", lp_t)):
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"hrpo_gate {label} must be a positive number, got {value}")
        self.mode = mode
        self.temperature, self.logprob_temperature = float(tau), float(lp_t)
        self.top_k = top_k or None
        self.top_p = top_p if top_p is not None and top_p < 1.0 else None
        self.gate_c = float(gate_c if gate_c is not None else 8.0)
        self.gate_r_min = float(gate_r_min if gate_r_min is not None else 0.99)
        self.gate_r_max = float(gate_r_max if gate_r_max is not None else 0.999)
        self.deterministic = False

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, temperature={self.temperature}, logprob_temperature={self.logprob_temperature}, "
                f"top_k={self.top_k}, top_p={self.top_p}")

    def attach(self, model: "LatentModel") -> None:
        if self.mode == "gate":
            ensure_gate(model, self.gate_c, self.gate_r_min, self.gate_r_max)

    def gate_ratios(self, model: "LatentModel", token_ids: torch.Tensor) -> torch.Tensor | None:
        """(N, 2): mean a (the sampled token embedding's weight) and mean sqrt(1 - a^2) (the projected state's),
        the quantities HRPO logs; None outside the gated mode."""
        if self.mode != "gate":
            return None
        a = self.gate(model).decay(model.embed(token_ids)).float()
        return torch.stack([a.mean(-1), torch.sqrt(1.0 - a.pow(2) + EPS).mean(-1)], dim=-1)

    def gate(self, model: "LatentModel") -> HRPOGate:
        """The model's gate. Never created here: a gate attached mid-rollout would be untrained and outside the
        optimizer, so it must exist before (`attach`, which the method's `build` calls)."""
        if GATE_NAME not in model.side_modules:
            raise RuntimeError("the model has no HRPO gate: attach the operator's side modules before rolling out "
                               "(operator.attach(model); the method's build / the trainer do this)")
        return model.side_modules[GATE_NAME]

    def payload_spec(self, model) -> dict[str, PayloadSpec]:
        return {"hidden": PayloadSpec((model.hidden_size,), model.embedding_matrix.dtype)}

    def sampling_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """p = softmax(filter(logits / tau)): what x is drawn from and what h projects."""
        return filter_logits(logits.float() / self.temperature, self.top_k, self.top_p).softmax(-1)

    def _draw(self, weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B,) argmax in eval mode, else one draw from the unnormalised `weights`."""
        return weights.argmax(-1) if self.deterministic else sample_categorical(weights, generator)

    def step(self, model, logits, hidden, *, generator=None) -> ThoughtStep:
        check_generator(generator, logits.device)  # fail before any work, not inside a CUDA kernel
        V = logits.shape[-1]
        raw = self.mode == "raw_hidden"
        if self.top_k is not None and self.top_k < V:
            # p is non-zero on at most top_k entries: draw among them and project only their rows of E
            f, cand = top_k_nucleus(logits, self.top_k, self.top_p, self.temperature)
            w = f.softmax(-1)
            ids = cand.gather(-1, self._draw(w, generator)[:, None]).squeeze(-1)
            state = None
            if not raw:
                E = model.embedding_matrix
                mix = torch.bmm(w.to(E.dtype).unsqueeze(1), E[cand]).squeeze(1).float()
                state = mix / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            logp = token_logprobs(logits, ids, self.logprob_temperature)
        elif self.top_p is not None:  # a nucleus alone: the reference form (it sorts the vocabulary anyway)
            probs = self.sampling_probs(logits)
            ids = self._draw(probs, generator)
            state = None if raw else projected_state(model, probs)
            logp = token_logprobs(logits, ids, self.logprob_temperature)
        else:
            # e = p times a per-row constant; log p(x) from the same pass when the scoring temperature is tau
            ids, logp, e = draw_unfiltered(logits, self.temperature, generator, greedy=self.deterministic)
            if self.logprob_temperature != self.temperature:
                logp = token_logprobs(logits, ids, self.logprob_temperature)
            state = None if raw else projected_state(model, e)  # h is scale-free: no normalising pass over e
        state = hidden.detach() if raw else state
        payload = {"hidden": state.to(model.embedding_matrix.dtype)}
        embeds = self.rebuild(model, ids, payload)  # exactly what the replay will rebuild
        return ThoughtStep(embeds, ids, payload, logp)

    def step_from_hidden(self, model, hidden, *, generator=None) -> ThoughtStep:
        """The unfiltered step with the LM head fused in (`fused_step`) where that applies (CPU, plain float32 head,
        large vocabulary, a projection to form); otherwise the LM head, then `step`."""
        head = None
        if self.mode != "raw_hidden" and self.top_k is None and self.top_p is None:
            head = fusable_head(model, hidden.device)
        if head is None:
            return super().step_from_hidden(model, hidden, generator=generator)
        check_generator(generator, hidden.device)
        packed = model.packed_head if model.packed_head.applies(head, hidden) else None
        ids, logp, state = fused_head_step(head, model.embedding_matrix, hidden, self.temperature, generator,
                                           greedy=self.deterministic, logprob_temperature=self.logprob_temperature,
                                           packed=packed)
        payload = {"hidden": state.to(model.embedding_matrix.dtype)}
        return ThoughtStep(self.rebuild(model, ids, payload), ids, payload, logp)

    def rebuild(self, model, token_ids: torch.Tensor, payload: Payload) -> torch.Tensor:
        if self.mode != "gate":
            return payload["hidden"]
        emb = model.embed(token_ids)
        mixed, _ = self.gate(model)(emb, payload["hidden"])
        return mixed.to(emb.dtype)

    def token_logprob_terms(self, token_ids: torch.Tensor, payload: Payload) -> tuple[float, torch.Tensor, None]:
        t = self.logprob_temperature
        return (t if t > 0 else 1.0), token_ids, None  # `token_logprobs` scores T <= 0 at T = 1; `log_prob` from these
