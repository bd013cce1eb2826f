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

from latentrl.sft.coconut.config import IGNORE_INDEX, CoconutConfig, stage_of_epoch
from latentrl.sft.coconut.data import (
    CoconutSample,
    TokenizedExample,
    build_stage_sample,
    stage_samples,
    tokenize_example,
)
from latentrl.sft.coconut.forward import CoconutBatch, CoconutOutput, coconut_forward, collate_coconut
from latentrl.sft.coconut.inference import (
    coconut_eval_thoughts,
    coconut_evaluate,
    coconut_generate,
    coconut_operator,
    coconut_prompt_text,
    coconut_rollout,
    coconut_schedule,
)
from latentrl.sft.coconut.train import CoconutHistory, coconut_gate_metrics, train_coconut

__all__ = [
    "IGNORE_INDEX",
    "CoconutBatch",
    "CoconutConfig",
    "CoconutHistory",
    "CoconutOutput",
    "CoconutSample",
    "TokenizedExample",
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
