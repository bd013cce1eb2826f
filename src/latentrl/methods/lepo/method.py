"""LEPO: latent reasoning policy optimization with Gumbel-softmax latents and a unified gradient estimator.

Zhou et al. 2026 (arXiv 2604.17892); authors' code github.com/YuyanZhou/lepo. See docs/methods/lepo.md for the
equations and every difference from the authors' code.

The method = operator `gumbel_softmax` on the first L completion positions (`latent.num_latent_steps`), ordinary
sampling after them, and a per-position choice of surrogate:

* latent positions: `no_ratio`, loss = -A · Σ_k z_k log π_θ(i_k) (soft cross-entropy against the stored weights);
* discrete positions: the trainer's `policy_loss` (the clipped surrogate) **with real old log-probs** — the rollout's
  own on-policy, replayed ones when `num_iterations > 1` (the authors' configuration never computes them, so their
  ratio is always 1).

No SFT stage: LEPO starts from base / instruct models (`init = "cot_sft"` in the CPU suite, the shipped CoT model).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from latentrl.config import ConfigError
from latentrl.methods.base import Method, MethodContext, register_method
from latentrl.rollout import ThinkingSchedule
from latentrl.thoughts import build_thought_operator

__all__ = ["LEPO", "DEFAULT_NUM_LATENT_STEPS"]

DEFAULT_NUM_LATENT_STEPS = 32
"""L when `latent.num_latent_steps` is null (the paper uses 32 or 64)."""


@register_method
class LEPO(Method):
    name = "lepo"
    smoke_overrides: ClassVar[dict[str, Any]] = {"latent.operator": "gumbel_softmax", "latent.num_latent_steps": 3}
    description = ("LEPO: Gumbel-softmax latent mixtures on the first L positions, soft-CE policy gradient at latent "
                   "positions + clipped GRPO at token positions (Zhou et al. 2026)")
    init = "cot_sft"
    defaults: ClassVar[dict[str, Any]] = {
        "latent.operator": "gumbel_softmax", "latent.num_latent_steps": DEFAULT_NUM_LATENT_STEPS,
        "latent.top_k": 30, "latent.top_p": 0.95, "latent.latent_temperature": 1.0, "latent.gumbel_tau": 0.3,
        "temperature": 1.0, "top_k": 30, "top_p": 0.95, "num_generations": 8, "learning_rate": 1e-6,
        "epsilon": 0.2, "beta": 0.0,
    }
    operator_name: ClassVar[str] = "gumbel_softmax"
    #: LEPO scores rewards on the decoded text of *all* positions (latent ones as their recorded ids); read by the
    #: trainer only if it supports the flag (see the issue-6 report).
    decode_latent_tokens: ClassVar[bool] = True

    def build_operator(self, latent, model):
        if latent.operator not in ("none", self.operator_name):
            raise ConfigError(f"method 'lepo' uses the {self.operator_name!r} thought operator; got "
                              f"latent.operator={latent.operator!r} (leave it at 'none' or set {self.operator_name!r})")
        return build_thought_operator(self.operator_name, config=latent)

    def build_schedule(self, latent, model) -> ThinkingSchedule:
        n = latent.num_latent_steps
        if n is None:
            n = min(DEFAULT_NUM_LATENT_STEPS, latent.max_latent_steps)
        return ThinkingSchedule(num_latent_steps=n)

    def policy_kind_masks(self, ctx: MethodContext, batch, policy_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latent positions: `no_ratio` (-A · Σ z log π); token positions: the configured surrogate."""
        lat = batch.rollout.latent_mask & policy_mask
        kind = ctx.args.policy_loss
        if kind == "no_ratio":
            return {"no_ratio": policy_mask}
        return {"no_ratio": lat, kind: policy_mask & ~lat}

    def rollout_metrics(self, ctx: MethodContext, batch) -> dict[str, float]:
        ro = batch.rollout
        lat = ro.latent_mask & ro.completion_mask
        m: dict[str, float] = {}
        if bool(lat.any()):
            w = ro.payload["weights"][lat].float()
            m["latent/soft_ce_mean"] = -ro.logprobs[lat].mean().item()
            m["latent/top1_weight_mean"] = w.max(-1).values.mean().item()
            m["latent/weight_entropy_mean"] = (-(w * w.clamp_min(1e-12).log()).sum(-1)).mean().item()
        return m
