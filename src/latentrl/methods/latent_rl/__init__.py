"""Özeren & Aßenmacher's value-head Latent RL (arXiv 2512.11816; docs/methods/latent_rl.md).

`method.py` holds the method, its value head and the head's pre-training; `config.py` the `latent_rl.*` options.
It forms thoughts with Coconut's `hidden_state` operator (`latentrl.thoughts`).
"""

from latentrl.methods.latent_rl.config import LatentRLConfig
from latentrl.methods.latent_rl.method import (
    VALUE_HEAD,
    LatentRL,
    ValueHead,
    ValueHeadPretrainResult,
    attach_value_head,
    collect_value_data,
    pretrain_value_head,
    value_bce,
)

__all__ = ["VALUE_HEAD", "LatentRL", "LatentRLConfig", "ValueHead", "ValueHeadPretrainResult", "attach_value_head",
           "collect_value_data", "pretrain_value_head", "value_bce"]
