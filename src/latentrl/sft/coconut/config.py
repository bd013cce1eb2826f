"""Coconut SFT's options (`CoconutConfig`) and the scheduled curriculum stage."""

from __future__ import annotations

import dataclasses

from latentrl.config import ConfigError, cfg_field
from latentrl.sft.config import MetricsOutputConfig, StageGateConfig, sft_default
from latentrl.sft.gate import STAGE_ADVANCE_CHOICES, StageGate

IGNORE_INDEX = -100
RESET_CHOICES = ("stage", "epoch", "never")
GATE_METRICS = ("next_step_accuracy", "next_step_loss", "loss")
EVAL_CHOICES = ("stage", "epoch", "no")


@dataclasses.dataclass(kw_only=True)
class CoconutConfig(MetricsOutputConfig, StageGateConfig):
    """Options of Coconut curriculum SFT (Hao et al. 2024) and its no-BPTT variant (Özeren & Aßenmacher's LatR).

    The shared training fields (`latentrl.sft.config`) default to the paper's settings: a constant learning_rate
    of 1e-4, per_device_train_batch_size 32 (the paper: 32 per GPU on 4 GPUs = 128 per step), weight_decay 0.01 on
    every parameter, no gradient clipping.
    """

    # --- curriculum ---------------------------------------------------------------------------------------------
    c_thought: int = cfg_field(
        1, "Continuous thoughts per replaced language step, c (paper: 1 for ProsQA/ProntoQA, 2 for GSM8k-Aug).", min=1
    )
    thoughts_per_step: list[int] = cfg_field(
        [],
        "Thoughts for each replaced step, in order (ours, not in Coconut; e.g. [3, 5, 3, 3] gives the step whose "
        "running sum is hardest to carry more room); steps past the list get c_thought. Empty: c_thought for every "
        "step (Coconut).",
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
        "sums: [[-8, -7, -6], [-5, -4, -3], [-2, -1]] probes every digit. Weighted by probe_weight. The last thought's "
        "output is never fed back (`<|end-latent|>` follows): put what later positions must read on earlier thoughts "
        "(docs/bench/icot_latent_init, runs TP-TR).",
    )
    probe_head_step_shift: list[int] = cfg_field(
        [],
        "Per-step shift of the probe_head_tokens indices (our addition; entry i is added to every index for step i, "
        "missing entries are 0). With the same heads shared by every step, this decides what a head's subspace "
        "means: e.g. icot_mult's partial-products chain writes step j >= 1 as `+` then its digits shifted to their "
        "answer columns and step 0 without the `+`, so probe_head_tokens=[[1,2,3],[4,5,6],[7,8]] with "
        "probe_head_step_shift=[-1] makes head c read answer column c of every product (column-aligned thoughts: "
        "one attention read over the products can then gather a column).",
    )
    thought_projection: bool = cfg_field(
        False,
        "Feed each thought back through a learned projection (CODI's: Linear, GELU, Linear, LayerNorm; ours for "
        "Coconut, not in the paper) instead of the raw last hidden state; trained with the model, saved as its "
        "side module `thought_projection` and applied by the hidden_state operator wherever the model is used. "
        "Needs bptt.",
    )
    distill_weight: float = cfg_field(
        0.0,
        "Hidden-state distillation (ours for Coconut, after CODI, Shen et al. 2025, arxiv.org/abs/2502.21074; 0 = "
        "off): weight of the squared difference, per layer and in units of the teacher's standard deviation, "
        "between the hidden states that predict the language tokens after the thoughts and those of a frozen CoT "
        "teacher (distill_teacher) predicting the same tokens after the full language chain. A dense target for "
        "reading the thoughts, where cross-entropy gives one signal per token.",
        min=0.0,
    )
    distill_teacher: str | None = cfg_field(
        None,
        "The frozen CoT teacher of distill_weight: a checkpoint path or shipped model name with the model's hidden "
        "size and depth (usually the CoT model the curriculum started from).",
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
    gate_next_steps: int = cfg_field(
        1,
        "Converged mode: how many segments after the thoughts the next-step gate metrics cover (the next language "
        "steps; the answer counts as the last). 2 for chains whose every other step can be recomputed from the "
        "question, where one segment would pass without reading the thoughts.",
        min=1,
    )
    min_steps_per_stage: int = cfg_field(0, "Converged mode: never advance on the gate before this many steps.",
                                         min=0)
    max_steps_per_stage: int = cfg_field(
        600, "Converged mode: advance after this many steps in a stage even if the gate never passed (logged as "
        "reason max_steps).", min=1
    )
    final_stage_max_steps: int | None = cfg_field(
        None, "Converged mode: the step cap of the final stage instead of max_steps_per_stage (null = the same). The "
        "last stage, where every step is a thought, can be the slowest to pass its gate (icot 4x4: ~10,700 steps "
        "after stages capped at 12,000); a longer cap there leaves the earlier stages as they were.", min=1
    )
    final_stage: int | None = cfg_field(
        None,
        "Converged mode: the last stage trained (training ends when it passes its gate or its step cap); null = "
        "max_latent_stage + 1, the stage that drops every language step.",
        min=0,
    )

    # --- optimisation -------------------------------------------------------------------------------------------
    # the paper's values, not the plain-SFT ones
    weight_decay: float = sft_default("weight_decay", 0.01, "AdamW weight decay on every parameter (paper: 0.01).")
    max_grad_norm: float = sft_default("max_grad_norm", 0.0,
                                       "Clip gradients to this global norm; 0 disables clipping (paper: none).")
    reset_optimizer: str = cfg_field(
        "stage",
        "When the AdamW state is re-created: stage = at every curriculum stage (the paper); epoch = at every epoch "
        "(what the authors' run.py does); never.",
        choices=RESET_CHOICES,
    )
    gradient_accumulation_steps: int = cfg_field(
        1,
        "Micro-batches per optimizer step. The loss is the token mean over the whole step, so this never changes "
        "the update.",
        min=1,
    )
    max_steps: int | None = cfg_field(
        None, "Stop after this many optimizer steps in total (a time box); null: run every epoch.", min=0
    )
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

    # --- evaluation ---------------------------------------------------------------------------------------------
    eval_strategy: str = cfg_field(
        "stage",
        "Greedy Pass@1 on the eval set (with that stage's thought count) after every stage, every epoch, or never "
        "(no); the final evaluation always runs when eval data is given.",
        choices=EVAL_CHOICES,
    )

    def validate(self) -> None:
        super().validate()
        if self.thought_projection and not self.bptt:
            raise ConfigError("thought_projection needs bptt=true (the no-BPTT variant forms its thoughts without "
                              "gradients, so the projection would never train)")
        if self.distill_weight > 0 and not self.distill_teacher:
            raise ConfigError("distill_weight > 0 needs distill_teacher (the frozen CoT model to distill from)")
        if any(n < 1 for n in self.thoughts_per_step):
            raise ConfigError(f"thoughts_per_step entries must be >= 1, got {self.thoughts_per_step}")
        most = max([self.c_thought, *self.thoughts_per_step])  # the most thoughts any step gets
        if len(self.probe_tokens) > most:
            raise ConfigError(f"probe_tokens has {len(self.probe_tokens)} entries for at most {most} thoughts per "
                              "step (c_thought, thoughts_per_step)")
        if len(self.probe_head_tokens) > most:
            raise ConfigError(f"probe_head_tokens has {len(self.probe_head_tokens)} entries for at most {most} "
                              "thoughts per step (c_thought, thoughts_per_step)")
        if self.stage_advance == "converged":
            if self.final_stage is not None and self.final_stage < self.start_stage:
                raise ConfigError(f"final_stage ({self.final_stage}) is before start_stage ({self.start_stage})")
            for key in ("max_steps_per_stage", "final_stage_max_steps"):
                if (getattr(self, key) or self.min_steps_per_stage) < self.min_steps_per_stage:
                    raise ConfigError(f"min_steps_per_stage ({self.min_steps_per_stage}) exceeds {key} "
                                      f"({getattr(self, key)})")
            return
        if self.start_stage * self.epochs_per_stage >= self.num_epochs:
            raise ConfigError(
                f"start_stage ({self.start_stage}) * epochs_per_stage ({self.epochs_per_stage}) = "
                f"{self.start_stage * self.epochs_per_stage} leaves no epoch to train: num_epochs is {self.num_epochs}"
            )

    def thoughts_for(self, steps: int) -> int:
        """Thoughts that replace the first `steps` language steps (sum of their per-step counts)."""
        return sum(self.step_thoughts(i) for i in range(steps))

    def step_thoughts(self, i: int) -> int:
        """Thoughts that replace language step i (0-based): thoughts_per_step[i], else c_thought."""
        return self.thoughts_per_step[i] if i < len(self.thoughts_per_step) else self.c_thought

    def thought_slot(self, q: int) -> tuple[int, int]:
        """(step i, index j among that step's thoughts) of thought q (0-based) in the thought sequence."""
        i = 0
        while q >= self.step_thoughts(i):
            q -= self.step_thoughts(i)
            i += 1
        return i, q

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

    def stage_max_steps(self, stage: int) -> int:
        """Converged mode's step cap of `stage` (final_stage_max_steps for the last stage, when set)."""
        if stage == self.last_stage and self.final_stage_max_steps is not None:
            return self.final_stage_max_steps
        return self.max_steps_per_stage

    def make_gate(self) -> StageGate:
        """The converged-mode gate these options describe (its cap set per stage from `stage_max_steps`)."""
        return StageGate(threshold=self.gate_threshold, patience=self.gate_patience,
                         max_steps=self.max_steps_per_stage, min_steps=self.min_steps_per_stage,
                         higher_is_better=self.gate_metric == "next_step_accuracy")


def stage_of_epoch(cfg: CoconutConfig, epoch: int) -> int:
    """The scheduled curriculum stage of `epoch` (0-based): `epoch // epochs_per_stage`."""
    return epoch // cfg.epochs_per_stage
