"""Coconut: curriculum SFT of continuous thoughts (Hao et al. 2024, arXiv 2412.06769), and LatR's no-BPTT variant.

A *continuous thought* is the last-layer hidden state (post final norm) of the previous position, fed back as the
next input embedding. Training follows a curriculum over the reasoning steps of each example:

    stage 0   question || <|start-latent|> <|end-latent|> s1 s2 s3 #### answer <eos>
    stage k   question || <|start-latent|> [k*c x <|latent|>] <|end-latent|> s(k+1) ... #### answer <eos>
    stage > max_latent_stage: every language step is dropped (max_latent_stage*c thoughts with pad_latent_to_max)

The loss is the mean next-token cross-entropy over the remaining steps, the answer and eos (question, thoughts and
both markers are masked), as in the authors' `dataset.py`. Stage 0 keeps the two (empty) markers, as the reference
code does, so a stage-0 model is already prompted the way later stages are.

**KV-cached multi-pass forward** (`coconut_forward`). With n thoughts the sequence needs n+1 sequential forwards:
the first runs the prefix up to the first thought, each of the next n-1 runs a single column (whose input is the
hidden state just produced), the last runs the rest. Every pass reuses the KV cache of the earlier ones and keeps
the autograd graph, so gradients flow through every thought (back-propagation through time, BPTT).

Batching different thought counts: rows are **left-padded so the first thought of every row sits in the same
column** `latent_start` (position ids restart at 0 after the padding, which is masked). Row i's thoughts then fill
columns `latent_start .. latent_start + n_i - 1`; pass p fills column `latent_start + p` for the rows that still
have a thought there and is an ordinary token column for the others. Right padding completes the batch. This is
the scheme of the authors' collator, with the KV cache kept across passes (the reference truncates and recomputes).

**No-BPTT variant** (`bptt: false`; Özeren & Aßenmacher's LatR, arXiv 2512.11816): the thoughts are computed with
the same KV-cached passes under `torch.no_grad()`, inserted as constants, and one ordinary full forward gives the
cross-entropy. The gradient then reaches the model only through how it reads the (fixed) thoughts.

    cfg = CoconutConfig(c_thought=1, max_latent_stage=4, epochs_per_stage=1, num_epochs=5, start_stage=1)
    history = train_coconut(cfg, model, train_examples, eval_examples)
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from latentrl.config import (
    REPORT_TO,
    WANDB_MISSING,
    BaseConfig,
    ConfigError,
    cfg_field,
    config_to_dict,
    module_available,
)
from latentrl.data.schema import ANSWER_MARK, Example, format_prompt
from latentrl.model import LatentModel, LatentTokens
from latentrl.sft.gate import STAGE_ADVANCE_CHOICES, StageGate

__all__ = [
    "IGNORE_INDEX",
    "CoconutBatch",
    "CoconutConfig",
    "CoconutHistory",
    "CoconutOutput",
    "CoconutSample",
    "TokenizedExample",
    "build_coconut_init",
    "build_stage_sample",
    "coconut_eval_thoughts",
    "coconut_evaluate",
    "coconut_forward",
    "coconut_gate_metrics",
    "coconut_generate",
    "coconut_operator",
    "coconut_prompt_text",
    "coconut_rollout",
    "coconut_schedule",
    "collate_coconut",
    "stage_of_epoch",
    "stage_samples",
    "tokenize_example",
    "train_coconut",
]

IGNORE_INDEX = -100
RESET_CHOICES = ("stage", "epoch", "never")
GATE_METRICS = ("next_step_accuracy", "next_step_loss", "loss")
EVAL_CHOICES = ("stage", "epoch", "no")


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class CoconutConfig(BaseConfig):
    """Options of Coconut curriculum SFT (Hao et al. 2024) and its no-BPTT variant (Özeren & Aßenmacher's LatR)."""

    # --- curriculum ---------------------------------------------------------------------------------------------
    c_thought: int = cfg_field(
        1, "Continuous thoughts per replaced language step, c (paper: 1 for ProsQA/ProntoQA, 2 for GSM8k-Aug).", min=1
    )
    max_latent_stage: int = cfg_field(
        6,
        "Last stage that still replaces steps one by one; later stages drop every language step (paper: 6 for "
        "ProsQA/ProntoQA, 3 for GSM8k-Aug).",
        min=0,
    )
    epochs_per_stage: int = cfg_field(
        5, "Epochs spent in each stage; stage = epoch // epochs_per_stage (paper: 5 ProsQA/ProntoQA, 3 GSM8k).", min=1
    )
    num_epochs: int = cfg_field(
        50,
        "Total epochs counted from epoch 0, skipped ones included (paper: 50 ProsQA/ProntoQA, 25 GSM8k). Epochs past "
        "the last stage train with every step dropped.",
        min=1,
    )
    start_stage: int = cfg_field(
        0,
        "First stage trained; training starts at epoch start_stage * epochs_per_stage (the authors' `resume`: GSM8k "
        "starts at stage 1 from a CoT-SFT checkpoint; LatR starts at stage 2 = 4 thoughts with c=2).",
        min=0,
    )
    pad_latent_to_max: bool = cfg_field(
        True,
        "Past max_latent_stage, use max_latent_stage*c thoughts even for examples with fewer steps (paper configs: "
        "true); false: min(#steps, max_latent_stage)*c, and evaluation then uses each example's own step count.",
    )
    uniform_prob: float = cfg_field(
        0.0,
        "Probability that a training example is built at a stage drawn uniformly from 0..#steps instead of the "
        "scheduled one (paper: 0.0; mixes earlier stages in to avoid forgetting). Seeded per epoch.",
        min=0.0,
        max=1.0,
    )
    bptt: bool = cfg_field(
        True,
        "Back-propagate through the chain of thoughts (Coconut). false: thoughts computed without grad, then one "
        "full forward for the cross-entropy (Özeren & Aßenmacher's LatR).",
    )
    probe_tokens: list[int] = cfg_field(
        [],
        "Thought probe (our addition, not in Coconut; empty = off): thought j of the c thoughts that replace a step "
        "is trained, through the LM head applied to the hidden state it outputs (the next thought), to predict the "
        "step's token at index probe_tokens[j] (Python indexing; e.g. [-2] = the result z of chain_sum's "
        "`<< x + y = z >>`). Teaches the thought to carry the step's result.",
    )
    probe_weight: float = cfg_field(1.0, "Weight of the thought-probe cross-entropy (used when probe_tokens is set).",
                                    min=0.0)
    probe_head_tokens: list[list[int]] = cfg_field(
        [],
        "Linear thought probe (our addition, not in Coconut; empty = off): thought j of the c thoughts that replace a "
        "step is trained, through auxiliary linear heads (one per listed index; training only, never saved), to "
        "predict each of the step's tokens at the indices probe_head_tokens[j] (Python indexing; indices outside a "
        "step are skipped). For steps whose result has more tokens than there are thoughts, e.g. iCoT's running "
        "sums: [[-8, -7, -6], [-5, -4, -3], [-2, -1]] probes every digit. Weighted by probe_weight.",
    )
    stage_advance: str = cfg_field(
        "fixed",
        "When the curriculum moves to the next stage: fixed = after epochs_per_stage epochs (the authors' schedule; "
        "num_epochs ends training); converged = when the gate metric on the gate examples has met gate_threshold on "
        "gate_patience consecutive gate evaluations (every gate_eval_steps steps), or after max_steps_per_stage "
        "steps; training ends when final_stage is done (num_epochs and epochs_per_stage are then unused).",
        choices=STAGE_ADVANCE_CHOICES,
    )
    gate_metric: str = cfg_field(
        "next_step_accuracy",
        "Converged mode's gate, measured teacher-forced at the current stage: next_step_accuracy = fraction of gate "
        "examples whose first target segment after the thoughts (the next language step, or the answer when none "
        "is left) is predicted exactly; next_step_loss = mean cross-entropy (nats) summed over that segment; loss = "
        "token-mean cross-entropy of the whole target.",
        choices=GATE_METRICS,
    )
    gate_threshold: float = cfg_field(
        0.9, "Gate threshold: accuracy >= it, or a loss <= it, counts as a passing gate evaluation.", min=0.0
    )
    gate_patience: int = cfg_field(2, "Consecutive passing gate evaluations that advance the stage.", min=1)
    gate_eval_steps: int = cfg_field(16, "Optimizer steps between gate evaluations (converged mode).", min=1)
    gate_num_examples: int = cfg_field(
        256, "Gate examples used per gate evaluation (the first ones of gate_examples, else of the eval set).", min=1
    )
    min_steps_per_stage: int = cfg_field(0, "Converged mode: never advance on the gate before this many steps.",
                                         min=0)
    max_steps_per_stage: int = cfg_field(
        600, "Converged mode: advance after this many steps in a stage even if the gate never passed (logged as "
        "reason max_steps).", min=1
    )
    final_stage: int | None = cfg_field(
        None,
        "Converged mode: the last stage trained (training ends when it passes its gate or its step cap); null = "
        "max_latent_stage + 1, the stage that drops every language step.",
        min=0,
    )

    # --- optimisation -------------------------------------------------------------------------------------------
    learning_rate: float = cfg_field(1e-4, "AdamW learning rate, constant (paper: 1e-4).", min=0.0, min_exclusive=True)
    weight_decay: float = cfg_field(0.01, "AdamW weight decay on every parameter (paper: 0.01).", min=0.0)
    adam_beta1: float = cfg_field(0.9, "AdamW beta1.", min=0.0, max=1.0, max_exclusive=True)
    adam_beta2: float = cfg_field(0.999, "AdamW beta2.", min=0.0, max=1.0, max_exclusive=True)
    adam_epsilon: float = cfg_field(1e-8, "AdamW epsilon.", min=0.0, min_exclusive=True)
    reset_optimizer: str = cfg_field(
        "stage",
        "When the AdamW state is re-created: stage = at every curriculum stage (the paper); epoch = at every epoch "
        "(what the authors' run.py does); never.",
        choices=RESET_CHOICES,
    )
    per_device_train_batch_size: int = cfg_field(
        32, "Examples per micro-batch (paper: 32 per GPU on 4 GPUs = 128 per step).", min=1
    )
    gradient_accumulation_steps: int = cfg_field(
        1,
        "Micro-batches per optimizer step. The loss is the token mean over the whole step, so this never changes "
        "the update.",
        min=1,
    )
    max_grad_norm: float = cfg_field(0.0, "Clip gradients to this global norm; 0 disables clipping (paper: none).",
                                     min=0.0)
    max_steps: int | None = cfg_field(
        None, "Stop after this many optimizer steps in total (a time box); null: run every epoch.", min=0
    )
    max_length: int = cfg_field(
        512, "Training sequences longer than this many tokens (thoughts included) are an error, never cut.", min=2
    )
    seed: int = cfg_field(0, "Seed of the data order, of uniform_prob's stage draws and of torch's global RNG.")

    # --- model and data (read by callers that load them: `latentrl bench`, scripts) ------------------------------
    model_name_or_path: str | None = cfg_field(
        None, "Checkpoint the caller loads and trains (e.g. a CoT-SFT model for GSM8k); train_coconut takes a model."
    )
    dataset: str | None = cfg_field(
        None, "Training data the caller loads (task name or file; `latentrl.data.load_examples`)."
    )
    eval_dataset: str | None = cfg_field(None, "Evaluation data the caller loads (task name or file).")
    num_train_examples: int = cfg_field(
        2000, "Training examples the caller loads (train_coconut trains on whatever it is given).", min=1
    )
    num_eval_examples: int = cfg_field(200, "Evaluation examples the caller loads.", min=0)

    # --- logging / evaluation -----------------------------------------------------------------------------------
    logging_steps: int = cfg_field(10, "Log training loss / accuracy every this many optimizer steps.", min=1)
    eval_strategy: str = cfg_field(
        "stage",
        "Greedy Pass@1 on the eval set (with that stage's thought count) after every stage, every epoch, or never "
        "(no); the final evaluation always runs when eval data is given.",
        choices=EVAL_CHOICES,
    )
    eval_batch_size: int = cfg_field(64, "Prompts per batch when decoding the eval set.", min=1)
    max_new_positions: int | None = cfg_field(
        None,
        "Decoding budget of each eval completion (thoughts and markers included); null = max_latent_stage * c_thought "
        "+ 1 + the longest CoT target (eos included) + 8.",
        min=1,
    )
    output_dir: str | None = cfg_field(
        None, "Write metrics.jsonl (and TensorBoard logs, see report_to) here; null keeps metrics in memory only."
    )
    overwrite_output_dir: bool = cfg_field(
        False,
        "An output_dir that holds an earlier run is refused, so runs never mix; true replaces the earlier run "
        "(HF Trainer name).",
    )
    report_to: list[str] = cfg_field(
        ["jsonl"],
        "Metric sinks when output_dir is set: jsonl (output_dir/metrics.jsonl), tensorboard (output_dir/tb), wandb "
        "(when installed; as GRPOConfig.report_to).",
        choices=REPORT_TO,
    )
    disable_tqdm: bool | None = cfg_field(
        None, "Hide the progress bar; null = hide it when stderr is not a terminal or $CI is set."
    )

    def validate(self) -> None:
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ConfigError(f"report_to={self.report_to}: 'none' cannot be combined with other sinks")
        if "wandb" in self.report_to and not module_available("wandb"):
            raise ConfigError(WANDB_MISSING)
        if len(self.probe_tokens) > self.c_thought:
            raise ConfigError(f"probe_tokens has {len(self.probe_tokens)} entries for c_thought={self.c_thought} "
                              "thoughts per step")
        if len(self.probe_head_tokens) > self.c_thought:
            raise ConfigError(f"probe_head_tokens has {len(self.probe_head_tokens)} entries for "
                              f"c_thought={self.c_thought} thoughts per step")
        if self.stage_advance == "converged":
            if self.final_stage is not None and self.final_stage < self.start_stage:
                raise ConfigError(f"final_stage ({self.final_stage}) is before start_stage ({self.start_stage})")
            if self.min_steps_per_stage > self.max_steps_per_stage:
                raise ConfigError(f"min_steps_per_stage ({self.min_steps_per_stage}) exceeds max_steps_per_stage "
                                  f"({self.max_steps_per_stage})")
            return
        if self.start_stage * self.epochs_per_stage >= self.num_epochs:
            raise ConfigError(
                f"start_stage ({self.start_stage}) * epochs_per_stage ({self.epochs_per_stage}) = "
                f"{self.start_stage * self.epochs_per_stage} leaves no epoch to train: num_epochs is {self.num_epochs}"
            )

    @property
    def num_probe_heads(self) -> int:
        """Auxiliary linear heads of the linear thought probe (one per (thought, index) of probe_head_tokens)."""
        return sum(len(ix) for ix in self.probe_head_tokens)

    @property
    def start_epoch(self) -> int:
        return self.start_stage * self.epochs_per_stage

    @property
    def last_stage(self) -> int:
        """Converged mode's final stage (final_stage, else max_latent_stage + 1)."""
        return self.final_stage if self.final_stage is not None else self.max_latent_stage + 1

    def make_gate(self) -> StageGate:
        """The converged-mode gate these options describe."""
        return StageGate(threshold=self.gate_threshold, patience=self.gate_patience,
                         max_steps=self.max_steps_per_stage, min_steps=self.min_steps_per_stage,
                         higher_is_better=self.gate_metric == "next_step_accuracy")


def stage_of_epoch(cfg: CoconutConfig, epoch: int) -> int:
    """The scheduled curriculum stage of `epoch` (0-based): `epoch // epochs_per_stage`."""
    return epoch // cfg.epochs_per_stage


# ---------------------------------------------------------------------------------------------------------------
# Data: tokenized examples and per-stage samples
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TokenizedExample:
    """One example cut at its step boundaries: prompt ids, ids of each step (with its leading space), answer ids.

    `prompt + sum(steps) + answer` is the token sequence of `format_prompt(ex) + format_cot(ex) + eos` (each step is
    tokenized as `" " + step`, the answer part as `" #### answer"`, then eos), so stage 0 is the CoT-SFT target.
    """

    prompt: list[int]
    steps: list[list[int]]
    answer: list[int]  # ' #### answer' ids + eos


@dataclasses.dataclass
class CoconutSample:
    """One training sequence of a stage: input ids, labels (-100 = no loss), where its thoughts are."""

    input_ids: list[int]
    labels: list[int]
    latent_start: int  # index of the first thought (= the position right after <|start-latent|>)
    num_latent: int
    stage: int  # the stage it was built at (differs from the scheduled one when uniform_prob drew another)
    probe: list[int] = dataclasses.field(default_factory=list)  # per thought: thought-probe target id or -100
    # per thought: the linear probe heads' target ids (-100 = none), cfg.num_probe_heads each; empty when off
    probe_heads: list[list[int]] = dataclasses.field(default_factory=list)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_example(tokenizer, ex: Example) -> TokenizedExample:
    """Tokenize an example at its step boundaries (see `TokenizedExample`)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("Coconut SFT needs a tokenizer with an eos token (the model must learn to stop)")
    steps = [_ids(tokenizer, " " + s) for s in ex.steps]
    answer = _ids(tokenizer, f" {ANSWER_MARK} {ex.answer}") + [tokenizer.eos_token_id]
    tok = TokenizedExample(_ids(tokenizer, format_prompt(ex)), steps, answer)
    unk = tokenizer.unk_token_id
    if unk is not None and (unk in tok.prompt or unk in tok.answer or any(unk in s for s in steps)):
        raise ValueError(f"example has words the tokenizer does not know ({tokenizer.unk_token!r}): {ex!r}")
    return tok


def _latent_ids(model_or_ids) -> tuple[int, int, int]:
    ids = getattr(model_or_ids, "latent_ids", model_or_ids)
    if ids is None:
        raise ValueError("the model has no Coconut latent tokens; call model.add_latent_tokens() (or load a "
                         "checkpoint saved with them) before Coconut training or generation")
    return ids.start, ids.latent, ids.end


def build_stage_sample(
    tok: TokenizedExample,
    stage: int,
    cfg: CoconutConfig,
    latent_ids,
    rng: random.Random | None = None,
) -> CoconutSample:
    """The training sequence of one example at curriculum `stage` (the authors' `get_cot_latent_dataset` rule).

    With probability `uniform_prob` (drawn from `rng`) the stage is replaced by one drawn uniformly from
    0..#steps. A stage k <= max_latent_stage skips the first k steps and puts k*c thoughts in their place (k may
    exceed #steps: then every step is skipped and there are still k*c thoughts, as in the reference code); a stage
    past max_latent_stage skips all steps and uses max_latent_stage*c thoughts (pad_latent_to_max) or
    min(#steps, max_latent_stage)*c.
    """
    start_id, latent_id, end_id = _latent_ids(latent_ids)
    if cfg.uniform_prob > 0:
        if rng is None:
            raise ValueError("uniform_prob > 0 needs a seeded random.Random")
        if rng.random() < cfg.uniform_prob:
            stage = rng.randrange(len(tok.steps) + 1)
    if stage > cfg.max_latent_stage:
        n_skip = len(tok.steps)
        n_latent = cfg.max_latent_stage if cfg.pad_latent_to_max else min(len(tok.steps), cfg.max_latent_stage)
    else:
        n_skip, n_latent = stage, stage
    n_latent *= cfg.c_thought
    head = tok.prompt + [start_id] + [latent_id] * n_latent + [end_id]
    tail = [t for step in tok.steps[n_skip:] for t in step] + tok.answer
    probe = [IGNORE_INDEX] * n_latent
    if cfg.probe_tokens:
        for q in range(n_latent):
            i, j = divmod(q, cfg.c_thought)
            if i < len(tok.steps) and j < len(cfg.probe_tokens):
                step = tok.steps[i]
                if -len(step) <= cfg.probe_tokens[j] < len(step):
                    probe[q] = step[cfg.probe_tokens[j]]
    heads: list[list[int]] = []
    if cfg.probe_head_tokens:
        offsets = [sum(len(ix) for ix in cfg.probe_head_tokens[:j]) for j in range(len(cfg.probe_head_tokens))]
        for q in range(n_latent):
            i, j = divmod(q, cfg.c_thought)
            row = [IGNORE_INDEX] * cfg.num_probe_heads
            if i < len(tok.steps) and j < len(cfg.probe_head_tokens):
                step = tok.steps[i]
                for k, ix in enumerate(cfg.probe_head_tokens[j]):
                    if -len(step) <= ix < len(step):
                        row[offsets[j] + k] = step[ix]
            heads.append(row)
    return CoconutSample(
        input_ids=head + tail,
        labels=[IGNORE_INDEX] * len(head) + tail,
        latent_start=len(tok.prompt) + 1,
        num_latent=n_latent,
        stage=stage,
        probe=probe,
        probe_heads=heads,
    )


def stage_samples(
    tokenized: Sequence[TokenizedExample], stage: int, cfg: CoconutConfig, latent_ids, epoch: int = 0
) -> list[CoconutSample]:
    """Every example at `stage`; the uniform_prob draws are seeded by (seed, epoch), so runs are reproducible."""
    rng = random.Random(cfg.seed * 1_000_003 + epoch)
    return [build_stage_sample(t, stage, cfg, latent_ids, rng) for t in tokenized]


# ---------------------------------------------------------------------------------------------------------------
# Batches and the multi-pass forward
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CoconutBatch:
    """Rows aligned so that every row's first thought is in column `latent_start` (left padding), right-padded."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) long
    position_ids: torch.Tensor  # (B, T): 0.. from each row's first real token (0 on left padding)
    labels: torch.Tensor  # (B, T), -100 where no loss
    latent_start: int
    num_latent: torch.Tensor  # (B,) thoughts per row, in columns latent_start .. latent_start + n - 1
    probe_labels: torch.Tensor | None = None  # (B, T): thought-probe target of the output at a thought column
    probe_head_labels: torch.Tensor | None = None  # (B, T, K): the K linear probe heads' targets at a thought column

    def to(self, device) -> "CoconutBatch":
        return dataclasses.replace(
            self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device), labels=self.labels.to(device),
            num_latent=self.num_latent.to(device),
            probe_labels=self.probe_labels.to(device) if self.probe_labels is not None else None,
            probe_head_labels=self.probe_head_labels.to(device) if self.probe_head_labels is not None else None,
        )

    @property
    def latent_mask(self) -> torch.Tensor:
        """(B, T) bool: the thought positions."""
        cols = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        rel = cols[None, :] - self.latent_start
        return (rel >= 0) & (rel < self.num_latent[:, None])


def collate_coconut(samples: Sequence[CoconutSample], pad_id: int) -> CoconutBatch:
    """Left-pad each row by `max(latent_start) - latent_start` so the thoughts line up, then right-pad."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    start = max(s.latent_start for s in samples)
    width = max(start - s.latent_start + len(s.input_ids) for s in samples)
    B = len(samples)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        off, n = start - s.latent_start, len(s.input_ids)
        ids[i, off : off + n] = torch.as_tensor(s.input_ids)
        mask[i, off : off + n] = 1
        pos[i, off : off + n] = torch.arange(n)
        labels[i, off : off + n] = torch.as_tensor(s.labels)
    num = torch.as_tensor([s.num_latent for s in samples], dtype=torch.long)
    probe = None
    if any(t != IGNORE_INDEX for s in samples for t in s.probe):
        probe = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
        for i, s in enumerate(samples):
            if s.probe:
                probe[i, start : start + len(s.probe)] = torch.as_tensor(s.probe)
    heads = None
    if any(t != IGNORE_INDEX for s in samples for row in s.probe_heads for t in row):
        k = max(len(row) for s in samples for row in s.probe_heads)
        heads = torch.full((B, width, k), IGNORE_INDEX, dtype=torch.long)
        for i, s in enumerate(samples):
            if s.probe_heads:
                heads[i, start : start + len(s.probe_heads)] = torch.as_tensor(s.probe_heads)
    return CoconutBatch(ids, mask, pos, labels, start, num, probe, heads)


@dataclasses.dataclass
class CoconutOutput:
    loss: torch.Tensor  # summed CE / normalizer
    num_tokens: int
    token_accuracy: float
    num_forwards: int
    thought_norm: float  # mean L2 norm of the thoughts (0 without thoughts)
    hidden: torch.Tensor | None = None  # (B, T, H) last hidden states, if asked for
    probe_loss: float = float("nan")  # mean thought-probe cross-entropy (nan without probe targets)
    probe_accuracy: float = float("nan")
    probe_head_loss: float = float("nan")  # mean linear-probe cross-entropy (nan without probe-head targets)
    probe_head_accuracy: float = float("nan")


def _thought_passes(
    model: LatentModel,
    embeds: torch.Tensor,
    batch: CoconutBatch,
    *,
    run_tail: bool,
) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """The KV-cached passes. Returns (hidden chunks covering the columns run, thoughts (B, n_max, H), #forwards).

    Thought p of a row (0-based) is the hidden state the model produced at column latent_start + p - 1. Rows with
    fewer thoughts get their token embedding in those columns. With `run_tail` the last pass runs every remaining
    column (the chunks then cover [0, T)); otherwise it stops once the last thought is formed.
    """
    L0 = batch.latent_start
    n = batch.num_latent
    n_max = int(n.max()) if n.numel() else 0
    attn, pos = batch.attention_mask, batch.position_ids
    chunks: list[torch.Tensor] = []
    thoughts: list[torch.Tensor] = []
    if n_max == 0:
        if run_tail:
            _, h, _ = model.forward_embeds(embeds, attention_mask=attn, position_ids=pos, compute_logits=False)
            chunks.append(h)
        return chunks, embeds.new_zeros((embeds.shape[0], 0, embeds.shape[2])), int(run_tail)
    cache = DynamicCache()
    _, h, cache = model.forward_embeds(embeds[:, :L0], attention_mask=attn[:, :L0], position_ids=pos[:, :L0],
                                       past_key_values=cache, use_cache=True, compute_logits=False)
    forwards = 1
    chunks.append(h)
    col = L0
    # the input of column `col`: a thought for rows that have one there, else the token embedding
    pending = torch.where((n > 0)[:, None], h[:, -1].to(embeds.dtype), embeds[:, col])
    thoughts.append(pending)
    for p in range(1, n_max):
        _, h, cache = model.forward_embeds(pending[:, None], attention_mask=attn[:, : col + 1],
                                           position_ids=pos[:, col : col + 1], past_key_values=cache,
                                           use_cache=True, compute_logits=False)
        forwards += 1
        chunks.append(h)
        col += 1
        pending = torch.where((n > p)[:, None], h[:, -1].to(embeds.dtype), embeds[:, col])
        thoughts.append(pending)
    if run_tail:
        tail = torch.cat([pending[:, None], embeds[:, col + 1 :]], dim=1)
        _, h, _ = model.forward_embeds(tail, attention_mask=attn, position_ids=pos[:, col:], past_key_values=cache,
                                       use_cache=True, compute_logits=False)
        forwards += 1
        chunks.append(h)
    return chunks, torch.stack(thoughts, dim=1), forwards


def _insert_thoughts(embeds: torch.Tensor, thoughts: torch.Tensor, latent_start: int) -> torch.Tensor:
    """`embeds` with columns latent_start .. latent_start + n_max - 1 replaced by `thoughts` (no in-place write)."""
    n_max = thoughts.shape[1]
    if n_max == 0:
        return embeds
    return torch.cat([embeds[:, :latent_start], thoughts.to(embeds.dtype), embeds[:, latent_start + n_max :]], dim=1)


def coconut_forward(
    model: LatentModel,
    batch: CoconutBatch,
    *,
    bptt: bool = True,
    normalizer: float | None = None,
    return_hidden: bool = False,
    probe_weight: float = 0.0,
    probe_heads: nn.Module | None = None,
) -> CoconutOutput:
    """Cross-entropy of a Coconut batch, with thoughts formed by the KV-cached multi-pass forward.

    `bptt=True`: n_max + 1 forwards, the graph kept through every thought. `bptt=False` (LatR): n_max forwards under
    no_grad to form the thoughts, then one full forward over the sequence with the thoughts as constants.
    The loss is the *sum* of token cross-entropies divided by `normalizer` (default: this batch's label count), so
    gradient accumulation can divide by the label count of the whole optimizer step. With `probe_weight` > 0 and
    probe labels in the batch, `probe_weight` x the mean thought-probe cross-entropy (scaled by this batch's share
    of `normalizer`) is added (see `CoconutConfig.probe_tokens`). With `probe_heads` (a Linear from the hidden
    size to K x vocab) and probe-head labels, the same is done for the linear probe (`probe_head_tokens`).
    """
    batch = batch.to(model.device)
    embeds = model.embed(batch.input_ids)
    if bptt:
        chunks, thoughts, forwards = _thought_passes(model, embeds, batch, run_tail=True)
        hidden = torch.cat(chunks, dim=1)
    else:
        with torch.no_grad():
            _, thoughts, forwards = _thought_passes(model, embeds.detach(), batch, run_tail=False)
        # rows without a thought in a column carry the token embedding there: take it from the live embeddings
        n_max = thoughts.shape[1]
        if n_max:
            live = embeds[:, batch.latent_start : batch.latent_start + n_max]
            has = batch.latent_mask[:, batch.latent_start : batch.latent_start + n_max]
            thoughts = torch.where(has[..., None], thoughts.detach().to(live.dtype), live)
        full = _insert_thoughts(embeds, thoughts, batch.latent_start)
        _, hidden, _ = model.forward_embeds(full, attention_mask=batch.attention_mask,
                                            position_ids=batch.position_ids, compute_logits=False)
        forwards += 1
    # logits only where a label follows: hidden at t predicts labels[t + 1]
    target = batch.labels[:, 1:]
    sel = target != IGNORE_INDEX
    count = int(sel.sum())
    if count == 0:
        raise ValueError("no target tokens in the batch (all labels are -100)")
    logits = model.lm_head(hidden[:, :-1][sel]).float()
    gold = target[sel]
    loss_sum = F.cross_entropy(logits, gold, reduction="sum")
    loss = loss_sum / (normalizer if normalizer is not None else count)
    probe_loss = probe_acc = float("nan")
    if batch.probe_labels is not None:
        psel = batch.probe_labels != IGNORE_INDEX
        if bool(psel.any()):
            plogits = model.lm_head(hidden[psel]).float()
            pgold = batch.probe_labels[psel]
            pce = F.cross_entropy(plogits, pgold)
            if probe_weight > 0:
                loss = loss + probe_weight * pce * (count / (normalizer if normalizer is not None else count))
            probe_loss = float(pce.detach())
            probe_acc = float((plogits.argmax(-1) == pgold).float().mean())
    head_loss = head_acc = float("nan")
    if probe_heads is not None and batch.probe_head_labels is not None:
        hl = batch.probe_head_labels  # (B, T, K)
        rows = (hl != IGNORE_INDEX).any(-1)
        if bool(rows.any()):
            k = hl.shape[-1]
            hlogits = probe_heads(hidden[rows].float()).view(-1, k, probe_heads.out_features // k)
            hgold = hl[rows]
            hsel = hgold != IGNORE_INDEX
            hce = F.cross_entropy(hlogits[hsel], hgold[hsel])
            if probe_weight > 0:
                loss = loss + probe_weight * hce * (count / (normalizer if normalizer is not None else count))
            head_loss = float(hce.detach())
            head_acc = float((hlogits[hsel].argmax(-1) == hgold[hsel]).float().mean())
    with torch.no_grad():
        acc = float((logits.argmax(-1) == gold).float().mean())
        lat = batch.latent_mask[:, batch.latent_start : batch.latent_start + thoughts.shape[1]]
        norm = float(thoughts[lat].float().norm(dim=-1).mean()) if bool(lat.any()) else 0.0
    return CoconutOutput(loss, count, acc, forwards, norm, hidden if return_hidden else None, probe_loss, probe_acc,
                         head_loss, head_acc)


# ---------------------------------------------------------------------------------------------------------------
# Generation and evaluation (through the shared rollout engine)
# ---------------------------------------------------------------------------------------------------------------


def coconut_prompt_text(row: dict[str, Any] | Example, start_token: str = LatentTokens.start) -> str:
    """The prompt of a row with `<|start-latent|>` appended (no space: the special token splits the text itself)."""
    prompt = format_prompt(row) if isinstance(row, Example) else row["prompt"]
    return prompt + start_token


def coconut_schedule(model: LatentModel, num_thoughts: int | torch.Tensor):
    """A fixed number of thoughts (an int or a per-row tensor), then `<|end-latent|>` forced."""
    from latentrl.rollout import ThinkingSchedule

    _, _, end_id = _latent_ids(model)
    return ThinkingSchedule(num_latent_steps=num_thoughts, after_latent_ids=[end_id])


def coconut_operator(model: LatentModel):
    from latentrl.thoughts.hidden_state import HiddenStateThought

    _, latent_id, _ = _latent_ids(model)
    return HiddenStateThought(latent_token_id=latent_id)


def coconut_rollout(
    model: LatentModel,
    data: Sequence[Example | dict[str, Any]],
    num_thoughts: int | Sequence[int] | torch.Tensor,
    *,
    max_new_positions: int = 64,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
):
    """One batched rollout: prompt + `<|start-latent|>`, `num_thoughts` thoughts, `<|end-latent|>`, then tokens."""
    from latentrl.rollout import SamplingParams, generate_rollout, left_pad

    tok = model.tokenizer
    start = model.latent_tokens.start if model.latent_tokens is not None else LatentTokens.start
    ids, mask = left_pad([_ids(tok, coconut_prompt_text(r, start)) for r in data], tok.pad_token_id,
                         device=model.device)
    if isinstance(num_thoughts, int):
        n: int | torch.Tensor = num_thoughts
    else:
        n = torch.as_tensor(num_thoughts if torch.is_tensor(num_thoughts) else list(num_thoughts), dtype=torch.long)
        if n.shape != (len(data),):
            raise ValueError(f"num_thoughts has shape {tuple(n.shape)} for {len(data)} prompts")
        n = n.to(model.device)
    sampling = SamplingParams(max_new_positions=max_new_positions, temperature=temperature)
    was_training = model.training
    model.eval()
    try:
        return generate_rollout(model, ids, mask, sampling, coconut_operator(model), coconut_schedule(model, n),
                                generator)
    finally:
        model.train(was_training)


def coconut_generate(
    model: LatentModel,
    data: Sequence[Example | dict[str, Any]],
    num_thoughts: int | Sequence[int],
    *,
    max_new_positions: int = 64,
    temperature: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
) -> list[str]:
    """Decoded completions (latent positions and special tokens left out), `batch_size` prompts at a time.

    Greedy by default; batched generation gives the same text as one prompt at a time (tested).
    """
    from latentrl.rollout import decode_completions

    per_row = None if isinstance(num_thoughts, int) else list(num_thoughts)
    if per_row is not None and len(per_row) != len(data):
        raise ValueError(f"num_thoughts has {len(per_row)} entries for {len(data)} prompts")
    gen = torch.Generator().manual_seed(seed)
    texts: list[str] = []
    for s in range(0, len(data), batch_size):
        n = num_thoughts if per_row is None else per_row[s : s + batch_size]
        ro = coconut_rollout(model, data[s : s + batch_size], n, max_new_positions=max_new_positions,
                             temperature=temperature, generator=gen)
        texts += decode_completions(model, ro)
    return texts


def coconut_eval_thoughts(cfg: CoconutConfig, stage: int, num_steps: int | None = None) -> int:
    """Thoughts used when evaluating a stage-`stage` model (the authors' `get_question_latent_dataset`)."""
    k = min(stage, cfg.max_latent_stage)
    if not cfg.pad_latent_to_max and num_steps is not None:
        k = min(k, num_steps)
    return k * cfg.c_thought


def coconut_evaluate(
    model: LatentModel,
    examples: Sequence[Example],
    cfg: CoconutConfig,
    stage: int,
    *,
    max_new_positions: int,
    k: int = 0,
) -> dict[str, Any]:
    """Greedy Pass@1 (and reasoning positions) with the thought count of `stage`, through `latentrl.eval.evaluate`.

    With pad_latent_to_max=false each example uses its own step count, so examples are evaluated in groups of
    equal thought count and the results merged.
    """
    from latentrl.eval import evaluate

    groups: dict[int, list[Example]] = {}
    for ex in examples:
        groups.setdefault(coconut_eval_thoughts(cfg, stage, len(ex.steps)), []).append(ex)
    start = model.latent_tokens.start if model.latent_tokens is not None else LatentTokens.start
    prompt_text: Callable[[dict[str, Any]], str] = lambda row: coconut_prompt_text(row, start)  # noqa: E731
    n_total, acc, pos, lat, wall, samples = 0, 0.0, 0.0, 0.0, 0.0, []
    for n_thoughts, group in sorted(groups.items()):
        res = evaluate(model, list(group), operator=coconut_operator(model), schedule=coconut_schedule(model, n_thoughts),
                       max_new_positions=max_new_positions, batch_size=cfg.eval_batch_size, k=k, seed=cfg.seed,
                       prompt_text=prompt_text)
        n_total += res.n
        acc += res.pass_at_1 * res.n
        pos += res.mean_reasoning_positions * res.n
        lat += res.mean_latent_positions * res.n
        wall += res.wall_s
        samples += res.samples
    n_total = max(n_total, 1)
    return {
        "pass_at_1": acc / n_total,
        "mean_reasoning_positions": pos / n_total,
        "mean_latent_positions": lat / n_total,
        "n": len(examples),
        "wall_s": wall,
        "samples": samples[:3],
        "num_thoughts": sorted(groups),
    }


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CoconutHistory:
    """What `train_coconut` returns: logged training records, eval records (one per stage/epoch), the final eval."""

    train: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    eval: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    final_eval: dict[str, Any] | None = None
    stages: list[int] = dataclasses.field(default_factory=list)  # scheduled stage of each trained epoch
    optimizer_resets: list[int] = dataclasses.field(default_factory=list)  # global step at which AdamW was re-made
    gate: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # converged mode: every gate evaluation
    stage_log: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # converged mode: one per stage
    steps: int = 0
    wall_s: float = 0.0
    train_wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _make_optimizer(model: nn.Module, cfg: CoconutConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)


def _eval_budget(cfg: CoconutConfig, tokenized: Sequence[TokenizedExample]) -> int:
    """Thoughts + end marker + the longest remaining target of any stage (stage 0 = all steps) + 8."""
    longest = max((sum(len(s) for s in t.steps) + len(t.answer) for t in tokenized), default=1)
    most = max(cfg.max_latent_stage, 0) * cfg.c_thought
    return most + 1 + longest + 8


def train_coconut(
    config: CoconutConfig,
    model: LatentModel,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example] = (),
    gate_examples: Sequence[Example] | None = None,
) -> CoconutHistory:
    """Coconut curriculum SFT of `model` in place; greedy Pass@1 on `eval_examples` per stage (or epoch).

    `stage_advance=fixed` (the authors'): epochs run from `start_epoch` to `num_epochs - 1`; epoch e trains stage
    `e // epochs_per_stage`. `stage_advance=converged`: stages run from `start_stage` to `last_stage`, each until
    the `StageGate` on `gate_examples` (default: the eval examples) says it is learned or its step cap is reached;
    every stage's data is rebuilt (and reshuffled) per pass over it. AdamW is re-created per `reset_optimizer`.
    Metrics (loss, token accuracy, thought norm, forwards per step, stage, eval Pass@1 / eval loss, gate metrics and
    one `stage/*` record per finished stage: steps taken, gate metric, reason) go to `output_dir/metrics.jsonl`
    when set, and always into the returned history.
    """
    from latentrl.logger import MetricsLogger, progress
    from latentrl.run_dir import check_new_run, replace_run

    if not train_examples:
        raise ValueError("train_coconut needs at least one training example")
    check_new_run(config.output_dir, overwrite=config.overwrite_output_dir, resumable=False)
    cfg = config
    converged = cfg.stage_advance == "converged"
    t_start = time.perf_counter()
    tok = model.tokenizer
    latent_ids = model.latent_ids
    _latent_ids(latent_ids)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train_tok = [tokenize_example(tok, ex) for ex in train_examples]
    eval_examples = list(eval_examples)
    eval_tok = [tokenize_example(tok, ex) for ex in eval_examples]
    gate_source = list(gate_examples) if gate_examples is not None else eval_examples
    gate_tok = [tokenize_example(tok, ex) for ex in gate_source[: cfg.gate_num_examples]]
    if converged and not gate_tok:
        raise ValueError("stage_advance=converged needs gate examples (gate_examples or eval_examples) to measure "
                         "when a stage is learned")
    budget = cfg.max_new_positions or _eval_budget(cfg, train_tok + eval_tok)

    torch.manual_seed(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    step_size = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(train_tok) / step_size)
    if converged:
        stages = list(range(cfg.start_stage, cfg.last_stage + 1))
        total_steps = len(stages) * cfg.max_steps_per_stage
    else:
        epochs = list(range(cfg.start_epoch, cfg.num_epochs))
        total_steps = len(epochs) * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    history = CoconutHistory()
    if cfg.output_dir and cfg.overwrite_output_dir:
        replace_run(cfg.output_dir)
    sinks = [s for s in cfg.report_to if s != "none"] if cfg.output_dir else []
    logger = MetricsLogger(cfg.output_dir, sinks, run_config=config_to_dict(cfg)) if sinks else None

    def log(step: int, record: dict[str, Any], into: list[dict[str, Any]]) -> None:
        into.append({"step": step, **record})
        if logger is not None:
            logger.log(step, record)

    def do_eval(step: int, stage: int, epoch: int) -> dict[str, Any] | None:
        if not eval_examples:
            return None
        ev = coconut_evaluate(model, eval_examples, cfg, stage, max_new_positions=budget)
        ev_loss = _eval_loss(model, eval_tok, stage, cfg, latent_ids, pad_id)
        log(step, {"eval/pass_at_1": ev["pass_at_1"], "eval/mean_reasoning_positions": ev["mean_reasoning_positions"],
                   "eval/mean_latent_positions": ev["mean_latent_positions"], "eval/loss": ev_loss,
                   "eval/wall_s": ev["wall_s"], "stage": stage, "epoch": epoch}, history.eval)
        model.train()
        return ev

    optimizer: torch.optim.Optimizer | None = None
    probe_heads: nn.Module | None = None
    if cfg.probe_head_tokens:  # training-only linear probe heads (seeded by cfg.seed above; never saved)
        probe_heads = nn.Linear(model.hidden_size, cfg.num_probe_heads * model.vocab_size).to(model.device)
    params = [p for p in model.parameters() if p.requires_grad]
    head_params = list(probe_heads.parameters()) if probe_heads is not None else []
    state = {"step": 0, "train_time": 0.0}
    window: dict[str, float] = {"loss": 0.0, "token_accuracy": 0.0, "thought_norm": 0.0, "forwards": 0.0, "n": 0,
                                "probe_loss": 0.0, "probe_accuracy": 0.0, "probe_n": 0.0,
                                "probe_head_loss": 0.0, "probe_head_accuracy": 0.0, "probe_head_n": 0.0}
    bar = progress(total_steps, "coconut" + ("" if cfg.bptt else "[no-bptt]"), disable=cfg.disable_tqdm)

    def out_of_budget() -> bool:
        return cfg.max_steps is not None and state["step"] >= cfg.max_steps

    def epoch_batches(stage: int, epoch: int) -> tuple[list[CoconutSample], list[list[int]]]:
        samples = stage_samples(train_tok, stage, cfg, latent_ids, epoch)
        too_long = [i for i, s in enumerate(samples) if len(s.input_ids) > cfg.max_length]
        if too_long:
            i = too_long[0]
            raise ValueError(f"training example {i} has {len(samples[i].input_ids)} tokens at stage {stage}, more "
                             f"than max_length={cfg.max_length}; raise max_length")
        perm = torch.randperm(len(samples), generator=order_gen).tolist()
        return samples, [perm[s0 : s0 + step_size] for s0 in range(0, len(perm), step_size)]

    def train_step(samples: list[CoconutSample], idx: list[int], stage: int, epoch: int) -> None:
        nonlocal window
        t0 = time.perf_counter()
        micro = [idx[m : m + cfg.per_device_train_batch_size] for m in range(0, len(idx), cfg.per_device_train_batch_size)]
        batches = [collate_coconut([samples[i] for i in mb], pad_id) for mb in micro]
        n_tokens = float(sum(int((b.labels[:, 1:] != IGNORE_INDEX).sum()) for b in batches))
        optimizer.zero_grad(set_to_none=True)
        loss_total, acc_total, norm_total, fwd_total = 0.0, 0.0, 0.0, 0
        for b in batches:
            out = coconut_forward(model, b, bptt=cfg.bptt, normalizer=n_tokens,
                                  probe_weight=cfg.probe_weight if (cfg.probe_tokens or probe_heads) else 0.0,
                                  probe_heads=probe_heads)
            out.loss.backward()
            if not math.isnan(out.probe_head_loss):
                window["probe_head_loss"] += out.probe_head_loss / len(batches)
                window["probe_head_accuracy"] += out.probe_head_accuracy / len(batches)
                window["probe_head_n"] += 1 / len(batches)
            if not math.isnan(out.probe_loss):
                window["probe_loss"] += out.probe_loss / len(batches)
                window["probe_accuracy"] += out.probe_accuracy / len(batches)
                window["probe_n"] += 1 / len(batches)
            loss_total += float(out.loss.detach())
            acc_total += out.token_accuracy * out.num_tokens / n_tokens
            norm_total += out.thought_norm / len(batches)
            fwd_total += out.num_forwards
        if cfg.max_grad_norm > 0:
            grad_norm = float(nn.utils.clip_grad_norm_(params + head_params, cfg.max_grad_norm))
        else:
            grad_norm = float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)))
        optimizer.step()
        state["step"] += 1
        step = state["step"]
        state["train_time"] += time.perf_counter() - t0
        for key, val in (("loss", loss_total), ("token_accuracy", acc_total), ("thought_norm", norm_total),
                         ("forwards", fwd_total)):
            window[key] += val
        window["n"] += 1
        if step % cfg.logging_steps == 0 or step == total_steps:
            n = window["n"]
            record = {"loss": window["loss"] / n, "token_accuracy": window["token_accuracy"] / n,
                      "latent/norm_mean": window["thought_norm"] / n, "forwards_per_step": window["forwards"] / n,
                      "stage": stage, "epoch": epoch, "learning_rate": cfg.learning_rate,
                      "grad_norm": grad_norm, "train_wall_s": state["train_time"]}
            if window["probe_n"] > 0:
                record["probe_loss"] = window["probe_loss"] / window["probe_n"]
                record["probe_accuracy"] = window["probe_accuracy"] / window["probe_n"]
            if window["probe_head_n"] > 0:
                record["probe_head_loss"] = window["probe_head_loss"] / window["probe_head_n"]
                record["probe_head_accuracy"] = window["probe_head_accuracy"] / window["probe_head_n"]
            log(step, record, history.train)
            bar.set_postfix(stage=stage, loss=f"{record['loss']:.3f}")
            window = {k: 0.0 for k in window}
            window["n"] = 0
        bar.update(1)

    def new_optimizer() -> None:
        nonlocal optimizer
        optimizer = _make_optimizer(model, cfg)
        if head_params:
            optimizer.add_param_group({"params": head_params})
        history.optimizer_resets.append(state["step"])

    last_stage, last_epoch = cfg.start_stage, cfg.start_epoch
    try:
        model.train()
        if not converged:
            for epoch in epochs:
                if out_of_budget():
                    break
                stage = stage_of_epoch(cfg, epoch)
                new_stage = not history.stages or stage != history.stages[-1]
                history.stages.append(stage)
                last_stage, last_epoch = stage, epoch
                if optimizer is None or cfg.reset_optimizer == "epoch" or (cfg.reset_optimizer == "stage" and new_stage):
                    new_optimizer()
                samples, steps = epoch_batches(stage, epoch)
                for idx in steps:
                    if out_of_budget():
                        break
                    train_step(samples, idx, stage, epoch)
                last_epoch_of_stage = epoch == epochs[-1] or stage_of_epoch(cfg, epoch + 1) != stage
                if not out_of_budget() and (cfg.eval_strategy == "epoch"
                                            or (cfg.eval_strategy == "stage" and last_epoch_of_stage)):
                    if epoch != epochs[-1]:  # the final evaluation below covers the last epoch
                        do_eval(state["step"], stage, epoch)
        else:
            gate = cfg.make_gate()
            epoch = 0  # passes over the data, counted across stages (seeds the data order / uniform_prob draws)
            for stage in stages:
                if out_of_budget():
                    break
                gate.start_stage()
                if optimizer is None or cfg.reset_optimizer in ("stage", "epoch"):
                    new_optimizer()
                last_stage, stage_start, decision = stage, state["step"], None
                while decision is None and not out_of_budget():
                    history.stages.append(stage)
                    last_epoch = epoch
                    if optimizer is not None and cfg.reset_optimizer == "epoch" and state["step"] > stage_start:
                        new_optimizer()
                    samples, steps = epoch_batches(stage, epoch)
                    for idx in steps:
                        if out_of_budget():
                            break
                        train_step(samples, idx, stage, epoch)
                        taken = state["step"] - stage_start
                        if taken % cfg.gate_eval_steps == 0 or gate.out_of_steps(taken):
                            gm = coconut_gate_metrics(model, gate_tok, stage, cfg, latent_ids, pad_id)
                            d = gate.update(taken, gm[cfg.gate_metric])
                            log(state["step"], {**{f"gate/{k}": v for k, v in gm.items()}, "gate/passed": d.passed,
                                                "gate/streak": d.streak, "stage": stage, "epoch": epoch},
                                history.gate)
                            model.train()
                            if d.advance:
                                decision = d
                                break
                    epoch += 1
                taken = state["step"] - stage_start
                reason = decision.reason if decision is not None else "max_steps_total"
                value = decision.value if decision is not None else float("nan")
                log(state["step"], {"stage/index": stage, "stage/steps": taken, "stage/gate_metric": cfg.gate_metric,
                                    "stage/gate_value": value, "stage/reason": reason}, history.stage_log)
                if cfg.eval_strategy in ("stage", "epoch") and stage != stages[-1] and not out_of_budget():
                    do_eval(state["step"], stage, last_epoch)
        history.steps = state["step"]
        history.train_wall_s = state["train_time"]
        history.final_eval = do_eval(state["step"], last_stage, last_epoch)
    finally:
        bar.close()
        model.eval()
        if logger is not None:
            logger.close()
    history.wall_s = time.perf_counter() - t_start
    return history


def _first_segment(tok: TokenizedExample, stage: int, cfg: CoconutConfig) -> list[int]:
    """The first target segment after the thoughts at `stage`: the next language step, or the answer (+ eos)."""
    n_skip = len(tok.steps) if stage > cfg.max_latent_stage else min(stage, len(tok.steps))
    return tok.steps[n_skip] if n_skip < len(tok.steps) else tok.answer


@torch.no_grad()
def coconut_gate_metrics(model: LatentModel, tokenized: Sequence[TokenizedExample], stage: int, cfg: CoconutConfig,
                         latent_ids, pad_id: int) -> dict[str, float]:
    """Teacher-forced metrics of `tokenized` at `stage` (no uniform_prob mixing), for the curriculum gate.

    loss: token-mean cross-entropy of the whole target; next_step_loss: cross-entropy summed over the first target
    segment after the thoughts, averaged over examples; next_step_accuracy: fraction of examples whose first segment
    is predicted exactly (argmax at every token). That segment is what a new stage makes the model read off its
    thoughts, so it is where a plateau shows.
    """
    if not tokenized:
        return {"loss": float("nan"), "next_step_loss": float("nan"), "next_step_accuracy": float("nan")}
    plain = dataclasses.replace(cfg, uniform_prob=0.0)
    was = model.training
    model.eval()
    total, count, seg_loss, seg_exact = 0.0, 0, 0.0, 0.0
    try:
        for s in range(0, len(tokenized), cfg.eval_batch_size):
            part = tokenized[s : s + cfg.eval_batch_size]
            samples = [build_stage_sample(t, stage, plain, latent_ids) for t in part]
            b = collate_coconut(samples, pad_id)
            out = coconut_forward(model, b, bptt=True, normalizer=1.0, return_hidden=True)
            total += float(out.loss)
            count += out.num_tokens
            seg = torch.zeros(b.labels.shape, dtype=torch.bool)
            for i, (t, smp) in enumerate(zip(part, samples)):
                first = (b.latent_start - smp.latent_start) + smp.labels.index(next(x for x in smp.labels
                                                                                     if x != IGNORE_INDEX))
                seg[i, first : first + len(_first_segment(t, stage, cfg))] = True
            sel = seg[:, 1:].to(out.hidden.device)
            logits = model.lm_head(out.hidden[:, :-1][sel]).float()
            gold = b.labels[:, 1:].to(logits.device)[sel]
            rows = torch.arange(len(part), device=logits.device)[:, None].expand_as(sel)[sel]
            ce = F.cross_entropy(logits, gold, reduction="none")
            wrong = (logits.argmax(-1) != gold).float()
            seg_loss += float(torch.zeros(len(part), device=ce.device).index_add_(0, rows, ce).sum())
            seg_exact += float((torch.zeros(len(part), device=ce.device).index_add_(0, rows, wrong) == 0).sum())
    finally:
        model.train(was)
    n = len(tokenized)
    return {"loss": total / max(count, 1), "next_step_loss": seg_loss / n, "next_step_accuracy": seg_exact / n}


@torch.no_grad()
def _eval_loss(model: LatentModel, tokenized: Sequence[TokenizedExample], stage: int, cfg: CoconutConfig,
               latent_ids, pad_id: int) -> float:
    """Token-mean cross-entropy of the eval set at `stage` (no uniform_prob mixing)."""
    if not tokenized:
        return float("nan")
    plain = dataclasses.replace(cfg, uniform_prob=0.0)
    samples = [build_stage_sample(t, stage, plain, latent_ids) for t in tokenized]
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(samples), cfg.eval_batch_size):
        b = collate_coconut(samples[s : s + cfg.eval_batch_size], pad_id)
        out = coconut_forward(model, b, bptt=True, normalizer=1.0)
        total += float(out.loss)
        count += out.num_tokens
    model.train(was)
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------------------------
# The `coconut_sft` starting checkpoint of the CPU suite
# ---------------------------------------------------------------------------------------------------------------

CPU_PRESET = Path(__file__).resolve().parents[3] / "configs" / "cpu" / "coconut_sft.yaml"
QUICK_STEPS = 20


def build_coconut_init(task: Any, cache: Path | str, quick: bool, preset: Path | str | None = None,
                       overrides: Sequence[str] = ()) -> Path:
    """The `coconut_sft` starting checkpoint of a CPU-suite task (`latentrl.bench.SuiteTask`): the task's shipped
    CoT model after Coconut curriculum SFT with `configs/cpu/coconut_sft.yaml`. Built once, cached under `cache`.

    `quick` caps training at QUICK_STEPS optimizer steps and skips the per-stage evaluations.
    """
    from latentrl.assets import model_path
    from latentrl.checkpoint import atomic_write_json
    from latentrl.config import load_config
    from latentrl.data import load_examples

    out = Path(cache) / ("coconut_sft-quick" if quick else "coconut_sft")
    if (out / "config.json").is_file():
        return out
    extra = [f"max_steps={QUICK_STEPS}", "eval_strategy=no"] if quick else []
    cfg = load_config(CoconutConfig, preset or CPU_PRESET, [*extra, "disable_tqdm=true", *overrides])
    source = model_path(task.cot_model)
    model = LatentModel.from_pretrained(source, add_latent_tokens=True)
    train = load_examples(task.dataset, split="train", n=cfg.num_train_examples, seed=cfg.seed, **task.dataset_kwargs)
    evals = [] if quick else task.eval_examples(cfg.num_eval_examples)
    history = train_coconut(cfg, model, train, evals)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    atomic_write_json(tmp / "coconut_sft.json", {
        "config": config_to_dict(cfg), "source": str(source), "stages": history.stages, "steps": history.steps,
        "train": history.train[-1:], "eval": history.eval, "train_wall_s": history.train_wall_s,
    })
    if out.exists():  # a concurrent build finished first
        return out
    tmp.rename(out)
    return out
