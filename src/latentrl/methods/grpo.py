"""GRPO on an explicit chain of thought: the baseline every latent method is compared against.

Shao et al. 2024 (DeepSeekMath, arXiv 2402.03300), with TRL `GRPOTrainer` semantics. No latent positions.
"""

from __future__ import annotations

from typing import Any, ClassVar

from latentrl.methods.base import Method, register_method


@register_method
class GRPO(Method):
    name = "grpo"
    smoke_overrides: ClassVar[dict[str, Any]] = {"beta": 0.1, "dynamic_sampling": True}
    description = "GRPO on explicit chain of thought (TRL semantics)"
    init = "cot_sft"

    def build_operator(self, latent, model):
        if latent.operator != "none":
            raise ValueError("method 'grpo' decodes tokens only; set latent.operator=none or pick a latent method")
        return None
