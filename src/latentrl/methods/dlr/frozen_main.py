"""`FrozenMainTrainer`: what both DLR trainers share — a frozen main model, a trained assistant side module.

The DLR options are resolved once (an explicit `dlr=` wins over the run's `dlr:` section) and handed to the method
before it builds; training rollouts decode the answer at `dlr.decode_temperature`; every process updates on the whole
gathered batch (the assistant is small), so the replicas stay identical without a gradient all-reduce; the compute
counter adds the assistant's own FLOPs to the main model's passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import nn

from latentrl.config import GRPOConfig
from latentrl.data.schema import Example
from latentrl.methods import Method, get_method
from latentrl.methods.dlr.config import DLRConfig, resolve_dlr_config
from latentrl.model import LatentModel
from latentrl.rl.batch import StepBatch
from latentrl.rl.trainer import GRPOTrainer

__all__ = ["FrozenMainTrainer"]


class FrozenMainTrainer(GRPOTrainer):
    """Base of `DLRTrainer` and `DLRPrefixTrainer`; subclasses name their method and assistant side module."""

    #: the method built when none is given, and the side module its assistant lives in
    default_method: ClassVar[str]
    assistant_module: ClassVar[str]
    #: every process updates on the whole gathered batch (the assistant is small), so no gradient all-reduce
    update_slices_batch = False

    def __init__(
        self,
        args: GRPOConfig,
        model: LatentModel,
        train_dataset: Sequence[Example | dict[str, Any]],
        reward_funcs=None,
        method=None,
        ref_model: LatentModel | None = None,
        dlr: DLRConfig | Mapping[str, Any] | None = None,
        eval_dataset: Sequence[Example | dict[str, Any]] | None = None,
    ):
        self.dlr = resolve_dlr_config(args, dlr)
        method = get_method(method or self.default_method) if not isinstance(method, Method) else method
        method.config = self.dlr  # the DLR options this trainer resolved (an explicit `dlr=` wins over args.dlr)
        super().__init__(args, model, train_dataset, reward_funcs, method, ref_model, eval_dataset)
        if self.dlr.decode_temperature is not None:  # answer decoding of training rollouts (0 = greedy)
            self.sampling.temperature = self.dlr.decode_temperature

    @property
    def assistant(self) -> nn.Module:
        return self.model.side_modules[self.assistant_module]

    def collect(self) -> tuple[StepBatch, dict[str, float]]:
        self.assistant.flops = 0
        return super().collect()

    def compute_metrics(self) -> dict[str, float]:
        """The frozen main model's passes (GRPOTrainer's counter) plus the assistant's own FLOPs."""
        m = super().compute_metrics()
        flops = self.dp.sum_floats({"a": float(self.assistant.flops)})["a"]
        m["compute/assistant_flops"] = flops
        m["compute/total_flops"] += flops
        return m
