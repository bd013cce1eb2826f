"""`StepBatch`: what one optimizer step trains on: the rollouts, their rows, completions, rewards and advantages,
and the log-probs the update compares against. Its own module because the trainer builds it and the methods'
hooks read it (neither imports the other for it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latentrl.rollout import Rollout

__all__ = ["StepBatch"]


@dataclass
class StepBatch:
    """Everything one optimizer step trains on (or a micro-batch slice of it)."""

    rollout: Rollout
    rows: list[dict[str, Any]]  # dataset rows, one per completion
    completions: list[str]
    rewards: torch.Tensor  # (N,)
    advantages: torch.Tensor  # (N,)
    token_advantages: torch.Tensor | None = None  # (N, C)
    old_logprobs: torch.Tensor | None = None  # (N, C)
    ref_logprobs: torch.Tensor | None = None  # (N, C)
    per_func_rewards: torch.Tensor | None = None  # (N, F), NaN where a function returned None

    def select(self, index: torch.Tensor) -> "StepBatch":
        idx = index.tolist()
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return StepBatch(self.rollout.select(index), [self.rows[i] for i in idx], [self.completions[i] for i in idx],
                         self.rewards[index], self.advantages[index], pick(self.token_advantages),
                         pick(self.old_logprobs), pick(self.ref_logprobs), pick(self.per_func_rewards))
