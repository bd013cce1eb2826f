"""Latent RL's config section, `latent_rl.*` of a run's config (mounted on `GRPOConfig` here)."""

from __future__ import annotations

import dataclasses

from latentrl.config import BaseConfig, ConfigError, GRPOConfig, cfg_field, mount_section


@dataclasses.dataclass(kw_only=True)
class LatentRLConfig(BaseConfig):
    """Özeren & Aßenmacher's value-head Latent RL (method latent_rl; arXiv 2512.11816, docs/methods/latent_rl.md):
    the value head, its weight in the loss, and its automatic pre-training."""

    pos_weight: float = cfg_field(
        20.0, "BCE pos_weight of the value head's loss (paper: 20; correct rollouts are rare on hard math).",
        min=0.0, min_exclusive=True,
    )
    value_loss_coef: float = cfg_field(1.0, "Weight of the joint value-head BCE next to the policy objective.", min=0.0)
    value_head_dims: list[int] = cfg_field(
        [128, 32, 8], "Hidden widths of the value-head MLP over the last hidden state (paper: 128, 32, 8)."
    )
    pretrain_prompts: int = cfg_field(
        256,
        "If the starting checkpoint has no value head, pre-train one at the first step on rollouts of this many "
        "training prompts (the first ones, in file order); 0 disables.",
        min=0,
    )
    pretrain_epochs: int = cfg_field(50, "Epochs of that pre-training.", min=1)
    pretrain_batch_size: int = cfg_field(
        64, "Batch size of that pre-training (the authors' 1024 would give one step per epoch on a few hundred "
        "rollouts).", min=1,
    )
    pretrain_temperature: float = cfg_field(
        0.2, "Answer sampling temperature of the pre-training rollouts (authors' value data: T = 0.2).",
        min=0.0, min_exclusive=True,
    )
    pretrain_top_p: float = cfg_field(0.95, "Top-p of the pre-training rollouts (authors: 0.95).", min=0.0,
                                      max=1.0, min_exclusive=True)

    def validate(self) -> None:
        if not self.value_head_dims or any(d < 1 for d in self.value_head_dims):
            raise ConfigError(f"latent_rl.value_head_dims must be a non-empty list of positive widths, got "
                              f"{self.value_head_dims}")


mount_section(GRPOConfig, "latent_rl", LatentRLConfig,
              help="Value-head Latent RL options (method latent_rl; see the latent_rl.* options).")
