"""DLR — DeepLatent Reasoning (arXiv 2601.17275): an assistant writes the thoughts of a frozen latent model.

No public code or method body exists; this is **our second reading of the abstract** (docs/methods/dlr.md,
"Reading 2"; the first, an MLP prefix for a frozen CoT model, is method `dlr_prefix` and scores ~0-2 %). From the
abstract: a lightweight assistant samples K latent reasoning chains; a reward filters them; only high-value ones
drive the update; a frozen main model decodes each chain in one pass; a contrastive objective steers exploration;
frozen main parameters rule out forgetting. Ours:

* the frozen main model already reads continuous thoughts: a Coconut latent init (prompt, `<|start-latent|>`,
  L thoughts, `<|end-latent|>`, answer), so the method starts from `coconut_sft`; L = `dlr.num_latent_steps` must
  be the main model's thought count;
* the assistant (`ChainAssistant`, a small causal transformer over the main model's prompt states) writes the L
  thoughts autoregressively from a Gaussian head, at the main model's own thought positions
  (`ChainThoughtOperator`, fed the prompt states by the rollout engine);
* it is first distilled from the main model's own thoughts (`on_train_begin`), then trained by DLR's objective
  (`latentrl.methods.dlr.trainer.DLRTrainer`: group-relative policy gradient + InfoNCE around the mean chain + the decoding
  likelihood of kept answers through the frozen main model).
"""

from __future__ import annotations

from typing import Any, ClassVar

from latentrl.config import ConfigError
from latentrl.methods.base import MethodContext, register_method
from latentrl.methods.coconut_grpo import CoconutLatentMethod
from latentrl.methods.dlr.assistant import ASSISTANT as PREFIX_ASSISTANT
from latentrl.methods.dlr.chain import ChainAssistant, ChainThoughtOperator, CoconutFrame, distill_assistant
from latentrl.methods.dlr.config import DLRConfig, freeze_main_model, resolve_dlr_config
from latentrl.rollout import ThinkingSchedule

CHAIN_ASSISTANT = "dlr_chain_assistant"
"""The side-module name of method dlr's assistant (saved with the model)."""


@register_method
class DLR(CoconutLatentMethod):
    name = "dlr"
    trainer = "dlr"  # latentrl.methods.dlr.trainer.DLRTrainer
    scored_through = (CHAIN_ASSISTANT,)
    description = ("DeepLatent Reasoning (our reading of arXiv 2601.17275): a small causal-transformer assistant "
                   "writes the thoughts of a frozen Coconut model; K chains, reward filter, PG + InfoNCE + NLL")
    init = "coconut_sft"
    thought_count_keys: ClassVar[tuple[str, ...]] = ("dlr.num_latent_steps",)  # the frozen main model's thoughts
    defaults: ClassVar[dict[str, Any]] = {
        "reward_funcs": ["correctness"], "beta": 0.0, "learning_rate": 1e-4,
        "weight_decay": 0.0, "dlr.assistant_hidden_size": 96, "dlr.init_std": 0.1, "dlr.min_std": 0.001,
        "dlr.contrastive_coef": 0.1, "dlr.contrastive_temperature": 1.0, "dlr.nll_coef": 1.0,
    }
    smoke_overrides: ClassVar[dict[str, Any]] = {
        "dlr.num_latent_steps": 2, "dlr.distill_steps": 2, "dlr.distill_examples": 8, "dlr.distill_batch_size": 4,
        "dlr.assistant_hidden_size": 16, "dlr.assistant_heads": 2, "dlr.assistant_ffn": 32,
    }

    def __init__(self, config: DLRConfig | None = None):
        self.config = config
        """The run's DLR options; set by `setup` from the run's config when not given (the trainer passes its own)."""

    def setup(self, model, args) -> None:
        super().setup(model, args)
        self.config = c = self.config or resolve_dlr_config(args)
        if args.num_iterations != 1:
            raise ConfigError(f"method 'dlr' updates on-policy (its PG term has no importance ratio): set "
                              f"num_iterations=1 (got {args.num_iterations})")
        freeze_main_model(model, args, self.name)
        if model.latent_ids is None:
            raise ConfigError("method 'dlr' needs a main model that reads continuous thoughts (<|start-latent|>, "
                              "<|latent|>, <|end-latent|>): start from a Coconut-SFT checkpoint")
        L = c.num_latent_steps
        if args.max_completion_length <= L + 1:
            raise ConfigError(f"max_completion_length ({args.max_completion_length}) must exceed the {L} thoughts "
                              "and <|end-latent|>: the answer is decoded after them")
        if model.has_saved_side_module(PREFIX_ASSISTANT):
            raise ConfigError("this checkpoint holds a reading-1 DLR assistant (an MLP prefix): resume or evaluate it "
                              "with method dlr_prefix")
        if CHAIN_ASSISTANT not in model.side_modules:
            model.attach_side_module(CHAIN_ASSISTANT, ChainAssistant(
                model.hidden_size, L, width=c.assistant_hidden_size, layers=c.assistant_layers,
                heads=c.assistant_heads, ffn=c.assistant_ffn, max_prompt=c.max_prompt_positions,
                init_std=c.init_std, learn_std=c.learn_std, min_std=c.min_std,
            ))  # loads the saved weights if the checkpoint has them
        asst = model.side_modules[CHAIN_ASSISTANT]
        if asst.num_steps != L:
            raise ConfigError(f"the model's saved DLR assistant writes {asst.num_steps} thoughts, but "
                              f"dlr.num_latent_steps is {L}")

    def build_operator(self, latent, model) -> ChainThoughtOperator:
        return ChainThoughtOperator(model.side_modules[CHAIN_ASSISTANT], model.latent_ids.latent)

    def build_schedule(self, latent, model) -> ThinkingSchedule:
        """The main model's frame: its L thoughts, then `<|end-latent|>` forced."""
        L = model.side_modules[CHAIN_ASSISTANT].num_steps
        return ThinkingSchedule(num_latent_steps=L, after_latent_ids=[model.latent_ids.end])

    def param_groups(self, ctx: MethodContext) -> list[dict[str, Any]]:
        c = self.config or DLRConfig()
        params = [p for p in ctx.model.side_modules[CHAIN_ASSISTANT].parameters() if p.requires_grad]
        return [{"params": params, "lr": c.assistant_learning_rate or ctx.args.learning_rate}]

    def on_train_begin(self, ctx: MethodContext) -> dict[str, float]:
        """Distil the main model's own thoughts into an assistant that was not distilled yet."""
        asst: ChainAssistant = ctx.model.side_modules[CHAIN_ASSISTANT]
        if bool(asst.distilled):
            return {}
        c = self.config or DLRConfig()
        frame = CoconutFrame(ctx.model, asst.num_steps, ctx.args.max_completion_length, prompt_text=ctx.parts.prompt_text)
        hist = distill_assistant(asst, frame, list(ctx.rows[: c.distill_examples]), steps=c.distill_steps,
                                 batch_size=c.distill_batch_size, learning_rate=c.distill_learning_rate,
                                 noise=c.distill_noise, seed=ctx.args.seed)
        out = {"dlr/thought_rms": hist[0]["thought_rms"], "dlr/distill_main_tokens": float(frame.main_tokens)}
        if len(hist) > 1:
            out.update({"dlr/distill_mse_first": hist[1]["mse"], "dlr/distill_mse_last": hist[-1]["mse"]})
        return out

    def fsdp_conflict(self, ctx: MethodContext) -> str | None:
        return "its update runs the frozen main model and the trained assistant outside the sharded units"

    def rollout_metrics(self, ctx: MethodContext, batch) -> dict[str, float]:
        asst = ctx.model.side_modules[CHAIN_ASSISTANT]
        main = sum(p.numel() for p in ctx.model.model.parameters())
        return {"dlr/assistant_params": float(asst.num_parameters()), "dlr/main_params": float(main)}
