"""HRPO — hybrid latent reasoning via RL with a learnable gate (Yue et al. 2025, arXiv 2505.18454).

Until the answer delimiter (`####`) appears in a row's completion, every position is a sampled token whose input
embedding is the gated mix of its embedding and the projected hidden state (`methods/hrpo/operator.py`); prompt and
answer positions are plain token embeddings. The gate is a side module of the model (saved with checkpoints) with
its own learning rates. The loss is the ordinary GRPO family one: the authors' on-policy REINFORCE
(`policy_loss=reinforce`, `loss_type=grpo`, one update per batch) or our clipped surrogate, plus a k3 KL to the base
model run on plain token ids. Ablations from the paper: `hrpo_raw_hidden` and `hrpo_no_gate`. See
docs/methods/hrpo.md.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch

from latentrl.config import ConfigError
from latentrl.methods.base import Method, MethodContext, register_method
from latentrl.methods.hrpo.operator import GATE_NAME, HRPOGate, HRPOGateThought
from latentrl.rollout import Rollout, ThinkingSchedule
from latentrl.tokenizer import delimiter_spellings

DEFAULT_DELIMITER = "####"


def contains_ids(ids: torch.Tensor, mask: torch.Tensor, seq: list[int] | None) -> torch.Tensor:
    """(B,) bool: the id sequence `seq` occurs within the generated positions of each row."""
    B, C = ids.shape
    if not seq or C < len(seq):
        return torch.zeros(B, dtype=torch.bool, device=ids.device)
    d = torch.as_tensor(seq, device=ids.device)
    windows = ids.unfold(1, len(seq), 1)  # (B, C-L+1, L)
    valid = mask.unfold(1, len(seq), 1).all(-1)
    return ((windows == d).all(-1) & valid).any(-1)


@register_method
class HRPO(Method):
    name = "hrpo"
    description = ("HRPO: sampled-token embeddings gated with projected hidden states until '####' "
                   "(Yue et al. 2025)")
    init = "cot_sft"
    smoke_overrides: ClassVar[dict[str, Any]] = {
        "latent.operator": "hrpo_gate", "latent.answer_delimiter": "####", "latent.latent_temperature": 0.5,
        "latent.max_latent_steps": 10, "temperature": 0.5, "beta": 0.1, "policy_loss": "reinforce"}
    #: operator mode (see `methods/hrpo/operator.py`); the ablations below change only this
    mode: ClassVar[str] = "gate"
    defaults: ClassVar[dict[str, Any]] = {
        "latent.operator": "hrpo_gate", "latent.answer_delimiter": DEFAULT_DELIMITER, "temperature": 0.5,
        "latent.latent_temperature": 0.5, "beta": 0.005, "policy_loss": "reinforce", "loss_type": "grpo",
        "num_iterations": 1, "weight_decay": 0.1, "max_grad_norm": 0.1, "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
    }

    def __init__(self) -> None:
        self.args: Any = None  # the trainer's GRPOConfig, set by `setup`

    # ------------------------------------------------------------------ model pieces
    def setup(self, model, args) -> None:
        self.args = a = args
        lat = a.latent
        if lat.operator not in ("none", "hrpo_gate"):
            raise ConfigError(f"method {self.name!r} uses the hrpo_gate operator; set latent.operator=hrpo_gate "
                              f"(or leave it 'none'), got {lat.operator!r}")
        if lat.num_latent_steps is not None or lat.end_of_thinking_token or lat.after_latent_tokens:
            raise ConfigError(f"method {self.name!r}: the hybrid span ends at latent.answer_delimiter; "
                              "latent.num_latent_steps, latent.end_of_thinking_token and latent.after_latent_tokens "
                              "must be unset")
        if lat.latent_temperature != a.temperature:
            warnings.warn(f"{self.name}: hybrid (thinking) tokens are sampled at latent.latent_temperature="
                          f"{lat.latent_temperature} but answer tokens at temperature={a.temperature}; HRPO uses one "
                          "temperature (0.5) for both", stacklevel=2)
        if lat.max_latent_steps < a.max_completion_length:
            warnings.warn(f"{self.name}: latent.max_latent_steps={lat.max_latent_steps} < max_completion_length="
                          f"{a.max_completion_length}: hybrid inputs stop after {lat.max_latent_steps} positions even "
                          "before the answer delimiter (HRPO has no such cap)", stacklevel=2)

    def loss_temperature(self, latent) -> float:
        a = self.args
        if a is None:  # built without a trainer: score where we sample
            return latent.latent_temperature
        return a.loss_temperature if a.loss_temperature is not None else a.temperature

    def build_operator(self, latent, model) -> HRPOGateThought:
        a = self.args
        return HRPOGateThought(
            latent, mode=self.mode, temperature=latent.latent_temperature,
            logprob_temperature=self.loss_temperature(latent),
            top_k=(a.top_k or None) if a is not None else None,
            top_p=(a.top_p if a.top_p < 1.0 else None) if a is not None else None,
            **({"gate_c": a.hrpo.gate_c, "gate_r_min": a.hrpo.gate_r_min, "gate_r_max": a.hrpo.gate_r_max}
               if a is not None else {}),
        )

    def build_schedule(self, latent, model) -> ThinkingSchedule:
        return ThinkingSchedule(
            delimiter_ids=delimiter_spellings(model.tokenizer, latent.answer_delimiter or DEFAULT_DELIMITER),
            max_latent_steps=latent.max_latent_steps,
        )

    def param_groups(self, ctx: MethodContext) -> list[dict[str, Any]]:
        """LM at `learning_rate`; gate linears at `hrpo.gate_learning_rate` (1e-4); Lambda at `hrpo.lambda_learning_rate`
        (1e-3). Weight decay applies to every group, as in the authors' optimizer patch."""
        a = ctx.args
        gate = ctx.model.side_modules[GATE_NAME] if GATE_NAME in ctx.model.side_modules else None
        gate_ids = {id(p) for p in gate.parameters()} if gate is not None else set()
        lm = [p for p in ctx.model.parameters() if p.requires_grad and id(p) not in gate_ids]
        groups = [{"params": lm, "lr": a.learning_rate}]
        if gate is not None:
            linears = [p for p in (*gate.gate_r.parameters(), *gate.gate_i.parameters()) if p.requires_grad]
            groups.append({"params": linears, "lr": float(a.hrpo.gate_learning_rate)})
            if gate.Lambda.requires_grad:
                lam_lr = float(a.hrpo.lambda_learning_rate)
                groups.append({"params": [gate.Lambda], "lr": lam_lr})
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ rollouts, rewards, KL
    def reference_logprobs(self, ctx: MethodContext, batch) -> torch.Tensor:
        """KL reference: the base model on the plain token ids (no operator, no gate), at the loss temperature."""
        return ctx.replay_in_chunks(ctx.ref_model, batch.rollout, plain_tokens=True)

    @torch.no_grad()
    def rollout_metrics(self, ctx: MethodContext, batch) -> dict[str, float]:
        ro: Rollout = batch.rollout
        done = ro.completion_mask
        lat = ro.latent_mask & done
        delimiter = ctx.args.latent.answer_delimiter or DEFAULT_DELIMITER
        spellings = delimiter_spellings(ctx.model.tokenizer, delimiter)
        found = torch.stack([contains_ids(ro.completion_ids, done, d) for d in spellings]).any(0)
        m = {
            "hrpo/thinking_ratio": (lat.sum() / done.sum().clamp_min(1)).item(),
            "hrpo/delimiter_frac": found.float().mean().item(),
        }
        if self.mode == "gate" and bool(lat.any()):
            m.update(gate_metrics(ctx.model.side_modules[GATE_NAME], ctx.model.embed(ro.completion_ids[lat])))
        return m


def gate_metrics(gate: HRPOGate, token_embeds: torch.Tensor) -> dict[str, float]:
    """Mean a (`embeds_ratio`, weight of the token embedding) and mean sqrt(1 - a^2) (`hidden_ratio`, weight of
    the hidden state) over the given thinking positions and all dimensions."""
    a = gate.decay(token_embeds)
    return {"embeds_ratio": a.mean().item(), "hidden_ratio": torch.sqrt(1.0 - a.pow(2) + 1e-8).mean().item()}


@register_method
class HRPORawHidden(HRPO):
    name = "hrpo_raw_hidden"
    description = "HRPO ablation: the raw last hidden state is the next input while thinking (paper: reward -> 0)"
    mode = "raw_hidden"


@register_method
class HRPONoGate(HRPO):
    name = "hrpo_no_gate"
    description = "HRPO ablation: the projected state E^T p/||p|| alone is the next input while thinking (no gate)"
    mode = "interpolation"
