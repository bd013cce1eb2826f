"""Coconut generation and evaluation through the shared rollout engine (hidden-state thoughts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from latentrl.data.schema import Example, format_prompt
from latentrl.model import LatentModel, LatentTokens
from latentrl.sft.coconut.config import CoconutConfig
from latentrl.sft.coconut.data import _ids, _latent_ids


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
    op = HiddenStateThought(latent_token_id=latent_id)
    op.attach(model)  # a checkpoint trained with a thought projection gets it back
    return op


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
    return cfg.thoughts_for(k)


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
