"""Latent-GRPO (Deng et al. 2026; docs/methods/latent_grpo.md): one-sided Gumbel top-K latents with advantage fixes.

`method.py` holds the method (its advantage fixes and the embedding freeze), `config.py` the `latent_grpo.*`
options. Its operator, `gumbel_topk`, lives in `latentrl.thoughts` because the superposition SFT init uses it too.
"""

from latentrl.methods.latent_grpo.config import LatentGRPOConfig
from latentrl.methods.latent_grpo.method import LatentGRPO, LatentGRPOOptions, sequence_mean_logprob

__all__ = ["LatentGRPO", "LatentGRPOConfig", "LatentGRPOOptions", "sequence_mean_logprob"]
