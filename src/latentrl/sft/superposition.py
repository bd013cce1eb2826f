"""Superposition SFT: a small latent-SFT stage that teaches a CoT model to think in top-K vocabulary superpositions.

Latent-GRPO (Deng et al. 2026) must start from a latent-SFT model; its authors use Latent-SFT (Deng et al. 2025,
arXiv 2510.15522; code github.com/DJC-GO-SOLO/Latent-SFT). Latent-SFT has two stages:

1. a trained *Latent Token Encoder* reads the explicit chain of thought and emits a short sequence of latent
   tokens, each a probability vector q_j over the vocabulary (the input fed to the LLM is q_j · E);
2. the encoder is discarded and the LLM is trained, teacher-forced on ``prompt, q_1·E .. q_m·E, </think>, answer``,
   with ``CE(answer) + KL(q_j || p_θ(· | prefix))`` at the latent positions, so that it generates these latent
   tokens itself (`LatentSFTStage2SoftEmbedding` in `src/modeling/modeling_latent.py`).

This module is a faithful *small* version of stage 2 with a fixed, training-free stage 1: the chain of thought is
cut into chunks of `tokens_per_latent` tokens and latent j is the superposition of the tokens of chunk j,
q_j(v) = count of v in chunk j / chunk length (at most `top_k` tokens, the RL operator's K). The model then learns

    loss = ce_weight · CE(end-of-thinking + answer + eos) + kl_weight · mean_j KL(q_j || softmax(logits_{j-1}))

with the latent inputs Σ_v q_j(v) E[v] (teacher forcing, one parallel forward per batch). At RL time the
`gumbel_topk` operator feeds back the model's own top-K superposition softmax(top-K logits) · E, which is what
stage 2 trains the model to produce; the latent span ends when the top-1 prediction is the end-of-thinking token,
exactly what the CE term trains after the last latent. Compression: m = ceil(len(CoT) / tokens_per_latent)
latents instead of len(CoT) tokens (Latent-SFT reports up to 4x).

Deliberate differences from the authors' Latent-SFT: no learned encoder (chunk superpositions instead); gradients
are not stopped at the input embeddings (the authors detach all input embeddings); the KL is a token mean over all
latent positions of the batch (theirs: per-example mean, then batch mean). The alternative starting point is
Coconut curriculum SFT (`latentrl.sft.coconut`), whose latents are hidden states rather than vocabulary
superpositions — the wrong input space for `gumbel_topk`, which is why Latent-GRPO's presets use this stage.

    cfg = SuperpositionSFTConfig(max_steps=300, tokens_per_latent=2, top_k=10)
    history = train_superposition_sft(cfg, model, train_examples, eval_examples)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from latentrl.config import ConfigError, cfg_field
from latentrl.data.schema import Example, format_no_cot, format_prompt
from latentrl.head_logprobs import lm_head_token_logprobs
from latentrl.model import LatentModel
from latentrl.sft.config import MetricsOutputConfig, StageGateConfig, StepScheduleConfig, sft_default
from latentrl.sft.cot import IGNORE_INDEX, SFTHistory, masked_lm_loss_from_hidden
from latentrl.sft.gate import STAGE_ADVANCE_CHOICES, StageGate
from latentrl.sft.loop import StepLoop
from latentrl.thoughts.base import mix_embeddings

__all__ = [
    "SuperpositionSFTConfig",
    "SuperpositionExample",
    "build_superposition_batch",
    "chunk_bounds",
    "chunk_superpositions",
    "encode_superposition_examples",
    "superposition_gate_metrics",
    "superposition_loss",
    "train_superposition_sft",
]


@dataclasses.dataclass(kw_only=True)
class SuperpositionSFTConfig(StepScheduleConfig, StageGateConfig, MetricsOutputConfig):
    """Options of superposition SFT (a small Latent-SFT stage 2 with chunk-superposition targets)."""

    tokens_per_latent: int = cfg_field(
        2, "Chain-of-thought tokens compressed into one latent superposition (compression factor c).", min=1
    )
    chunk_sizes: list[int] = cfg_field(
        [],
        "Lengths of the chain's first chunks, in order; the rest is cut into tokens_per_latent-token chunks. [] = "
        "every chunk tokens_per_latent long. For chains whose steps have unequal lengths, so that a step's digits "
        "share one latent: icot 4x4 columns_tens_first with [3,3,3,3,3,3,3,3,3,3,4,4,4,4] keeps two whole column "
        "sums in each of its last four latents (14 latents for 46 tokens).",
    )
    chunk_weights: str = cfg_field(
        "count",
        "Weights of a chunk's tokens in its latent target: count = proportional to how often each occurs (the chunk "
        "as a bag: the order of its tokens is lost); positional = the i-th of the chunk's c tokens weighs "
        "2^(c-1-i) / (2^c - 1), summed over repeats, so the ordered chunk can be read back from the weights (binary "
        "subset sums are unique) — for chains whose digit order matters (icot).",
        choices=("count", "positional"),
    )
    top_k: int = cfg_field(
        10, "Tokens kept per latent target (use the RL operator's K; Latent-GRPO: 10). Chunks with more distinct "
        "tokens keep the top_k most frequent (first occurrence breaks ties), renormalised.", min=1
    )
    end_of_thinking: str | None = cfg_field(
        None,
        "Text placed after the latents, before the answer (the authors' '</think>'); null: the answer mark '####' "
        "that starts the answer text ends thinking (the CPU suite's latent.end_of_thinking_token).",
    )
    ce_weight: float = cfg_field(1.0, "Weight of the cross-entropy on end-of-thinking + answer + eos.", min=0.0)
    kl_weight: float = cfg_field(1.0, "Weight of KL(q_j || p_theta) at the latent positions.", min=0.0)
    self_feed: float = cfg_field(
        0.0,
        "Fraction of latent inputs replaced, while training, by the model's own prediction for that position "
        "(parallel scheduled sampling, Duckworth et al. 2019, arXiv 1906.04331): a first no-grad teacher-forced "
        "forward gives at each latent position the deterministic top-K superposition the gumbel_topk operator "
        "feeds back in generation, and the trained forward reads it there instead of the target. Teaches the "
        "model to read the superpositions it writes itself; 0 = pure teacher forcing (Latent-SFT).",
        min=0.0, max=1.0,
    )
    # A short stage on top of a CoT model: fewer steps and warmup than CoT SFT from scratch, at a rate between
    # Coconut's fine-tuning rate and CoT pretraining's.
    max_steps: int = sft_default("max_steps", 300)
    warmup_steps: int = sft_default("warmup_steps", 20)
    learning_rate: float = sft_default("learning_rate", 3e-4)
    max_latent_steps: int = cfg_field(64, "Cap on latent steps when decoding the eval set.", min=1)
    stage_advance: str = cfg_field(
        "fixed",
        "fixed = train max_steps steps (the single stage of this SFT); converged = stop early once the gate metric "
        "on the gate examples met gate_threshold on gate_patience consecutive gate evaluations (every "
        "gate_eval_steps steps); max_steps stays the cap.",
        choices=STAGE_ADVANCE_CHOICES,
    )
    gate_metric: str = cfg_field(
        "answer_accuracy",
        "Gate metric on the gate examples. Teacher-forced: answer_accuracy = fraction whose end-of-thinking + answer "
        "+ eos is predicted exactly after the target latents; latent_top1_accuracy = top-1 prediction equals the "
        "heaviest token of each latent target; loss = the training loss (CE + KL). Generated: generated_accuracy = "
        "greedy Pass@1 with the model writing its own latents (deterministic top-K), the only one that sees whether "
        "the latents it writes can be read (on chain_sum the teacher-forced metrics pass thousands of steps before "
        "it rises: docs/bench/chain_sum/superposition_init).",
        choices=("answer_accuracy", "latent_top1_accuracy", "loss", "generated_accuracy"),
    )
    # its own gate cadence since the gate was added (Coconut's is 16); kept so its runs stay the same
    gate_eval_steps: int = sft_default("gate_eval_steps", 20)

    def validate(self) -> None:
        super().validate()
        if self.tokens_per_latent > self.top_k:
            raise ConfigError(f"tokens_per_latent ({self.tokens_per_latent}) must be <= top_k ({self.top_k}): a "
                              "latent target must fit in the operator's top-K")
        if any(not isinstance(n, int) or not 1 <= n <= self.top_k for n in self.chunk_sizes):
            raise ConfigError(f"chunk_sizes entries must be whole numbers from 1 to top_k ({self.top_k}), got "
                              f"{self.chunk_sizes}")
        if self.ce_weight == 0 and self.kl_weight == 0:
            raise ConfigError("ce_weight and kl_weight cannot both be 0")


@dataclasses.dataclass
class SuperpositionExample:
    """One encoded example: prompt ids, latent targets (m, K) ids / weights, answer ids (incl. eos)."""

    prompt: list[int]
    latent_ids: torch.Tensor  # (m, K) long
    latent_weights: torch.Tensor  # (m, K) float, rows sum to 1
    answer: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt) + self.latent_ids.shape[0] + len(self.answer)


# ---------------------------------------------------------------------------------------------------------------
# Data -> tensors
# ---------------------------------------------------------------------------------------------------------------


def chunk_bounds(length: int, tokens_per_latent: int, chunk_sizes: Sequence[int] = ()) -> list[tuple[int, int]]:
    """(start, end) of each chunk of a `length`-token chain: the `chunk_sizes` first (cut short at the chain's end),
    then `tokens_per_latent` tokens each; the last chunk may be shorter."""
    bounds, start = [], 0
    for size in chunk_sizes:
        if start >= length:
            break
        bounds.append((start, min(start + size, length)))
        start += size
    while start < length:
        bounds.append((start, min(start + tokens_per_latent, length)))
        start += tokens_per_latent
    return bounds


def chunk_superpositions(cot_ids: Sequence[int], tokens_per_latent: int, top_k: int,
                         pad_id: int = 0, weighting: str = "count", chunk_sizes: Sequence[int] = ()
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, top_k) ids and weights of the chunk superpositions of a chain of thought (chunks: `chunk_bounds`; m =
    ceil(len / c) without `chunk_sizes`).

    Latent j superposes the tokens of chunk j, heaviest first, with weights proportional to their counts
    (`weighting="count"`) or to the sum of 2^(c-1-i) over the token's places i in the chunk of c tokens
    (`"positional"`: the order survives); padding entries have weight 0 (and id `pad_id`).
    """
    if tokens_per_latent < 1 or top_k < 1 or any(n < 1 for n in chunk_sizes):
        raise ValueError("tokens_per_latent, top_k and chunk_sizes must be >= 1")
    if weighting not in ("count", "positional"):
        raise ValueError(f"weighting must be 'count' or 'positional', not {weighting!r}")
    cot_ids = [int(t) for t in cot_ids]  # ints as dict keys (a tensor's elements hash by identity)
    ids, weights = [], []  # plain lists, one tensor each at the end (a million examples pass through here)
    for start, end in chunk_bounds(len(cot_ids), tokens_per_latent, chunk_sizes):
        chunk = cot_ids[start:end]
        counts: dict[int, int] = {}  # in order of first appearance
        for i, t in enumerate(chunk):
            counts[t] = counts.get(t, 0) + (1 if weighting == "count" else 1 << (len(chunk) - 1 - i))
        # heaviest first; the sort is stable, so ties keep the order of first appearance
        order = sorted(counts, key=counts.__getitem__, reverse=True)[:top_k]
        total = sum(counts[t] for t in order)
        pad = top_k - len(order)
        ids.append(order + [pad_id] * pad)
        weights.append([counts[t] / total for t in order] + [0.0] * pad)
    return (torch.tensor(ids, dtype=torch.long).reshape(len(ids), top_k),
            torch.tensor(weights, dtype=torch.float32).reshape(len(ids), top_k))


def _answer_text(ex: Example, end_of_thinking: str | None) -> str:
    return (end_of_thinking or "") + format_no_cot(ex)


def encode_superposition_examples(
    tokenizer, examples: Sequence[Example], cfg: SuperpositionSFTConfig
) -> list[SuperpositionExample]:
    """Tokenize prompt, chain of thought (turned into chunk superpositions) and answer (+ eos) separately."""
    if tokenizer.eos_token_id is None:
        raise ValueError("superposition SFT needs a tokenizer with an eos token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for start in range(0, len(examples), ENCODE_BLOCK):  # one batched tokenizer call per text kind and block
        block = examples[start : start + ENCODE_BLOCK]
        prompts = _token_ids(tokenizer, [format_prompt(ex) for ex in block])
        cots = _token_ids(tokenizer, [" " + " ".join(ex.steps) if ex.steps else "" for ex in block])
        answers = _token_ids(tokenizer, [_answer_text(ex, cfg.end_of_thinking) for ex in block])
        for i, (ex, p, cot, a) in enumerate(zip(block, prompts, cots, answers), start=start):
            a = a + [tokenizer.eos_token_id]
            ids, w = chunk_superpositions(cot, cfg.tokens_per_latent, cfg.top_k, pad, weighting=cfg.chunk_weights,
                                          chunk_sizes=cfg.chunk_sizes)
            enc = SuperpositionExample(p, ids, w, a)
            if enc.length > cfg.max_length:
                raise ValueError(f"example {i} needs {enc.length} positions (prompt {len(p)} + latents "
                                 f"{ids.shape[0]} + answer {len(a)}), more than max_length={cfg.max_length}")
            unk = tokenizer.unk_token_id
            if unk is not None and (unk in p or unk in cot or unk in a):
                raise ValueError(f"example {i} has words the tokenizer does not know: {ex.question!r}")
            out.append(enc)
    return out


ENCODE_BLOCK = 4096
"""Examples per batched tokenizer call in `encode_superposition_examples`."""


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no special tokens); an empty text gives []."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def build_superposition_batch(encoded: Sequence[SuperpositionExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: `input_ids` (pad at latent positions), `attention_mask`, `latent_mask`, `latent_ids`
    and `latent_weights` (B, T, K), and `labels` (-100 except end-of-thinking + answer + eos)."""
    B = len(encoded)
    K = encoded[0].latent_ids.shape[1]
    T = max(e.length for e in encoded)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    lat = torch.zeros((B, T), dtype=torch.bool)
    lat_ids = torch.full((B, T, K), pad_id, dtype=torch.long)
    lat_w = torch.zeros((B, T, K), dtype=torch.float32)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(encoded):
        P, m, A = len(e.prompt), e.latent_ids.shape[0], len(e.answer)
        ids[b, :P] = torch.as_tensor(e.prompt)
        lat[b, P : P + m] = True
        lat_ids[b, P : P + m] = e.latent_ids
        lat_w[b, P : P + m] = e.latent_weights
        ids[b, P + m : P + m + A] = torch.as_tensor(e.answer)
        labels[b, P + m : P + m + A] = torch.as_tensor(e.answer)
        mask[b, : P + m + A] = 1
    return {"input_ids": ids, "attention_mask": mask, "latent_mask": lat, "latent_ids": lat_ids,
            "latent_weights": lat_w, "labels": labels}


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------


def superposition_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(answer tokens, latent positions, rows) that carry loss in `batch`: the means of `superposition_loss` divide
    by them, so a batch split over processes is normalised by the whole batch's counts."""
    labels = batch["labels"][:, 1:] != IGNORE_INDEX
    return int(labels.sum()), int(batch["latent_mask"][:, 1:].sum()), int(labels.any(-1).sum())


@torch.no_grad()
def self_fed_latents(model: LatentModel, emb: torch.Tensor, batch: dict[str, torch.Tensor], top_k: int
                     ) -> torch.Tensor:
    """(B, T, H): at each latent position t, the superposition the model itself writes there after the teacher-
    forced prefix — `gumbel_topk`'s deterministic step on the logits at t - 1, the input generation feeds back —
    and zeros elsewhere. One no-grad forward."""
    op = deterministic_topk_operator(top_k)
    mask = batch["attention_mask"]
    _, hidden, _ = model.forward_embeds(emb, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                                        compute_logits=False)
    target = batch["latent_mask"][:, 1:]
    out = torch.zeros_like(emb)
    logits = model.lm_head(hidden[:, :-1][target])  # the latent positions' rows only
    out[:, 1:][target] = op.step(model, logits, None).embeds.to(emb.dtype)
    return out


def superposition_loss(
    model: LatentModel, batch: dict[str, torch.Tensor], cfg: SuperpositionSFTConfig,
    whole: tuple[int, int, int] | None = None, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One teacher-forced forward: CE on the answer tokens + KL(q_j || p) at the latent positions.

    With `cfg.self_feed > 0` and `generator` (training) that fraction of the latent inputs, drawn with `generator`,
    are the model's own predictions (`self_fed_latents`) instead of the targets; the targets of the KL stay the
    same. With `whole` (the `superposition_counts` of a global batch this one is a share of) both terms and the
    stats are this share's part of the global means (they sum to them over the shares)."""
    emb = model.embed(batch["input_ids"])
    mix = mix_embeddings(model, batch["latent_ids"], batch["latent_weights"]).to(emb.dtype)
    lat = batch["latent_mask"]
    emb = torch.where(lat[..., None], mix, emb)
    if cfg.self_feed > 0 and generator is not None:
        own = self_fed_latents(model, emb.detach(), batch, cfg.top_k)
        draw = torch.rand(lat.shape, generator=generator).to(lat.device) < cfg.self_feed
        emb = torch.where((lat & draw)[..., None], own, emb)
    mask = batch["attention_mask"]
    position = (mask.cumsum(-1) - 1).clamp_min(0)
    _, hidden, _ = model.forward_embeds(emb, attention_mask=mask, position_ids=position, compute_logits=False)
    head = model.output_head  # run a chunk of positions at a time: no (B, T, V) logits
    ce, ce_stats = masked_lm_loss_from_hidden(head, hidden, batch["labels"])

    # logits at t-1 predict latent t
    target = lat[:, 1:]
    stats = {"ce": float(ce.detach()), "token_accuracy": float(ce_stats["token_accuracy"]),
             "answer_accuracy": float(ce_stats["sequence_accuracy"])}
    if bool(target.any()):
        q = batch["latent_weights"][:, 1:][target].float()  # (N, K)
        qi = batch["latent_ids"][:, 1:][target]
        scores = lm_head_token_logprobs(head, hidden[:, :-1][target], qi, max_logprob=True)
        kl = (q * (q.clamp_min(1e-12).log() - scores.logprobs)).sum(-1).mean()
        with torch.no_grad():
            top1 = (scores.logprobs[:, 0] >= scores.max_logprob).float().mean()
            mass = scores.logprobs.exp().masked_fill(q == 0, 0.0).sum(-1).mean()
        stats.update({"kl": float(kl.detach()), "latent_top1_accuracy": float(top1), "latent_target_mass": float(mass)})
    else:
        kl = hidden.new_zeros((), dtype=torch.float32)
        stats["kl"] = 0.0
    if whole is not None:  # this share's parts of the global means
        ce_share, kl_share, row_share = (m / max(w, 1) for m, w in zip(superposition_counts(batch), whole))
        ce, kl = ce * ce_share, kl * kl_share
        for key in stats:
            stats[key] *= (row_share if key == "answer_accuracy" else
                           kl_share if key.startswith(("kl", "latent_")) else ce_share)
    loss = cfg.ce_weight * ce + cfg.kl_weight * kl
    stats["loss"] = float(loss.detach())
    return loss, stats


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def deterministic_topk_operator(top_k: int):
    """`gumbel_topk` with the noise off: the top-K superposition of the model's own prediction, what Latent-GRPO's
    rollouts feed back without noise (evaluation, and `self_feed`'s inputs)."""
    from latentrl.config import LatentConfig
    from latentrl.thoughts import build_thought_operator

    op = build_thought_operator("gumbel_topk", config=LatentConfig(top_k=top_k))
    op.set_eval_mode(True)
    return op


def latent_eval_setup(model: LatentModel, cfg: SuperpositionSFTConfig):
    """The deterministic top-K superposition operator and end-of-thinking schedule used to evaluate (and RL-train)
    the result: what Latent-GRPO's rollouts do with the noise off."""
    from latentrl.rollout import ThinkingSchedule

    end_text = cfg.end_of_thinking or "####"
    end = model.tokenizer(end_text, add_special_tokens=False)["input_ids"]
    if not end:
        raise ValueError(f"end-of-thinking text {end_text!r} tokenizes to nothing")
    return deterministic_topk_operator(cfg.top_k), ThinkingSchedule(end_token_id=end[0], max_latent_steps=cfg.max_latent_steps)


def train_superposition_sft(
    config: SuperpositionSFTConfig,
    model: LatentModel,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example] = (),
    gate_examples: Sequence[Example] | None = None,
) -> SFTHistory:
    """Fine-tune `model` in place; greedy Pass@1 with deterministic top-K latents on `eval_examples` at the end.

    With `stage_advance=converged`, a `StageGate` on `gate_examples` (default: the eval examples) stops training
    once the stage is learned; every gate evaluation goes to `history.gate`, the stage's steps and the reason it
    ended to `history.stage_log`. Every record also goes to `output_dir/metrics.jsonl` when set; `save_steps` writes
    resumable checkpoints and `resume_from_checkpoint` continues from one exactly.
    """
    if not train_examples:
        raise ValueError("train_superposition_sft needs at least one training example")
    t_start = time.perf_counter()
    cfg = config
    tok = model.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = encode_superposition_examples(tok, train_examples, cfg)
    converged = cfg.stage_advance == "converged"
    gate_source = list(gate_examples) if gate_examples is not None else list(eval_examples)
    gate_enc = encode_superposition_examples(tok, gate_source[: cfg.gate_num_examples], cfg) if converged else []
    if converged and not gate_enc:
        raise ValueError("stage_advance=converged needs gate examples (gate_examples or eval_examples)")
    gate = StageGate(threshold=cfg.gate_threshold, patience=cfg.gate_patience,
                     higher_is_better=cfg.gate_metric != "loss")
    reason = "max_steps"
    loop = StepLoop(cfg, model, len(encoded), "sft[superposition]")
    history = SFTHistory()
    if loop.saved is not None:
        gate.streak = loop.saved["gate_streak"]
        history = SFTHistory(train=loop.saved["train"], gate=loop.saved["gate"], steps=loop.saved["step"])
    metrics = loop.metrics

    def loss_fn(idx: list[int], mine: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        whole = (superposition_counts(build_superposition_batch([encoded[i] for i in idx], pad_id))
                 if loop.dp.world_size > 1 else None)
        batch = {k: v.to(model.device) for k, v in build_superposition_batch([encoded[i] for i in mine],
                                                                             pad_id).items()}
        # self-feed draws depend on (seed, step, rows) only: a resumed run draws what the uninterrupted one did
        gen = torch.Generator().manual_seed(hash((cfg.seed, current_step[0], *mine)) % 2**63)
        return superposition_loss(model, batch, cfg, whole=whole, generator=gen)

    current_step = [loop.start]

    try:
        model.train()
        for step in range(loop.start + 1, cfg.max_steps + 1):
            current_step[0] = step
            grad_norm, lr = loop.train_step(loss_fn)
            if step % cfg.logging_steps == 0 or step == cfg.max_steps:
                record = loop.log_window(step, grad_norm, lr, history.train)
                loop.bar.set_postfix(loss=f"{record['loss']:.3f}", kl=f"{record.get('kl', 0.0):.3f}")
            loop.bar.update(1)
            history.steps = step
            if converged and step % cfg.gate_eval_steps == 0:
                gm = superposition_gate_metrics(model, gate_enc, cfg, pad_id, gate_source[: cfg.gate_num_examples])
                d = gate.update(step, gm[cfg.gate_metric])
                metrics.log(step, {**{f"gate/{k}": v for k, v in gm.items()}, "gate/passed": d.passed,
                                   "gate/streak": d.streak}, history.gate)
                model.train()
                if d.advance:
                    reason = d.reason
                    break
            loop.save(step, gate_streak=gate.streak, train=history.train, gate=history.gate)
        metrics.log(history.steps, {"stage/steps": history.steps, "stage/reason": reason,
                                    "stage/gate_metric": cfg.gate_metric if converged else None,
                                    "stage/gate_value": history.gate[-1][f"gate/{cfg.gate_metric}"]
                                    if history.gate else None}, history.stage_log)
        history.train_wall_s = loop.train_time
        if eval_examples:
            history.final_eval = evaluate_superposition(model, eval_examples, cfg)
            metrics.log(history.steps, {k: v for k, v in history.final_eval.items() if k != "samples"},
                        history.eval)
    finally:
        model.eval()
        loop.close()
    history.wall_s = time.perf_counter() - t_start
    return history


@torch.no_grad()
def superposition_gate_metrics(model: LatentModel, encoded: Sequence[SuperpositionExample],
                               cfg: SuperpositionSFTConfig, pad_id: int,
                               examples: Sequence[Example] | None = None) -> dict[str, float]:
    """Example-weighted means of `superposition_loss`'s stats (loss, answer_accuracy, latent_top1_accuracy) over
    `encoded`, teacher-forced, in eval mode; with `gate_metric: generated_accuracy` also the greedy Pass@1 of the
    model generating its own latents on `examples` (the problems `encoded` was built from)."""
    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        for s in range(0, len(encoded), cfg.eval_batch_size):
            part = encoded[s : s + cfg.eval_batch_size]
            batch = {k: v.to(model.device) for k, v in build_superposition_batch(part, pad_id).items()}
            _, stats = superposition_loss(model, batch, cfg)
            for k in ("loss", "answer_accuracy", "latent_top1_accuracy"):
                sums[k] = sums.get(k, 0.0) + stats.get(k, float("nan")) * len(part)
    finally:
        model.train(was)
    out = {k: v / len(encoded) for k, v in sums.items()}
    if cfg.gate_metric == "generated_accuracy":
        if not examples:
            raise ValueError("gate_metric generated_accuracy needs the gate problems themselves (examples=...)")
        try:
            out["generated_accuracy"] = evaluate_superposition(model, examples, cfg)["pass_at_1"]
        finally:
            model.train(was)
    return out


def evaluate_superposition(model: LatentModel, examples: Sequence[Example], cfg: SuperpositionSFTConfig,
                           max_new_positions: int | None = None) -> dict[str, Any]:
    """Greedy Pass@1 with deterministic top-K superposition latents until the end-of-thinking token."""
    from latentrl.eval import evaluate

    op, schedule = latent_eval_setup(model, cfg)
    budget = max_new_positions or cfg.max_new_positions or (cfg.max_latent_steps + 32)
    res = evaluate(model, list(examples), operator=op, schedule=schedule, max_new_positions=budget,
                   batch_size=cfg.eval_batch_size, k=0)
    return {"pass_at_1": res.pass_at_1, "mean_reasoning_positions": res.mean_reasoning_positions,
            "mean_latent_positions": res.mean_latent_positions, "n": res.n, "wall_s": res.wall_s,
            "samples": res.samples}

