"""Thought operators: one file per way of forming a latent step. `build_thought_operator` is the registry.

This package holds the operators several methods or an SFT init share (`hidden_state`, `soft_mixture`,
`gumbel_topk`); an operator only one method uses lives in that method's folder (`methods/hrpo/operator.py`,
`methods/lepo/operator.py`, DLR's in `methods/dlr/`) and registers the same way. Every module in this package is
imported on first use, so a new operator file that decorates its class with `@register_thought_operator` joins the
registry without editing this file.
"""

from __future__ import annotations

import importlib
import pkgutil

from latentrl.config import register_operator_name
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep

THOUGHT_OPERATORS: dict[str, type[ThoughtOperator]] = {}


def register_thought_operator(cls: type[ThoughtOperator]) -> type[ThoughtOperator]:
    """Class decorator: add an operator to the registry under `cls.name` (and to `latent.operator`'s choices)."""
    THOUGHT_OPERATORS[cls.name] = cls
    register_operator_name(cls.name, f"{cls.__module__}.{cls.__qualname__}")
    return cls


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def build_thought_operator(name: str, **kwargs) -> ThoughtOperator:
    if name not in THOUGHT_OPERATORS:
        raise ValueError(f"unknown thought operator {name!r}; allowed: {sorted(THOUGHT_OPERATORS)}")
    return THOUGHT_OPERATORS[name](**kwargs)


_import_all()

__all__ = [
    "Payload", "PayloadSpec", "ThoughtOperator", "ThoughtStep", "THOUGHT_OPERATORS", "register_thought_operator",
    "build_thought_operator",
]
