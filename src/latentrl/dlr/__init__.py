"""DeepLatent Reasoning (DLR; arXiv 2601.17275, our readings of the abstract — see docs/methods/dlr.md).

Method `dlr` (reading 2): a causal-transformer assistant writes the thoughts of a frozen Coconut model (`chain.py`,
trainer `trainer.DLRTrainer`). Method `dlr_prefix` (reading 1, ~0-2 % on the suite): an MLP assistant writes a prefix
for a frozen CoT model (`assistant.py`, `operator.py`, trainer `prefix_trainer.DLRPrefixTrainer`). Both: K sampled
chains per prompt, a reward and a high-value filter, a contrastive + policy-gradient update of the assistant only.
"""

from latentrl.dlr.assistant import ASSISTANT, LatentAssistant, build_assistant, gaussian_entropy, gaussian_log_prob
from latentrl.dlr.config import DLRConfig, resolve_dlr_config
from latentrl.dlr.operator import AssistantThoughtOperator

__all__ = [
    "ASSISTANT", "AssistantThoughtOperator", "DLRConfig", "LatentAssistant", "build_assistant",
    "gaussian_entropy", "gaussian_log_prob", "resolve_dlr_config",
]

