"""The rollout engine: batched, KV-cached decoding that mixes latent and discrete positions.

One loop serves every method. Each step runs one forward of one new position per row over the KV cache, then
forms that row's next input either as a token (sampled from the logits) or as a latent thought (from the
ThoughtOperator). Which one is decided per row by a `ThinkingSchedule` evaluated on tensors — no text is decoded
while generating. Everything needed to replay the completion exactly is stored in a typed `Rollout`.

Conventions (shared with `replay.py`): completion position j holds recorded id `completion_ids[:, j]` and is fed
to the model as input embedding e_j; its log-prob comes from the logits of the position before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch

from latentrl.decoding import DecoderChoice, make_stepper, shared_prompt_rows
from latentrl.model import LatentModel
from latentrl.sampling import generator_on, sample_tokens, token_logprobs
from latentrl.thoughts.base import Payload, ThoughtOperator


@dataclass
class ThinkingSchedule:
    """Per-row rules that switch a completion from latent to discrete positions.

    The completion starts latent when an operator is given and any rule is set (and the fixed count is not 0).
    The first rule that fires ends the latent span; it never restarts.
    """

    num_latent_steps: int | torch.Tensor | None = None
    """Fixed count of latent positions at the start of the completion (Coconut, LEPO); an int or a (B,) tensor."""
    max_latent_steps: int | None = None
    """Cap on latent positions when the span ends by token or delimiter."""
    end_token_id: int | None = None
    """Latent-GRPO: the span ends when the unperturbed top-1 token is this id; that position is emitted as it."""
    delimiter_ids: Sequence[int] | Sequence[Sequence[int]] | None = None
    """HRPO: the span ends once the recorded ids end with this id sequence (e.g. the ids of `####`), or with any
    of several sequences — a BPE tokenizer spells `####` differently in context (`"####"` vs `" ####"`)."""

    def delimiters(self) -> list[list[int]]:
        """`delimiter_ids` as a list of id sequences (empty when unset)."""
        return delimiter_sequences(self.delimiter_ids)
    after_latent_ids: Sequence[int] = ()
    """Tokens forced right after the latent span (Coconut's `<|end-latent|>`); excluded from the policy loss."""

    def has_latent(self) -> bool:
        if self.num_latent_steps is not None:
            n = self.num_latent_steps
            return bool((n > 0).any()) if torch.is_tensor(n) else n > 0
        return self.end_token_id is not None or self.delimiter_ids is not None or self.max_latent_steps is not None


def delimiter_sequences(delimiter_ids: Sequence[int] | Sequence[Sequence[int]] | None) -> list[list[int]]:
    """One id sequence or several alternatives, as a list of non-empty sequences."""
    if delimiter_ids is None or len(delimiter_ids) == 0:
        return []
    if all(isinstance(i, int) or (torch.is_tensor(i) and i.ndim == 0) for i in delimiter_ids):
        return [[int(i) for i in delimiter_ids]]
    return [[int(i) for i in seq] for seq in delimiter_ids if len(seq)]


@dataclass
class SamplingParams:
    """How discrete positions are drawn. temperature 0 = greedy."""

    max_new_positions: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_token_ids: Sequence[int] | None = None  # default: the tokenizer's eos


@dataclass
class Rollout:
    """A batch of completions and everything needed to replay them. Shapes: B rows, P prompt, C completion."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) bool
    completion_ids: torch.Tensor  # (B, C) recorded ids, pad after the end
    completion_mask: torch.Tensor  # (B, C) bool: position was generated (up to and including the stop token)
    latent_mask: torch.Tensor  # (B, C) bool: input formed by the thought operator
    forced_mask: torch.Tensor  # (B, C) bool: token forced by the schedule (not sampled)
    logprobs: torch.Tensor  # (B, C) float32: log-prob under the sampling policy (0 at deterministic latents)
    truncated: torch.Tensor  # (B,) bool: no stop token within max_new_positions
    payload: Payload = field(default_factory=dict)  # name -> (B, C, ...)

    @property
    def batch_size(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    @property
    def num_latent(self) -> torch.Tensor:
        return (self.latent_mask & self.completion_mask).sum(-1)

    def policy_mask(self, operator: ThoughtOperator | None) -> torch.Tensor:
        """Positions that carry a log-prob for the policy loss: sampled tokens, and stochastic latents."""
        mask = self.completion_mask & ~self.forced_mask
        if operator is None or not operator.stochastic:
            mask = mask & ~self.latent_mask
        return mask

    def select(self, index: torch.Tensor) -> "Rollout":
        """Rows `index` of this batch (used by dynamic sampling and micro-batching)."""
        return self.map(lambda t: t[index])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Rollout":
        """The same rollout with `fn` applied to every tensor, the payload's included."""
        kw = {f.name: fn(getattr(self, f.name)) for f in fields(self) if f.name != "payload"}
        return Rollout(**kw, payload={k: fn(v) for k, v in self.payload.items()})

    def to(self, device: torch.device | str) -> "Rollout":
        return self.map(lambda t: t.to(device))

    @staticmethod
    def concat(parts: Sequence["Rollout"], pad_id: int) -> "Rollout":
        """Stack rollouts of different prompt/completion lengths (prompts left-padded, completions right-padded)."""
        P = max(r.prompt_ids.shape[1] for r in parts)
        C = max(r.completion_ids.shape[1] for r in parts)

        def pad(t: torch.Tensor, width: int, left: bool, value) -> torch.Tensor:
            extra = width - t.shape[1]
            if extra == 0:
                return t
            filler = torch.full((t.shape[0], extra, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
            return torch.cat([filler, t] if left else [t, filler], dim=1)

        out = {
            "prompt_ids": torch.cat([pad(r.prompt_ids, P, True, pad_id) for r in parts]),
            "prompt_mask": torch.cat([pad(r.prompt_mask, P, True, False) for r in parts]),
            "truncated": torch.cat([r.truncated for r in parts]),
        }
        for name, value in (("completion_ids", pad_id), ("completion_mask", False), ("latent_mask", False),
                            ("forced_mask", False), ("logprobs", 0.0)):
            out[name] = torch.cat([pad(getattr(r, name), C, False, value) for r in parts])
        payload = {k: torch.cat([pad(r.payload[k], C, False, 0) for r in parts]) for k in parts[0].payload}
        return Rollout(**out, payload=payload)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (ids, mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = True
    return ids.to(device), mask.to(device)


def _sync_interval(device: torch.device) -> int:
    """Steps between the host-side "has every row stopped?" checks: every step on CPU (a sync is free there),
    every 8 on accelerators (the loop then trims the few extra steps it ran)."""
    return 1 if device.type == "cpu" else 8


def generate_rollout(
    model: LatentModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    sampling: SamplingParams,
    operator: ThoughtOperator | None = None,
    schedule: ThinkingSchedule | None = None,
    generator: torch.Generator | None = None,
    *,
    decoder: DecoderChoice = "auto",
) -> Rollout:
    """Decode a batch: latent positions while the schedule says so, sampled tokens after, per-row stop.

    `decoder`: "auto" runs the preallocated-cache fast path (`latentrl.decoding.StaticCacheStepper`) where the
    architecture supports it and the generic `forward_embeds` path elsewhere; "fast" / "generic" force one.
    Both give the same rollout.

    `generator`: every draw runs on the model's device; a generator on another device (e.g. a CPU
    `torch.Generator()` for a CUDA model) is replaced once by a device generator seeded from it
    (`sampling.generator_on`), so no step copies logits to the host.

    The decode runs under `torch.inference_mode()` (cheaper than `no_grad` for the many small views of a step: 3-16 %
    of the rollout at `benchmarks/trainer_vs_trl.py`'s shape); the returned tensors are ordinary ones (copies), since
    the update saves some of them for backward.
    """
    with torch.inference_mode():
        rollout = _decode(model, prompt_ids, prompt_mask, sampling, operator, schedule, generator, decoder)
    return rollout.map(torch.Tensor.clone)


def _decode(model: LatentModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingParams,
            operator: ThoughtOperator | None, schedule: ThinkingSchedule | None,
            generator: torch.Generator | None, decoder: DecoderChoice) -> Rollout:
    device = model.device
    generator = generator_on(generator, device)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device).bool()
    B, P = prompt_ids.shape
    C = sampling.max_new_positions
    schedule = schedule or ThinkingSchedule()
    use_latent = operator is not None and schedule.has_latent()
    emits_tokens = use_latent and operator.emits_tokens
    stop_ids = torch.as_tensor(
        list(sampling.stop_token_ids) if sampling.stop_token_ids is not None else [model.tokenizer.eos_token_id],
        device=device,
    )
    pad_id = model.tokenizer.pad_token_id

    # ---- per-step records: kept as lists of (B,) tensors and stacked once at the end, so a step writes nothing
    # into (B, C) buffers. None = nothing of that kind at this step (no latent row / no forced token).
    specs = operator.payload_spec(model) if use_latent else {}
    hist_finished: list[torch.Tensor] = []  # `finished` before each step (alive = ~finished)
    hist_ids: list[torch.Tensor] = []
    hist_lp: list[torch.Tensor] = []
    hist_lat: list[torch.Tensor | None] = []
    hist_forced: list[torch.Tensor | None] = []
    hist_payload: dict[str, list[torch.Tensor | None]] = {name: [] for name in specs}
    hist_recorded: list[torch.Tensor] = []  # alive-masked ids, only for the delimiter rule

    # ---- per-row schedule state
    latent_active = torch.full((B,), use_latent, dtype=torch.bool, device=device)
    if use_latent and schedule.num_latent_steps is not None:
        n_latent = torch.as_tensor(schedule.num_latent_steps, device=device).expand(B).clone()
        latent_active &= n_latent > 0
    else:
        n_latent = None
    latent_count = torch.zeros(B, dtype=torch.long, device=device)
    after = torch.as_tensor(list(schedule.after_latent_ids), dtype=torch.long, device=device)
    n_after = len(after)
    forced_pos = torch.full((B,), n_after if use_latent else 0, dtype=torch.long, device=device)
    if use_latent and n_after:
        forced_pos[~latent_active] = 0  # rows with zero latents still get the closing tokens
    delims = [torch.as_tensor(d, dtype=torch.long, device=device) for d in schedule.delimiters()]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    all_rows = torch.ones(B, dtype=torch.bool, device=device)
    zero_lp = torch.zeros(B, dtype=torch.float32, device=device)

    # ---- prefill
    model.check_packed_head()  # the head's weight may have changed since the last rollout (then it is repacked)
    stepper = make_stepper(model, prompt_mask, C, decoder)
    last_hidden = stepper.prefill(model.embed(prompt_ids), shared_prompt_rows(prompt_ids, prompt_mask))
    if use_latent and operator.needs_prompt_states:
        operator.begin_rollout(model, stepper.prompt_hidden, prompt_mask)
    # Fast path: while every row is thinking and nothing can end the span from the logits, a step needs no token
    # sampling; the operator forms it from the hidden states (`step_from_hidden`), so operators that ignore logits
    # (Coconut's hidden state) skip the LM head and HRPO fuses it into its own pass over the vocabulary.
    can_fast = use_latent and schedule.end_token_id is None
    may_think = use_latent  # the span never restarts: once no row thinks, stop counting
    check_every = _sync_interval(device)
    # When every row starts thinking and only step counts common to all rows can end the span, the number of steps
    # in which every row thinks is known now: those steps skip the count (a host sync), the per-row counters and
    # the end checks, which catch up at the last of them.
    uniform_left, uniform_done = 0, 0
    if can_fast and not delims and not isinstance(schedule.num_latent_steps, torch.Tensor) and bool(latent_active.all()):
        bounds = [b for b in (schedule.num_latent_steps, schedule.max_latent_steps) if b is not None]
        uniform_left = min(bounds) if bounds else C

    C_used = 0
    for t in range(C):
        if uniform_left:
            thinking = B
        else:
            thinking = int(latent_active.sum()) if may_think else 0
            may_think = thinking > 0
        lat = forced = None
        step_payload: Payload | None = None
        if can_fast and thinking == B:
            # every row thinks: the operator alone forms the position
            step = operator.step_from_hidden(model, last_hidden, generator=generator)
            lat, step_payload = all_rows, step.payload
            ids, embeds = step.token_ids, step.embeds.to(last_hidden.dtype)
            lp = step.logprob.float() if step.logprob is not None else zero_lp
            if uniform_left:
                uniform_left, uniform_done = uniform_left - 1, uniform_done + 1
                if not uniform_left:  # the last such step: the counters catch up, the end checks below run
                    latent_count += uniform_done
            else:
                latent_count += 1
        else:
            last_logits = model.decode_logits(last_hidden).float()
            # 1. discrete candidates: sampled tokens, forced tokens where the schedule forces them
            ids, lp = sample_tokens(last_logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)
            if n_after:
                forced = forced_pos < n_after
                ids = torch.where(forced, after[forced_pos.clamp_max(n_after - 1)], ids)
                lp = torch.where(forced, token_logprobs(last_logits, ids, sampling.temperature), lp)
            # 2. latent candidates for rows still thinking
            if thinking:
                if schedule.end_token_id is not None:  # Latent-GRPO: unperturbed top-1 is end-of-thinking
                    hit_end = latent_active & (last_logits.argmax(-1) == schedule.end_token_id)
                    end_ids = torch.full_like(ids, schedule.end_token_id)
                    ids = torch.where(hit_end, end_ids, ids)
                    lp = torch.where(hit_end, token_logprobs(last_logits, end_ids, sampling.temperature), lp)
                    latent_active = latent_active & ~hit_end
                step = operator.step(model, last_logits, last_hidden, generator=generator)
                lat, step_payload = latent_active, step.payload
                ids = torch.where(lat, step.token_ids, ids)
                if step.logprob is not None:
                    lp = torch.where(lat, step.logprob.float(), lp)
                else:
                    lp = lp.masked_fill(lat, 0.0)
                embeds = torch.where(lat[:, None], step.embeds.to(last_hidden.dtype), model.embed(ids))
                latent_count += lat.long()
                if forced is not None:
                    forced = forced & ~lat
            else:
                embeds = model.embed(ids)
        # 3. record (alive-masking happens once at the end)
        hist_finished.append(finished)
        hist_ids.append(ids)
        hist_lp.append(lp)
        hist_lat.append(lat)
        hist_forced.append(forced)
        for name in specs:
            hist_payload[name].append(step_payload[name] if step_payload is not None else None)
        if delims:
            hist_recorded.append(torch.where(finished, pad_id, ids))
        # 4. schedule transitions for the next position
        if forced is not None:
            forced_pos = forced_pos + forced.long()
        if thinking and not uniform_left:
            ended = None
            if n_latent is not None:
                ended = latent_active & (latent_count >= n_latent)
            if schedule.max_latent_steps is not None:
                hit = latent_active & (latent_count >= schedule.max_latent_steps)
                ended = hit if ended is None else ended | hit
            for delim in delims:
                if t + 1 >= len(delim):
                    window = torch.stack(hist_recorded[-len(delim):], dim=1)
                    hit = latent_active & (window == delim).all(-1)
                    ended = hit if ended is None else ended | hit
            if ended is not None:
                if n_after:
                    forced_pos = forced_pos.masked_fill(ended, 0)
                latent_active = latent_active & ~ended
        # a row stops at a stop id among its discrete positions (and, for `emits_tokens`, its latent ones); a step
        # where every row thought has none (and ran the fast path: no row had stopped), so nothing to check
        all_latent = lat is all_rows and not emits_tokens
        if not all_latent:
            stop = torch.isin(ids, stop_ids)
            if lat is not None and not emits_tokens:
                stop = stop & ~lat
            if forced is not None:
                stop = stop & ~forced
            finished = finished | stop
        if t == C - 1:
            C_used = C
            break
        if not all_latent and (t + 1) % check_every == 0 and bool(finished.all()):
            # the first step after which every row had finished (earlier than t when checks are sparse)
            done_after = torch.stack(hist_finished[1:] + [finished], dim=1).all(0)
            C_used = int(done_after.nonzero()[0]) + 1
            break
        # 5. one forward for the new position of every row
        last_hidden = stepper.step(embeds)

    # ---- stack the records (C_used positions) and mask everything after each row's stop
    T = C_used
    if T == 0:
        empty = torch.zeros((B, 0), dtype=torch.bool, device=device)
        return Rollout(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask,
            completion_ids=torch.full((B, 0), pad_id, dtype=torch.long, device=device), completion_mask=empty,
            latent_mask=empty.clone(), forced_mask=empty.clone(),
            logprobs=torch.zeros((B, 0), dtype=torch.float32, device=device), truncated=~finished,
            payload={k: torch.zeros((B, 0, *sp.shape), dtype=sp.dtype, device=device) for k, sp in specs.items()},
        )
    no_rows = torch.zeros(B, dtype=torch.bool, device=device)
    alive = ~torch.stack(hist_finished[:T], dim=1)
    latent_mask = torch.stack([m if m is not None else no_rows for m in hist_lat[:T]], dim=1)
    forced_mask = torch.stack([m if m is not None else no_rows for m in hist_forced[:T]], dim=1)
    payload: Payload = {}
    for name, spec in specs.items():
        zero = torch.zeros((B, *spec.shape), dtype=spec.dtype, device=device)
        values = torch.stack([v.to(spec.dtype) if v is not None else zero for v in hist_payload[name][:T]], dim=1)
        keep = latent_mask.view(B, T, *[1] * len(spec.shape))
        payload[name] = torch.where(keep, values, zero.unsqueeze(1))
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=torch.where(alive, torch.stack(hist_ids[:T], dim=1), pad_id),
        completion_mask=alive,
        latent_mask=latent_mask & alive,
        forced_mask=forced_mask & alive,
        logprobs=torch.where(alive, torch.stack(hist_lp[:T], dim=1), 0.0),
        truncated=~finished,
        payload=payload,
    )


def decode_completions(model: LatentModel, rollout: Rollout, skip_latent: bool = True) -> list[str]:
    """Completion texts for rewards: discrete ids only by default (latent positions are not words).

    Operators whose latent positions record real sampled tokens (`emits_tokens`, HRPO) decode with
    `skip_latent=False`; see `Method.decodes_latent_tokens`.
    """
    texts = []
    for ids, mask, lat in zip(rollout.completion_ids, rollout.completion_mask, rollout.latent_mask):
        keep = mask & ~lat if skip_latent else mask
        texts.append(model.tokenizer.decode(ids[keep].tolist(), skip_special_tokens=True))
    return texts
