"""`DLRConfig`: the options of DeepLatent Reasoning (our reading of arXiv 2601.17275; see docs/methods/dlr.md).

`GRPOConfig` does not (yet) have a `dlr:` section, so the trainer reads `args.dlr` when it exists (a `DLRConfig`,
any object with the same fields, or a plain dict) and these defaults otherwise; `DLRTrainer(..., dlr=DLRConfig(...))`
overrides both. When `latentrl.config` defines `DLRConfig` (the proposed section), that class is used here.
Every field says whether the value is from the paper (the abstract gives no numbers: none is) or ours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import latentrl.config as _config
from latentrl.config import BaseConfig, ConfigError, cfg_field, config_from_dict

__all__ = ["DLRConfig", "resolve_dlr_config"]


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

    def validate(self) -> None:
        if self.min_std > self.init_std:
            raise ConfigError(f"min_std ({self.min_std}) must be <= init_std ({self.init_std})")


_LocalDLRConfig = DLRConfig
if hasattr(_config, "DLRConfig"):  # once latentrl.config carries the `dlr:` section, its class is the one
    DLRConfig = _config.DLRConfig  # type: ignore[misc]  # noqa: F811  (tests/test_dlr.py: same fields as above)


def resolve_dlr_config(args: Any, override: DLRConfig | Mapping[str, Any] | None = None) -> DLRConfig:
    """The DLR options of a run: `override`, else `args.dlr` (a DLRConfig-like object or a dict), else defaults."""
    src = override if override is not None else getattr(args, "dlr", None)
    if src is None:
        return DLRConfig()
    if isinstance(src, DLRConfig):
        return src
    if isinstance(src, Mapping):
        return config_from_dict(DLRConfig, dict(src))
    if dataclasses.is_dataclass(src):  # e.g. a DLRConfig class that moved into latentrl.config
        mine = {f.name for f in dataclasses.fields(DLRConfig)}
        return config_from_dict(DLRConfig, {k: v for k, v in dataclasses.asdict(src).items() if k in mine})
    raise ConfigError(f"dlr options must be a DLRConfig or a mapping, got {type(src).__name__}")
