"""DLR's config section, `dlr.*` of a run's config (mounted on `GRPOConfig` here; both DLR methods read it), and
the run checks both methods share."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from latentrl.config import BaseConfig, ConfigError, GRPOConfig, cfg_field, config_from_dict, mount_section

__all__ = ["DLRConfig", "freeze_main_model", "resolve_dlr_config"]


@dataclasses.dataclass(kw_only=True)
class DLRConfig(BaseConfig):
    """DeepLatent Reasoning: the assistant (Gaussian latent-chain sampler), the filter and the objective's weights."""

    # --- the latent chain and the assistant -------------------------------------------------------------------
    num_latent_steps: int = cfg_field(
        4,
        "L: latent vectors per reasoning-chain encoding, fed to the frozen main model as prefix embeddings after the "
        "question (our choice; the abstract gives no length).",
        min=1,
    )
    latent_dim: int = cfg_field(
        32,
        "d_z: dimension of the assistant's latent space; each of the L vectors is sampled there and projected to "
        "the main model's hidden size by a learned linear map (ours).",
        min=1,
    )
    assistant_hidden_size: int = cfg_field(
        128, "Width of the assistant's MLP over the main model's last prompt hidden state (ours).", min=1
    )
    assistant_layers: int = cfg_field(2, "Hidden layers of the assistant's MLP (ours).", min=1)
    init_std: float = cfg_field(
        1.0, "Initial standard deviation sigma of the Gaussian latent policy, per latent dimension (ours).",
        min=0.0, min_exclusive=True,
    )
    learn_std: bool = cfg_field(
        True, "Learn log sigma (state-independent, one per step and latent dimension); false keeps it at init_std."
    )
    min_std: float = cfg_field(
        0.01, "Lower bound on sigma (log sigma is clamped), so the log-density stays finite (ours).",
        min=0.0, min_exclusive=True,
    )
    projection_scale: float = cfg_field(
        0.5,
        "Initial RMS norm of the projected noise W z (z ~ N(0, init_std^2)) as a fraction of the mean norm of the "
        "main model's embedding rows: how far the first latents stray from the projection bias (ours).",
        min=0.0,
    )
    latent_bias_init: str = cfg_field(
        "mean_embedding",
        "Initial bias of the projection: mean_embedding (the mean input-embedding row, so the first latents look "
        "like an average token to the frozen main model) or zeros (ours).",
        choices=("mean_embedding", "zeros"),
    )
    decode_temperature: float | None = cfg_field(
        0.0,
        "Temperature at which the frozen main model decodes the answer after the chain during training rollouts: "
        "0 = greedy, so the reward is a function of the chain and all exploration is in latent space; null: "
        "GRPOConfig.temperature (ours).",
        min=0.0,
    )
    # --- filtering of the dual reward --------------------------------------------------------------------------
    filter_top_fraction: float = cfg_field(
        0.5,
        "High-value filter: within a group, a trajectory is kept (a positive) when its reward is at least the "
        "ceil(fraction*K)-th largest (ties kept) AND strictly above the group's lowest reward (the paper filters by "
        "the dual reward; the rule is ours).",
        min=0.0, max=1.0, min_exclusive=True,
    )
    filter_min_reward: float | None = cfg_field(
        None, "Also require reward >= this threshold to be kept; null: no absolute threshold (ours)."
    )
    # --- objective ---------------------------------------------------------------------------------------------
    contrastive_coef: float = cfg_field(
        1.0, "Weight of the InfoNCE contrastive term over the K encodings of a group (paper: a contrastive "
        "objective; InfoNCE is our reading). 0 disables it.", min=0.0
    )
    contrastive_temperature: float = cfg_field(
        0.1, "InfoNCE temperature tau (ours).", min=0.0, min_exclusive=True
    )
    contrastive_similarity: str = cfg_field(
        "neg_sq_dist",
        "Similarity of the anchor (the assistant's mean chain mu) and a sampled chain z, both flattened to L*d_z: "
        "neg_sq_dist = -||mu - z||^2 / (L*d_z), or cosine (ours).",
        choices=("neg_sq_dist", "cosine"),
    )
    bidirectional: bool = cfg_field(
        True,
        "Add the second direction of the contrastive loss: each kept chain picks its own prompt's anchor among the "
        "anchors of all prompts of the batch (our reading of 'bidirectional contrastive').",
    )
    pg_coef: float = cfg_field(
        1.0,
        "Weight of the policy-gradient term: group-relative advantage x log-density of the sampled chain (ratio-"
        "clipped with epsilon when policy_loss=clipped), divided by L*d_z. 0 disables it (ours).",
        min=0.0,
    )
    pg_filtered_only: bool = cfg_field(
        False, "Policy-gradient term on kept trajectories only (default: every trajectory of the group; ours)."
    )
    entropy_coef: float = cfg_field(
        0.0, "Bonus on the Gaussian's per-dimension entropy (mean log sigma + const), for diversity (ours).", min=0.0
    )
    nll_coef: float = cfg_field(
        0.0,
        "Weight of a decoding-likelihood term: the frozen main model's NLL of each kept trajectory's answer tokens "
        "given the MEAN chain W mu as prefix; gradients flow through the frozen main model into mu and W, never "
        "into its parameters. Costs a main forward+backward over kept rows (ours; 0 disables it).",
        min=0.0,
    )
    assistant_learning_rate: float | None = cfg_field(
        None, "Learning rate of the assistant; null: learning_rate.", min=0.0, min_exclusive=True
    )
    # --- method `dlr` only (the causal-transformer assistant that writes a latent model's thoughts) -------------
    assistant_heads: int = cfg_field(
        4, "Method dlr: attention heads of the assistant's causal transformer (its width is assistant_hidden_size; "
        "ours).", min=1
    )
    assistant_ffn: int = cfg_field(192, "Method dlr: feed-forward width of the assistant's transformer (ours).", min=1)
    max_prompt_positions: int = cfg_field(
        128, "Method dlr: the longest prompt (in tokens, with <|start-latent|>) the assistant reads; it has one "
        "learned position per prompt position and thought (ours).", min=1
    )
    distill_steps: int = cfg_field(
        1500,
        "Method dlr: steps of distilling the main model's own thoughts into the assistant before DLR (regression of "
        "its teacher-forced means; run once at the start of training, skipped for an assistant already distilled; "
        "ours). 0: DLR starts from the untrained assistant.",
        min=0,
    )
    distill_batch_size: int = cfg_field(128, "Method dlr: problems per distillation step (ours).", min=1)
    distill_learning_rate: float = cfg_field(
        2e-3, "Method dlr: peak learning rate of the distillation (AdamW, one-cycle schedule; ours).",
        min=0.0, min_exclusive=True,
    )
    distill_noise: float = cfg_field(
        0.05, "Method dlr: Gaussian noise on the fed-back thoughts during distillation, relative to the thoughts' "
        "RMS, against exposure bias (ours).", min=0.0
    )
    distill_examples: int = cfg_field(
        8000, "Method dlr: training problems whose own thoughts are recorded for the distillation (ours).", min=1
    )

    def validate(self) -> None:
        if self.min_std > self.init_std:
            raise ConfigError(f"min_std ({self.min_std}) must be <= init_std ({self.init_std})")


mount_section(GRPOConfig, "dlr", DLRConfig,
              help="DeepLatent Reasoning options (methods dlr and dlr_prefix; see the dlr.* options).")


def resolve_dlr_config(args: Any, override: DLRConfig | Mapping[str, Any] | None = None) -> DLRConfig:
    """The DLR options of a run: `override`, else `args.dlr` (a DLRConfig-like object or a dict), else defaults."""
    src = override if override is not None else getattr(args, "dlr", None)
    if src is None:
        return DLRConfig()
    if isinstance(src, DLRConfig):
        return src
    if isinstance(src, Mapping):
        return config_from_dict(DLRConfig, dict(src))
    raise ConfigError(f"dlr options must be a DLRConfig or a mapping, got {type(src).__name__}")


def freeze_main_model(model: Any, args: Any, method: str) -> None:
    """The run checks both DLR methods share (no KL term, no `latent.operator`: the assistant forms the latents),
    then the main model's parameters are frozen: never trained, never in the optimizer."""
    if args.beta > 0:
        raise ConfigError(f"method {method!r} keeps the main model frozen, so there is no KL term: set beta=0 "
                          f"(got {args.beta})")
    if args.latent.operator != "none":
        raise ConfigError(f"method {method!r} forms its latents with the assistant: leave latent.operator=none (got "
                          f"{args.latent.operator!r}) and set the chain length with dlr.num_latent_steps")
    if model.is_peft:
        warnings.warn(f"method {method!r} keeps the main model frozen, LoRA adapters included: only the assistant "
                      "trains (lora.enabled changes nothing but the main model's forward cost)", stacklevel=3)
    model.model.requires_grad_(False)
