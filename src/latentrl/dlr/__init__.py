"""DeepLatent Reasoning (DLR; arXiv 2601.17275, our reading of the abstract — see docs/methods/dlr.md).

A small trainable assistant samples K latent reasoning-chain encodings per prompt (a Gaussian policy); a frozen main
model decodes each chain (as prefix embeddings) in one pass; a dual reward (correctness + format) and a high-value
filter drive a contrastive + policy-gradient update of the assistant only. The trainer is
`latentrl.dlr.trainer.DLRTrainer` (also `latentrl.DLRTrainer`); this package holds the parts below it.
"""

from latentrl.dlr.assistant import ASSISTANT, LatentAssistant, build_assistant, gaussian_entropy, gaussian_log_prob
from latentrl.dlr.config import DLRConfig, resolve_dlr_config
from latentrl.dlr.operator import AssistantThoughtOperator

__all__ = [
    "ASSISTANT", "AssistantThoughtOperator", "DLRConfig", "LatentAssistant", "build_assistant",
    "gaussian_entropy", "gaussian_log_prob", "resolve_dlr_config",
]

