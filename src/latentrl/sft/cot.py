"""Supervised fine-tuning on `prompt + completion` with the loss on the completion tokens only (CoT and no-CoT).

Text layout (the one every trainer shares, `latentrl.data.schema`): prompt = `format_prompt(ex)` (`question ||`),
target = `format_cot(ex)` (`steps #### answer`) in ``mode="cot"`` or `format_no_cot(ex)` (`#### answer`) in
``mode="no_cot"``, followed by the tokenizer's eos token so a model learns to stop. Batches are right-padded;
labels are -100 on prompt and padding positions, so only target tokens (eos included) carry loss.

The loss is the mean token cross-entropy over all target tokens of the batch (every target token weighs the
same, as in HF's causal-LM loss). Training is seeded and deterministic: the same config, the same initial weights
and the same data give the same weights, bit for bit, on the same machine.

    cfg = CoTSFTConfig(mode="cot", max_steps=600, learning_rate=1e-3)
    history = train_sft(cfg, model, train_examples, eval_examples)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from latentrl.config import cfg_field
from latentrl.data.schema import Example, format_cot, format_no_cot, format_prompt
from latentrl.head_logprobs import lm_head_token_logprobs
from latentrl.model import LatentModel
from latentrl.sft.config import MetricsOutputConfig, StepScheduleConfig, sft_default
from latentrl.sft.loop import StepLoop, lr_lambda

__all__ = [
    "IGNORE_INDEX",
    "CoTSFTConfig",
    "SFTHistory",
    "build_sft_batch",
    "encode_examples",
    "lr_lambda",
    "masked_lm_loss",
    "masked_lm_loss_from_hidden",
    "sft_target",
    "train_sft",
]

IGNORE_INDEX = -100
SFT_MODES = ("cot", "no_cot")


@dataclasses.dataclass(kw_only=True)
class CoTSFTConfig(StepScheduleConfig, MetricsOutputConfig):
    """Options of supervised fine-tuning on prompt + (chain of thought) + answer, loss on the target only."""

    mode: str = cfg_field(
        "cot",
        "Target text: cot = steps, then '#### answer' (format_cot); no_cot = only '#### answer' (format_no_cot).",
        choices=SFT_MODES,
    )
    # Small from-scratch models (`latentrl pretrain`) train fast with big batches at a high rate.
    per_device_train_batch_size: int = sft_default("per_device_train_batch_size", 128)
    learning_rate: float = sft_default("learning_rate", 1e-3)
    eval_batch_size: int = sft_default("eval_batch_size", 128)
    eval_steps: int = cfg_field(
        100, "Greedy-decode the eval set every this many steps (and after the last step); 0 = only at the end.", min=0
    )


@dataclasses.dataclass
class SFTHistory:
    """What `train_sft` returns: every logged record, the eval records, the final eval and the wall time."""

    train: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    eval: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    final_eval: dict[str, Any] | None = None
    steps: int = 0
    wall_s: float = 0.0
    train_wall_s: float = 0.0
    gate: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # gated trainers: every gate evaluation
    stage_log: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # gated trainers: one per stage

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Data -> tensors
# ---------------------------------------------------------------------------------------------------------------


def sft_target(ex: Example, mode: str) -> str:
    """The completion text trained on in `mode` (without the eos token)."""
    if mode == "cot":
        return format_cot(ex)
    if mode == "no_cot":
        return format_no_cot(ex)
    raise ValueError(f"unknown SFT mode {mode!r}; allowed: {', '.join(SFT_MODES)}")


def encode_examples(
    tokenizer, examples: Sequence[Example], mode: str, max_length: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + eos) per example, tokenized separately so the boundary is exact."""
    if tokenizer.eos_token_id is None:
        raise ValueError("SFT needs a tokenizer with an eos token (the model must learn to stop)")
    prompts = [format_prompt(ex) for ex in examples]
    targets = [sft_target(ex, mode) for ex in examples]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    t_ids = tokenizer(targets, add_special_tokens=False)["input_ids"] if targets else []
    out = []
    unk = tokenizer.unk_token_id
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        t = list(t) + [tokenizer.eos_token_id]
        if max_length is not None and len(p) + len(t) > max_length:
            raise ValueError(
                f"example {i} has {len(p) + len(t)} tokens (prompt {len(p)} + target {len(t)}), more than "
                f"max_length={max_length}; raise max_length"
            )
        if unk is not None and (unk in p or unk in t):
            raise ValueError(
                f"example {i} has words the tokenizer does not know (mapped to {tokenizer.unk_token!r}): "
                f"{prompts[i] + targets[i]!r}"
            )
        out.append((list(p), t))
    return out


def build_sft_batch(
    encoded: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 on prompt and padding positions)."""
    width = max(len(p) + len(t) for p, t in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    for i, (p, t) in enumerate(encoded):
        n = len(p) + len(t)
        ids[i, :n] = torch.as_tensor(list(p) + list(t))
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.as_tensor(list(t))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy over positions whose label is not -100.

    `logits[:, j]` predicts `labels[:, j + 1]` (labels are aligned with input ids, as in HF). Returns the loss and
    detached stats: `num_tokens`, `token_accuracy` (argmax == label over target tokens) and `sequence_accuracy`
    (every target token of a row right under teacher forcing).
    """
    gold, mask = _targets(labels)
    logp = logits[:, :-1][mask].float().log_softmax(-1)
    return _loss_and_stats(logp.gather(-1, gold[:, None]).squeeze(-1), logp.argmax(-1) == gold, mask)


def masked_lm_loss_from_hidden(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                               chunk: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`masked_lm_loss(head(hidden), labels)` without the (B, T, V) logits: the LM head runs only at positions
    followed by a label, `chunk` of them at a time (`lm_head_token_logprobs`; at V = 151,936 a batch's logits alone
    would be gigabytes). Same loss, gradient and stats (a token counts as right where its log-prob is the row's
    largest: on a tie between the label and another id this counts it right, where argmax may pick the other)."""
    gold, mask = _targets(labels)
    scores = lm_head_token_logprobs(head, hidden[:, :-1][mask], gold, chunk=chunk, max_logprob=True)
    return _loss_and_stats(scores.logprobs, scores.logprobs >= scores.max_logprob, mask)


def _targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the target ids, (B, T - 1) mask of the positions they follow): position j predicts labels[:, j + 1]."""
    mask = labels[:, 1:] != IGNORE_INDEX
    if not bool(mask.any()):
        raise ValueError("no target tokens in the batch (all labels are -100)")
    return labels[:, 1:][mask], mask


def _loss_and_stats(logprobs: torch.Tensor, right: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean NLL of the target tokens' log-probs, and the stats of `masked_lm_loss` from which of them are right."""
    n = mask.sum()
    with torch.no_grad():
        hit = torch.zeros_like(mask).masked_scatter_(mask, right)
        rows = mask.any(-1)
        seq_ok = (hit | ~mask).all(-1) & rows
        stats = {
            "num_tokens": n.detach(),
            "token_accuracy": hit.sum().float() / n,
            "sequence_accuracy": seq_ok.sum().float() / rows.sum().clamp_min(1),
        }
    return -logprobs.sum() / n, stats


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def _target_tokens(encoded: Sequence[tuple[Sequence[int], Sequence[int]]]) -> int:
    """Target tokens of these rows that carry loss (`masked_lm_loss`'s count: every one a position predicts)."""
    return sum(len(t) - (len(p) == 0) for p, t in encoded)


def _default_budget(encoded_sets: Sequence[Sequence[tuple[list[int], list[int]]]]) -> int:
    longest = max((len(t) for enc in encoded_sets for _, t in enc), default=1)
    return longest + 8


def _run_eval(model: LatentModel, examples: Sequence[Example], budget: int, cfg: CoTSFTConfig) -> dict[str, Any]:
    from latentrl.eval import evaluate

    res = evaluate(model, list(examples), max_new_positions=budget, batch_size=cfg.eval_batch_size, k=0)
    return {
        "pass_at_1": res.pass_at_1,
        "mean_reasoning_positions": res.mean_reasoning_positions,
        "n": res.n,
        "wall_s": res.wall_s,
        "samples": res.samples,
    }


def train_sft(
    config: CoTSFTConfig,
    model: LatentModel,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example] = (),
) -> SFTHistory:
    """Fine-tune `model` in place on `train_examples`; greedy Pass@1 on `eval_examples` every `eval_steps`.

    The data order is a fresh seeded permutation per pass over the training set. Metrics (loss, token and
    teacher-forced sequence accuracy, learning rate, gradient norm, eval Pass@1 and reasoning positions) go to
    `config.output_dir/metrics.jsonl` when an output dir is set, and always into the returned `SFTHistory`.
    `save_steps` writes resumable checkpoints; `resume_from_checkpoint` continues from one exactly.
    """
    if not train_examples:
        raise ValueError("train_sft needs at least one training example")
    t_start = time.perf_counter()
    cfg = config
    tok = model.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = encode_examples(tok, train_examples, cfg.mode, cfg.max_length)
    eval_examples = list(eval_examples)
    budget = cfg.max_new_positions or _default_budget(
        [encoded, encode_examples(tok, eval_examples, cfg.mode)] if eval_examples else [encoded]
    )
    loop = StepLoop(cfg, model, len(encoded), f"sft[{cfg.mode}]", exempt_1d_from_decay=True)
    saved = loop.saved
    history = SFTHistory() if saved is None else SFTHistory(train=saved["train"], eval=saved["eval"])

    def loss_fn(idx: list[int], mine: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = {k: v.to(model.device) for k, v in build_sft_batch([encoded[i] for i in mine], pad_id).items()}
        _, hidden, _ = model.forward_embeds(model.embed(batch["input_ids"]), attention_mask=batch["attention_mask"],
                                            compute_logits=False)
        loss, stats = masked_lm_loss_from_hidden(model.output_head, hidden, batch["labels"])
        # the token mean over the global batch: this process's mean weighted by its share of the tokens
        share = float(stats["num_tokens"]) / _target_tokens([encoded[i] for i in idx])
        rows = len(mine) / len(idx)
        return loss * share, {"loss": float(loss.detach()) * share,
                              "token_accuracy": float(stats["token_accuracy"]) * share,
                              "sequence_accuracy": float(stats["sequence_accuracy"]) * rows}

    def do_eval(step: int) -> dict[str, Any] | None:
        if not eval_examples:
            return None
        ev = _run_eval(model, eval_examples, budget, cfg)
        loop.metrics.log(step, {"eval/pass_at_1": ev["pass_at_1"],
                                "eval/mean_reasoning_positions": ev["mean_reasoning_positions"],
                                "eval/wall_s": ev["wall_s"]}, history.eval)
        return ev

    try:
        model.train()
        for step in range(loop.start + 1, cfg.max_steps + 1):
            grad_norm, lr = loop.train_step(loss_fn)
            if step % cfg.logging_steps == 0 or step == cfg.max_steps:
                record = loop.log_window(step, grad_norm, lr, history.train)
                loop.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['token_accuracy']:.3f}")
            if cfg.eval_steps and step % cfg.eval_steps == 0 and step != cfg.max_steps:
                do_eval(step)
                model.train()
            loop.save(step, train=history.train, eval=history.eval)
            loop.bar.update(1)
        history.steps = cfg.max_steps
        history.train_wall_s = loop.train_time
        history.final_eval = do_eval(cfg.max_steps)
    finally:
        model.eval()
        loop.close()
    history.wall_s = time.perf_counter() - t_start
    return history
