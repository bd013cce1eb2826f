"""GRPO on Coconut latents (Özeren & Aßenmacher 2025, arXiv 2512.11816: GRPO on their LatR model).

The policy is a Coconut / LatR model. Each completion starts with a fixed number of continuous thoughts (the last
hidden state fed back, `HiddenStateThought`), then `<|end-latent|>` is forced, then answer tokens are sampled at
temperature T (0.7). Thoughts are deterministic and stored as constants (detached): exploration, log-probs and the
clipped GRPO surrogate live on the sampled answer tokens only; the thoughts themselves get no policy-gradient term,
the model only learns how to read them (and what to write after them). Paper hyperparameters: G=8, beta=0,
epsilon=0.1, one update per batch, rewards = format + accuracy.

Prompt layout: `prompt + <|start-latent|>` (the `prompt_text` hook), completion = thoughts, `<|end-latent|>`,
`steps #### answer <eos>` — the layout `latentrl.sft.coconut` trains.
"""

from __future__ import annotations

from typing import Any, ClassVar

from latentrl.config import ConfigError
from latentrl.methods.base import Method, MethodContext, register_method
from latentrl.model import LatentTokens
from latentrl.rollout import ThinkingSchedule
from latentrl.thoughts.hidden_state import HiddenStateThought


class DetachedHiddenStateThought(HiddenStateThought):
    """Coconut's thought for stored-latent RL: the stored hidden state, explicitly cut from the graph on replay.

    The rollout already stores it without grad; detaching in `rebuild` makes "generated latents are detached" (the
    paper's Latent RL) a property of the method, not of how the payload was produced.
    """

    def rebuild(self, model, token_ids, payload):
        return payload["hidden"].detach()


def coconut_components(latent, model) -> tuple[DetachedHiddenStateThought, ThinkingSchedule]:
    """The operator and schedule every Coconut-latent RL method shares (checks the config and the model)."""
    if latent.operator not in ("none", "hidden_state"):
        raise ConfigError(
            f"Coconut-latent methods form thoughts from hidden states; latent.operator={latent.operator!r} is not "
            "allowed (use hidden_state, or leave it at none)"
        )
    if model.latent_ids is None:
        raise ValueError("the model has no Coconut latent tokens (<|start-latent|>, <|latent|>, <|end-latent|>); "
                         "start from a Coconut-SFT checkpoint or load with add_latent_tokens=True")
    n = latent.num_latent_steps
    if n is None:
        raise ConfigError("Coconut-latent methods need latent.num_latent_steps (a fixed number of thoughts, e.g. 6 "
                          "for LatR on Qwen2.5-1.5B, max_latent_stage * c_thought for a Coconut-SFT model)")
    op = DetachedHiddenStateThought(latent_token_id=model.latent_ids.latent)
    return op, ThinkingSchedule(num_latent_steps=n, after_latent_ids=[model.latent_ids.end])


class CoconutLatentMethod(Method):
    """Shared pieces: hidden-state thoughts, fixed count, forced `<|end-latent|>`, `<|start-latent|>` prompts."""

    init = "coconut_sft"
    thought_count_keys: ClassVar[tuple[str, ...]] = ("latent.num_latent_steps",)
    thought_count_bounds: ClassVar[tuple[str, ...]] = ("latent.max_latent_steps",)  # unused by Coconut, validated
    _start_token = LatentTokens.start  # replaced by the model's own name in `setup`

    def setup(self, model, args) -> None:
        tokens = model.latent_tokens
        if tokens is not None:
            self._start_token = tokens.start

    def build_operator(self, latent, model):
        return coconut_components(latent, model)[0]

    def build_schedule(self, latent, model):
        return coconut_components(latent, model)[1]

    def prompt_text(self, row: dict[str, Any]) -> str:
        return row["prompt"] + self._start_token

    def rollout_metrics(self, ctx: MethodContext, batch) -> dict[str, float]:
        ro = batch.rollout
        lat = ro.latent_mask & ro.completion_mask
        if not bool(lat.any()):
            return {}
        h = ro.payload["hidden"][lat].float()
        return {"latent/hidden_norm_max": h.norm(dim=-1).max().item()}


@register_method
class CoconutGRPO(CoconutLatentMethod):
    name = "coconut_grpo"
    smoke_overrides: ClassVar[dict[str, Any]] = {"latent.operator": "hidden_state", "latent.num_latent_steps": 2,
                                                  "latent.max_latent_steps": 2}
    description = "GRPO on Coconut latents: deterministic thoughts, exploration from the answer tokens (Özeren 2025)"
    #: the paper's LatR + GRPO settings (configs/coconut_grpo_qwen2.5-1.5b.yaml)
    defaults: ClassVar[dict[str, Any]] = {
        "latent.operator": "hidden_state", "latent.num_latent_steps": 6, "num_generations": 8, "temperature": 0.7,
        "beta": 0.0, "epsilon": 0.1, "num_iterations": 1, "learning_rate": 5e-6, "weight_decay": 0.01,
        "loss_type": "bnpo", "scale_rewards": "group", "reward_funcs": ["format", "math_verify"],
    }
