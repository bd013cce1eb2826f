"""When a latent-SFT curriculum stage is learned: a small pure object fed one gate metric per evaluation.

Coconut's authors advance the curriculum after a fixed number of epochs (`epochs_per_stage`). On small models a
stage's new target (the first language step after the thoughts, which must now be read off the thoughts) can sit on
a plateau for hundreds of steps and then drop within a few dozen (docs/bench/chain_sum/): a fixed schedule then
advances mid-plateau and every later stage inherits an unlearned one. `StageGate` advances instead when the metric
has crossed `threshold` on `patience` consecutive evaluations, and after `max_steps` steps in the stage at the latest.

    gate = StageGate(threshold=0.9, patience=2, max_steps=600, higher_is_better=True)
    gate.start_stage()
    for step_in_stage, value in evals:
        decision = gate.update(step_in_stage, value)
        if decision.advance:
            break  # decision.reason is "converged" or "max_steps"

The object only counts; training loops call it and log its decisions (steps taken, last metric, reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["GateDecision", "StageGate", "STAGE_ADVANCE_CHOICES"]

STAGE_ADVANCE_CHOICES = ("fixed", "converged")


@dataclass(frozen=True)
class GateDecision:
    """What the gate says after one evaluation: advance or not, why, and the streak that led there."""

    advance: bool
    reason: str | None  # "converged", "max_steps" or None (keep training)
    value: float
    passed: bool  # this evaluation met the threshold
    streak: int  # consecutive passing evaluations, this one included


@dataclass
class StageGate:
    """Counts consecutive evaluations whose metric meets `threshold`; see the module docstring.

    `higher_is_better`: True for accuracies (pass when value >= threshold), False for losses (value <= threshold).
    `min_steps`: no advance on convergence before this many steps in the stage. `max_steps`: advance (reason
    "max_steps") once this many steps were taken in the stage, converged or not; None = no cap. A NaN metric never
    passes.
    """

    threshold: float
    patience: int = 1
    max_steps: int | None = None
    min_steps: int = 0
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must be >= 0, got {self.min_steps}")
        if math.isnan(self.threshold):
            raise ValueError("threshold is NaN")
        self.streak = 0

    def start_stage(self) -> None:
        """Forget the streak: a new stage has new targets."""
        self.streak = 0

    def passes(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def update(self, steps_in_stage: int, value: float) -> GateDecision:
        """Record one evaluation taken after `steps_in_stage` optimizer steps of the current stage."""
        passed = self.passes(value)
        self.streak = self.streak + 1 if passed else 0
        if self.streak >= self.patience and steps_in_stage >= self.min_steps:
            return GateDecision(True, "converged", value, passed, self.streak)
        if self.max_steps is not None and steps_in_stage >= self.max_steps:
            return GateDecision(True, "max_steps", value, passed, self.streak)
        return GateDecision(False, None, value, passed, self.streak)

    def out_of_steps(self, steps_in_stage: int) -> bool:
        """True once the stage has used its step cap (checked between evaluations)."""
        return self.max_steps is not None and steps_in_stage >= self.max_steps
