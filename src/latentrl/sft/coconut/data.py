"""Coconut SFT data: examples cut at their step boundaries, and the per-stage samples built from them."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from latentrl.data.schema import ANSWER_MARK, Example, format_prompt
from latentrl.sft.coconut.config import IGNORE_INDEX, CoconutConfig


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
    tail_len: int = 0  # language tokens after <|end-latent|> (the remaining steps and the answer)
    # the full language chain `prompt + steps + answer`, for the distillation teacher; empty when off
    teacher_ids: list[int] = dataclasses.field(default_factory=list)


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
    min(#steps, max_latent_stage)*c. With `thoughts_per_step`, k*c is the sum of the first k steps' counts.
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
    n_latent = cfg.thoughts_for(n_latent)  # k * c_thought unless thoughts_per_step says otherwise
    head = tok.prompt + [start_id] + [latent_id] * n_latent + [end_id]
    tail = [t for step in tok.steps[n_skip:] for t in step] + tok.answer
    probe = [IGNORE_INDEX] * n_latent
    if cfg.probe_tokens:
        for q in range(n_latent):
            i, j = cfg.thought_slot(q)
            if i < len(tok.steps) and j < len(cfg.probe_tokens):
                step = tok.steps[i]
                if -len(step) <= cfg.probe_tokens[j] < len(step):
                    probe[q] = step[cfg.probe_tokens[j]]
    heads: list[list[int]] = []
    if cfg.probe_head_tokens:
        offsets = [sum(len(ix) for ix in cfg.probe_head_tokens[:j]) for j in range(len(cfg.probe_head_tokens))]
        for q in range(n_latent):
            i, j = cfg.thought_slot(q)
            row = [IGNORE_INDEX] * cfg.num_probe_heads
            if i < len(tok.steps) and j < len(cfg.probe_head_tokens):
                step = tok.steps[i]
                shift = cfg.probe_head_step_shift[i] if i < len(cfg.probe_head_step_shift) else 0
                for k, ix in enumerate(cfg.probe_head_tokens[j]):
                    ix += shift
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
        tail_len=len(tail),
        teacher_ids=tok.prompt + [t for step in tok.steps for t in step] + tok.answer if cfg.distill_weight > 0 else [],
    )


def stage_samples(
    tokenized: Sequence[TokenizedExample], stage: int, cfg: CoconutConfig, latent_ids, epoch: int = 0
) -> list[CoconutSample]:
    """Every example at `stage`; the uniform_prob draws are seeded by (seed, epoch), so runs are reproducible."""
    rng = random.Random(cfg.seed * 1_000_003 + epoch)
    return [build_stage_sample(t, stage, cfg, latent_ids, rng) for t in tokenized]
