"""The RL trainer: one loop for GRPO and every latent method.

    collect:  prompts ─▶ rollout (operator + schedule) ─▶ rewards ─▶ advantages (+ method hooks)
    prepare:  old / reference log-probs, per-position advantages, this process's slice (no grad)
    update:   [num_iterations ×] loss pieces (here: micro-batches: replay ─▶ policy loss + KL + method objective),
              each backpropagated ─▶ gradient sum over processes ─▶ clip ─▶ optimizer step
              (`latentrl.optimizer_steps.OptimizerSteps`, the step every trainer of the library takes)
    log:      step metrics, FLOPs (`latentrl.compute`), metrics.jsonl / TensorBoard, checkpoints

The method is built once (`Method.build`: operator, schedule, side modules, before the optimizer) and its hooks
see a `MethodContext`, never the trainer. A method with another objective (DLR) subclasses the trainer and
overrides `prepare` / `loss_pieces`; the update loop stays this one.

TRL's `GRPOTrainer` semantics and names (`num_generations`, `beta`, `epsilon`, `loss_type`, `scale_rewards`, ...).
Batch bookkeeping: one optimizer step consumes `per_device_train_batch_size * gradient_accumulation_steps *
num_processes` completions = that many / `num_generations` prompts. Data parallelism (accelerate; any number of
processes, one code path) is described in `latentrl.rl.distributed`: rollout chunks with world-size independent
seeds, everything after generation on the whole (gathered) batch, each process updating on its slice with global
loss normalisers, gradients summed across processes. With `parallelism='fsdp'` the model is sharded instead
(`latentrl.rl.fsdp`): no-grad passes run on gathered weights, the update runs as the FSDP root's forward.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import get_scheduler

from latentrl.checkpoint import load_checkpoint, save_checkpoint
from latentrl.compute import forward_flops, matmul_params
from latentrl.config import DEFAULT_MAX_STEPS, ConfigError, GRPOConfig, config_to_dict
from latentrl.data.provenance import TrainDraw, write_train_draws
from latentrl.data.schema import Example, as_rows  # as_rows: re-exported for callers of the old path
from latentrl.logger import RUN_CONFIG_FILE, MetricsLogger, console_line, progress
from latentrl.methods import Method, MethodContext, get_method, register_trainer
from latentrl.model import LatentModel
from latentrl.optimizer_steps import OptimizerSteps
from latentrl.replay import replay
from latentrl.rewards import (
    accepts_keyword,
    answer_check,
    compute_rewards,
    get_reward_funcs,
    reward_columns,
    reward_metric_names,
)
from latentrl.rl.advantages import zero_std_groups
from latentrl.rl.batch import StepBatch
from latentrl.rl.distributed import DataParallel, chunk_generator, chunk_ranges, make_accelerator
from latentrl.rl.fsdp import ShardedPolicy
from latentrl.rl.losses import aggregate_loss, kl_penalty, masked_mean, mixed_policy_loss
from latentrl.rollout import Rollout, SamplingParams, decode_completions, generate_rollout, left_pad
from latentrl.run_dir import (
    check_new_run,
    check_same_run,
    replace_run,
    resume_checkpoint,
    run_identity,
    set_aside_newer_checkpoints,
)

RewardFunc = Callable[..., list[float | None]]


@dataclass
class PreparedBatch:
    """GRPO's `prepare` output: this process's slice with old / reference log-probs and per-position advantages,
    and the loss normalisers of the whole (global) batch."""

    local: StepBatch
    num_sequences: int
    num_tokens: float


#: one backpropagated piece of an update's loss: () -> (loss, metrics weighted to sum over the pieces)
LossPiece = Callable[[], tuple[torch.Tensor, dict[str, float]]]




#: training prompts `warn_about_prompts` looks at when a trainer is built (the first ones: a cheap, early look)
WARN_SAMPLE = 256


def num_warmup_steps(warmup_ratio: float, max_steps: int) -> int:
    """Linear-warmup steps of `warmup_ratio` (HF `TrainingArguments.get_warmup_steps`: rounded up), so a ratio
    written as k / max_steps gives k steps even when the product lands just below k (0.0053 * 1875 = 9.94 -> 10)."""
    return math.ceil(warmup_ratio * max_steps)


def run_length(args: GRPOConfig, num_prompts: int, prompts_per_step: int) -> int:
    """Optimizer steps of the run, as HF's Trainer: `max_steps` when > 0, else `num_train_epochs` passes over the
    `num_prompts` training prompts at `prompts_per_step` per step, rounded up (the last step may start the next pass);
    neither given: `DEFAULT_MAX_STEPS`."""
    if args.max_steps is not None and args.max_steps > 0:
        return args.max_steps
    if args.num_train_epochs is None:
        if args.max_steps is None:
            return DEFAULT_MAX_STEPS
        raise ConfigError(f"max_steps={args.max_steps} needs num_train_epochs to set the run's length")
    return max(1, math.ceil(args.num_train_epochs * num_prompts / prompts_per_step - 1e-9))


def reward_completions(rows: Sequence[dict[str, Any]], completions: list[str]) -> list[Any]:
    """Completions as TRL hands them to reward functions: for a conversational prompt (a list of chat messages) each
    is `[{"role": "assistant", "content": text}]`, else the text."""
    return [[{"role": "assistant", "content": c}] if not isinstance(r["prompt"], str) else c
            for r, c in zip(rows, completions, strict=True)]


def disable_dropout(module: nn.Module) -> None:
    """GRPO log-prob ratios assume the same function at rollout and update time (TRL's `disable_dropout`)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


@dataclass(frozen=True)
class RewardState:
    """What a reward function's `trainer_state` argument carries (TRL passes its TrainerState): the step being
    rolled out for and the run's length, e.g. for a reward curriculum."""

    global_step: int
    max_steps: int
    epoch: float  # passes over the training prompts so far


@register_trainer("grpo")
class GRPOTrainer:
    """GRPO-family trainer over a `LatentModel`; the `method` decides how latent positions are formed and scored."""

    def __init__(
        self,
        args: GRPOConfig,
        model: LatentModel | str | os.PathLike,
        train_dataset: Sequence[Example | dict[str, Any]],
        reward_funcs: Sequence[RewardFunc | str] | None = None,
        method: Method | str | None = None,
        ref_model: LatentModel | None = None,
        eval_dataset: Sequence[Example | dict[str, Any]] | None = None,
    ):
        if isinstance(model, (str, os.PathLike)):  # TRL takes a model id too
            model = LatentModel.from_pretrained(model)
        elif not isinstance(model, LatentModel):
            raise TypeError(f"GRPOTrainer needs a LatentModel, got {type(model).__name__}: wrap a Hugging Face model "
                            "with LatentModel(model, tokenizer), or pass a folder / model id")
        method_obj = get_method(method or args.method) if not isinstance(method, Method) else method
        if method_obj.name != args.method:  # the run records the method it ran, for resume and `latentrl eval`
            warnings.warn(f"method={method_obj.name!r} with a config for {args.method!r}: the run uses "
                          f"{method_obj.name}'s hooks with this config's values, not its presets "
                          f"(GRPOConfig.for_method({method_obj.name!r}, ...) sets them)", stacklevel=2)
            args = copy.copy(args)  # the caller's config stays as it was; a custom Method needs no registration
            args.method = method_obj.name
        if args.eval_dataset and eval_dataset is None:
            warnings.warn(f"eval_dataset={args.eval_dataset!r} is set in the config but no eval_dataset was passed: "
                          "from Python, pass the rows (GRPOTrainer(..., eval_dataset=rows)); `latentrl train` loads "
                          "them from the config", stacklevel=2)
        self.args = args
        self.eval_rows = as_rows(eval_dataset, "the evaluation dataset") if eval_dataset else None
        if self.eval_rows and any("answer" not in r for r in self.eval_rows):
            bad = next(r for r in self.eval_rows if "answer" not in r)
            raise ConfigError(f"evaluation rows need an 'answer' column (evaluation scores the answer after '####' "
                              f"against it); a row has only {sorted(bad)}")
        self.model = model
        self.method = method_obj
        if not isinstance(self, self.method.trainer_class):
            cls = self.method.trainer_class
            raise ConfigError(f"method {self.method.name!r} has its own update: build its trainer with "
                              f"{cls.__module__}.{cls.__name__}(cfg, model, data) (or get_method(name).trainer_class), "
                              f"not {type(self).__name__}")
        self.rows = as_rows(train_dataset, "the training dataset")
        self.train_data: list[TrainDraw] = []
        """Synthetic draws this run descends from and trains on (`latentrl.data.provenance`), written into each
        checkpoint as `train_data.json` when not empty; `latentrl train` fills it in."""
        funcs = list(reward_funcs) if reward_funcs is not None else list(args.reward_funcs)
        if not funcs:
            raise ConfigError("no reward functions: pass reward_funcs=[...] (callables or registered names) or set "
                              "the config's reward_funcs")
        named = get_reward_funcs([f for f in funcs if isinstance(f, str)])
        it = iter(named)
        self.reward_funcs = [next(it) if isinstance(f, str) else f for f in funcs]
        if args.reward_weights is not None and len(args.reward_weights) != len(self.reward_funcs):
            raise ConfigError(f"reward_weights has {len(args.reward_weights)} entries but there are "
                              f"{len(self.reward_funcs)} reward functions")
        self.accelerator = make_accelerator(args.mixed_precision)
        self.dp = DataParallel(self.accelerator)
        model.to(self.accelerator.device)
        self.G = args.num_generations
        self.step_completions = args.per_device_train_batch_size * args.gradient_accumulation_steps  # per process
        global_completions = self.step_completions * self.dp.world_size
        if global_completions % self.G:
            procs = f" * num_processes ({self.dp.world_size})" if self.dp.world_size > 1 else ""
            raise ConfigError(f"per_device_train_batch_size * gradient_accumulation_steps{procs} "
                              f"({global_completions}) must be divisible by num_generations ({self.G})")
        self.prompts_per_step = global_completions // self.G
        run_length(args, len(self.rows), self.prompts_per_step)  # a bad max_steps / num_train_epochs fails here
        self.rollout_chunk_size = args.rollout_chunk_size or self.step_completions

        torch.manual_seed(args.seed)
        random.seed(args.seed)
        np.random.seed(args.seed)
        if args.lora.enabled and not model.is_peft:
            model.apply_lora(args.lora)
        elif model.is_peft and not args.lora.enabled:
            raise ConfigError("the model carries a LoRA adapter but lora.enabled is false: merge it first "
                              "(model.merge_and_unload(), as `latentrl train` does) to train every weight from it, "
                              "or set lora.enabled=true to train that adapter on")
        if args.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        disable_dropout(model.model)
        # the method's side modules exist (and its settings are checked) before the optimizer is built below
        self.parts = self.method.build(model, args)
        self.operator, self.schedule = self.parts.operator, self.parts.schedule
        self.prompt_text(self.rows[0])  # a conversational dataset without a chat template fails here, not mid-run
        # prompts of another task than the model's (unknown words), or too long for its positions: said at once
        from latentrl.eval import warn_about_prompts

        warn_about_prompts(model, [self.prompt_text(r) for r in self.rows[:WARN_SAMPLE]], args.max_completion_length)
        self._sync_initial_weights()
        if args.beta > 0 and ref_model is None and model.is_peft:
            ref_model = model  # the policy with its adapter disabled (`reference_context`): no second copy
        elif args.beta > 0 and ref_model is None:
            ref_model = copy.deepcopy(model)
            for p in ref_model.parameters():
                p.requires_grad_(False)
        self.loss_temperature = args.loss_temperature if args.loss_temperature is not None else args.temperature
        self.ctx = MethodContext(args, model, self.parts, ref_model, self.loss_temperature, self.rows)
        """what the method's runtime hooks see of this run (never the trainer)"""
        self.fsdp = self._setup_fsdp()
        self.optimizer = torch.optim.AdamW(
            self.method.param_groups(self.ctx), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon, weight_decay=args.weight_decay,
        )
        self.scheduler = get_scheduler(
            args.lr_scheduler_type, self.optimizer, num_warmup_steps=num_warmup_steps(args.warmup_ratio, self.max_steps),
            num_training_steps=max(1, self.max_steps),
        )
        self.optimizer = self.accelerator.prepare_optimizer(self.optimizer)  # fp16 loss scaling; device placement
        self.sampling = SamplingParams(
            max_new_positions=args.max_completion_length, temperature=args.temperature,
            top_k=args.top_k or None, top_p=args.top_p if args.top_p < 1.0 else None,
        )
        self.global_step = 0
        self.main_params = matmul_params(model)  # weights a policy forward multiplies per token (compute metrics)
        self.data_epoch, self.data_cursor = 0, 0
        self._order = self._epoch_order(0)
        self.output_dir = Path(args.output_dir)
        self._wrote_run = False  # whether train() has written into output_dir (see `train`)

    @property
    def ref_model(self) -> LatentModel | None:
        """The KL reference (None without a KL term; the policy itself under LoRA), as the method's hooks see it."""
        return self.ctx.ref_model

    @property
    def prompt_text(self) -> Callable[[dict[str, Any]], str]:
        """row -> the model's prompt text: `prompt_format` (raw / chat template), then the method's prompt hook."""
        return self.parts.prompt_text

    def _setup_fsdp(self) -> ShardedPolicy | None:
        """Shard the policy (and a separate reference model) when several processes run with FSDP."""
        a = self.args
        if self.dp.world_size == 1 or not (a.parallelism == "fsdp"
                                           or self.accelerator.distributed_type == DistributedType.FSDP):
            return None
        if a.lora.enabled or self.model.is_peft:
            raise ConfigError("parallelism='fsdp' does not support LoRA (the frozen base model would be sharded "
                              "while peft's adapters and disable_adapter reference rely on plain modules); use "
                              "parallelism='ddp' with LoRA — its full replica is mostly frozen weights")
        conflict = self.method.fsdp_conflict(self.ctx)
        if conflict is not None:
            raise ConfigError(f"parallelism='fsdp' does not support method {self.method.name!r} here: {conflict}. "
                              "parallelism='ddp' supports it")
        if self.accelerator.scaler is not None:
            raise ConfigError("parallelism='fsdp' does not support mixed_precision='fp16' (the loss scaler does "
                              "not unscale sharded gradients); use bf16")
        fsdp = ShardedPolicy(self.accelerator.device, self.dp.world_size)
        fsdp.shard(self.model)
        if self.ref_model is not None and self.ref_model is not self.model:
            fsdp.shard(self.ref_model)
        return fsdp

    def gathered(self, model: LatentModel | None) -> contextlib.AbstractContextManager:
        """Where a no-grad pass over `model` runs: under FSDP its parameters gathered for the whole pass."""
        return self.fsdp.gathered(model) if self.fsdp is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ data order (resumable)
    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.args.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def _next_prompts(self, n: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            if self.data_cursor >= len(self._order):
                self.data_epoch += 1
                self.data_cursor = 0
                self._order = self._epoch_order(self.data_epoch)
            out.append(self.rows[self._order[self.data_cursor]])
            self.data_cursor += 1
        return out

    # ------------------------------------------------------------------ generation and scoring
    def _tokenize_prompts(self, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.model.tokenizer
        limit = self.args.max_prompt_length
        ids = [tok(self.prompt_text(r), add_special_tokens=False)["input_ids"][-limit:] for r in rows]
        return left_pad(ids, tok.pad_token_id, device=self.model.device)

    @torch.no_grad()
    def generate_and_score(self, prompt_rows: list[dict[str, Any]], round_: int = 0) -> StepBatch:
        """G completions per prompt, rewards, group advantages (TRL's `_generate_and_score_completions`).

        `prompt_rows` are the whole step's prompts (every process passes the same ones); this process generates and
        scores its rollout chunks, and the returned batch is the gathered whole, identical on every process.
        `round_` numbers the dynamic-sampling refills of a step (it enters the chunk seeds).
        """
        rows = [r for r in prompt_rows for _ in range(self.G)]
        chunks = chunk_ranges(len(rows), self.rollout_chunk_size)
        self.model.eval()
        mine = []
        for c in self.dp.my_chunks(len(chunks)):
            start, end = chunks[c]
            gen = chunk_generator(self.args.seed, self.global_step, round_, c, self.model.device)
            mine.append(self._generate_chunk(rows[start:end], gen))
        parts = self.dp.gather_objects(mine)
        pad_id = self.model.tokenizer.pad_token_id
        rollout = parts[0][0] if len(parts) == 1 else Rollout.concat([p[0] for p in parts], pad_id)
        device = self.model.device  # rewards are scored on the CPU; advantages meet log-probs on the model's device
        rollout = rollout.to(device)
        completions = [c for p in parts for c in p[1]]
        per_func = torch.cat([p[2] for p in parts]).to(device)
        rewards = torch.cat([p[3] for p in parts]).to(device)
        batch = StepBatch(rollout, rows, completions, rewards, torch.zeros_like(rewards), per_func_rewards=per_func)
        batch.advantages = self.method.compute_advantages(self.ctx, batch)
        return batch

    def _generate_chunk(self, rows: list[dict[str, Any]], generator: torch.Generator
                        ) -> tuple[Rollout, list[str], torch.Tensor, torch.Tensor]:
        """One batched rollout of `rows` and its rewards: (rollout, completions, per-function rewards, rewards);
        on the CPU when other processes will receive it."""
        ids, mask = self._tokenize_prompts(rows)
        rollout = generate_rollout(self.model, ids, mask, self.sampling, self.operator, self.schedule, generator)
        # the padded prefill, then one position per decoding step but the last
        self.ctx.compute_tokens["forward"] += rollout.batch_size * (ids.shape[1] + max(rollout.completion_ids.shape[1] - 1, 0))
        completions = decode_completions(self.model, rollout,
                                         skip_latent=not self.method.decodes_latent_tokens(self.operator))
        columns = reward_columns(rows)
        extra = self._extra_reward_arguments(rollout)
        per_func, rewards = compute_rewards(self.reward_funcs, [r["prompt"] for r in rows],
                                            reward_completions(rows, completions), columns, self.args.reward_weights,
                                            extra)
        if self.dp.world_size > 1:
            rollout, per_func, rewards = rollout.to("cpu"), per_func.cpu(), rewards.cpu()
        return rollout, completions, per_func, rewards

    def _extra_reward_arguments(self, rollout: Rollout) -> dict[str, Any]:
        """TRL's further reward arguments (`completion_ids`, `trainer_state`), built only when a reward function
        takes them (the ids leave the device for it)."""
        wanted = {k for k in ("completion_ids", "trainer_state") if any(accepts_keyword(f, k) for f in self.reward_funcs)}
        extra: dict[str, Any] = {}
        if "completion_ids" in wanted:
            ids, lengths = rollout.completion_ids.tolist(), rollout.lengths.tolist()
            extra["completion_ids"] = [row[:n] for row, n in zip(ids, lengths, strict=True)]
        if "trainer_state" in wanted:
            extra["trainer_state"] = RewardState(self.global_step, self.max_steps,
                                                 self.global_step * self.prompts_per_step / len(self.rows))
        return extra

    def _collect_step_batch(self) -> tuple[StepBatch, dict[str, float]]:
        """One step's batch; with dynamic sampling, zero-std groups are dropped and refilled (DAPO)."""
        batch = self.generate_and_score(self._next_prompts(self.prompts_per_step))
        stats = self._reward_metrics(batch)
        if not self.args.dynamic_sampling:
            return batch, stats
        kept = [batch.select(self._informative_rows(batch))]
        have = kept[0].rewards.numel() // self.G
        for round_ in range(1, self.args.max_resample_rounds + 1):
            if have >= self.prompts_per_step:
                break
            more = self.generate_and_score(self._next_prompts(self.prompts_per_step - have), round_=round_)
            kept.append(more.select(self._informative_rows(more)))
            have += kept[-1].rewards.numel() // self.G
        stats["dynamic_sampling/kept_groups"] = float(have)
        merged = self._merge(kept)
        if merged.rewards.numel() == 0:  # nothing informative: train on the original batch (zero advantages)
            return batch, stats
        keep = torch.arange(min(have, self.prompts_per_step) * self.G)
        return merged.select(keep), stats

    def _informative_rows(self, batch: StepBatch) -> torch.Tensor:
        zero = zero_std_groups(batch.rewards, self.G)
        return (~zero).repeat_interleave(self.G).nonzero().squeeze(-1)

    def _merge(self, parts: list[StepBatch]) -> StepBatch:
        parts = [p for p in parts if p.rewards.numel()]
        if not parts:
            return StepBatch(None, [], [], torch.zeros(0), torch.zeros(0))  # type: ignore[arg-type]
        return StepBatch(
            Rollout.concat([p.rollout for p in parts], self.model.tokenizer.pad_token_id),
            [r for p in parts for r in p.rows], [c for p in parts for c in p.completions],
            torch.cat([p.rewards for p in parts]), torch.cat([p.advantages for p in parts]),
        )

    def _reward_metrics(self, batch: StepBatch) -> dict[str, float]:
        r = batch.rewards.view(-1, self.G)
        ro = batch.rollout
        m = {
            "reward": batch.rewards.nanmean().item(),
            "reward_std": r.std(dim=1).nanmean().item() if self.G > 1 else 0.0,
            "frac_reward_zero_std": zero_std_groups(batch.rewards, self.G).float().mean().item(),
            "completions/mean_length": ro.lengths.float().mean().item(),
            "completions/min_length": ro.lengths.min().item(),
            "completions/max_length": ro.lengths.max().item(),
            "completions/clipped_ratio": ro.truncated.float().mean().item(),
            "completions/mean_latent": ro.num_latent.float().mean().item(),
        }
        for name, j in zip(reward_metric_names(self.reward_funcs), range(len(self.reward_funcs)), strict=True):
            m[f"rewards/{name}/mean"] = batch.per_func_rewards[:, j].nanmean().item()
        return m

    # ------------------------------------------------------------------ loss
    def _prepare_for_update(self, batch: StepBatch) -> StepBatch:
        """Old and reference log-probs (no grad) and per-position advantages, once per rollout batch; returns
        this process's slice of `batch` (the whole batch in one process).

        Old log-probs are replayed on each process's slice and gathered, because per-position advantages may look
        at whole groups (Latent-GRPO's first-token selection); reference log-probs are only needed on the slice.
        """
        mine = self.dp.my_rows(batch.rewards.numel())
        with torch.no_grad(), self.accelerator.autocast():
            with self.gathered(self.model):
                if self.args.num_iterations == 1 and self.loss_temperature == self.args.temperature:
                    batch.old_logprobs = batch.rollout.logprobs  # on-policy: the rollout's own log-probs (TRL)
                else:
                    old = self.replay_in_chunks(self.model, batch.rollout.select(mine))
                    batch.old_logprobs = self._gather_rows(old)
                batch.token_advantages = self.method.token_advantages(self.ctx, batch)
            local = batch if self.dp.world_size == 1 else batch.select(mine)
            if self.ref_model is not None and self.args.beta > 0:
                with self.reference_context(), self.gathered(self.ref_model):
                    local.ref_logprobs = self.method.reference_logprobs(self.ctx, local)
        return local

    def _gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's rows of a per-row tensor (their slices are contiguous, in rank order)."""
        if self.dp.world_size == 1:
            return t
        return torch.cat([p.to(t.device) for p in self.dp.gather_objects([t.cpu()])])

    def reference_context(self) -> contextlib.AbstractContextManager:
        """Where `ref_model` computes reference log-probs: under LoRA the policy itself with its adapter disabled."""
        if self.ref_model is self.model:
            return self.model.adapter_disabled()
        return contextlib.nullcontext()

    def replay_in_chunks(self, model: LatentModel, rollout: Rollout) -> torch.Tensor:
        """No-grad per-position log-probs of a whole rollout batch, micro-batch by micro-batch."""
        return self.ctx.replay_in_chunks(model, rollout)

    @torch.no_grad()
    def replay_gap(self, batch: StepBatch) -> float:
        """The largest |replayed - rollout| log-prob over the batch's policy positions: the update scores exactly
        what the rollout sampled (0 up to float rounding). A trainer whose update scores otherwise overrides it."""
        replayed = self.replay_in_chunks(self.model, batch.rollout)
        mask = batch.rollout.policy_mask(self.operator)
        return float((replayed - batch.rollout.logprobs).abs()[mask].max()) if bool(mask.any()) else 0.0

    def loss_mask(self, micro: StepBatch) -> torch.Tensor:
        return self.ctx.loss_mask(micro)

    def compute_loss(self, micro: StepBatch, num_sequences: int, num_tokens: float, num_micro: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch, normalised so that summing micro-batch losses gives the full-batch loss."""
        a = self.args
        out = replay(self.model, self.operator, micro.rollout, temperature=self.loss_temperature,
                     return_hidden=self.method.needs_hidden)
        positions = micro.rollout.batch_size * (micro.rollout.prompt_ids.shape[1] + micro.rollout.completion_ids.shape[1])
        self.ctx.compute_tokens["forward"] += positions
        self.ctx.compute_tokens["backward"] += 2 * positions  # weight and activation gradients
        mask = self.loss_mask(micro)
        kinds = self.method.policy_kind_masks(self.ctx, micro, mask)
        if kinds:
            per_token, ind = mixed_policy_loss(out.logprobs, micro.old_logprobs, micro.token_advantages, kinds,
                                               epsilon_low=a.epsilon, epsilon_high=a.epsilon_high,
                                               dual_clip=a.dual_clip)
        else:  # the method's own objective replaces the policy gradient (e.g. value-head Latent RL)
            per_token, ind = out.logprobs * 0.0, {}
        metrics: dict[str, torch.Tensor] = {k: masked_mean(v.float(), mask).detach() for k, v in ind.items()}
        if a.beta > 0:
            kl = kl_penalty(out.logprobs, micro.ref_logprobs, a.kl_estimator)
            per_token = per_token + a.beta * kl
            metrics["kl"] = masked_mean(kl, mask).detach()
        loss = aggregate_loss(per_token, mask, a.loss_type, max_completion_length=a.max_completion_length,
                              num_sequences=num_sequences, num_tokens=num_tokens)
        extra = self.method.extra_loss(self.ctx, micro, out)
        if extra is not None:
            extra_loss, extra_metrics = extra
            loss = loss + extra_loss * micro.rollout.batch_size / num_sequences
            metrics.update({k: torch.as_tensor(v) for k, v in extra_metrics.items()})
        metrics["entropy"] = masked_mean(out.entropy, micro.rollout.completion_mask & ~micro.rollout.latent_mask).detach()
        return loss, metrics

    # ------------------------------------------------------------------ the loop
    #: whether each process updates on its own slice of the batch (gradients and metrics then summed over the
    #: processes), or every process on the whole gathered batch (replicas stay identical without an all-reduce)
    update_slices_batch: ClassVar[bool] = True

    def train_step(self) -> dict[str, float]:
        """One optimizer step in four phases: collect -> prepare -> update -> log."""
        t0 = time.perf_counter()
        self.ctx.global_step = self.global_step
        begin = self.method.on_train_begin(self.ctx) if self.global_step == 0 else {}
        t1 = time.perf_counter()
        batch, metrics = self.collect()
        metrics.update(begin)
        t_gen = time.perf_counter() - t1
        prepared = self.prepare(batch)
        metrics.update(self.update(prepared))
        metrics.update(self.step_metrics(batch, prepared))
        metrics.update(self.compute_metrics())
        metrics.update({"time/generation_s": t_gen, "time/step_s": time.perf_counter() - t0})
        return metrics

    def collect(self) -> tuple[StepBatch, dict[str, float]]:
        """Rollouts, rewards and advantages of one step (refilled by dynamic sampling), with their metrics."""
        self.ctx.compute_tokens.update(forward=0, backward=0)
        with self.gathered(self.model):
            with self.accelerator.autocast():
                batch, metrics = self._collect_step_batch()
            metrics.update(self.method.rollout_metrics(self.ctx, batch))
        self.model.drop_packed_head()  # the rollouts' packed LM head: stale after the update, and memory during it
        return batch, metrics

    def prepare(self, batch: StepBatch) -> Any:
        """What the update needs, computed once per batch (no grad): here old / reference log-probs, per-position
        advantages and this process's slice, with the global loss normalisers (see `rl.distributed`)."""
        num_tokens = float(self.loss_mask(batch).sum().clamp_min(1))
        return PreparedBatch(self._prepare_for_update(batch), num_sequences=batch.rewards.numel(), num_tokens=num_tokens)

    def loss_pieces(self, prepared: Any) -> Iterator[LossPiece]:
        """The update's loss as pieces, each backpropagated before the next is built (here: the GRPO surrogate of
        one micro-batch each). A piece returns its loss and its metrics already weighted to sum over the pieces."""
        local = prepared.local
        mb = self.args.per_device_train_batch_size
        n_local = local.rewards.numel()
        micro_idx = [torch.arange(s, min(s + mb, n_local)) for s in range(0, n_local, mb)]
        for idx in micro_idx:
            yield functools.partial(self._micro_loss, local.select(idx), prepared, len(micro_idx))

    def _micro_loss(self, micro: StepBatch, prepared: PreparedBatch, num_micro: int
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, m = self.compute_loss(micro, num_sequences=prepared.num_sequences, num_tokens=prepared.num_tokens,
                                    num_micro=num_micro)
        w = micro.rewards.numel() / prepared.num_sequences
        return loss, {k: float(v) * w for k, v in m.items()}

    def update(self, prepared: Any) -> dict[str, float]:
        """`num_iterations` optimizer steps on the prepared batch, each the shared `OptimizerSteps.step`: every loss
        piece backpropagated (under autocast; under FSDP as the root unit's forward), a non-finite loss on any
        process stops every process, gradients summed over processes (FSDP: reduce-scattered by FSDP), clipped,
        stepped; then the LR schedule and the step counter."""
        self.model.train()
        steps = OptimizerSteps(
            [p for g in self.optimizer.param_groups for p in g["params"]], self.optimizer,
            max_grad_norm=self.args.max_grad_norm, dp=self.dp, slices=self.update_slices_batch,
            sum_gradients=self.update_slices_batch and self.fsdp is None, backward=self.accelerator.backward,
            clip=self._clip_gradients, require_finite_grad_norm=self.accelerator.scaler is None,  # fp16: skips
            diverged_hint=lambda _: f"at step {self.global_step + 1}; the last checkpoint in {self.output_dir} is "
                                    "intact — lower the learning rate or check the rewards")

        def pieces(idx: list[int], share: list[int]) -> Iterator[tuple[torch.Tensor, dict[str, float]]]:
            for piece in self.loss_pieces(prepared):
                yield self.fsdp.forward(self.model, piece) if self.fsdp is not None else piece()

        sums: dict[str, float] = {}
        iters = self.args.num_iterations
        for _ in range(iters):
            out = steps.step(pieces, [])  # the batch is prepared already: no example indices to draw
            for k, v in out.stats.items():
                sums[k] = sums.get(k, 0.0) + v / iters
        self.scheduler.step()
        self.global_step += 1
        return {**sums, "loss": out.loss, "grad_norm": out.grad_norm,
                "learning_rate": self.scheduler.get_last_lr()[0]}

    def _clip_gradients(self, params: list[nn.Parameter], max_grad_norm: float) -> float:
        """Clip to `max_grad_norm` (0: no clipping) the launcher's way (fp16: unscaled first; FSDP: on the shards);
        returns the norm before clipping."""
        max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
        if self.fsdp is not None:
            return float(self.fsdp.clip_grad_norm_(params, max_norm))
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    def compute_metrics(self) -> dict[str, float]:
        """FLOPs of this step's policy-size passes, summed over processes (`latentrl.compute`: 2 x weights x
        positions; the backward in forward-equivalents), the counter every method is compared with."""
        c = self.dp.sum_floats({k: float(v) for k, v in self.ctx.compute_tokens.items()})
        fwd, bwd = forward_flops(self.main_params, c["forward"]), forward_flops(self.main_params, c["backward"])
        return {"compute/main_tokens": c["forward"], "compute/main_flops": fwd, "compute/main_backward_flops": bwd,
                "compute/total_flops": fwd + bwd}

    def step_metrics(self, batch: StepBatch, prepared: Any) -> dict[str, float]:
        """Metrics of the step measured after the update (here: the mean norm of the latent inputs)."""
        if self.operator is not None and bool(batch.rollout.latent_mask.any()):
            with self.gathered(self.model):
                return {"latent/norm_mean": self._latent_norm(batch.rollout)}
        return {}

    @torch.no_grad()
    def _latent_norm(self, rollout: Rollout) -> float:
        from latentrl.replay import completion_embeds

        emb = completion_embeds(self.model, self.operator, rollout)
        return emb[rollout.latent_mask & rollout.completion_mask].norm(dim=-1).mean().item()

    @property
    def max_steps(self) -> int:
        """Optimizer steps of the run (`run_length` of the current args: a caller may extend `args.max_steps`)."""
        return run_length(self.args, len(self.rows), self.prompts_per_step)

    def train(self, resume_from_checkpoint: str | bool | None = None) -> list[dict[str, float]]:
        """Run `self.max_steps` optimizer steps (`max_steps`, or `num_train_epochs` passes over the prompts); resume
        from a checkpoint (`True` = the latest in output_dir).

        A new run refuses an output_dir holding an earlier run (`overwrite_output_dir` replaces it), and any run
        refuses one another process is training into (`run_lock`); nothing is written into output_dir
        (run_config.json, metrics, TensorBoard, checkpoints) before the first step has succeeded, so a run that
        fails at once leaves an earlier run untouched."""
        with contextlib.ExitStack() as stack:
            self.dp.lock_run_folder(stack, self.output_dir)
            return self._train(resume_from_checkpoint)

    def _train(self, resume_from_checkpoint: str | bool | None) -> list[dict[str, float]]:
        a = self.args
        resume = resume_from_checkpoint if resume_from_checkpoint is not None else a.resume_from_checkpoint
        start_step = 0
        if resume:
            path = resume_checkpoint(self.output_dir, resume)
            check_same_run(path, self.method.name, a.model_name_or_path)
            if self.dp.is_main:
                set_aside_newer_checkpoints(self.output_dir, path)
            start_step = self._load(path)
            if self.dp.is_main:
                print(f"resuming from {path} (step {start_step} of {self.max_steps})", file=sys.stderr, flush=True)
                if start_step >= self.max_steps:
                    print(f"nothing to train: the checkpoint is at step {start_step} and max_steps is "
                          f"{self.max_steps}; raise max_steps (e.g. max_steps={start_step + self.max_steps}) to go on",
                          file=sys.stderr, flush=True)
        elif not self._wrote_run:  # a second train() of this trainer continues the run it wrote itself
            check_new_run(self.output_dir, overwrite=a.overwrite_output_dir, model_name_or_path=a.model_name_or_path)
        # only the main process writes logs and checkpoints; every process keeps the same history
        main = self.dp.is_main
        logger: MetricsLogger | None = None
        history = []
        try:
            with progress(self.max_steps - start_step, f"{self.method.name}", disable=None if main else True) as bar:
                t0 = time.perf_counter()
                while self.global_step < self.max_steps:
                    metrics = self.train_step()
                    if logger is None:  # the run is under way: now it may replace or extend what is on disk
                        if main and not resume and a.overwrite_output_dir and not self._wrote_run:
                            replace_run(self.output_dir)
                        self._wrote_run = True
                        logger = MetricsLogger(self.output_dir, a.report_to if main else ["none"],
                                               config_to_dict(a) if main else None,
                                               resume_step=start_step if resume and main else None)
                    if self.eval_rows and ((a.eval_steps and self.global_step % a.eval_steps == 0)
                                           or self.global_step == self.max_steps):
                        res = self.evaluate()
                        metrics.update({"eval/pass_at_1": res.pass_at_1,
                                        "eval/mean_reasoning_positions": res.mean_reasoning_positions})
                    history.append(metrics)
                    if self.global_step % a.logging_steps == 0 or self.global_step == self.max_steps:
                        logger.log(self.global_step, metrics)
                        if main and a.log_to_console:
                            bar.write(console_line(self.global_step, self.max_steps, metrics,
                                                   (time.perf_counter() - t0) / (self.global_step - start_step)),
                                      file=sys.stderr)
                    if (a.save_steps and self.global_step % a.save_steps == 0) or self.global_step == self.max_steps:
                        self.save()
                    bar.update(1)
        finally:
            if logger is not None:
                logger.close()
        return history

    def _sync_initial_weights(self) -> None:
        """Start every process from the main process's weights (model, side modules, operator parameters)."""
        if self.dp.world_size == 1:
            return
        modules = [self.model] + ([self.operator] if isinstance(self.operator, nn.Module) else [])
        self.dp.broadcast_parameters([t for m in modules for t in (*m.parameters(), *m.buffers())])

    def evaluate(self, rows: Sequence[Example | dict[str, Any]] | None = None, k: int = 0,
                 temperature: float | None = None):
        """Greedy Pass@1 (and Pass@k if k > 0) of the current policy with this method's operator and schedule.
        Pass@k samples answer tokens at `temperature`, by default the run's own (`args.temperature`: HRPO 0.5,
        Özeren 0.7, GRPO 1.0), so a method is scored at the temperature it trains with."""
        from latentrl.eval import evaluate

        data = as_rows(rows, "the evaluation data") if rows is not None else self.eval_rows
        if not data:
            raise ValueError("no evaluation data: pass eval_dataset to the trainer or rows to evaluate()")
        with self.gathered(self.model):
            kwargs = {**self.parts.eval_kwargs(self.args), "reward_func": answer_check(self.reward_funcs)}
            return evaluate(self.model, data, k=k, **kwargs,
                            temperature=self.args.temperature if temperature is None else temperature)

    def save(self) -> Path:
        """Checkpoint written by the main process; every process returns once it is complete on disk.
        Rollout randomness is a function of (seed, step), so no generator state is needed to resume exactly."""
        path = self.output_dir / f"checkpoint-{self.global_step}"
        save_model, optimizer = self.model.save_pretrained, self.optimizer
        if self.fsdp is not None:  # full state dicts, gathered on the main process: the same files as 1 process
            state = self.fsdp.full_model_state(self.model)
            optimizer = self.fsdp.optimizer_state(self.model, self.optimizer.optimizer)
            save_model = lambda p: self.model.save_pretrained(p, full_state_dict=state)  # noqa: E731
        save_weights, draws, settings = save_model, list(self.train_data or ()), config_to_dict(self.args)

        def save_model(p: Path) -> None:  # a checkpoint copied out of its run folder still scores as trained
            save_weights(p)
            if draws:
                write_train_draws(p, draws)
            (p / RUN_CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        if self.dp.is_main:
            path = save_checkpoint(
                self.output_dir, self.global_step, save_model=save_model, optimizer=optimizer,
                scheduler=self.scheduler, total_limit=self.args.save_total_limit,
                extra_state={"data_epoch": self.data_epoch, "data_cursor": self.data_cursor,
                             **run_identity(self.method.name, self.args.model_name_or_path), **self._launch()},
            )
        self.dp.barrier()
        return path

    def _launch(self) -> dict[str, Any]:
        """How this run is launched where its settings do not say it: processes (the global batch is
        per_device_train_batch_size x processes) and the precision accelerate took from its launcher or config."""
        return {"num_processes": self.dp.world_size, "mixed_precision": str(self.accelerator.mixed_precision)}

    def _warn_if_launched_otherwise(self, path: Path, saved: dict[str, Any]) -> None:
        """A resume under another launch goes on with another global batch or precision: said, not refused (a
        machine may have fewer devices now), with the launch that continues the same run. `saved`: the
        checkpoint's trainer state."""
        now = self._launch()
        changed = [k for k in now if k in saved and saved[k] != now[k]]
        if changed and self.dp.is_main:
            what = " and ".join({"num_processes": "global batch", "mixed_precision": "precision"}[k] for k in changed)
            warnings.warn(f"resuming {path} with {', '.join(f'{k} {saved[k]} -> {now[k]}' for k in changed)}: the "
                          f"run goes on with another {what} than it was trained with; launch it as it was (torchrun "
                          f"--nproc_per_node {saved.get('num_processes', 1)}, mixed_precision="
                          f"{saved.get('mixed_precision')}) to continue the same run", stacklevel=4)

    def _load(self, path: Path) -> int:
        if self.fsdp is not None:
            self.fsdp.load_model(self.model, path)
            optimizer = self.fsdp.optimizer_loader(self.model, self.optimizer.optimizer)
        else:
            self.model.load_weights(path)
            optimizer = self.optimizer
        state = load_checkpoint(path, optimizer=optimizer, scheduler=self.scheduler)
        self._warn_if_launched_otherwise(path, state)
        self.global_step = int(state["step"])
        self.data_epoch, self.data_cursor = int(state["data_epoch"]), int(state["data_cursor"])
        self._order = self._epoch_order(self.data_epoch)
        return self.global_step
