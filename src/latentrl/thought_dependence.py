"""Does a latent model use its thoughts? Greedy Pass@1 with its own thoughts vs swapped and zeroed ones.

A model whose accuracy does not move when its latent inputs are replaced is answering from the question alone
(no-CoT in disguise), however many latent positions it spends. The check decodes each batch three times, greedily
and with the operator's noise off:

* **own**: the ordinary rollout; every latent input the operator forms is recorded;
* **swap**: row i is fed, at its latent step t, the input recorded for row `perm[i]` at step t, where `perm` is a
  seeded derangement of the batch (no row keeps its own thoughts); everything else (prompt, decoding after the
  thoughts) is the model's own. Also scored: how often the swapped answer equals the *donor's* gold answer, which
  is high when the answer is read off the thoughts;
* **zero**: every latent input is the zero vector.

The drop is `own - swap` (and `own - zero`) in Pass@1. Latent steps beyond the donor's own latent span (operators
whose span length depends on the row, e.g. Latent-GRPO's end-of-thinking rule) keep the row's own input.
Hybrid operators (HRPO) are swapped as a whole: their latent input is the mixed embedding.

    res = thought_dependence(model, rows, operator=op, schedule=schedule, max_new_positions=60)
    res.drop_swap  # e.g. 0.85 for a model that reads its thoughts, ~0 for one that ignores them
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from latentrl.chat import prompt_formatter
from latentrl.data.schema import as_rows
from latentrl.eval import mean_se
from latentrl.model import LatentModel
from latentrl.rewards import binary_correctness, correctness_reward, reward_columns
from latentrl.rollout import SamplingParams, ThinkingSchedule, decode_completions, generate_rollout, left_pad
from latentrl.thoughts.base import ThoughtOperator, ThoughtStep

__all__ = ["ThoughtDependence", "derangement", "thought_dependence", "ThoughtIntervention"]


@dataclass
class ThoughtDependence:
    """Greedy Pass@1 with own / swapped / zeroed thoughts, the drops, and their standard errors."""

    pass_own: float
    pass_swap: float
    pass_zero: float
    drop_swap: float
    drop_zero: float
    swap_donor_match: float  # swapped answer == the donor row's gold answer
    drop_swap_se: float | None  # paired standard error of drop_swap (None: one swapped row)
    drop_zero_se: float | None
    n: int
    mean_latent_positions: float
    #: rows whose thoughts were swapped: the row and its donor both had latent steps; `pass_swap`, `drop_swap`,
    #: `drop_swap_se` and `swap_donor_match` are over these rows (all n where every row thinks)
    n_swapped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NoThoughtsToSwap(ValueError):
    """No row and its donor both had latent steps: the swap test has nothing to measure."""


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly drawn permutation of range(n) with no fixed point (rejection sampling; n >= 2)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 rows, got {n}")
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == torch.arange(n)).any()):
            return perm


class ThoughtIntervention(ThoughtOperator):
    """Wraps an operator: records the latent inputs it forms (mode `record`), or replaces them by recorded inputs
    of other rows (`swap`) or by zeros (`zero`). Step t of the wrapper is latent step t of every thinking row (the
    engine calls `step` once per position while any row thinks, from the first completion position on)."""

    def __init__(self, base: ThoughtOperator, mode: str, donors: torch.Tensor | None = None,
                 recorded: torch.Tensor | None = None, donor_steps: torch.Tensor | None = None):
        super().__init__()
        if mode not in ("record", "swap", "zero"):
            raise ValueError(f"unknown intervention {mode!r}")
        if mode == "swap" and (donors is None or recorded is None or donor_steps is None):
            raise ValueError("swap needs donors, the recorded inputs and each donor's latent step count")
        self.base, self.mode = base, mode
        self.donors, self.recorded, self.donor_steps = donors, recorded, donor_steps
        self.inputs: list[torch.Tensor] = []
        self.t = 0
        # the engine reads these class attributes off the instance
        self.stochastic = base.stochastic
        self.emits_tokens = base.emits_tokens
        self.needs_logits = base.needs_logits
        self.needs_prompt_states = base.needs_prompt_states

    def begin_rollout(self, model, prompt_hidden, prompt_mask) -> None:
        self.base.begin_rollout(model, prompt_hidden, prompt_mask)

    def payload_spec(self, model):
        return self.base.payload_spec(model)

    def set_eval_mode(self, deterministic: bool) -> None:
        self.base.set_eval_mode(deterministic)

    def step(self, model, logits, hidden, *, generator=None) -> ThoughtStep:
        step = self.base.step(model, logits, hidden, generator=generator)
        t, self.t = self.t, self.t + 1
        embeds = step.embeds
        if self.mode == "record":
            self.inputs.append(embeds.detach().clone())
        elif self.mode == "zero":
            embeds = torch.zeros_like(embeds)
        else:
            has = (self.donor_steps[self.donors] > t).to(embeds.device)
            if t < self.recorded.shape[1]:
                donor = self.recorded[self.donors, t].to(embeds.device, embeds.dtype)
                embeds = torch.where(has[:, None], donor, embeds)
        return ThoughtStep(embeds=embeds, token_ids=step.token_ids, payload=step.payload, logprob=step.logprob)


def _se_paired(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The paired standard error of mean(a) - mean(b); None for a single pair (no spread to estimate)."""
    se = mean_se([x - y for x, y in zip(a, b, strict=True)])
    return None if math.isnan(se) else se


@torch.no_grad()
def thought_dependence(
    model: LatentModel,
    data: Sequence[Any],
    *,
    operator: ThoughtOperator,
    schedule: ThinkingSchedule,
    max_new_positions: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    prompt_text: Callable[[dict[str, Any]], str] | None = None,
    reward_func: Callable[..., list[float | None]] = correctness_reward,
    decode_latent: bool | None = None,
) -> ThoughtDependence:
    """Greedy Pass@1 with own, swapped (a seeded derangement within each batch) and zeroed latent inputs."""
    rows = as_rows(data, "the evaluation data")
    if len(rows) < 2:
        raise ValueError("the thought-dependence check needs at least 2 problems (thoughts are swapped between them)")
    if not schedule.has_latent():
        raise ValueError("the schedule has no latent positions: there are no thoughts to swap")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if decode_latent is None:
        decode_latent = operator.emits_tokens
    if prompt_text is None:  # as `evaluate`: chat-message prompts through the chat template
        prompt_text = prompt_formatter(model.tokenizer, "raw")
    tok = model.tokenizer
    gen = torch.Generator().manual_seed(seed)
    sampling = SamplingParams(max_new_positions=max_new_positions, temperature=0.0)
    was_training = model.training
    model.eval()
    own, swap, zero, donor_hit, latents, swapped = [], [], [], [], [], []
    try:
        for s in range(0, len(rows), batch_size):
            part = rows[s : s + batch_size]
            if len(part) < 2:  # a lone last row: swap it with the previous batch's first row
                part = [rows[s - batch_size], *part]
                keep = slice(1, None)
            else:
                keep = slice(None)
            ids, mask = left_pad([tok(prompt_text(r), add_special_tokens=False)["input_ids"] for r in part],
                                 tok.pad_token_id, device=model.device)
            cols = reward_columns(part)
            prompts = [r["prompt"] for r in part]

            def score(op: ThoughtIntervention, ids: torch.Tensor = ids, mask: torch.Tensor = mask,
                      prompts: list[Any] = prompts, cols: dict[str, list[Any]] = cols
                      ) -> tuple[list[float], Any, list[str]]:
                op.set_eval_mode(True)
                ro = generate_rollout(model, ids, mask, sampling, op, schedule)
                texts = decode_completions(model, ro, skip_latent=not decode_latent)
                return binary_correctness(reward_func, prompts, texts, **cols), ro, texts

            rec = ThoughtIntervention(operator, "record")
            s_own, ro, _ = score(rec)
            recorded = torch.stack(rec.inputs, dim=1) if rec.inputs else None
            steps = ro.num_latent.cpu()
            perm = derangement(len(part), gen)
            # a row is swapped only where it thinks and its donor thought: else it keeps (or has no) thoughts
            valid = [bool(steps[i] > 0 and steps[int(perm[i])] > 0) for i in range(len(part))]
            donor_cols = {c: [v[int(j)] for j in perm] for c, v in cols.items()}
            if recorded is None:
                s_swap, s_donor = s_own, [0.0] * len(part)
            else:
                sw = ThoughtIntervention(operator, "swap", donors=perm.to(recorded.device), recorded=recorded,
                                         donor_steps=steps.to(recorded.device))
                s_swap, _, texts = score(sw)
                s_donor = binary_correctness(reward_func, prompts, texts, **donor_cols)
            s_zero, _, _ = score(ThoughtIntervention(operator, "zero"))
            own += s_own[keep]
            swap += s_swap[keep]
            zero += s_zero[keep]
            donor_hit += s_donor[keep]
            latents += steps.tolist()[keep]
            swapped += valid[keep]
    finally:
        operator.set_eval_mode(False)
        model.train(was_training)
    n = len(own)
    sw = [i for i, v in enumerate(swapped) if v]
    if not sw:
        raise NoThoughtsToSwap(f"no row of {n} and its donor both had latent steps (mean latent positions "
                               f"{sum(latents) / n:g}): the swap test has nothing to swap")
    own_sw, swap_sw = [own[i] for i in sw], [swap[i] for i in sw]
    p_own, p_zero = sum(own) / n, sum(zero) / n
    p_swap = sum(swap_sw) / len(sw)
    return ThoughtDependence(
        pass_own=p_own, pass_swap=p_swap, pass_zero=p_zero, drop_swap=sum(own_sw) / len(sw) - p_swap,
        drop_zero=p_own - p_zero, swap_donor_match=sum(donor_hit[i] for i in sw) / len(sw),
        drop_swap_se=_se_paired(own_sw, swap_sw), drop_zero_se=_se_paired(own, zero), n=n,
        mean_latent_positions=sum(latents) / n, n_swapped=len(sw),
    )


def method_thought_dependence(model: LatentModel, parts: Any, args: Any, data: Sequence[Any]
                              ) -> ThoughtDependence | None:
    """The check with a method's own operator, schedule and prompt format (`parts`: its `Method.build(model,
    args)`; how `latentrl eval` and the bench score a method); None when the method has no latent positions."""
    if not parts.has_latent:
        return None
    try:
        return thought_dependence(model, data, **parts.eval_kwargs(args))
    except NoThoughtsToSwap as e:  # e.g. a model that learned to end its latent span at once
        warnings.warn(f"no thought-dependence check: {e}", stacklevel=2)
        return None


def trainer_thought_dependence(trainer: Any, data: Sequence[Any]) -> ThoughtDependence | None:
    """`method_thought_dependence` with an RL trainer's model, parts and settings (its weights gathered under FSDP)."""
    with trainer.gathered(trainer.model):
        return method_thought_dependence(trainer.model, trainer.parts, trainer.args, data)
