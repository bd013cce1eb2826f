"""Method presets: a method = thought operator + rollout schedule + advantage hooks + loss options + extra objective.

`Method.build(model, args)` attaches the method's side modules and returns its `MethodParts` (operator, schedule,
prompt format) without a trainer; during training its hooks see a `MethodContext`. The trainer runs the same loop
for every method and asks the method only for these pieces. A new method is one subclass (usually a few lines)
registered with `@register_method`; the CLI and `latentrl bench` pick it up automatically (docs/methods/README.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from latentrl.chat import prompt_formatter
from latentrl.config import ConfigError, dotted_get, register_method_preset
from latentrl.replay import replay
from latentrl.rewards import answer_check
from latentrl.rollout import ThinkingSchedule
from latentrl.thoughts import ThoughtOperator, build_thought_operator
from latentrl.tokenizer import delimiter_spellings, text_ids

if TYPE_CHECKING:
    from latentrl.config import GRPOConfig, LatentConfig
    from latentrl.model import LatentModel
    from latentrl.replay import ReplayOutput
    from latentrl.rl.batch import StepBatch
    from latentrl.rollout import Rollout


@dataclass
class MethodParts:
    """What a method puts around a model to roll it out and score it: built by `Method.build`, no trainer needed
    (evaluation, `latentrl inspect` and the trainer all build them the same way)."""

    method: "Method"
    operator: ThoughtOperator | None
    schedule: ThinkingSchedule | None
    prompt_text: Callable[[dict[str, Any]], str]
    """row -> the model's prompt text: the run's `prompt_format` (raw / chat template), then the method's hook."""
    decode_latent: bool
    """whether reward / answer text includes the ids recorded at latent positions"""

    @property
    def has_latent(self) -> bool:
        return self.operator is not None and self.schedule is not None and self.schedule.has_latent()

    def eval_kwargs(self, args: "GRPOConfig") -> dict[str, Any]:
        """Keyword arguments of `latentrl.eval.evaluate` / `thought_dependence` that score with these parts the
        way the run `args` trains: operator, schedule, prompt format, completion budget, seed, and what counts as a
        right answer (`latentrl.rewards.answer_check` of its reward functions)."""
        return dict(operator=self.operator, schedule=self.schedule, prompt_text=self.prompt_text,
                    decode_latent=self.decode_latent, max_new_positions=args.max_completion_length, seed=args.seed,
                    reward_func=answer_check(args.reward_funcs))


@dataclass
class MethodContext:
    """The run as a method's runtime hooks see it: settings, the policy and reference models, the method's parts,
    the training rows and the step. Never the trainer: a hook cannot reach its optimizer, loop or data cursor."""

    args: "GRPOConfig"
    model: "LatentModel"
    parts: MethodParts
    ref_model: "LatentModel | None" = None
    loss_temperature: float = 1.0
    """temperature the update scores log-probs at (`loss_temperature`, else `temperature`)"""
    rows: Sequence[dict[str, Any]] = ()
    """the training rows (Latent RL pre-trains its value head on the first ones)"""
    global_step: int = 0
    compute_tokens: dict[str, int] = field(default_factory=lambda: {"forward": 0, "backward": 0})
    """policy-size model positions computed this step on this process: `forward` passes, and `backward` in
    forward-equivalents (2 per position with weight gradients, 1 with activation gradients only); the trainer
    turns them into `compute/*` FLOP metrics (`latentrl.compute`)"""

    @property
    def operator(self) -> ThoughtOperator | None:
        return self.parts.operator

    @property
    def schedule(self) -> ThinkingSchedule | None:
        return self.parts.schedule

    @property
    def prompt_text(self) -> Callable[[dict[str, Any]], str]:
        return self.parts.prompt_text

    def replay_in_chunks(self, model: "LatentModel", rollout: "Rollout", plain_tokens: bool = False) -> torch.Tensor:
        """No-grad per-position log-probs of a whole rollout batch at the loss temperature, micro-batch by
        micro-batch, with the method's operator (`plain_tokens`: none, the recorded token ids as plain inputs)."""
        op = None if plain_tokens else self.operator
        self.compute_tokens["forward"] += rollout.batch_size * (rollout.prompt_ids.shape[1] + rollout.completion_ids.shape[1])
        n = self.args.per_device_train_batch_size
        out = []
        for s in range(0, rollout.batch_size, n):
            part = rollout.select(torch.arange(s, min(s + n, rollout.batch_size), device=rollout.completion_ids.device))
            out.append(replay(model, op, part, temperature=self.loss_temperature, compute_entropy=False).logprobs)
        return torch.cat(out)

    def loss_mask(self, batch: "StepBatch") -> torch.Tensor:
        """(N, C) positions the policy loss covers: the operator's policy positions, minus truncated completions
        when `mask_truncated_completions`."""
        mask = batch.rollout.policy_mask(self.operator)
        if self.args.mask_truncated_completions:
            mask = mask & ~batch.rollout.truncated[:, None]
        return mask


class Method:
    """Base preset: plain GRPO on whatever `config.latent` describes. Subclasses override the hooks they need."""

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    #: the registered trainer that runs it (`register_trainer`): "grpo" unless its update differs (DLR)
    trainer: ClassVar[str] = "grpo"
    #: what the method starts from in the benchmark suite ("cot_sft", "coconut_sft", ...)
    init: ClassVar[str] = "cot_sft"
    #: config values the preset sets unless the user overrides them
    defaults: ClassVar[dict[str, Any]] = {}
    #: config values (dotted keys) for a one-step smoke run on a tiny random model of the chain_sum task (the docs
    #: checks in tests/test_docs.py): short latent spans that end within 10 positions, and the optional terms (KL,
    #: dynamic sampling, value-head pre-training) switched on so that every metric the method logs appears
    smoke_overrides: ClassVar[dict[str, Any]] = {}
    #: ask the replay scorer for last hidden states (value heads, contrastive terms)
    needs_hidden: ClassVar[bool] = False
    #: include latent positions' recorded tokens in the completion text the rewards see (LEPO's authors do)
    decode_latent_tokens: ClassVar[bool] = False
    #: config keys (dotted) that take the starting model's recorded thought count (`latent_init.json`,
    #: `latentrl.assets.recorded_num_thoughts`) unless given on the command line: the Coconut family's span length
    thought_count_keys: ClassVar[tuple[str, ...]] = ()
    #: config keys (dotted) that must be at least that count (a span cap the config validates against)
    thought_count_bounds: ClassVar[tuple[str, ...]] = ()
    #: side modules whose trained weights form the thoughts (DLR's assistant): scoring a checkpoint that does not
    #: hold them would read thoughts from a freshly initialised module (`check_scorable`)
    scored_through: ClassVar[tuple[str, ...]] = ()

    @property
    def trainer_class(self) -> type:
        """The trainer that runs this method (`TRAINERS[self.trainer]`: GRPOTrainer, or DLRTrainer for DLR)."""
        if self.trainer not in TRAINERS:
            raise ValueError(f"method {self.name!r} runs on trainer {self.trainer!r}, which is not registered "
                             f"(registered: {sorted(TRAINERS)}); import the module that defines it")
        return TRAINERS[self.trainer]

    def build_operator(self, latent: "LatentConfig", model: "LatentModel") -> ThoughtOperator | None:
        if latent.operator == "none":
            return None
        return build_thought_operator(latent.operator, **operator_kwargs(latent, model))

    def build_schedule(self, latent: "LatentConfig", model: "LatentModel") -> ThinkingSchedule | None:
        if latent.operator == "none":
            return None
        end = text_ids(model.tokenizer, latent.end_of_thinking_token)
        after = [i for t in latent.after_latent_tokens for i in (text_ids(model.tokenizer, t) or [])]
        return ThinkingSchedule(
            num_latent_steps=latent.num_latent_steps,
            max_latent_steps=latent.max_latent_steps,
            end_token_id=end[0] if end else None,
            delimiter_ids=delimiter_spellings(model.tokenizer, latent.answer_delimiter),
            after_latent_ids=after,
        )

    def decodes_latent_tokens(self, operator: ThoughtOperator | None) -> bool:
        """Whether the reward text includes the ids recorded at latent positions."""
        return self.decode_latent_tokens or (operator is not None and operator.emits_tokens)

    def prompt_text(self, row: dict[str, Any]) -> str:
        """The prompt string fed to the model for a dataset row (Coconut appends `<|start-latent|>`)."""
        return row["prompt"]

    def check_thought_count(self, model: "LatentModel", args: "GRPOConfig") -> None:
        """Warn when `thought_count_keys` differ from the thought count the model records it was trained with (a
        Coconut init read with another count scores near chance: chain_sum-coconut 93 % at its 7, 8 % at 6). The
        command line sets them from the record; from Python the config is the caller's."""
        n = getattr(model, "trained_num_thoughts", None)
        if n is None:
            return
        for key in self.thought_count_keys:
            value = dotted_get(args, key)
            if value is not None and value != n:
                warnings.warn(f"the model was trained with {n} thoughts (its latent_init.json) but {key}={value}: "
                              f"set {key}={n} unless the other count is intended", stacklevel=3)

    def check_scorable(self, model: "LatentModel", source: str) -> None:
        """Refuse to evaluate or inspect a checkpoint (`source`) without the trained side modules this method's
        thoughts come from (`scored_through`): outside training nothing would train them first."""
        missing = [n for n in self.scored_through if not model.has_saved_side_module(n)]
        if missing:
            raise ConfigError(f"method {self.name!r} forms its thoughts with its trained {', '.join(missing)}, which "
                              f"{source} does not hold (a {self.name} run's checkpoint does): evaluating it this way "
                              "would read thoughts from a random module; score it with the method it was trained "
                              "with, or train it with this one first")

    def build(self, model: "LatentModel", args: "GRPOConfig") -> MethodParts:
        """Check `args` against the method, attach its side modules to `model` (loading the weights a checkpoint
        saved) and build its operator, schedule and prompt format. The trainer calls this before it builds the
        optimizer; evaluation and inspection call it alone."""
        self.setup(model, args)
        self.check_thought_count(model, args)
        operator = self.build_operator(args.latent, model)
        if operator is not None:
            operator.attach(model)
            operator.to(model.device)
        return MethodParts(
            method=self, operator=operator, schedule=self.build_schedule(args.latent, model),
            prompt_text=prompt_formatter(model.tokenizer, args.prompt_format, args.system_prompt, self.prompt_text),
            decode_latent=self.decodes_latent_tokens(operator),
        )

    def setup(self, model: "LatentModel", args: "GRPOConfig") -> None:
        """Check the run's settings and attach side modules (gates, value heads, assistants) to `model`."""

    def on_train_begin(self, ctx: MethodContext) -> dict[str, float]:
        """Once, before the first step of a new run (not on resume): e.g. Latent RL pre-trains its value head.
        Returns metrics logged with the first step."""
        return {}

    def fsdp_conflict(self, ctx: MethodContext) -> str | None:
        """Why this method cannot train with parallelism='fsdp' (sharded parameters; only the trainer's own
        passes gather them), or None when it can."""
        return None

    def param_groups(self, ctx: MethodContext) -> list[dict[str, Any]]:
        """Optimizer parameter groups; default: every trainable parameter at the configured learning rate."""
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        return [{"params": params, "lr": ctx.args.learning_rate}]

    def compute_advantages(self, ctx: MethodContext, batch: "StepBatch") -> torch.Tensor:
        """(N,) sequence advantages from `batch.rewards`; default: TRL's group-relative advantages."""
        from latentrl.rl.advantages import group_advantages

        a = ctx.args
        valid = ~batch.rollout.truncated if a.mask_truncated_completions else None
        eps = 1e-4 if a.advantage_epsilon is None else a.advantage_epsilon  # TRL's epsilon
        adv, _ = group_advantages(batch.rewards, a.num_generations, a.scale_rewards, eps=eps, valid=valid)
        return adv

    def reference_logprobs(self, ctx: MethodContext, batch: "StepBatch") -> torch.Tensor:
        """(N, C) log-probs of the reference model for the KL term; default: replay with the same operator."""
        return ctx.replay_in_chunks(ctx.ref_model, batch.rollout)

    def rollout_metrics(self, ctx: MethodContext, batch: "StepBatch") -> dict[str, float]:
        """Method-specific metrics of a rollout batch (e.g. HRPO's gate statistics)."""
        return {}

    def token_advantages(self, ctx: MethodContext, batch: "StepBatch") -> torch.Tensor:
        """(N, C) per-position advantages; default: each sequence's advantage at every position."""
        return batch.advantages[:, None].expand_as(batch.rollout.logprobs).clone()

    def policy_kind_masks(self, ctx: MethodContext, batch: "StepBatch", policy_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Which surrogate each position uses (see `rl.losses.mixed_policy_loss`); {} = no policy-gradient term."""
        return {ctx.args.policy_loss: policy_mask}

    def extra_loss(self, ctx: MethodContext, micro: "StepBatch", out: "ReplayOutput") -> tuple[torch.Tensor, dict[str, float]] | None:
        """An additional objective added to the policy loss (value head BCE, contrastive term...)."""
        return None


def operator_kwargs(latent: "LatentConfig", model: "LatentModel") -> dict[str, Any]:
    """Constructor arguments of each built-in operator, read from the latent config."""
    name = latent.operator
    if name == "hidden_state":
        return {"latent_token_id": model.latent_ids.latent if model.latent_ids else None}
    if name == "soft_mixture":
        return {"top_k": latent.top_k, "temperature": latent.latent_temperature}
    return {"config": latent}


METHODS: dict[str, type[Method]] = {}
#: trainer name -> trainer class; filled by the trainer modules (`latentrl.rl.trainer`, `latentrl.methods.dlr.*`), so
#: this layer never imports them (the package `latentrl` imports them all)
TRAINERS: dict[str, type] = {}


def register_trainer(name: str) -> Callable[[type], type]:
    """Class decorator: the trainer that methods with `trainer = name` run on."""
    def add(cls: type) -> type:
        TRAINERS[name] = cls
        return cls
    return add


def register_method(cls: type[Method]) -> type[Method]:
    """Add a method to the registry (`method: <name>` in a config) and its preset values to the config's."""
    METHODS[cls.name] = cls
    register_method_preset(cls.name, cls.defaults)
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {sorted(METHODS)}")
    return METHODS[name]()
