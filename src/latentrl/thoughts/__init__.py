"""Thought operators: one file per way of forming a latent step. `build_thought_operator` is the registry."""

from __future__ import annotations

from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep
from latentrl.thoughts.hidden_state import HiddenStateThought
from latentrl.thoughts.soft_mixture import SoftMixtureThought

THOUGHT_OPERATORS: dict[str, type[ThoughtOperator]] = {
    HiddenStateThought.name: HiddenStateThought,
    SoftMixtureThought.name: SoftMixtureThought,
}


def register_thought_operator(cls: type[ThoughtOperator]) -> type[ThoughtOperator]:
    """Class decorator: methods added later join the registry by name."""
    THOUGHT_OPERATORS[cls.name] = cls
    return cls


def build_thought_operator(name: str, **kwargs) -> ThoughtOperator:
    if name not in THOUGHT_OPERATORS:
        raise ValueError(f"unknown thought operator {name!r}; allowed: {sorted(THOUGHT_OPERATORS)}")
    return THOUGHT_OPERATORS[name](**kwargs)


__all__ = [
    "Payload", "PayloadSpec", "ThoughtOperator", "ThoughtStep", "HiddenStateThought", "SoftMixtureThought",
    "THOUGHT_OPERATORS", "register_thought_operator", "build_thought_operator",
]
