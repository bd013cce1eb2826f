"""The training options every supervised loop shares, each declared once (TRL / HF `TrainingArguments` names).

`SFTTrainingConfig` holds what CoT SFT, Coconut curriculum SFT and superposition SFT all read (optimizer, clipping,
batch size, seed, logging, eval batching, mixed precision, LoRA). Groups on top of it: `StepScheduleConfig` (a fixed
number of steps with an LR schedule: CoT and superposition SFT; Coconut counts epochs and keeps the rate constant),
`MetricsOutputConfig` (metric files, checkpoints and the eval decoding budget: all three) and `StageGateConfig` (the
convergence gate of `latentrl.sft.gate`: Coconut and superposition SFT).

A trainer whose default really differs redeclares only the default, with `sft_default`, and says why in a comment;
`tests/test_sft_config.py` checks that nothing else is declared twice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from latentrl.config import (
    REPORT_TO,
    WANDB_MISSING,
    BaseConfig,
    ConfigError,
    LoraConfig,
    cfg_field,
    module_available,
)

__all__ = ["LR_SCHEDULES", "MetricsOutputConfig", "SFTTrainingConfig", "StageGateConfig", "StepScheduleConfig",
           "sft_default"]

LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear")


@dataclasses.dataclass(kw_only=True)
class SFTTrainingConfig(BaseConfig):
    """Options every supervised training loop shares."""

    per_device_train_batch_size: int = cfg_field(
        32,
        "Examples per micro-batch; an optimizer step takes one micro-batch, or gradient_accumulation_steps of them "
        "where the trainer has that option (Coconut).",
        min=1,
    )
    learning_rate: float = cfg_field(
        1e-4, "Peak AdamW learning rate (the rate itself where the trainer has no schedule: Coconut).", min=0.0,
        min_exclusive=True,
    )
    weight_decay: float = cfg_field(
        0.0, "AdamW weight decay (decoupled; CoT SFT exempts biases and norm weights, the others decay every "
        "parameter).", min=0.0,
    )
    adam_beta1: float = cfg_field(0.9, "AdamW beta1.", min=0.0, max=1.0, max_exclusive=True)
    adam_beta2: float = cfg_field(0.999, "AdamW beta2.", min=0.0, max=1.0, max_exclusive=True)
    adam_epsilon: float = cfg_field(1e-8, "AdamW epsilon.", min=0.0, min_exclusive=True)
    max_grad_norm: float = cfg_field(1.0, "Clip gradients to this global norm; 0 disables clipping.", min=0.0)
    max_length: int = cfg_field(
        512,
        "Training examples longer than this many positions (prompt + target + eos, thoughts or latents included) "
        "are an error, never silently cut.",
        min=2,
    )
    seed: int = cfg_field(
        0, "Seed of the data order and of torch's global RNG (dropout; Coconut's uniform_prob stage draws)."
    )
    logging_steps: int = cfg_field(
        10, "Log training metrics (means over the steps since the last log) every this many optimizer steps.", min=1
    )
    eval_batch_size: int = cfg_field(64, "Prompts per batch when decoding (or teacher-forcing) the eval set.", min=1)
    disable_tqdm: bool | None = cfg_field(
        None, "Hide the progress bar; null = hide it when stderr is not a terminal or $CI is set."
    )
    mixed_precision: str | None = cfg_field(
        None,
        "Autocast of the training forwards (Coconut: also of its teacher-forced gate evaluations; accelerate): no, "
        "or bf16 (CPU and GPU; weights and optimizer stay fp32); null = what `accelerate launch` configured, else "
        "no. Evaluation decodes in the weights' dtype. fp16 needs a loss scaler these loops do not have.",
        choices=("no", "bf16"),
    )
    lora: LoraConfig = cfg_field(
        default_factory=LoraConfig,
        help="LoRA adapters instead of full fine-tuning (see the lora.* options): the base weights stay frozen (a "
        "model with latent tokens trains their rows in full); checkpoints and the saved model hold the adapter.",
    )

    def validate(self) -> None:
        """Cross-field rules; subclasses extend it and call super().validate()."""


@dataclasses.dataclass(kw_only=True)
class StepScheduleConfig(SFTTrainingConfig):
    """A run of max_steps optimizer steps with a learning-rate schedule (CoT and superposition SFT)."""

    max_steps: int = cfg_field(600, "Number of optimizer steps.", min=0)
    lr_scheduler_type: str = cfg_field(
        "constant_with_warmup",
        "Learning-rate schedule after warmup (transformers' `get_scheduler`, by name): constant_with_warmup / "
        "constant keep the peak rate, so a run of N steps is exactly the first N steps of a longer run; cosine and "
        "linear decay to 0 at max_steps.",
        choices=LR_SCHEDULES,
    )
    warmup_steps: int = cfg_field(
        50, "Linear warmup to learning_rate over this many steps (ignored by 'constant'): step s of it trains at "
        "(s + 1) / warmup_steps of the rate (HF's schedule one step on: no step at rate 0).", min=0
    )


@dataclasses.dataclass(kw_only=True)
class MetricsOutputConfig(SFTTrainingConfig):
    """What a run writes (metric files, resumable checkpoints) and the decoding budget of its eval set (CoT and
    Coconut SFT)."""

    max_new_positions: int | None = cfg_field(
        None,
        "Decoding budget of each eval completion (thoughts and markers included); null = the longest target (eos "
        "included) in the train/eval data + 8, plus Coconut's max_latent_stage * c_thought thoughts and end marker.",
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
    # --- checkpoints (HF TrainingArguments names; `latentrl.sft.loop.Checkpoints`) ----------------------------
    save_steps: int = cfg_field(
        0,
        "Every this many optimizer steps write a resumable checkpoint to output_dir/checkpoint-{step}: the model "
        "(a save_pretrained folder), AdamW, the LR schedule, the RNG states and where the loop is (data order, "
        "metric window; Coconut: stage, pass over the data, gate streak, probe heads). 0 = none.",
        min=0,
    )
    save_total_limit: int | None = cfg_field(
        2, "Keep at most this many checkpoints in output_dir (the newest); null keeps every one.", min=1
    )
    resume_from_checkpoint: str | None = cfg_field(
        None,
        "Continue the run in output_dir from a checkpoint: latest (the newest intact one) or a checkpoint folder. "
        "The resumed run trains exactly as the uninterrupted one would; metrics.jsonl keeps its lines up to the "
        "checkpoint's step.",
    )

    def validate(self) -> None:
        super().validate()
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ConfigError(f"report_to={self.report_to}: 'none' cannot be combined with other sinks")
        if "wandb" in self.report_to and not module_available("wandb"):
            raise ConfigError(WANDB_MISSING)
        if self.resume_from_checkpoint and self.overwrite_output_dir:
            raise ConfigError("resume_from_checkpoint continues the run in output_dir; overwrite_output_dir=true "
                              "would delete it first: set only one of them")


@dataclasses.dataclass(kw_only=True)
class StageGateConfig(SFTTrainingConfig):
    """The stage gate of `stage_advance: converged` (Coconut and superposition SFT); each trainer names its own
    stage_advance and gate_metric, whose meanings differ."""

    gate_threshold: float = cfg_field(
        0.9, "Gate threshold: accuracy >= it, or a loss <= it, counts as a passing gate evaluation.", min=0.0
    )
    gate_patience: int = cfg_field(
        2, "Consecutive passing gate evaluations that end the stage (Coconut then moves to the next one).", min=1
    )
    gate_eval_steps: int = cfg_field(16, "Optimizer steps between gate evaluations (converged mode).", min=1)
    gate_num_examples: int = cfg_field(
        256, "Gate examples used per gate evaluation (the first ones of gate_examples, else of the eval set).", min=1
    )


def sft_default(name: str, default: Any, help: str | None = None) -> Any:  # noqa: A002 - cfg_field's name
    """Redeclare shared field `name` with another default (and optionally a trainer-specific help text), keeping
    its type rules (choices, range) from the one declaration in this module."""
    for cls in (SFTTrainingConfig, StepScheduleConfig, MetricsOutputConfig, StageGateConfig):
        f = cls.__dataclass_fields__.get(name)
        if f is not None and name in cls.__dict__.get("__annotations__", {}):
            break
    else:
        raise KeyError(f"{name!r} is not a shared SFT training field")
    meta = f.metadata
    return cfg_field(default, help or meta["help"], choices=meta["choices"], min=meta["min"], max=meta["max"],
                     min_exclusive=meta["min_exclusive"], max_exclusive=meta["max_exclusive"])
