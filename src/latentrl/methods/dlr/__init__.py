"""DeepLatent Reasoning (DLR; arXiv 2601.17275, our readings of the abstract — see docs/methods/dlr.md).

Method `dlr` (reading 2, `method.py`): a causal-transformer assistant writes the thoughts of a frozen Coconut model
(`chain.py`, trainer `trainer.DLRTrainer`). Method `dlr_prefix` (reading 1, `prefix_method.py`; ~0-2 % on the suite):
an MLP assistant writes a prefix for a frozen CoT model (`assistant.py`, `operator.py`, trainer
`prefix_trainer.DLRPrefixTrainer`). Both: K sampled chains per prompt, a reward and a high-value filter, a contrastive
+ policy-gradient update of the assistant only (`losses.py`), the `dlr.*` options (`config.py`) and the frozen-main
trainer base (`frozen_main.py`). The trainers register when `latentrl` is imported (they import the RL trainer, which
imports the method registry).
"""

from latentrl.methods.dlr.assistant import (
    ASSISTANT,
    LatentAssistant,
    build_assistant,
    gaussian_entropy,
    gaussian_log_prob,
)
from latentrl.methods.dlr.config import DLRConfig, freeze_main_model, resolve_dlr_config
from latentrl.methods.dlr.method import DLR
from latentrl.methods.dlr.operator import AssistantThoughtOperator
from latentrl.methods.dlr.prefix_method import DLRPrefix

__all__ = [
    "ASSISTANT", "AssistantThoughtOperator", "DLR", "DLRConfig", "DLRPrefix", "LatentAssistant", "build_assistant",
    "freeze_main_model",
    "gaussian_entropy", "gaussian_log_prob", "resolve_dlr_config",
]

