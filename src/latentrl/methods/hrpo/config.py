"""HRPO's config section, `hrpo.*` of a run's config (mounted on `GRPOConfig` here)."""

from __future__ import annotations

import dataclasses

from latentrl.config import BaseConfig, ConfigError, GRPOConfig, cfg_field, mount_section


@dataclasses.dataclass(kw_only=True)
class HRPOConfig(BaseConfig):
    """HRPO's gated hybrid inputs (method hrpo and its ablations; arXiv 2505.18454, docs/methods/hrpo.md): the
    gate's initialisation and its own learning rates."""

    gate_c: float = cfg_field(
        8.0, "HRPO gate constant c in a = exp(-c * softplus(Lambda) * r) (HRPO: 8).", min=0.0, min_exclusive=True
    )
    gate_r_min: float = cfg_field(
        0.99,
        "HRPO gate init: Lambda set so a = u^r with u ~ U[gate_r_min, gate_r_max] (HRPO: 0.95-0.99).",
        min=0.0,
        max=1.0,
        min_exclusive=True,
        max_exclusive=True,
    )
    gate_r_max: float = cfg_field(
        0.999,
        "Upper end of the HRPO gate init range (HRPO: 0.999); starts training close to pure token embeddings.",
        min=0.0,
        max=1.0,
        min_exclusive=True,
        max_exclusive=True,
    )
    gate_learning_rate: float = cfg_field(
        1e-4, "Learning rate of a method's gate linears (HRPO: W_a, b_a, W_x, b_x of the hybrid-input gate; paper 1e-4).",
        min=0.0, min_exclusive=True,
    )
    lambda_learning_rate: float = cfg_field(
        1e-3, "Learning rate of HRPO's gate decay parameter Lambda (paper 1e-3).", min=0.0, min_exclusive=True
    )

    def validate(self) -> None:
        if self.gate_r_min > self.gate_r_max:
            raise ConfigError(f"hrpo.gate_r_min ({self.gate_r_min}) must be <= hrpo.gate_r_max ({self.gate_r_max})")


mount_section(GRPOConfig, "hrpo", HRPOConfig, help="HRPO gate options (methods hrpo*; see the hrpo.* options).")
