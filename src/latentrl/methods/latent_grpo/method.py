"""Latent-GRPO: GRPO on vocabulary-space latent reasoning with one-sided Gumbel top-K superpositions.

Deng et al. 2026 (arXiv 2604.27998); authors' code github.com/DJC-GO-SOLO/Latent-GRPO (verl fork). See
docs/methods/latent_grpo.md for the equations and every difference from the authors' code.

The method = operator `gumbel_topk` + a schedule that thinks latently until the *unperturbed* top-1 token is the
end-of-thinking token (or `max_latent_steps`), then samples tokens + three advantage fixes, each switchable:

(a) invalid-sample masking — completions that never finished get A = 0 (optionally also left out of the group
    mean / std);
(b) optimal correct-path first-token selection — in a group, only the positive-advantage completion with the highest
    length-normalised mean old log-prob keeps its advantage at the first latent position;
(c) dynamic sampling — the trainer's `dynamic_sampling` (zero-std groups dropped and refilled).

The loss is the trainer's clipped surrogate; the presets set PPO clip 0.2, dual clip 3 and token-mean (`dapo`).
Latent-GRPO must start from a latent-SFT model (RL from a non-latent model collapses): `init = "superposition_sft"`
(`latentrl.sft.superposition`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from latentrl.config import ConfigError
from latentrl.methods.base import Method, MethodContext, register_method
from latentrl.rl.advantages import (
    apply_first_position_advantages,
    first_position_advantages,
    first_true_index,
    group_advantages,
)
from latentrl.rollout import ThinkingSchedule
from latentrl.thoughts import build_thought_operator
from latentrl.tokenizer import text_ids

__all__ = ["LatentGRPO", "LatentGRPOOptions"]


@dataclasses.dataclass
class LatentGRPOOptions:
    """Latent-GRPO's switches. Read from the run's `latent_grpo:` section (`advantage_epsilon`: the top-level
    option); a missing or null option takes the default here (the authors' LLaMA / GSM8k script)."""

    invalid_sample_masking: bool = True
    """(a) completions that hit max_completion_length without a stop token get A = 0."""
    exclude_invalid_from_stats: bool = False
    """(a) also leave them out of the group mean / std (authors: False for GSM8k, True for MATH / DAPO)."""
    first_token_selection: bool = True
    """(b) optimal correct-path first-token selection at the first latent position."""
    first_token_zero_non_positive: bool = True
    """(b) non-winners with A <= 0 also get 0 at the first latent position (the authors' code); False: only the
    other positive rows are zeroed."""
    freeze_embeddings: bool = True
    """Keep the input embedding matrix out of the optimizer (authors: `freeze_embedding=True`; with tied
    embeddings this freezes the LM head too, as in their runs)."""
    advantage_epsilon: float = 1e-6
    """Added to the group std before dividing (verl / the authors' code: 1e-6; TRL: 1e-4)."""

    @classmethod
    def from_args(cls, args: Any) -> "LatentGRPOOptions":
        values = {}
        section = getattr(args, "latent_grpo", None)
        for f in dataclasses.fields(cls):
            v = getattr(section, f.name, None) if hasattr(section, f.name) else getattr(args, f.name, None)
            values[f.name] = f.default if v is None else v
        return cls(**values)


def sequence_mean_logprob(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) mean of `logprobs` over each row's `mask` positions (0 for an empty row)."""
    m = mask.to(logprobs.dtype)
    return (logprobs * m).sum(-1) / m.sum(-1).clamp_min(1.0)


@register_method
class LatentGRPO(Method):
    name = "latent_grpo"
    smoke_overrides: ClassVar[dict[str, Any]] = {"latent.operator": "gumbel_topk", "latent.end_of_thinking_token": "####",
                                                  "latent.max_latent_steps": 6, "dynamic_sampling": True}
    description = ("Latent-GRPO: one-sided Gumbel top-K latent superpositions until </think>, invalid-sample "
                   "masking, optimal first-token selection, dynamic sampling (Deng et al. 2026)")
    init = "superposition_sft"
    defaults: ClassVar[dict[str, Any]] = {
        "latent.operator": "gumbel_topk", "latent.top_k": 10, "latent.top_p": 0.95, "latent.gumbel_tau": 1.0,
        "latent.one_sided_noise": True, "latent.noise_clamp_min": -1.5, "latent.noise_clamp_max": 3.0,
        "latent.latent_temperature": 1.0, "epsilon": 0.2, "dual_clip": 3.0, "loss_type": "dapo",
        "dynamic_sampling": True, "learning_rate": 1e-6, "num_generations": 8, "temperature": 0.6, "top_k": 30,
        "top_p": 0.95, "weight_decay": 0.01,
    }
    # (the method's own switches, `LatentGRPOOptions`, are read from the trainer config by name when it has them)
    operator_name: ClassVar[str] = "gumbel_topk"

    def __init__(self) -> None:
        self._options: LatentGRPOOptions | None = None

    # ------------------------------------------------------------------ options
    def options(self, ctx: MethodContext = None) -> LatentGRPOOptions:
        if ctx is not None:
            return LatentGRPOOptions.from_args(ctx.args)
        return self._options or LatentGRPOOptions()

    def setup(self, model, args) -> None:
        self._options = LatentGRPOOptions.from_args(args)

    def param_groups(self, ctx: MethodContext) -> list[dict[str, Any]]:
        # the embedding layer's parameters: the matrix (and a tied LM head), or under LoRA the trained latent rows
        emb = ctx.model.model.get_input_embeddings()
        frozen = {id(p) for p in emb.parameters()} if self.options(ctx).freeze_embeddings else set()
        params = [p for p in ctx.model.parameters() if p.requires_grad and id(p) not in frozen]
        return [{"params": params, "lr": ctx.args.learning_rate}]

    # ------------------------------------------------------------------ operator and schedule
    def build_operator(self, latent, model):
        if latent.operator not in ("none", self.operator_name):
            raise ConfigError(f"method 'latent_grpo' uses the {self.operator_name!r} thought operator; got "
                              f"latent.operator={latent.operator!r} (leave it at 'none' or set {self.operator_name!r})")
        return build_thought_operator(self.operator_name, config=latent)

    def build_schedule(self, latent, model) -> ThinkingSchedule:
        if latent.num_latent_steps is not None:
            raise ConfigError("method 'latent_grpo' ends the latent span at latent.end_of_thinking_token; "
                              f"latent.num_latent_steps must be null, got {latent.num_latent_steps}")
        end = text_ids(model.tokenizer, latent.end_of_thinking_token)
        if not end:
            raise ConfigError("method 'latent_grpo' needs latent.end_of_thinking_token (the authors' models: "
                              "'</think>'; the CPU suite: '####')")
        return ThinkingSchedule(max_latent_steps=latent.max_latent_steps, end_token_id=end[0])

    # ------------------------------------------------------------------ advantage hooks
    def compute_advantages(self, ctx: MethodContext, batch) -> torch.Tensor:
        """Group advantages with (a) invalid-sample masking: unfinished completions get A = 0 and, with
        `exclude_invalid_from_stats`, do not enter the group mean / std."""
        a, o = ctx.args, self.options(ctx)
        valid = None
        if o.invalid_sample_masking or a.mask_truncated_completions:
            valid = ~batch.rollout.truncated.to(batch.rewards.device)
        exclude = o.exclude_invalid_from_stats and valid is not None
        adv, _ = group_advantages(batch.rewards, a.num_generations, a.scale_rewards, eps=o.advantage_epsilon,
                                  valid=valid, exclude_invalid_from_stats=exclude)
        return adv

    def token_advantages(self, ctx: MethodContext, batch) -> torch.Tensor:
        """Each sequence's advantage at every position, except (b): at the first latent position, only the
        positive-advantage completion of each group with the highest mean old log-prob keeps its advantage."""
        tok = batch.advantages[:, None].expand_as(batch.rollout.logprobs).clone()
        o = self.options(ctx)
        if not o.first_token_selection:
            return tok
        ro = batch.rollout
        old = batch.old_logprobs if batch.old_logprobs is not None else ro.logprobs
        seq_mean = sequence_mean_logprob(old.float(), ctx.loss_mask(batch))
        first = first_position_advantages(batch.advantages, seq_mean, ctx.args.num_generations,
                                          zero_non_positive=o.first_token_zero_non_positive)
        idx = first_true_index(ro.latent_mask & ro.completion_mask)
        return apply_first_position_advantages(tok, first, idx)

    # ------------------------------------------------------------------ metrics
    def rollout_metrics(self, ctx: MethodContext, batch) -> dict[str, float]:
        ro = batch.rollout
        lat = ro.latent_mask & ro.completion_mask
        m: dict[str, float] = {"latent/mean_latent_fraction":
                               (lat.sum(-1).float() / ro.lengths.clamp_min(1).float()).mean().item()}
        if bool(lat.any()):
            m["latent/surrogate_mean"] = ro.logprobs[lat].mean().item()
        end = getattr(ctx.schedule, "end_token_id", None)
        if end is not None:
            # the latent span starts at position 0 and the engine emits the end token right after it
            after = lat.sum(-1).clamp_max(max(ro.completion_ids.shape[1] - 1, 0))
            rows = torch.arange(ro.batch_size, device=after.device)
            if ro.completion_ids.shape[1]:
                hit = (ro.completion_ids[rows, after] == end) & ro.completion_mask[rows, after] & ~lat[rows, after]
                m["latent/ended_by_token_frac"] = hit.float().mean().item()
        adv = batch.advantages.view(-1, ctx.args.num_generations)
        m["latent_grpo/groups_with_several_positive"] = ((adv > 0).sum(-1) >= 2).float().mean().item()
        m["latent_grpo/invalid_frac"] = ro.truncated.float().mean().item()
        return m
