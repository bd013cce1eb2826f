"""DLR reading 1 (`dlr_prefix`) — DeepLatent Reasoning (arXiv 2601.17275) with an MLP assistant writing a prefix for a
frozen CoT model. It scores ~0-2 % on the CPU suite (a text-trained model does not read free vectors); method `dlr`
(latentrl.methods.dlr) is the reading that works. Kept to reproduce the negative result (docs/methods/dlr_prefix.md).

No public code or method body exists; this is **our reading of the abstract** (docs/methods/dlr.md separates
what is from the paper from what is ours). From the abstract: a lightweight assistant samples K reasoning-chain
encodings in latent space; a dual reward (correctness + format) filters them; only high-value trajectories drive
the update; a frozen main model decodes each chain in a single pass; a contrastive objective gives directed
exploration; frozen main parameters rule out catastrophic forgetting. Ours: the assistant is a Gaussian policy
(an MLP over the main model's last prompt hidden state -> L x d_z means, learned sigma, linear projection into the
main embedding space); the contrastive term is InfoNCE (anchor = mean chain, positives = kept samples, negatives
= the rest; plus the prompt-level direction), next to a group-relative policy-gradient term on the chain's exact
Gaussian log-density.

The method needs its own update (`latentrl.methods.dlr.prefix_trainer.DLRPrefixTrainer`, a GRPOTrainer subclass): build it with
`method.trainer_class(cfg, model, examples)`. Plain `GRPOTrainer` refuses method "dlr_prefix" with a clear error.
"""

from __future__ import annotations

from typing import Any, ClassVar

from latentrl.config import ConfigError
from latentrl.methods.base import Method, MethodContext, register_method
from latentrl.methods.dlr.assistant import ASSISTANT, build_assistant
from latentrl.methods.dlr.config import DLRConfig, freeze_main_model, resolve_dlr_config
from latentrl.methods.dlr.operator import AssistantThoughtOperator
from latentrl.rollout import ThinkingSchedule


@register_method
class DLRPrefix(Method):
    name = "dlr_prefix"
    smoke_overrides: ClassVar[dict[str, Any]] = {"dlr.num_latent_steps": 2, "dlr.nll_coef": 0.1}
    description = ("DLR reading 1 (arXiv 2601.17275): an MLP Gaussian assistant samples K latent prefixes, a frozen "
                   "CoT model decodes them; dual reward, high-value filter, InfoNCE + PG")
    init = "cot_sft"
    defaults = {"reward_funcs": ["correctness", "format"], "reward_weights": [1.0, 0.2], "beta": 0.0}

    def __init__(self, config: DLRConfig | None = None):
        self.config = config
        """DLR options; set by `setup` from the trainer (`DLRPrefixTrainer.dlr`) when not given."""

    trainer = "dlr_prefix"  # latentrl.methods.dlr.prefix_trainer.DLRPrefixTrainer
    scored_through = (ASSISTANT,)

    def setup(self, model, args) -> None:
        self.config = c = self.config or resolve_dlr_config(args)
        freeze_main_model(model, args, self.name)
        if args.max_completion_length <= c.num_latent_steps:
            raise ConfigError(f"max_completion_length ({args.max_completion_length}) must exceed dlr.num_latent_steps "
                              f"({c.num_latent_steps}): the answer is decoded after the latent chain")
        if ASSISTANT not in model.side_modules:
            model.attach_side_module(ASSISTANT, build_assistant(model, c))  # loads saved weights if any
        asst = model.side_modules[ASSISTANT]
        if (asst.num_steps, asst.latent_dim) != (c.num_latent_steps, c.latent_dim):
            raise ConfigError(f"the model's saved DLR assistant has L={asst.num_steps}, d_z={asst.latent_dim}, but "
                              f"the config asks for L={c.num_latent_steps}, d_z={c.latent_dim}")

    def build_operator(self, latent, model) -> AssistantThoughtOperator:
        return AssistantThoughtOperator(model.side_modules[ASSISTANT])

    def build_schedule(self, latent, model) -> ThinkingSchedule:
        return ThinkingSchedule(num_latent_steps=model.side_modules[ASSISTANT].num_steps)

    def param_groups(self, ctx: MethodContext) -> list[dict[str, Any]]:
        c = self.config or DLRConfig()
        params = [p for p in ctx.model.side_modules[ASSISTANT].parameters() if p.requires_grad]
        return [{"params": params, "lr": c.assistant_learning_rate or ctx.args.learning_rate}]

    def fsdp_conflict(self, ctx: MethodContext) -> str | None:
        return ("its own update loop runs the frozen main model and the trained assistant outside the sharded "
                "units")

    def rollout_metrics(self, ctx: MethodContext, batch) -> dict[str, float]:
        asst = ctx.model.side_modules[ASSISTANT]
        main = sum(p.numel() for p in ctx.model.model.parameters())
        return {"dlr/assistant_params": float(asst.num_parameters()), "dlr/main_params": float(main)}
