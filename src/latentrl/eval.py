"""Evaluation: Pass@1 (greedy), Pass@k and sampled Pass@1 (from k samples), reasoning positions per answer, wall time.

Works on any model the library loads, with or without a thought operator. Reasoning positions are the completion
positions before the answer delimiter (`####`): latent thoughts and reasoning tokens alike, so CoT and latent
methods are compared on the same axis.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from latentrl.chat import prompt_formatter
from latentrl.data.schema import as_rows
from latentrl.model import LatentModel
from latentrl.rewards import checked_rewards, correctness_reward, math_verify_reward, reward_columns
from latentrl.rollout import (
    Rollout,
    SamplingParams,
    ThinkingSchedule,
    decode_completions,
    delimiter_sequences,
    generate_rollout,
    left_pad,
)
from latentrl.thoughts import ThoughtOperator
from latentrl.tokenizer import delimiter_spellings


@dataclass
class EvalResult:
    pass_at_1: float
    pass_at_k: float | None
    k: int
    mean_reasoning_positions: float
    mean_latent_positions: float
    n: int
    wall_s: float
    temperature: float = 1.0
    truncated: float = 0.0
    """Fraction of greedy completions cut at `max_new_positions` before they stopped (scored as written)."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    sampled_pass_at_1: float | None = None
    """Mean over problems of the fraction of the k sampled completions that are right (noise on, at `temperature`):
    Pass@1 of the distribution RL trains on. Far below the greedy Pass@1, it says the rollouts are not the policy
    that is scored (e.g. Latent-GRPO at its paper's noise scale, docs/bench/rl_prompts)."""
    sampled_pass_at_1_se: float | None = None
    """Standard error of `sampled_pass_at_1` over the n problems (of the per-problem fractions)."""
    correct: list[float] = field(default_factory=list, repr=False)
    """Per problem, in data order: 1.0 if the greedy completion is right, else 0.0 (for paired comparisons of two
    models on the same problems; `to_dict` leaves it out)."""
    sampled_correct: list[float] | None = field(default=None, repr=False)
    """Per problem (k > 0): the fraction of its k sampled completions that are right (`to_dict` leaves it out)."""

    @property
    def pass_at_1_se(self) -> float:
        """Binomial standard error of Pass@1 over the n problems."""
        return binomial_se(self.pass_at_1, self.n)

    @property
    def pass_at_k_se(self) -> float | None:
        return None if self.pass_at_k is None else binomial_se(self.pass_at_k, self.n)

    def to_dict(self) -> dict[str, Any]:
        """The aggregates and kept samples (not the per-problem lists), with the standard errors."""
        out = {k: v for k, v in asdict(self).items() if k not in ("correct", "sampled_correct")}
        return {**out, "pass_at_1_se": self.pass_at_1_se, "pass_at_k_se": self.pass_at_k_se}


def binomial_se(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of an accuracy over n independent problems."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / max(n, 1))


def mean_se(values: Sequence[float]) -> float:
    """The standard error of the mean of per-problem values (sample std / sqrt(n)); NaN for fewer than 2."""
    n = len(values)
    if n < 2:
        return float("nan")
    m = sum(values) / n
    return math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1) / n)


def reasoning_positions(rollout: Rollout, delimiter_ids: Sequence[int] | Sequence[Sequence[int]] | None,
                        decoded_latent: bool = False) -> torch.Tensor:
    """(B,) positions before the first occurrence of the delimiter, or of any of several spellings of it (all
    generated positions if it never appears). A latent position's recorded id is an operator's top-1 token, not a
    written one: it counts only where the completions are decoded with their latent ids (`decoded_latent`)."""
    lengths = rollout.lengths.clone()
    ids = rollout.completion_ids
    starts = rollout.completion_mask if decoded_latent else rollout.completion_mask & ~rollout.latent_mask
    first = lengths
    for seq in delimiter_sequences(delimiter_ids):
        d = torch.as_tensor(seq, device=ids.device)
        C, L = ids.shape[1], len(d)
        if C < L:
            continue
        windows = ids.unfold(1, L, 1)  # (B, C-L+1, L)
        hit = (windows == d).all(-1) & starts[:, : C - L + 1]
        first = torch.minimum(first, torch.where(hit.any(-1), hit.float().argmax(-1), lengths))
    return torch.minimum(first, lengths)


def warn_about_prompts(model: LatentModel, prompts: Sequence[str], max_new_positions: int,
                       ids: Sequence[Sequence[int]] | None = None) -> None:
    """Warn where a score would mean little: prompts with words the tokenizer does not know (the model reads its
    unknown token there: data of another task than the model's), and prompts that with the completion budget run
    past the model's `max_position_embeddings`. `ids`: the prompts' token ids when the caller has them."""
    tok = model.tokenizer
    if ids is None:
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    unk = tok.unk_token_id
    unknown = [i for i, x in enumerate(ids) if unk is not None and unk in x]
    if unknown:
        warnings.warn(f"{len(unknown)} of {len(ids)} prompts hold words the model's tokenizer does not know (read as "
                      f"{tok.unk_token}), e.g. {prompts[unknown[0]][:80]!r}: is this the task the model was trained "
                      "on?", stacklevel=3)
    limit = getattr(getattr(model.model, "config", None), "max_position_embeddings", None)
    longest = max(map(len, ids), default=0)
    if isinstance(limit, int) and longest + max_new_positions > limit:
        warnings.warn(f"the longest prompt ({longest} tokens) plus max_new_positions={max_new_positions} passes the "
                      f"model's max_position_embeddings={limit}: positions past it are outside what it was trained "
                      "for", stacklevel=3)


@torch.no_grad()
def evaluate(
    model: LatentModel,
    data: Sequence[Any],
    *,
    operator: ThoughtOperator | None = None,
    schedule: ThinkingSchedule | None = None,
    max_new_positions: int = 64,
    batch_size: int = 64,
    k: int = 0,
    temperature: float = 1.0,
    reward_func: Callable[..., list[float | None]] = correctness_reward,
    delimiter: str = "####",
    seed: int = 0,
    num_samples_to_keep: int = 3,
    prompt_text: Callable[[dict[str, Any]], str] | None = None,
    decode_latent: bool | None = None,
) -> EvalResult:
    """Greedy Pass@1 (operator noise off) and, if k > 0, Pass@k from k completions sampled at `temperature` (noise
    on). Completions cut at `max_new_positions` are counted in `truncated` and warned about: a budget below the
    task's chain length scores right answers as wrong."""
    rows = as_rows(data, "the evaluation data")
    unanswered = next((i for i, r in enumerate(rows) if r.get("answer") is None), None)
    if unanswered is not None and reward_func in (correctness_reward, math_verify_reward):
        raise ValueError(f"the evaluation data: row {unanswered} has no 'answer' column (columns: "
                         f"{sorted(rows[unanswered])}), the gold answer Pass@1 is checked against")
    if k < 0:
        raise ValueError(f"k must be >= 0 (0: no Pass@k), got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if prompt_text is None:  # the prompt as written; chat-message prompts through the chat template, as in training
        prompt_text = prompt_formatter(model.tokenizer, "raw")
    if decode_latent is None:
        decode_latent = operator is not None and operator.emits_tokens
    tok = model.tokenizer
    # each prompt formatted and tokenized once (the sampled rows repeat them)
    texts_of = {id(r): prompt_text(r) for r in rows}
    ids_of = {key: tok(text, add_special_tokens=False)["input_ids"] for key, text in texts_of.items()}
    warn_about_prompts(model, list(texts_of.values()), max_new_positions, ids=list(ids_of.values()))
    delim = delimiter_spellings(model.tokenizer, delimiter) if delimiter else None
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()

    def run(batch_rows: list[dict[str, Any]], sampling: SamplingParams, deterministic: bool):
        if operator is not None:
            operator.set_eval_mode(deterministic)
        ids, mask = left_pad([ids_of[id(r)] for r in batch_rows],
                             tok.pad_token_id, device=model.device)
        ro = generate_rollout(model, ids, mask, sampling, operator, schedule, gen)
        texts = decode_completions(model, ro, skip_latent=not decode_latent)
        scores = checked_rewards(reward_func, [r["prompt"] for r in batch_rows], texts, reward_columns(batch_rows))
        return ro, texts, [0.0 if math.isnan(s) else s for s in scores]  # None (NaN here) scores as wrong

    correct, positions, latents, samples, cut = [], [], [], [], 0
    greedy = SamplingParams(max_new_positions=max_new_positions, temperature=0.0)
    for s in range(0, len(rows), batch_size):
        part = rows[s : s + batch_size]
        ro, texts, scores = run(part, greedy, deterministic=True)
        correct += scores
        positions += reasoning_positions(ro, delim, decode_latent).tolist()
        latents += ro.num_latent.tolist()
        cut += int(ro.truncated.sum())
        for r, t, sc in zip(part, texts, scores):
            if len(samples) < num_samples_to_keep:
                samples.append({"prompt": r["prompt"], "completion": t, "answer": r.get("answer"), "correct": sc})

    pass_k = sampled_1 = sampled_1_se = None
    fractions: list[float] | None = None
    if k > 0:
        sampled = SamplingParams(max_new_positions=max_new_positions, temperature=temperature)
        hits, fractions = [], []
        per_batch = max(1, batch_size // k)
        for s in range(0, len(rows), per_batch):
            part = rows[s : s + per_batch]
            copies = [r for r in part for _ in range(k)]
            scores = []  # at most batch_size completions a rollout, however large k is (k <= batch_size: one)
            for c in range(0, len(copies), batch_size):
                scores += run(copies[c : c + batch_size], sampled, deterministic=False)[2]
            for i in range(len(part)):
                right = [sc > 0 for sc in scores[i * k : (i + 1) * k]]
                hits.append(any(right))
                fractions.append(sum(right) / k)
        pass_k = sum(hits) / len(hits)
        sampled_1 = sum(fractions) / len(fractions)
        sampled_1_se = mean_se(fractions) if len(fractions) > 1 else None  # one problem: no spread to estimate
    if operator is not None:
        operator.set_eval_mode(False)
    model.train(was_training)
    n = len(rows)
    if cut:
        warnings.warn(f"{cut} of {n} greedy completions reached max_new_positions={max_new_positions} without "
                      "stopping and were scored as cut; raise the budget (`max_new_positions`; `latentrl eval "
                      "--max-new`, a run's `max_completion_length`) if the task's chains are longer",
                      stacklevel=3)  # the caller of evaluate, past torch.no_grad's wrapper
    greedy_right = [float(c > 0) for c in correct]
    return EvalResult(
        pass_at_1=sum(greedy_right) / n,
        pass_at_k=pass_k,
        k=k,
        mean_reasoning_positions=sum(positions) / n,
        mean_latent_positions=sum(latents) / n,
        n=n,
        wall_s=time.perf_counter() - t0,
        temperature=temperature,
        truncated=cut / n,
        samples=samples,
        sampled_pass_at_1=sampled_1,
        sampled_pass_at_1_se=sampled_1_se,
        correct=greedy_right,
        sampled_correct=fractions,
    )
