"""Latent-GRPO's config section, `latent_grpo.*` of a run's config (mounted on `GRPOConfig` here)."""

from __future__ import annotations

import dataclasses

from latentrl.config import BaseConfig, GRPOConfig, cfg_field, mount_section


@dataclasses.dataclass(kw_only=True)
class LatentGRPOConfig(BaseConfig):
    """Latent-GRPO's advantage fixes and embedding freeze (method latent_grpo; docs/methods/latent_grpo.md); null
    leaves the method's default (`LatentGRPOOptions`)."""

    invalid_sample_masking: bool | None = cfg_field(
        None,
        "Latent-GRPO: completions that hit max_completion_length get A=0 (they stay in the loss normaliser, unlike "
        "mask_truncated_completions); null: the method's default (latent_grpo: true).",
    )
    exclude_invalid_from_stats: bool | None = cfg_field(
        None, "Also leave invalid completions out of the group mean/std (Latent-GRPO: false on GSM8k, true on MATH); "
        "null: method default."
    )
    first_token_selection: bool | None = cfg_field(
        None, "Latent-GRPO optimal correct-path first-token selection at the first latent position; null: method "
        "default (true)."
    )
    first_token_zero_non_positive: bool | None = cfg_field(
        None, "First-token selection also zeroes non-winners with A<=0 (authors' code); null: method default (true)."
    )
    freeze_embeddings: bool | None = cfg_field(
        None, "Keep the input embedding matrix (and a tied LM head) out of the optimizer (Latent-GRPO "
        "freeze_embedding); null: method default."
    )


mount_section(GRPOConfig, "latent_grpo", LatentGRPOConfig,
              help="Latent-GRPO advantage fixes (method latent_grpo; see the latent_grpo.* options).")
